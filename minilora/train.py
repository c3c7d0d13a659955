"""Training: the loop, its learning-rate schedule, evaluation and checkpoints.

The loop is the textbook one: sample a batch, forward, cross-entropy, backward,
clip the gradient norm, AdamW step. It trains whatever parameters require a
gradient, so the same loop does full fine-tuning and LoRA: after `apply_lora`
only A and B are trainable, and the optimizer never even sees the base weights.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from minilora import backend
from minilora import functional as F
from minilora.files import json_bytes, read_json, read_safetensors, safetensors_bytes, write_dir_atomically
from minilora.model import GPT, GPTConfig
from minilora.optim import AdamW, clip_grad_norm_
from minilora.tensor import no_grad


@dataclass
class TrainConfig:
    steps: int = 1000
    lr: float = 1e-3
    warmup: int = 50               # steps of linear warm-up from 0 to lr
    min_lr_ratio: float = 0.1      # cosine decay ends at lr * min_lr_ratio
    weight_decay: float = 0.01     # AdamW's decoupled decay, on matrices only
    betas: tuple = (0.9, 0.99)
    grad_clip: float = 1.0         # max global gradient norm (0 disables)
    eval_every: int = 0            # call eval_fn every this many steps (0: only at the end)
    ignore_index: int = -1         # targets with this value do not count in the loss

    def __post_init__(self):
        if self.steps < 1 or self.lr <= 0 or self.warmup < 0:
            raise ValueError(f"TrainConfig: steps={self.steps} must be >= 1, lr={self.lr} > 0, "
                             f"warmup={self.warmup} >= 0")


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up to config.lr, then cosine decay to lr * min_lr_ratio at the last step.

    Steps count from 0, so the last step is config.steps - 1: the cosine spans the
    steps - 1 - warmup steps from the end of warm-up to there.
    """
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    span = max(config.steps - 1 - config.warmup, 1)
    progress = min((step - config.warmup) / span, 1.0)
    floor = config.lr * config.min_lr_ratio
    return floor + 0.5 * (config.lr - floor) * (1 + math.cos(math.pi * progress))


@dataclass
class TrainResult:
    losses: list = field(default_factory=list)       # one per step
    lrs: list = field(default_factory=list)
    evals: list = field(default_factory=list)        # (step, metrics) pairs
    seconds: float = 0.0                             # wall time of the whole loop
    optimizer: AdamW | None = None

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / max(len(self.losses), 1)


def train(model, get_batch, config: TrainConfig | None = None, eval_fn=None,
          progress: bool = True, desc: str = "train") -> TrainResult:
    """Train `model` on batches from `get_batch(step) -> (x, y)` and return the history.

    eval_fn(model) -> dict of metrics, called every config.eval_every steps and
    at the end. A NaN or infinite loss stops training with an error.
    """
    config = config or TrainConfig()
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("train: the model has no parameter with requires_grad=True, "
                         "so there is nothing to train")
    # Decay only matrices; biases and LayerNorm gains are left alone (GPT-2 practice).
    groups = [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = AdamW([g for g in groups if g["params"]], lr=config.lr, betas=config.betas)
    result = TrainResult(optimizer=optimizer)
    model.train()
    bar = tqdm(range(config.steps), desc=desc, disable=not progress, leave=False)
    start = time.perf_counter()
    for step in bar:
        optimizer.lr = learning_rate(step, config)
        x, y = get_batch(step)
        loss = F.cross_entropy(model(x), y, ignore_index=config.ignore_index)
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(
                f"train: the loss became {value} at step {step} (learning rate {optimizer.lr:.3g}); "
                f"try a smaller learning rate, e.g. lr={config.lr / 3:.3g}, or a stronger grad_clip")
        optimizer.zero_grad()
        loss.backward()
        if config.grad_clip:
            clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()
        result.losses.append(value)
        result.lrs.append(optimizer.lr)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{value:.4f}")
        if eval_fn is not None and config.eval_every and (step + 1) % config.eval_every == 0 \
                and step + 1 < config.steps:
            result.evals.append((step + 1, eval_fn(model)))
            model.train()
    result.seconds = time.perf_counter() - start
    bar.close()
    if eval_fn is not None:
        result.evals.append((config.steps, eval_fn(model)))
    model.eval()
    return result


def evaluate_loss(model, batches, ignore_index: int = -1) -> float:
    """Mean cross-entropy over (x, y) batches, without building a graph."""
    was_training = model.training
    model.eval()
    with no_grad():
        losses = [F.cross_entropy(model(x), y, ignore_index=ignore_index).item() for x, y in batches]
    model.train(was_training)
    return float(np.mean(losses))


def logits_fn(model):
    """Wrap a model as a plain function ids (B, T) -> NumPy logits (B, T, vocab), for evaluation."""
    def fn(idx):
        model.eval()
        with no_grad():
            return backend.to_numpy(model(idx).data)
    return fn


# --------------------------------------------------------------------------
# Checkpoints: model.safetensors + config.json, written atomically
# --------------------------------------------------------------------------
def save_checkpoint(model: GPT, directory, metadata: dict | None = None) -> Path:
    """Write the model's weights and configuration to `directory` (all or nothing)."""
    info = {"format": "minilora-gpt", "gpt_config": model.config.to_dict(), **(metadata or {})}
    files = {"model.safetensors": safetensors_bytes(model.state_dict(), {"format": "pt"}),
             "config.json": json_bytes(info)}
    return write_dir_atomically(directory, files)


def load_checkpoint(directory) -> GPT:
    """Rebuild a GPT from a directory written by save_checkpoint."""
    directory = Path(directory)
    info = read_json(directory / "config.json")
    if "gpt_config" not in info:
        raise ValueError(f"{directory / 'config.json'} has no 'gpt_config' entry: it was not "
                         "written by minilora's save_checkpoint (for a Hugging Face GPT-2, use load_gpt2)")
    model = GPT(GPTConfig(**info["gpt_config"]))
    model.load_state_dict(read_safetensors(directory / "model.safetensors"))
    model.eval()
    return model


def checkpoint_metadata(directory) -> dict:
    """The config.json of a checkpoint (its GPT config and whatever metadata was saved)."""
    return read_json(Path(directory) / "config.json")


__all__ = ["TrainConfig", "TrainResult", "train", "learning_rate", "evaluate_loss", "logits_fn",
           "save_checkpoint", "load_checkpoint", "checkpoint_metadata"]

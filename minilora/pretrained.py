"""The shipped tiny GPT: pretrained on the built-in task mixture, loaded in one call.

LoRA adapts a model that already knows something. This module makes that model:
`pretrain()` trains a small GPT on data.PRETRAIN_TASKS from a seed, and the
result is shipped inside the package (minilora/assets/tiny_gpt, a few hundred
kB), so notebooks and `minilora demo` start from it at once:

    model = minilora.pretrained.load_pretrained()

Reproduce it (a few minutes on a 2-core laptop) with `minilora pretrain`.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from minilora import data
from minilora.model import GPT, GPTConfig
from minilora.tensor import manual_seed
from minilora.train import TrainConfig, checkpoint_metadata, load_checkpoint, logits_fn, save_checkpoint, train

PRETRAINED_DIR = Path(__file__).parent / "assets" / "tiny_gpt"

# The recipe. Changing any of these changes the shipped model: run `minilora pretrain`.
MODEL_CONFIG = GPTConfig(vocab_size=data.TOKENIZER.vocab_size, block_size=32,
                         n_layer=2, n_head=4, n_embd=64)
PRETRAIN = TrainConfig(steps=2000, lr=3e-3, warmup=100, min_lr_ratio=0.1, weight_decay=0.01)
PRETRAIN_BATCH_SIZE = 64
BATCH_SIZE = 32          # fine-tuning batch size (demo, notebooks)


def task_batches(task_names, batch_size: int, block_size: int, seed: int):
    """get_batch(step) -> (x, y) for train(): a fresh reproducible mixture batch each step."""
    rng = np.random.default_rng(seed)

    def get_batch(step: int):
        return data.make_batch(task_names, batch_size, block_size, rng)
    return get_batch


def task_accuracy(model, task_names, n: int = 200) -> dict[str, float]:
    """Exact-match accuracy on held-out prompts, per task."""
    fn = logits_fn(model)
    return {name: data.exact_match(fn, name, n=n, block_size=model.config.block_size)
            for name in task_names}


def pretrain(out_path=None, steps: int | None = None, seed: int = 0, progress: bool = True) -> GPT:
    """Train the tiny GPT on the pretraining mixture and save it (default: the package's copy)."""
    out_path = Path(out_path) if out_path is not None else PRETRAINED_DIR
    config = TrainConfig(**{**PRETRAIN.__dict__, "steps": steps or PRETRAIN.steps})
    manual_seed(seed)
    model = GPT(MODEL_CONFIG)
    get_batch = task_batches(data.PRETRAIN_TASKS, PRETRAIN_BATCH_SIZE, MODEL_CONFIG.block_size, seed)
    start = time.perf_counter()
    result = train(model, get_batch, config, progress=progress, desc="pretrain")
    seconds = time.perf_counter() - start
    accuracy = task_accuracy(model, data.PRETRAIN_TASKS)
    metadata = {"pretrain": {"tasks": list(data.PRETRAIN_TASKS), "steps": config.steps, "seed": seed,
                             "batch_size": PRETRAIN_BATCH_SIZE, "lr": config.lr, "seconds": round(seconds, 1),
                             "final_loss": round(float(np.mean(result.losses[-50:])), 5),
                             "heldout_exact_match": accuracy}}
    save_checkpoint(model, out_path, metadata)
    print(f"pretrained {model.num_parameters():,} parameters in {seconds:.0f} s "
          f"({config.steps} steps, seed {seed}); held-out exact match: "
          + ", ".join(f"{k} {v:.1%}" for k, v in accuracy.items()) + f"; saved to {out_path}")
    return model


def load_pretrained() -> GPT:
    """The shipped pretrained tiny GPT (in eval mode)."""
    if not (PRETRAINED_DIR / "model.safetensors").exists():
        raise FileNotFoundError(f"the pretrained model is missing from {PRETRAINED_DIR}; "
                                "recreate it with `minilora pretrain`")
    return load_checkpoint(PRETRAINED_DIR)


def pretrained_info() -> dict:
    """What the shipped model was trained on, for how long, and how well it does."""
    return checkpoint_metadata(PRETRAINED_DIR)

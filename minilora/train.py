"""Training: the loop, its learning-rate schedule, evaluation and checkpoints.

The loop is the textbook one: sample a batch, forward, cross-entropy, backward,
clip the gradient norm, AdamW step. It trains whatever parameters require a
gradient, so the same loop does full fine-tuning and LoRA: after `apply_lora`
only A and B are trainable, and the optimizer never even sees the base weights.

Two kinds of files: a checkpoint (save_checkpoint: a plain GPT's weights and
config, for using the model) and a training state (train(checkpoint_dir=...):
also the optimizer, the step, the history and the random generators, for
continuing the run with train(resume_from=...) exactly where it stopped).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from minilora import backend
from minilora import functional as F
from minilora.files import (check_output_dir, json_bytes, read_json, read_safetensors, recover,
                            safetensors_bytes, safetensors_shapes, write_dir_atomically)
from minilora.model import GPT, GPTConfig, check_weights, module_shapes
from minilora.optim import AdamW, check_number, clip_grad_norm_
from minilora.tensor import no_grad


IGNORE_INDEX = -100   # targets with this value do not count in the loss (PyTorch's convention)


def _check_int(owner: str, name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{owner}: {name}={value!r} must be a whole number (an int, not "
                        f"{type(value).__name__})")
    if value < low:
        raise ValueError(f"{owner}: {name}={value} must be at least {low}")
    return int(value)


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
    ignore_index: int = IGNORE_INDEX   # targets with this value do not count in the loss

    def __post_init__(self):
        owner = "TrainConfig"
        self.steps = _check_int(owner, "steps", self.steps, 1)
        self.warmup = _check_int(owner, "warmup", self.warmup, 0)
        self.eval_every = _check_int(owner, "eval_every", self.eval_every, 0)
        self.ignore_index = _check_int(owner, "ignore_index", self.ignore_index, -(2 ** 62))
        self.lr = check_number(owner, "lr", self.lr, low_open=True, hint="; e.g. lr=1e-3")
        self.min_lr_ratio = check_number(owner, "min_lr_ratio", self.min_lr_ratio, high=1.0, high_open=False,
                                         hint=" (the floor of the cosine as a fraction of lr)")
        self.weight_decay = check_number(owner, "weight_decay", self.weight_decay, hint=" (0 turns it off)")
        self.grad_clip = check_number(owner, "grad_clip", 0.0 if self.grad_clip is None else self.grad_clip,
                                      hint=" (the largest gradient norm allowed; 0 turns clipping off)")
        betas = self.betas
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"{owner}: betas={betas!r} must be two numbers, each in [0, 1)")
        self.betas = tuple(check_number(owner, f"betas[{i}]", b, high=1.0, hint="; e.g. betas=(0.9, 0.99)")
                           for i, b in enumerate(betas))


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
    losses: list = field(default_factory=list)       # one per step, from step 0 (a resumed run included)
    lrs: list = field(default_factory=list)
    evals: list = field(default_factory=list)        # (step, metrics) pairs
    seconds: float = 0.0                             # wall time of this call's loop
    steps_run: int = 0                               # steps this call ran (fewer than losses when resumed)
    step_seconds: list = field(default_factory=list)  # wall time of each step (a resumed run's included)
    optimizer: AdamW | None = None

    @property
    def seconds_per_step(self) -> float:
        """The median step time: robust to the odd slow step (a checkpoint, an evaluation, a busy laptop)."""
        return float(np.median(self.step_seconds)) if self.step_seconds else 0.0


# --------------------------------------------------------------------------
# Resumable training state: model.safetensors + optimizer.safetensors + trainer_state.json
# --------------------------------------------------------------------------
STATE_FORMAT = "minilora-train-state"


def _rng_state() -> dict:
    """The backend generator's state (initialisation, dropout) as plain JSON."""
    return backend.rng().bit_generator.state


def _model_recipe(model) -> dict:
    """What decides what the model computes besides its weights: its config and its LoRA
    settings (a changed lora_alpha keeps every name and shape but scales the update)."""
    config = getattr(model, "config", None)
    recipe = {"config": config.to_dict() if hasattr(config, "to_dict") else None,
              "lora": {name: c.to_dict() for name, c in getattr(model, "peft_config", {}).items()},
              "active_adapter": getattr(model, "active_adapter", None)}
    return json.loads(json_bytes(recipe))                   # as it reads back from the file


def _save_train_state(directory, model, optimizer, get_batch, config, result, next_step) -> None:
    opt_arrays, opt_info = optimizer.state_dict()
    state = {"format": STATE_FORMAT, "next_step": next_step, "config": asdict(config),
             "model": _model_recipe(model),
             "param_names": [n for n, p in model.named_parameters() if p.requires_grad],
             "losses": result.losses, "lrs": result.lrs, "evals": result.evals,
             "step_seconds": result.step_seconds,
             "optimizer": opt_info, "backend_rng": _rng_state(),
             "batches": get_batch.state_dict() if hasattr(get_batch, "state_dict") else None}
    write_dir_atomically(directory, {
        "model.safetensors": safetensors_bytes(model.state_dict(), {"format": "pt"}),
        "optimizer.safetensors": safetensors_bytes(opt_arrays) if opt_arrays else b"",
        "trainer_state.json": json_bytes(state)})


def _differences(saved: dict, now: dict) -> list[str]:
    """"key: saved X, now Y" for each entry that differs, nested tables named by dotted keys."""
    found = []
    for key in sorted(set(saved) | set(now), key=str):
        old, new = saved.get(key), now.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            found += [f"{key}.{d}" for d in _differences(old, new)]
        elif old != new:
            found.append(f"{key}: saved {old!r}, now {new!r}")
    return found


def _check_same_run(state: dict, model, get_batch, config, directory: Path) -> int:
    """Refuse to continue anything but the saved run, naming what differs; return the next step."""
    saved = TrainConfig(**{**state["config"], "betas": tuple(state["config"]["betas"])})
    if saved != config:
        changed = [f"{k}: saved {v!r}, now {getattr(config, k)!r}" for k, v in asdict(saved).items()
                   if asdict(config)[k] != v]
        raise ValueError(f"cannot resume from {directory}: the TrainConfig differs ({'; '.join(changed)}); "
                         "resume with the same settings, or start a fresh run without resume_from")
    changed = _differences(state.get("model", {}), _model_recipe(model)) if "model" in state else []
    if changed:
        raise ValueError(f"cannot resume from {directory}: the model is built differently "
                         f"({'; '.join(changed[:3])}); build the model the same way (same GPTConfig "
                         "and LoRA settings) before resuming")
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if names != state["param_names"]:
        raise ValueError(f"cannot resume from {directory}: it trained {len(state['param_names'])} parameters "
                         f"({', '.join(state['param_names'][:2])}, ...), this model trains {len(names)}; "
                         "build the model the same way (same LoRA targets and rank) before resuming")
    if (state["batches"] is None) != (not hasattr(get_batch, "load_state_dict")):
        raise ValueError(f"cannot resume from {directory}: get_batch must be of the same kind as in the "
                         "saved run (with or without state_dict/load_state_dict)")
    next_step = state.get("next_step")
    if isinstance(next_step, bool) or not isinstance(next_step, int) or not 0 < next_step <= config.steps \
            or len(state.get("losses", ())) != next_step:
        raise ValueError(f"{directory / 'trainer_state.json'}: next_step={next_step!r} with "
                         f"{len(state.get('losses', ()))} losses does not describe a run of {config.steps} "
                         "steps; the file is corrupt, start afresh")
    return next_step


def _load_train_state(directory, model, optimizer, get_batch, config, result) -> int:
    """Put the model, optimizer, RNGs and history back as they were; return the next step."""
    directory = Path(directory)
    state = read_json(directory / "trainer_state.json")
    found = state.get("format") if isinstance(state, dict) else f"a JSON {type(state).__name__}"
    if found != STATE_FORMAT:
        raise ValueError(f"{directory / 'trainer_state.json'} is not a resumable training state (format "
                         f"{found!r}); resume_from must be a checkpoint_dir written by train()")
    next_step = _check_same_run(state, model, get_batch, config, directory)
    weights = read_safetensors(directory / "model.safetensors")
    check_weights(weights, directory / "model.safetensors")
    opt_file = directory / "optimizer.safetensors"
    opt_arrays = read_safetensors(opt_file) if opt_file.stat().st_size else {}
    # Everything is read and checked; only now change the model (load_state_dict is all or nothing).
    before = model.state_dict()
    model.load_state_dict(weights)
    try:
        optimizer.load_state_dict(opt_arrays, state["optimizer"])
        if state["batches"] is not None:
            get_batch.load_state_dict(state["batches"])      # may refuse: other tasks or seed
    except Exception:
        model.load_state_dict(before)
        raise
    backend.rng().bit_generator.state = state["backend_rng"]
    result.losses[:], result.lrs[:] = state["losses"], state["lrs"]
    result.evals[:] = [(s, m) for s, m in state["evals"]]
    result.step_seconds[:] = state["step_seconds"]
    return next_step


def _diverged(what: str, step: int, lr: float, config: TrainConfig) -> FloatingPointError:
    kept = f"the weights are those after step {step - 1}" if step else "the weights were not changed"
    return FloatingPointError(
        f"train: {what} at step {step} (learning rate {lr:.3g}); {kept}. Try a smaller learning "
        f"rate, e.g. lr={config.lr / 3:.3g}, or a stronger grad_clip")


def train(model, get_batch, config: TrainConfig | None = None, eval_fn=None,
          progress: bool = True, desc: str = "train", *, checkpoint_dir=None, checkpoint_every: int = 0,
          resume_from=None) -> TrainResult:
    """Train `model` on batches from `get_batch(step) -> (x, y)` and return the history.

    eval_fn(model) -> dict of metrics, called every config.eval_every steps and
    at the end. A NaN or infinite loss or gradient stops training with an error
    that names the step, before that step changes any weight.

    Resuming: with checkpoint_dir, the full training state (weights, AdamW
    moments, step, history, the random generator behind dropout, and the batch
    source's state) is written there atomically every checkpoint_every steps
    and at the end. train(..., resume_from=that_dir) with a model built the same
    way and the same config continues as if never stopped: on the CPU the
    weights after 3 + 3 steps equal those after 6 straight steps, bit for bit.
    For that, get_batch must be a pure function of the step, or an object with
    state_dict() / load_state_dict() (see pretrained.TaskBatches). On a GPU,
    dropout draws from CuPy's generator, which is not saved.
    """
    config = config or TrainConfig()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"train: config must be a TrainConfig, not {type(config).__name__}")
    checkpoint_every = _check_int("train", "checkpoint_every", checkpoint_every, 0)
    if checkpoint_every and checkpoint_dir is None:
        raise ValueError("train: checkpoint_every needs checkpoint_dir (where to write the checkpoints)")
    if checkpoint_dir is not None:
        check_output_dir(checkpoint_dir)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("train: the model has no parameter with requires_grad=True, "
                         "so there is nothing to train")
    # Decay only matrices; biases and LayerNorm gains are left alone (GPT-2 practice).
    groups = [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = AdamW([g for g in groups if g["params"]], lr=config.lr, betas=config.betas)
    result = TrainResult(optimizer=optimizer)
    first = 0
    if resume_from is not None:
        first = _load_train_state(resume_from, model, optimizer, get_batch, config, result)
    model.train()
    bar = tqdm(range(first, config.steps), desc=desc, disable=not progress, leave=False,
               initial=first, total=config.steps)
    start = time.perf_counter()
    for step in bar:
        step_start = time.perf_counter()
        optimizer.lr = learning_rate(step, config)
        x, y = get_batch(step)
        loss = _batch_loss(model, x, y, config.ignore_index)
        value = loss.item()
        if not math.isfinite(value):
            raise _diverged(f"the loss became {value}", step, optimizer.lr, config)
        optimizer.zero_grad()
        loss.backward()
        norm = clip_grad_norm_(trainable, config.grad_clip or math.inf)
        if not math.isfinite(norm):   # a finite loss can still overflow in backward: never step on it
            raise _diverged(f"the gradient norm became {norm} (loss {value:.4g})", step, optimizer.lr, config)
        optimizer.step()
        result.losses.append(value)
        result.lrs.append(optimizer.lr)
        result.steps_run += 1
        result.step_seconds.append(time.perf_counter() - step_start)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{value:.4f}")
        if eval_fn is not None and config.eval_every and (step + 1) % config.eval_every == 0 \
                and step + 1 < config.steps:
            result.evals.append((step + 1, eval_fn(model)))
            model.train()
        if checkpoint_dir is not None and (step + 1 == config.steps or
                                           (checkpoint_every and (step + 1) % checkpoint_every == 0)):
            _save_train_state(checkpoint_dir, model, optimizer, get_batch, config, result, step + 1)
    result.seconds = time.perf_counter() - start
    bar.close()
    if eval_fn is not None:
        result.evals.append((config.steps, eval_fn(model)))
    model.eval()
    return result


def _batch_loss(model, x, y, ignore_index: int):
    """Mean cross-entropy of next-token predictions: logits (B, T, vocab) against targets y (B, T).

    y must have x's shape: a y of another shape but the same size would be
    flattened into the wrong positions and train on nonsense without an error.
    """
    x_shape, y_shape = tuple(np.shape(x.data if hasattr(x, "data") else x)), tuple(np.shape(y))
    if x_shape != y_shape:
        raise ValueError(f"train: the batch has inputs x of shape {x_shape} but targets y of shape "
                         f"{y_shape}; get_batch must return y with x's shape (one target per position)")
    logits = model(x)                                                # (B, T, vocab)
    return F.cross_entropy(logits.reshape(y.size, -1), y.reshape(-1), ignore_index=ignore_index)


def evaluate_loss(model, batches, ignore_index: int = IGNORE_INDEX) -> float:
    """Mean cross-entropy over (x, y) batches, without building a graph."""
    was_training = model.training
    model.eval()
    with no_grad():
        losses = [_batch_loss(model, x, y, ignore_index).item() for x, y in batches]
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
    """Write the model's weights and configuration to `directory` (all or nothing).

    A checkpoint holds a plain GPT. A model with LoRA layers is refused: save
    its adapter with save_adapter, or fold the adapter in with merge_and_unload.
    """
    lora = [name for name, _ in model.named_parameters() if "lora_" in name]
    if lora:
        raise ValueError(f"save_checkpoint: the model has LoRA layers ({lora[0]}, ... {len(lora)} LoRA tensors), "
                         "and a checkpoint holds a plain GPT that load_checkpoint can rebuild. Save the "
                         "adapter alone with save_adapter(model, dir), or fold it into the weights first: "
                         "save_checkpoint(merge_and_unload(model), dir)")
    reserved = sorted({"format", "gpt_config"} & set(metadata or {}))
    if reserved:
        raise ValueError(f"save_checkpoint: metadata may not set {reserved}: config.json keeps those "
                         "for the model itself; put your information under another key")
    info = {**(metadata or {}), "format": "minilora-gpt", "gpt_config": model.config.to_dict()}
    files = {"model.safetensors": safetensors_bytes(model.state_dict(), {"format": "pt"}),
             "config.json": json_bytes(info)}
    return write_dir_atomically(directory, files)


def _gpt_config_from(entry, where: Path) -> GPTConfig:
    """A GPTConfig from config.json's "gpt_config", every field's type checked first."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: 'gpt_config' must be an object of GPTConfig fields, not {entry!r:.60}")
    known = {f.name for f in fields(GPTConfig)}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise ValueError(f"{where}: 'gpt_config' has fields GPTConfig does not know: {unknown}; "
                         f"the fields are {sorted(known)}")
    for name, value in entry.items():
        if name == "bias":
            ok, kind = isinstance(value, bool), "true or false"
        elif name == "dropout":
            ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        else:
            ok, kind = isinstance(value, int) and not isinstance(value, bool), "a whole number"
        if not ok:
            raise ValueError(f"{where}: gpt_config.{name}={value!r} has the wrong type "
                             f"({type(value).__name__}); write it as {kind}")
    try:
        return GPTConfig(**entry)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


def expected_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of GPT(config), computed without building it."""
    C, shapes = config.n_embd, {}
    for name, (kind, a, b) in module_shapes(config).items():
        if name == "lm_head":
            continue                                         # tied to the token embedding
        if kind == "embedding":
            shapes[f"{name}.weight"] = (a, b)
        else:
            shapes[f"{name}.weight"] = (b, a)                # Linear stores (out, in)
            if config.bias:
                shapes[f"{name}.bias"] = (b,)
    norms = [f"transformer.h.{i}.ln_{j}" for i in range(config.n_layer) for j in (1, 2)] + ["transformer.ln_f"]
    for name in norms:
        shapes[f"{name}.weight"] = (C,)
        if config.bias:
            shapes[f"{name}.bias"] = (C,)
    return shapes


def load_checkpoint(directory) -> GPT:
    """Rebuild a GPT from a directory written by save_checkpoint.

    config.json is checked against the weight file's header before the model
    is built, so a config that asks for a huge model fails at once.
    """
    directory = recover(directory)
    info = read_json(directory / "config.json")
    if not isinstance(info, dict) or "gpt_config" not in info:
        raise ValueError(f"{directory / 'config.json'} has no 'gpt_config' entry: it was not "
                         "written by minilora's save_checkpoint (for a Hugging Face GPT-2, use load_gpt2)")
    config = _gpt_config_from(info["gpt_config"], directory / "config.json")
    weights_path = directory / "model.safetensors"
    in_file = {name: shape for name, (shape, _) in safetensors_shapes(weights_path).items()}
    layers = {name.split(".")[2] for name in in_file if name.startswith("transformer.h.")}
    if len(layers) != config.n_layer:        # checked first: cheap even for an absurd n_layer
        raise ValueError(f"{directory}: config.json says n_layer={config.n_layer} but model.safetensors "
                         f"holds {len(layers)} layers; nothing was built. The two files come from "
                         "different saves: save the checkpoint again")
    wanted = expected_shapes(config)
    problems = [f"missing {k}" for k in wanted if k not in in_file][:3]
    problems += [f"unexpected {k}" for k in in_file if k not in wanted][:3]
    problems += [f"{k}: file {in_file[k]} != config {v}" for k, v in wanted.items()
                 if k in in_file and tuple(in_file[k]) != v][:3]
    if problems:
        raise ValueError(f"{directory}: config.json does not describe the weights in model.safetensors "
                         f"({'; '.join(problems)}); nothing was built. The two files come from "
                         "different saves: save the checkpoint again")
    weights = read_safetensors(weights_path)
    check_weights(weights, weights_path)
    model = GPT(config)
    model.load_state_dict(weights)
    model.eval()
    return model



def checkpoint_metadata(directory) -> dict:
    """The config.json of a checkpoint (its GPT config and whatever metadata was saved)."""
    return read_json(Path(directory) / "config.json")


__all__ = ["TrainConfig", "TrainResult", "train", "learning_rate", "evaluate_loss", "logits_fn",
           "save_checkpoint", "load_checkpoint", "checkpoint_metadata"]

"""The shipped tiny GPT: pretrained on the built-in task mixture, loaded in one call.

LoRA adapts a model that already knows something. This module makes that model:
`pretrain()` trains a small GPT on data.PRETRAIN_TASKS from a seed, and the
result is shipped inside the package (minilora/assets/tiny_gpt, a few hundred
kB), so notebooks and `minilora demo` start from it at once:

    model = minilora.pretrained.load_pretrained()

Reproduce it (a few minutes on a 2-core laptop) with `minilora pretrain`,
which writes ./minilora_pretrained (never into the installed package); to
ship a new model, copy that folder over minilora/assets/tiny_gpt by hand.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from minilora import data
from minilora.files import check_output_dir, write_file_atomically
from minilora.model import GPT, GPTConfig
from minilora.tensor import manual_seed
from minilora.train import TrainConfig, checkpoint_metadata, load_checkpoint, logits_fn, save_checkpoint, train

PACKAGE_DIR = Path(__file__).resolve().parent
PRETRAINED_DIR = PACKAGE_DIR / "assets" / "tiny_gpt"
DEFAULT_OUT = "minilora_pretrained"      # `minilora pretrain` writes here, in the working directory
CHECKPOINT_EVERY = 50                    # steps between resumable checkpoints of a long run

# The recipe. Changing any of these changes the shipped model: run `minilora pretrain`.
MODEL_CONFIG = GPTConfig(vocab_size=data.TOKENIZER.vocab_size, block_size=32,
                         n_layer=2, n_head=4, n_embd=64)
PRETRAIN = TrainConfig(steps=2000, lr=3e-3, warmup=100, min_lr_ratio=0.1, weight_decay=0.01)
PRETRAIN_BATCH_SIZE = 64
BATCH_SIZE = 32          # fine-tuning batch size (demo, notebooks)


class TaskBatches:
    """get_batch(step) -> (x, y) for train(): a fresh reproducible mixture batch each step.

    The batches come from one random generator, seeded once. Its state can be
    saved and put back (state_dict / load_state_dict), so a resumed run draws
    exactly the batches the uninterrupted run would have drawn.
    """

    def __init__(self, task_names, batch_size: int, block_size: int, seed: int):
        self.task_names, self.batch_size, self.block_size = list(task_names), batch_size, block_size
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def __call__(self, step: int):
        return data.make_batch(self.task_names, self.batch_size, self.block_size, self.rng)

    def _recipe(self) -> dict:
        return {"tasks": self.task_names, "batch_size": self.batch_size, "block_size": self.block_size,
                "seed": self.seed}

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, **self._recipe()}

    def load_state_dict(self, state: dict) -> None:
        """Continue a saved stream; refused if it was drawn with other tasks, sizes or seed,
        which would silently continue a different run."""
        saved = {k: state.get(k) for k in self._recipe()}
        if saved != self._recipe():
            changed = ", ".join(f"{k}: saved {saved[k]!r}, now {v!r}" for k, v in self._recipe().items()
                                if saved[k] != v)
            raise ValueError(f"cannot resume: the batches were drawn differently ({changed}); resume "
                             "with the same options, or start afresh")
        self.rng.bit_generator.state = state["rng"]


def task_batches(task_names, batch_size: int, block_size: int, seed: int) -> TaskBatches:
    return TaskBatches(task_names, batch_size, block_size, seed)


def task_accuracy(model, task_names, n: int = 200) -> dict[str, float]:
    """Exact-match accuracy on held-out prompts, per task."""
    fn = logits_fn(model)
    return {name: data.exact_match(fn, name, n=n, block_size=model.config.block_size)
            for name in task_names}


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a whole number >= 0 (NumPy's generators take no "
                         "negative seeds); e.g. seed=0")
    return int(seed)


def check_steps(steps) -> int | None:
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1):
        raise ValueError(f"steps={steps!r} must be a whole number >= 1 (or None for the recipe's default)")
    return steps


def check_out_dir(out, own=lambda name: name in ("model.safetensors", "config.json"),
                  example: str = DEFAULT_OUT) -> Path:
    """Where a run may write: not inside the installed package, not a file, writable, and
    holding nothing but an earlier run's outputs (`own(name)` says which names those are)."""
    out = check_output_dir(Path(os.path.abspath(out)))
    real = out.resolve()
    if real == PACKAGE_DIR or PACKAGE_DIR in real.parents:
        raise ValueError(f"refusing to write {out} inside the installed package ({PACKAGE_DIR}): "
                         f"that would replace files the demo and notebooks rely on; choose a folder "
                         f"outside it, e.g. ./{example}")
    if real == Path.cwd().resolve() or real in Path.cwd().resolve().parents:
        raise ValueError(f"refusing to write the run's outputs over {out}, the working directory or a "
                         f"folder holding it; choose a new folder, e.g. ./{example}")
    others = sorted(p.name for p in out.iterdir() if not own(p.name)) if out.is_dir() else []
    if others:
        raise FileExistsError(f"{out} holds files this command did not write ({', '.join(others[:3])}"
                              f"{', ...' if len(others) > 3 else ''}); choose a new or empty folder")
    return out


def partial_dir(out: Path) -> Path:
    """The clearly marked folder where a run works until it is complete: OUT.partial."""
    return out.with_name(out.name + ".partial")


def start_partial(out: Path, resume: bool, command: str) -> Path:
    """Make (or, when resuming, reuse) OUT.partial with a note saying it is incomplete."""
    partial = partial_dir(out)
    if resume:
        if not (partial / "resume").is_dir():
            raise FileNotFoundError(f"nothing to resume: {partial / 'resume'} does not exist (no interrupted "
                                    f"run writing to {out}); run without --resume")
    else:
        if partial.exists():                # never throw away an interrupted run's work unasked
            raise FileExistsError(f"{partial} holds an interrupted run: add --resume (resume=True) to "
                                  "continue it, or delete that folder to start afresh")
        partial.mkdir(parents=True)
    write_file_atomically(partial / "INCOMPLETE.txt",
                          f"An interrupted run of `{command}` left this folder. Its results are not "
                          f"complete. Continue it with `{command} --resume`, or delete this folder.\n")
    return partial


def pretrain(out_path=None, steps: int | None = None, seed: int = 0, progress: bool = True,
             resume: bool = False) -> GPT:
    """Train the tiny GPT on the pretraining mixture and save it to out_path (default ./minilora_pretrained).

    While it runs, resumable checkpoints go to OUT.partial/resume; the model
    lands in out_path only when training is complete, so an interrupted run
    leaves the previous out_path as it was. resume=True continues that run.
    """
    out_path = check_out_dir(Path(out_path) if out_path is not None else Path(DEFAULT_OUT))
    steps, seed = check_steps(steps), check_seed(seed)
    config = TrainConfig(**{**PRETRAIN.__dict__, "steps": steps or PRETRAIN.steps})
    partial = start_partial(out_path, resume, f"minilora pretrain --out {out_path}")
    manual_seed(seed)
    model = GPT(MODEL_CONFIG)
    get_batch = task_batches(data.PRETRAIN_TASKS, PRETRAIN_BATCH_SIZE, MODEL_CONFIG.block_size, seed)
    start = time.perf_counter()
    result = train(model, get_batch, config, progress=progress, desc="pretrain",
                   checkpoint_dir=partial / "resume", checkpoint_every=CHECKPOINT_EVERY,
                   resume_from=partial / "resume" if resume else None)
    seconds = time.perf_counter() - start
    accuracy = task_accuracy(model, data.PRETRAIN_TASKS)
    metadata = {"pretrain": {"tasks": list(data.PRETRAIN_TASKS), "steps": config.steps, "seed": seed,
                             "batch_size": PRETRAIN_BATCH_SIZE, "lr": config.lr, "seconds": round(seconds, 1),
                             "final_loss": round(float(np.mean(result.losses[-50:])), 5),
                             "heldout_exact_match": accuracy}}
    save_checkpoint(model, out_path, metadata)
    shutil.rmtree(partial, ignore_errors=True)
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

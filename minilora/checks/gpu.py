"""Checks for notebook 12_gpu (the same code on a GPU, and where LoRA's saving comes from).

Exercises:
    12.1  reveal_lora_step_ratio     predict a LoRA step's time as a fraction of a full step's
    12.2  check_linear_step_flops    the matrix-product FLOPs of one Linear layer in a training step

`recorded_gpu_figures()` reads the figures of an earlier GPU run, shipped as
minilora/assets/gpu/recorded.json, which the notebook shows on a machine
without a GPU (it never makes numbers up).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from minilora.checks.feedback import ExerciseError, as_integer, call_learner, correct, register_hints, reveal

__all__ = ["recorded_gpu_figures", "reveal_lora_step_ratio", "check_linear_step_flops", "RECORDED_PATH"]

RECORDED_PATH = Path(__file__).resolve().parents[1] / "assets" / "gpu" / "recorded.json"

register_hints(
    "12.1",
    "Write one number, your honest guess of LoRA step time / full step time: my_prediction = 0.5, say.",
    "Which parts of a training step does a frozen weight skip? The forward pass and the gradient that "
    "flows back through it to earlier layers are still needed.")
register_hints(
    "12.2",
    "A Linear layer with weight W (d_out x d_in) on `tokens` rows does one matrix product forward, and "
    "backward one for the input's gradient and one for W's gradient, if W is trained.",
    "Each product is tokens x d_in x d_out multiply-adds, 2 FLOPs each. Forward: one product. Backward: "
    "dX = dY W always (the earlier layers need it), dW = dY^T X only when `trainable` is True.")


def recorded_gpu_figures(path: Path = RECORDED_PATH) -> dict:
    """The recorded GPU figures, checked for the fields the notebook prints."""
    record = json.loads(Path(path).read_text(encoding="utf-8"))
    missing = [k for k in ("device", "software", "provenance", "figures") if k not in record]
    figures = record.get("figures", {})
    missing += [f"figures.{k}" for k in ("lora_over_full_step", "merged_over_base_forward",
                                         "minilora_over_torch_cuda_step") if "value" not in figures.get(k, {})]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: it is not a record of a GPU run")
    return record


# ---------------------------------------------------------------- 12.1

def reveal_lora_step_ratio(my_prediction: Any, ratio: float, source: str) -> None:
    """Compare the learner's guess with the LoRA / full step ratio (measured, or recorded: `source` says)."""
    reveal("12.1", my_prediction, round(float(ratio), 2),
                  f"(That ratio was {source}.) A frozen weight still takes part in the forward pass, and the "
                  "gradient still flows back through it to reach the LoRA matrices in earlier layers. What it "
                  "skips is its own weight gradient (one of the three matrix products a trained Linear layer "
                  "does per step) and AdamW's update of it. So the step costs about two thirds of a full one, "
                  "not the small share that the count of trainable parameters suggests. The next exercise counts it.",
                  what="your predicted ratio", rel_tol=0.1)


# ---------------------------------------------------------------- 12.2

def _linear_step_flops(d_in: int, d_out: int, tokens: int, trainable: bool) -> int:
    products = 3 if trainable else 2               # forward, input gradient, weight gradient if trained
    return products * 2 * tokens * d_in * d_out


def check_linear_step_flops(linear_step_flops: Callable) -> None:
    """linear_step_flops(d_in, d_out, tokens, trainable) -> FLOPs of that layer's matrix products in one step."""
    ex = "12.2"
    if not callable(linear_step_flops):
        raise ExerciseError(ex, f"expected your function linear_step_flops, got {type(linear_step_flops).__name__}.")
    rng = np.random.default_rng(1202)
    cases = [(3, 5, 7, True), (3, 5, 7, False), (64, 256, 1024, True)]
    cases += [(int(rng.integers(1, 300)), int(rng.integers(1, 300)), int(rng.integers(1, 5000)), bool(t))
              for t in (True, False, True, False)]
    for d_in, d_out, tokens, trainable in cases:
        got = call_learner(linear_step_flops, ex, "linear_step_flops", d_in, d_out, tokens, trainable)
        got = as_integer(got, ex, f"linear_step_flops({d_in}, {d_out}, {tokens}, {trainable})")
        want = _linear_step_flops(d_in, d_out, tokens, trainable)
        if got != want:
            one = 2 * tokens * d_in * d_out
            ratio = got / one if one else float("nan")
            raise ExerciseError(
                ex, f"linear_step_flops({d_in}, {d_out}, {tokens}, trainable={trainable}) returned {got:,}; "
                f"that is {ratio:g} times one matrix product (2 x tokens x d_in x d_out = {one:,} FLOPs), "
                f"but a {'trained' if trainable else 'frozen'} layer does {want // one} products per step.")
    correct(ex, "a trained Linear layer does three matrix products per step, a frozen one two: it skips "
                "only its weight gradient, since the input gradient must still pass through it.")

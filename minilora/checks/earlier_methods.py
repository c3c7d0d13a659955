"""Checks for notebook 11_earlier_methods (adapter layers, prompt tuning, and what merged LoRA avoids).

Exercises:
    11.1  check_adapter_forward      a Houlsby bottleneck adapter's forward, written with NumPy
    11.2  check_adapter_params       trainable parameters of adapter layers in a GPT
    11.3  reveal_adapter_latency     predict the adapter model's forward time relative to the base at batch 1
    11.4  check_misstatements        which common statements about LoRA are wrong
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from minilora import methods
from minilora.checks.feedback import (ExerciseError, as_array, as_integer, call_learner, correct, forbidding,
                                      register_hints, reveal, short)

__all__ = ["reveal_adapter_latency", "check_adapter_forward", "check_adapter_params", "check_misstatements",
           "STATEMENTS"]

register_hints(
    "11.3",
    "An adapter layer is two more small matrix products, run after the sublayer it follows.",
    "At batch size 1 the cost of a layer is mostly the fixed cost of running it, not its arithmetic.")
register_hints(
    "11.1",
    "Down-project, GELU, up-project, and do not forget what makes it start as the identity.",
    "z = h W_down^T + b_down (..., m); GELU in GPT-2's tanh form; then z W_up^T + b_up (..., C), and add h "
    "back: the adapter is residual.")
register_hints(
    "11.2",
    "Each adapter is two Linears with biases: C -> m and m -> C.",
    "One adapter: (C m + m) + (m C + C). Count how many adapters each block gets (one per sublayer named in "
    "`where`), then multiply by the number of blocks.")
register_hints(
    "11.4",
    "For each statement ask: is it about W0, about the update, or about the forward pass once merged?",
    "LoRA adds new matrices B, A beside a frozen W0 (no subset of W0 is trained), the update is B A (a product "
    "of the two new factors, not of W), and merged weights cost exactly what W0 costs.")


# ---------------------------------------------------------------- 11.1

def reveal_adapter_latency(prediction: Any, latency_ms: dict) -> bool:
    ratio = latency_ms["adapter_layers"] / latency_ms["base"]
    merged = latency_ms["lora_merged"] / latency_ms["base"]
    return reveal("11.3", prediction, round(ratio, 3),
                  f"Adapter layers: {ratio:.2f}x the base forward; merged LoRA: {merged:.2f}x. The adapters add "
                  "little arithmetic, but they are extra layers that run one after another, and at batch size 1 a layer's fixed cost dominates. (The paper: +20-30% on "
                  "GPT-2 medium at batch 1.) Merged LoRA is the same matrices as the base, so it costs the same.",
                  what="your predicted ratio", rel_tol=0.1)


# ---------------------------------------------------------------- 11.2

def _gelu_tanh(z):
    return 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))


def check_adapter_forward(adapter_forward: Callable) -> None:
    """adapter_forward(h, W_down, b_down, W_up, b_up) -> h + gelu(h W_down^T + b_down) W_up^T + b_up."""
    ex = "11.1"
    rng = np.random.default_rng(1121)
    for shape, m in (((3, 8), 2), ((2, 5, 6), 3), ((4, 10), 1)):
        C = shape[-1]
        h = rng.standard_normal(shape)
        Wd, bd = rng.standard_normal((m, C)), rng.standard_normal(m)
        Wu, bu = rng.standard_normal((C, m)), rng.standard_normal(C)
        with forbidding((methods.BottleneckAdapter, "forward"), (methods.WithAdapter, "forward"),
                        learner=adapter_forward):
            got = call_learner(adapter_forward, ex, "adapter_forward", h.copy(), Wd.copy(), bd.copy(), Wu.copy(),
                               bu.copy())
        got = as_array(got, ex, "your adapter output")
        z = h @ Wd.T + bd
        want = h + _gelu_tanh(z) @ Wu.T + bu
        if got.shape != want.shape:
            raise ExerciseError(ex, f"for h of shape {shape} and bottleneck {m} you returned shape {got.shape}; the "
                                f"adapter keeps h's shape {want.shape}.")
        if np.allclose(got, want - h, atol=1e-9):
            raise ExerciseError(ex, "your output is missing h itself: the adapter is residual, h + up(gelu(down(h))), "
                                "which is why an adapter with up = 0 leaves the model unchanged.")
        if np.allclose(got, h + np.maximum(z, 0) @ Wu.T + bu, atol=1e-9):
            raise ExerciseError(ex, "that is a ReLU in the middle; the model uses GELU (GPT-2's tanh form).")
        if not np.allclose(got, want, rtol=1e-9, atol=1e-9):
            i = int(np.argmax(np.abs(got - want)))
            raise ExerciseError(ex, f"for h of shape {shape}, element {i} (flat) of your output is {got.flat[i]:.6g} "
                                f"but should be {want.flat[i]:.6g}.")
    correct(ex, "h + W_up gelu(W_down h): the GELU in the middle is why an adapter cannot be folded into W0 the way "
            "B A can, so its cost stays in every forward pass.")


# ---------------------------------------------------------------- 11.3

def check_adapter_params(adapter_params: Callable) -> None:
    """adapter_params(n_embd, bottleneck, n_layer, where) -> trainable parameters, on hidden sizes."""
    ex = "11.2"
    rng = np.random.default_rng(1131)
    cases = [(64, 8, 2, ("attn", "mlp")), (768, 64, 12, ("attn", "mlp")), (128, 4, 3, ("mlp",))]
    C, m, L = (int(v) for v in rng.integers(10, 200, size=3))
    cases.append((C, m % 17 + 1, L % 9 + 1, ("attn",)))
    for C, m, L, where in cases:
        with forbidding((methods, "adapter_layer_params"), (methods, "apply_adapter_layers"), learner=adapter_params):
            got = call_learner(adapter_params, ex, "adapter_params", C, m, L, where)
        n = as_integer(got, ex, "your parameter count")
        one = 2 * C * m + m + C
        want = L * len(where) * one
        if n != want:
            extra = ""
            if n == L * len(where) * 2 * C * m:
                extra = " You left out the biases (m for down, C for up)."
            elif n == L * one:
                extra = " Each block gets one adapter per sublayer in `where`."
            raise ExerciseError(ex, f"for n_embd {C}, bottleneck {m}, {L} layers and where={where} you counted {n:,}, "
                                f"but there are {want:,}.{extra}")
    correct(ex, "about 2 C m per adapter: the same order as LoRA's 2 d r. Adapters are not expensive to train or "
            "store; their cost is in the forward pass.")


# ---------------------------------------------------------------- 11.4

STATEMENTS = {
    "a": "LoRA trains a 1% subset of the weights of W.",
    "b": "With LoRA, h = W x + W_A W_B x, where W_A and W_B are parts of W.",
    "c": "A merged LoRA model runs faster than the base model.",
    "d": "A merged LoRA model costs the same forward time as the base model.",
    "e": "Adapter layers cannot be merged into W0, because of the nonlinearity between their two matrices.",
    "f": "Prompt tuning uses up positions of the context window that the input can no longer have.",
}
_WRONG = {"a", "b", "c"}
_WHY = {
    "a": "(a) is wrong: W0 stays frozen, every entry of it; LoRA trains two new matrices B and A beside it.",
    "b": "(b) is wrong: h = W0 x + (alpha / r) B A x, with B and A new factors of the *update*, not parts of W.",
    "c": "(c) is wrong: merged, the model holds W0 + (alpha / r) B A in the same shape as W0, so it costs the same, not less.",
    "d": "(d) is right: same matrices, same shapes, same cost.",
    "e": "(e) is right: W_up gelu(W_down h) is not a linear map, so no single matrix replaces it.",
    "f": "(f) is right: n virtual tokens take n positions of the window (and n more in every attention).",
}


def check_misstatements(wrong_ones: Any) -> None:
    """wrong_ones: the letters of the statements in STATEMENTS that are false (a set, list or string)."""
    ex = "11.4"
    if wrong_ones is None or wrong_ones is Ellipsis:
        raise ExerciseError(ex, "your answer is still empty: give the letters of the wrong statements, e.g. {'a', 'd'}.")
    if isinstance(wrong_ones, str):
        letters = {c for c in wrong_ones.lower() if c.isalpha()}
    else:
        try:
            letters = {str(c).strip().lower() for c in wrong_ones}
        except TypeError:
            raise ExerciseError(ex, f"give the letters as a set such as {{'a', 'd'}}; got {short(wrong_ones)}.") from None
    unknown = letters - set(STATEMENTS)
    if unknown:
        raise ExerciseError(ex, f"{sorted(unknown)} are not statement letters; use letters from {sorted(STATEMENTS)}.")
    missed, extra = _WRONG - letters, letters - _WRONG
    if missed or extra:
        parts = []
        if missed:
            parts.append(f"you missed {len(missed)} wrong statement(s)")
        if extra:
            parts.append(f"you marked {len(extra)} right statement(s) as wrong")
        raise ExerciseError(ex, " and ".join(parts) + f" (you chose {sorted(letters)}).")
    correct(ex, " ".join(_WHY[k] for k in sorted(STATEMENTS)))

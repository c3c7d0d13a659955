"""Checks for notebook 06_lora_layer (h = W0 x + b + (alpha / r) B A x, with B = 0 at step 0).

Exercises:
    6.1  reveal_step_zero    predict how far a fresh LoRA layer moves the output (B = 0: not at all)
    6.2  check_lora_forward  the learner's LoRA forward in NumPy against LoRALinear, on hidden inputs
    6.3  check_lora_merge    the learner's merge W0 + (alpha / r) B A against minilora's merge
    6.4  check_lora_init     the learner's choice of initial A and B: step 0 must be the base model,
                             and training must be able to move (both zero: both gradients vanish)
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

import minilora
from minilora import lora, nn
from minilora.backend import to_numpy
from minilora.checks.feedback import (
    ExerciseError,
    as_array,
    as_number,
    call_learner,
    correct,
    forbidding,
    register_hints,
    returned,
    reveal,
    short,
)
from minilora.tensor import Tensor

__all__ = ["reveal_step_zero", "check_lora_forward", "check_lora_merge", "check_lora_init", "trace_lora_init",
           "reveal_alpha_doubling"]

register_hints(
    "6.1",
    "Look at how B starts.",
    "The update is (alpha / r) B (A x). If one factor of a product is all zeros, so is the product.")
register_hints(
    "6.2",
    "Three pieces: the frozen layer W0 x + b, the low-rank path B (A x), and the scale alpha / r. "
    "Where do you read r?",
    "Weights are stored (out, in), as in PyTorch, so a row-vector input x (..., in) meets W0 transposed; the "
    "same goes for A (r, in) and B (out, r). r is the number of rows of A. Compute A x first (r numbers per "
    "input), then B of that, scale it, and add it to the frozen layer's output.")
register_hints(
    "6.3",
    "Merging folds the low-rank path into one matrix of W0's shape (out, in).",
    "B (out, r) times A (r, in) has W0's shape; scale it by alpha / r (r from A's shape) and add it to W0. "
    "Then x W^T equals W0 x + (alpha / r) B A x for every x.")
register_hints(
    "6.4",
    "Two demands: B A must be exactly zero at the start, and at least one of A, B must get a non-zero gradient.",
    "dL/dB is built from A x and dL/dA from B: if both factors are zero, both gradients are zero, and they stay "
    "zero. Make one factor zero (so B A = 0) and the other random, small, scaled to the layer's width.")


class _OneLayer(nn.Module):
    """A model with one Linear named `proj`, so apply_lora can wrap it as it wraps q_proj."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.proj = nn.Linear(d_in, d_out)

    def forward(self, x):
        return self.proj(x)


def _reference_layer(W0, b, A, B, alpha):
    """minilora's LoRALinear holding exactly these float64 numbers."""
    r, d_in = A.shape
    model = _OneLayer(d_in, W0.shape[0])
    lora.apply_lora(model, lora.LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"],
                                           init_lora_weights=False))
    layer = model.proj
    for param, value in [(layer.base_layer.weight, W0), (layer.base_layer.bias, b),
                         (layer.lora_A["default"].weight, A), (layer.lora_B["default"].weight, B)]:
        param.data = param.xp.asarray(np.array(value, dtype=np.float64))     # float64, where param is
    return model, layer


def _random_case(rng, lead, d_in, d_out, r):
    x = rng.standard_normal((*lead, d_in))
    W0 = rng.standard_normal((d_out, d_in)) / np.sqrt(d_in)
    b = 0.1 * rng.standard_normal(d_out)
    A = rng.standard_normal((r, d_in)) / np.sqrt(d_in)
    B = rng.standard_normal((d_out, r))                   # as after training: B is not zero
    alpha = float(rng.choice([1.0, 4.0, 16.0, 3.0]))
    return x, W0, b, A, B, alpha


# While the learner's code runs, these answer the exercises for them: minilora's own LoRA layer and
# merge, under both of their names (minilora.merge is the same function as minilora.lora.merge).
_FORBIDDEN = ((lora.LoRALinear, "forward"), (lora.LoRALinear, "delta_weight"), (lora, "merge"),
              (lora, "merge_and_unload"), (lora, "apply_lora"), (minilora, "merge"),
              (minilora, "merge_and_unload"), (minilora, "apply_lora"))



# ---------------------------------------------------------------- 6.1 (predict first)

def reveal_step_zero(my_prediction: Any) -> None:
    """Exercise 6.1: the learner predicted max |h_lora - h_base| for a fresh LoRA layer (PEFT's init)."""
    ex = "6.1"
    if my_prediction is None or my_prediction is Ellipsis:
        raise ExerciseError(ex, "my_prediction is still empty: write your guess first, then run this cell.",
                            "Any honest number is fine; the explanation is the point.")
    guess = as_number(my_prediction, ex, "my_prediction")
    rng = np.random.default_rng(4061)
    model = _OneLayer(32, 24)
    x = Tensor(rng.standard_normal((5, 32)).astype(np.float32))
    base = to_numpy(model(x).data)
    lora.apply_lora(model, lora.LoraConfig(r=4, lora_alpha=8, target_modules=["proj"]))
    after = to_numpy(model(x).data)
    truth = float(np.max(np.abs(after - base)))
    A = to_numpy(model.proj.lora_A["default"].weight.data)
    B = to_numpy(model.proj.lora_B["default"].weight.data)
    close = abs(guess - truth) <= 1e-12
    print(f"You predicted {guess:g}; the largest change of any output is {truth:g}. "
          + ("Spot on." if close else "Not quite, and that is what predicting is for."))
    print(f"A is random (|A| max {np.max(np.abs(A)):.3f}) but B is all zeros (|B| max {np.max(np.abs(B)):g}), "
          "so B (A x) = 0 and the layer computes exactly W0 x + b. Training starts from the pretrained model, "
          "not from a random perturbation of it.")


# ---------------------------------------------------------------- 6.2 forward

_CASES = [((4,), 6, 5, 2), ((2, 3), 8, 8, 1), ((7,), 5, 9, 3), ((1,), 12, 4, 4), ((3, 2), 10, 6, 5)]


def check_lora_forward(lora_forward: Callable) -> None:
    """Exercise 6.2: lora_forward(x, W0, b, A, B, alpha) -> h, against LoRALinear on hidden inputs."""
    ex = "6.2"
    rng = np.random.default_rng(4062)
    for lead, d_in, d_out, r in _CASES:
        x, W0, b, A, B, alpha = _random_case(rng, lead, d_in, d_out, r)
        model, _ = _reference_layer(W0, b, A, B, alpha)
        want = to_numpy(model(Tensor(x)).data)
        with forbidding(*_FORBIDDEN, (nn.Linear, "forward"), learner=lora_forward):
            result = call_learner(lora_forward, ex, "lora_forward", x.copy(), W0.copy(), b.copy(), A.copy(),
                                  B.copy(), alpha)
        where = (f"for x of shape {x.shape}, W0 {W0.shape}, A {A.shape}, B {B.shape}, alpha = {alpha:g} "
                 f"(so r = {r})")
        got = as_array(returned(result, ex, "lora_forward"), ex, "lora_forward(...)")
        if got.shape != want.shape:
            raise ExerciseError(ex, f"{where}, your h has shape {got.shape}; it should be {want.shape}: "
                                "the input's leading shape, then out_features.")
        if np.allclose(got, want, rtol=1e-9, atol=1e-12):
            continue
        base = x @ W0.T + b
        delta = (x @ A.T) @ B.T
        diagnosis = None
        if np.allclose(got, base):
            diagnosis = "Your h is the frozen layer alone; add the low-rank path (alpha / r) B (A x)."
        elif np.allclose(got, base + alpha * delta) and r != 1:
            diagnosis = "The update is scaled by alpha; LoRA scales it by alpha / r (r is the number of rows of A)."
        elif np.allclose(got, base + delta) and alpha != r:
            diagnosis = "The update is not scaled; multiply B (A x) by alpha / r."
        elif np.allclose(got, base + (r / alpha) * delta):
            diagnosis = "The scale is upside down: it is alpha / r, not r / alpha."
        elif np.allclose(got, x @ W0.T + (alpha / r) * delta):
            diagnosis = "The frozen layer's bias b is missing."
        raise ExerciseError(ex, f"{where}, your h differs from LoRALinear's by up to "
                            f"{np.max(np.abs(got - want)):.3g}.", diagnosis)
    correct(ex, "h = W0 x + b + (alpha / r) B (A x). Computing A x first costs r (in + out) per input instead "
            "of in x out for forming B A: the low rank pays off in the forward pass too.")


# ---------------------------------------------------------------- 6.3 merge

def check_lora_merge(lora_merge: Callable) -> None:
    """Exercise 6.3: lora_merge(W0, A, B, alpha) -> the merged weight, against minilora's merge."""
    ex = "6.3"
    rng = np.random.default_rng(4063)
    for lead, d_in, d_out, r in _CASES:
        x, W0, b, A, B, alpha = _random_case(rng, lead, d_in, d_out, r)
        model, layer = _reference_layer(W0, b, A, B, alpha)
        lora.merge(model)
        want = np.asarray(to_numpy(layer.base_layer.weight.data), dtype=np.float64)
        with forbidding(*_FORBIDDEN, learner=lora_merge):
            result = call_learner(lora_merge, ex, "lora_merge", W0.copy(), A.copy(), B.copy(), alpha)
        where = f"for W0 of shape {W0.shape}, A {A.shape}, B {B.shape}, alpha = {alpha:g}"
        got = as_array(returned(result, ex, "lora_merge"), ex, "lora_merge(...)")
        if got.shape != W0.shape:
            hint = ("That is the transpose's shape: W0 is stored (out, in), and B (out, r) @ A (r, in) has that shape."
                    if got.shape == W0.shape[::-1] else None)
            raise ExerciseError(ex, f"{where}, your merged weight has shape {got.shape}; it must have W0's shape "
                                f"{W0.shape}, so it can replace W0.", hint)
        if np.allclose(got, want, rtol=1e-9, atol=1e-12):
            continue
        diagnosis = None
        if np.allclose(got, W0 + alpha * (B @ A)) and r != 1:
            diagnosis = "The update is scaled by alpha; LoRA scales it by alpha / r."
        elif np.allclose(got, W0 + B @ A) and alpha != r:
            diagnosis = "The update is not scaled: merge adds (alpha / r) B A, the same update the forward adds."
        elif np.allclose(got, (alpha / r) * (B @ A)):
            diagnosis = "That is the update alone; the merged weight is W0 plus the update."
        raise ExerciseError(ex, f"{where}, your merged weight differs from minilora's by up to "
                            f"{np.max(np.abs(got - want)):.3g}.", diagnosis)
    correct(ex, "W = W0 + (alpha / r) B A. A merged layer is a plain Linear again: no extra cost at inference, "
            "and unmerging subtracts the same matrix.")


# ---------------------------------------------------------------- 6.4 initialisation

def _train_a_little(A0, B0, rng, steps: int = 3, lr: float = 0.1):
    """Fit a random target with SGD on A and B only; return per-step (|h - h_base|, |dL/dA|, |dL/dB|)."""
    d_out, r = B0.shape
    d_in = A0.shape[1]
    x = rng.standard_normal((16, d_in))
    W0 = rng.standard_normal((d_out, d_in)) / np.sqrt(d_in)
    y = rng.standard_normal((16, d_out))
    base = x @ W0.T
    A = Tensor(np.array(A0, dtype=np.float64), requires_grad=True)
    B = Tensor(np.array(B0, dtype=np.float64), requires_grad=True)
    rows = []
    for _ in range(steps):
        h = Tensor(base) + (Tensor(x) @ A.T) @ B.T * 2.0        # scaling alpha / r = 2
        diff = h - Tensor(y)
        loss = (diff * diff).mean()
        moved = float(np.max(np.abs(to_numpy(h.data) - base)))
        loss.backward()
        gA, gB = to_numpy(A.grad), to_numpy(B.grad)
        rows.append((moved, float(np.linalg.norm(gA)), float(np.linalg.norm(gB))))
        A = Tensor(to_numpy(A.data) - lr * gA, requires_grad=True)
        B = Tensor(to_numpy(B.data) - lr * gB, requires_grad=True)
    return rows


def _table(rows) -> str:
    lines = ["  step   max |h - W0 x|   |dL/dA|     |dL/dB|"]
    lines += [f"  {i:>4}   {m:>14.3g}   {ga:>9.3g}   {gb:>9.3g}" for i, (m, ga, gb) in enumerate(rows)]
    return "\n".join(lines)


def trace_lora_init(A: Any, B: Any, steps: int = 3) -> None:
    """Print what a few SGD steps do from this A (r, d_in) and B (d_out, r): output change and both gradients."""
    A_, B_ = np.asarray(A, dtype=np.float64), np.asarray(B, dtype=np.float64)
    if A_.ndim != 2 or B_.ndim != 2 or B_.shape[1] != A_.shape[0]:
        raise ValueError(f"trace_lora_init: A must be (r, d_in) and B (d_out, r); got {A_.shape} and {B_.shape}")
    print(_table(_train_a_little(A_, B_, np.random.default_rng(4065), steps=steps)))


def check_lora_init(init_lora: Callable) -> None:
    """Exercise 6.4: init_lora(r, d_in, d_out, rng) -> (A, B) must leave step 0 unchanged and let training move."""
    ex = "6.4"
    rng = np.random.default_rng(4064)
    for r, d_in, d_out in [(2, 8, 6), (4, 12, 12), (1, 5, 9)]:
        with forbidding(*_FORBIDDEN, (lora.LoRALinear, "update_layer"), learner=init_lora):
            learner_rng = np.random.default_rng(rng.integers(1 << 31))
            result = call_learner(init_lora, ex, "init_lora", r, d_in, d_out, learner_rng)
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise ExerciseError(ex, f"init_lora should return a pair (A, B), but returned {short(result)}.",
                                "End your function with `return A, B`.")
        where = f"for r = {r}, d_in = {d_in}, d_out = {d_out}"
        A = as_array(result[0], ex, f"A {where}")
        B = as_array(result[1], ex, f"B {where}")
        if A.shape != (r, d_in):
            raise ExerciseError(ex, f"{where}, A has shape {A.shape}; it must be (r, d_in) = {(r, d_in)}.")
        if B.shape != (d_out, r):
            raise ExerciseError(ex, f"{where}, B has shape {B.shape}; it must be (d_out, r) = {(d_out, r)}.")
        rows = _train_a_little(A, B, rng)
        moved0 = rows[0][0]                                  # step 0: before any update
        if moved0 > 0:
            raise ExerciseError(ex, f"{where}, your layer changes the output at step 0 by up to {moved0:.3g}, "
                                f"before any training:\n{_table(rows[:1])}\nFine-tuning should start from the "
                                "pretrained model exactly, so B A must be zero at the start.",
                                "Make one of the two factors zero.")
        if all(ga == 0 and gb == 0 for _, ga, gb in rows):
            raise ExerciseError(ex, f"{where}, B A is zero (good) but so is every gradient, at every step:\n"
                                f"{_table(rows)}\ndL/dA is built from B and dL/dB from A x: with both zero, "
                                "neither ever moves. Training is stuck at step 0 forever.",
                                "Keep one factor zero and make the other random.")
    zero_B = not np.any(B)
    print(_table(rows))
    correct(ex, "one factor zero keeps step 0 the base model; the other, random, gives its partner a gradient. "
            + ("With B = 0 (PEFT's choice for Linear layers), dL/dA is 0 at step 0 but dL/dB is not; after one "
               "step B is non-zero and both train." if zero_B else
               "With A = 0 (PEFT's choice for Embedding layers), dL/dB is 0 at step 0 but dL/dA is not; after "
               "one step A is non-zero and both train."))


# ---------------------------------------------------------------- 6.5 (predict first)

register_hints(
    "6.5",
    "Write the output's change after one step as (alpha / r) times (the change of B) times A x, and ask how "
    "the change of B depends on alpha.",
    "B's gradient carries a factor alpha / r (the chain rule through the scaled path). SGD's step is lr times "
    "the gradient, so the change of B carries that factor too, and the output multiplies by alpha / r once "
    "more.")


def _first_step_change(alpha: float, optimizer: str) -> float:
    """max |h_after - h_before| after one optimizer step of a fresh LoRA layer (B = 0), in float64."""
    from minilora.optim import SGD, AdamW

    rng = np.random.default_rng(4065)
    d_in, d_out, r = 16, 12, 4
    W0 = rng.standard_normal((d_out, d_in)) / np.sqrt(d_in)
    A = rng.uniform(-1, 1, (r, d_in)) / np.sqrt(d_in)       # PEFT's default init, B = 0
    model, layer = _reference_layer(W0, np.zeros(d_out), A, np.zeros((d_out, r)), alpha)
    x = Tensor(rng.standard_normal((8, d_in)))
    y = Tensor(rng.standard_normal((8, d_out)))
    trainable = [p for p in model.parameters() if p.requires_grad]          # A and B only
    step = (AdamW(trainable, lr=1e-2, weight_decay=0.0) if optimizer == "adam" else SGD(trainable, lr=1e-2))
    before = to_numpy(model(x).data)
    ((model(x) - y) ** 2).mean().backward()
    step.step()
    return float(np.max(np.abs(to_numpy(model(x).data) - before)))


def reveal_alpha_doubling(my_prediction: Any) -> bool:
    """Exercise 6.5: by what factor does one SGD step move the output more when alpha doubles?"""
    sgd = _first_step_change(16.0, "sgd") / _first_step_change(8.0, "sgd")
    adam = _first_step_change(16.0, "adam") / _first_step_change(8.0, "adam")
    return reveal("6.5", my_prediction, sgd,
                  f"Measured on a fresh layer (B = 0), one step, the same learning rate: doubling alpha moves the "
                  f"output {sgd:.2f}x as far with SGD, and {adam:.2f}x with Adam. With SGD alpha enters twice: "
                  "B's gradient carries alpha / r, and the update is multiplied by alpha / r again. Adam divides "
                  "each gradient by its own running size, so its first step has a fixed size and only the outer "
                  "factor remains. Either way a larger alpha moves the model faster, so it behaves like a "
                  "learning rate without being one: it scales the update, and the optimizer decides how that "
                  "combines with the step.", rel_tol=0.05)

"""Checks and helpers for notebook 04_autograd (backward is the chain rule run over a graph).

Exercises:
    4.1  reveal_chain_rule      predict dL/da on a four-number graph, then see it
    4.2  check_matmul_backward  the learner's backward rule of C = A @ B, on hidden shapes
    4.3  check_softmax_backward the learner's backward rule of softmax along the last axis
    4.4  reveal_which_grads     predict which tensors get a .grad when W0 is frozen

Helpers the notebook calls: `cmp` (exact / approximate / wrong, with the largest
difference) and `draw_graph` (a computation graph drawn with matplotlib).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from minilora import functional
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
    short,
)
from minilora.tensor import Tensor, count_backward_work

__all__ = ["cmp", "draw_graph", "reveal_chain_rule", "check_matmul_backward",
           "check_softmax_backward", "reveal_which_grads", "WHICH_GRADS_NAMES"]

register_hints(
    "4.1",
    "Follow the path from L back to a, one edge at a time, and multiply the local derivatives.",
    "L = d * f, so dL/dd = f. d = e + c, so dd/de = 1. e = a * b, so de/da = b. "
    "The chain rule multiplies them along the path.")
register_hints(
    "4.2",
    "Let the shapes guide you: dA must have A's shape (m, k) and is built from G (m, n) and B (k, n).",
    "Write one entry, C[i, n] = sum_j A[i, j] B[j, n], and differentiate L with respect to A[i, j]: "
    "the chain rule gives sum_n G[i, n] B[j, n]. Recognise that sum as a matrix product (which operand "
    "is transposed?). Do the same for B[j, n], which collects sum_i A[i, j] G[i, n].")
register_hints(
    "4.3",
    "All outputs of one row share one denominator, so moving x[j] moves every y[i] in its row, not only y[j].",
    "Use dy[i]/dx[j] = y[i] (1 if i == j else 0) - y[i] y[j]. Then dx[j] = sum_i G[i] dy[i]/dx[j]: the first "
    "part gives G[j] y[j]; the second gives y[j] times one number per row, sum_i G[i] y[i]. Compute that "
    "number with a sum over the last axis that keeps its dimension, so it broadcasts back over the row.")
register_hints(
    "4.4",
    "A .grad is kept only by a leaf tensor created with requires_grad=True.",
    "Ask of each tensor: is it a leaf (made directly, not by an operation)? Does it require grad? "
    "Intermediate results pass their gradient on and do not keep it.")



# ---------------------------------------------------------------- helpers for the notebook

def cmp(label: str, mine: Any, reference: Any, rtol: float = 1e-6, atol: float = 1e-9) -> None:
    """Compare two gradients and print one line: exact, approximate (within rtol, atol) or wrong.

    A finite-difference gradient is never exact, only
    approximate; minilora's own rule, written the same way as yours, often is
    exact to the last bit. Anything unreadable is "wrong", with the reason.
    """
    def read(value):
        data = getattr(value, "data", value)
        if hasattr(value, "backward") and data is not None:
            value = data                                   # a Tensor: compare its values
        if hasattr(value, "get") and hasattr(value, "shape") and not isinstance(value, np.ndarray):
            value = value.get()                            # a CuPy array
        return np.asarray(value, dtype=np.float64)

    try:
        a, b = read(mine), read(reference)
    except (TypeError, ValueError):
        verdict, detail = "wrong", f"could not read {short(mine)} as an array of numbers"
    else:
        if a.shape != b.shape:
            verdict, detail = "wrong", f"shape {a.shape}, but the reference has shape {b.shape}"
        elif not np.all(np.isfinite(a)):
            verdict, detail = "wrong", "it contains NaN or Inf"
        else:
            diff = float(np.max(np.abs(a - b))) if a.size else 0.0
            if np.array_equal(a, b):
                verdict = "exact"
            elif np.allclose(a, b, rtol=rtol, atol=atol):
                verdict = "approximate"
            else:
                verdict = "wrong"
            detail = f"max difference {diff:.1e}"
    print(f"{label:<14} {verdict:<12} ({detail})")


def _graph_nodes(root: Tensor) -> list[Tensor]:
    """Every tensor the root was computed from (itself included), parents before children."""
    order, seen = [], set()

    def visit(node):
        if id(node) in seen:
            return
        seen.add(id(node))
        for parent in node._parents:
            visit(parent)
        order.append(node)

    visit(root)
    return order


def draw_graph(root: Tensor, names: dict[str, Tensor] | None = None, ax=None):
    """Draw the computation graph that produced `root`, inputs on the left, `root` on the right.

    Each box shows a tensor's name (from `names`, else the operation that made
    it) and its value (or shape). Call it before backward(): backward frees the
    graph (as PyTorch does) unless retain_graph=True. Returns the matplotlib Axes.
    """
    import matplotlib.pyplot as plt

    label_of = {id(t): name for name, t in (names or {}).items()}
    nodes = _graph_nodes(root)
    # Columns: an operation sits one to the right of its furthest input; a leaf sits just left of
    # the first operation that uses it, so each input is drawn next to where it enters.
    col: dict[int, int] = {}
    for node in nodes:                                  # parents come first, so their column is known
        if node._parents:
            col[id(node)] = 1 + max(col.get(id(p), 0) for p in node._parents)
    for node in reversed(nodes):
        for p in node._parents:
            if not p._parents:
                col[id(p)] = min(col.get(id(p), col[id(node)] - 1), col[id(node)] - 1)
    col.setdefault(id(root), 0)
    # Rows: leaves of a column stacked downwards; an operation at the mean height of its inputs.
    where: dict[int, tuple[float, float]] = {}
    for column in sorted(set(col.values())):
        members = [n for n in nodes if col[id(n)] == column]
        ops = [n for n in members if n._parents]
        leaves = [n for n in members if not n._parents]
        for node in ops:
            where[id(node)] = (column, float(np.mean([where[id(p)][1] for p in node._parents])))
        taken = [where[id(n)][1] for n in ops]
        top = min(taken) - 1.0 if taken else (len(leaves) - 1) / 2
        for i, node in enumerate(leaves):
            where[id(node)] = (column, top - i)
    columns = {c: [n for n in nodes if col[id(n)] == c] for c in set(col.values())}
    ys = [y for _, y in where.values()]

    if ax is None:
        _, ax = plt.subplots(figsize=(2.0 * (len(columns) + 0.5), 1.2 + 0.9 * (max(ys) - min(ys))))
    for node in nodes:
        x1, y1 = where[id(node)]
        for parent in node._parents:
            x0, y0 = where[id(parent)]
            ax.annotate("", xy=(x1 - 0.36, y1), xytext=(x0 + 0.36, y0),
                        arrowprops={"arrowstyle": "->", "color": "0.45"})
    for node in nodes:
        x, y = where[id(node)]
        name = label_of.get(id(node), node._op if node._parents else "leaf")   # a constant is a leaf too
        value = to_numpy(node.data)
        text = f"{name}\nvalue {value.item():g}" if value.size == 1 else f"{name}\nshape {value.shape}"
        leaf = not node._parents
        ax.text(x, y, text, ha="center", va="center", fontsize=9, family="monospace",
                bbox={"boxstyle": "round,pad=0.4", "facecolor": "#e8f0fb" if leaf else "#fdf2e3",
                      "edgecolor": "C0" if leaf else "C1"})
        if node._parents:
            ax.text(x, y + 0.42, f"made by {node._op}", ha="center", fontsize=7, color="C1")
    ax.set_xlim(min(columns) - 0.6, max(columns) + 0.6)
    ax.set_ylim(min(ys) - 0.5, max(ys) + 0.6)
    ax.axis("off")
    return ax


# ---------------------------------------------------------------- 4.1 (predict first)

def reveal_chain_rule(my_prediction: Any, a: Any, b: Any, c: Any, f: Any) -> None:
    """Exercise 4.1: the learner predicted dL/da for L = (a * b + c) * f; show the truth and why."""
    ex = "4.1"
    if my_prediction is None or my_prediction is Ellipsis:
        raise ExerciseError(ex, "my_prediction is still empty: write your guess for dL/da first, then run this "
                            "cell.", "Any honest number is fine; the explanation is the point.")
    guess = as_number(my_prediction, ex, "my_prediction")
    values = [as_number(v, ex, name) for name, v in zip("abcf", (a, b, c, f))]
    ta, tb, tc, tf = (Tensor(np.float64(v), requires_grad=True) for v in values)
    L = (ta * tb + tc) * tf
    L.backward()
    truth = float(ta.grad)
    av, bv, cv, fv = values
    close = abs(guess - truth) <= 1e-9 * max(1.0, abs(truth))
    print(f"You predicted dL/da = {guess:g}; backward() says {truth:g}. "
          + ("Spot on." if close else "Not quite, and that is what predicting is for."))
    print(f"Why: L = d * f, d = e + c, e = a * b. Along the path a -> e -> d -> L the local derivatives are "
          f"de/da = b = {bv:g}, dd/de = 1, dL/dd = f = {fv:g}; their product is {bv:g} * 1 * {fv:g} = {truth:g}. "
          f"The value of c ({cv:g}) plays no part: adding a constant does not change a slope.")
    if not close and abs(guess - bv) < 1e-9:
        print("You gave de/da alone; the chain rule multiplies every local derivative on the way to L.")


# ---------------------------------------------------------------- 4.2 matmul backward

def _as_pair(result: Any, ex: str, name: str) -> tuple[Any, Any]:
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise ExerciseError(ex, f"`{name}` should return a pair (dA, dB), but returned {short(result)}.",
                            "End your function with `return dA, dB`.")
    return result[0], result[1]


def check_matmul_backward(matmul_backward: Callable) -> None:
    """Exercise 4.2: matmul_backward(A, B, G) -> (dA, dB) for C = A @ B and G = dL/dC, on hidden shapes."""
    ex = "4.2"
    rng = np.random.default_rng(4042)
    for m, k, n in [(3, 4, 5), (1, 6, 2), (5, 1, 3), (4, 4, 4), (7, 3, 2)]:
        A, B, G = rng.standard_normal((m, k)), rng.standard_normal((k, n)), rng.standard_normal((m, n))
        ta, tb = Tensor(A, requires_grad=True), Tensor(B, requires_grad=True)
        (ta @ tb).backward(G)                            # minilora's rule: the reference
        want_a, want_b = to_numpy(ta.grad).astype(np.float64), to_numpy(tb.grad).astype(np.float64)
        with forbidding((Tensor, "backward"), (Tensor, "__matmul__"), (Tensor, "__rmatmul__"),
                        learner=matmul_backward):
            result = call_learner(matmul_backward, ex, "matmul_backward", A.copy(), B.copy(), G.copy())
        got_a, got_b = _as_pair(result, ex, "matmul_backward")
        where = f"for A of shape {A.shape} and B of shape {B.shape} (so C and G are {G.shape})"
        ga = _as_shape(got_a, ex, "dA", A.shape, B.shape, where)
        gb = _as_shape(got_b, ex, "dB", B.shape, A.shape, where)
        for label, got, want, other in [("dA", ga, want_a, "B"), ("dB", gb, want_b, "A")]:
            if not np.allclose(got, want, rtol=1e-9, atol=1e-12):
                worst = np.unravel_index(np.argmax(np.abs(got - want)), want.shape)
                raise ExerciseError(ex, f"{where}, your {label} is wrong: at {tuple(int(i) for i in worst)} it is "
                                    f"{got[worst]:.6g} but should be {want[worst]:.6g}.",
                                    _matmul_diagnosis(label, got, A, B, G))
    correct(ex, "dA = G B^T and dB = A^T G: each gradient is a matrix product, costing as much as the forward "
            "product. A frozen B or A is a product you skip.")


def _as_shape(value: Any, ex: str, label: str, shape: tuple, swapped: tuple, where: str) -> np.ndarray:
    arr = as_array(value, ex, label)
    if arr.shape != shape:
        if arr.shape == swapped:
            raise ExerciseError(ex, f"{where}, your {label} has shape {arr.shape}, the shape of the other input; "
                                "did you return (dB, dA) instead of (dA, dB)?",
                                "Return the gradient with respect to A first.")
        raise ExerciseError(ex, f"{where}, your {label} has shape {arr.shape}, but it must have shape {shape}: "
                            f"one gradient number for each number of {label[1]}.")
    return arr


def _matmul_diagnosis(label: str, got: np.ndarray, A, B, G) -> str:
    if label == "dA" and got.shape == (G @ B.T).shape and G.shape[1] == B.shape[1]:
        if B.shape[0] == B.shape[1] and np.allclose(got, G @ B):
            return "You multiplied G by B; entry (i, j) of dA pairs row i of G with row j of B, so B is transposed."
    if label == "dB" and A.shape[0] == A.shape[1] and np.allclose(got, A @ G):
        return "You multiplied A by G; entry (j, n) of dB pairs column j of A with column n of G, so A is transposed."
    return None


# ---------------------------------------------------------------- 4.3 softmax backward

def check_softmax_backward(softmax_backward: Callable) -> None:
    """Exercise 4.3: softmax_backward(x, G) -> dx for y = softmax(x) along the last axis, G = dL/dy."""
    ex = "4.3"
    rng = np.random.default_rng(4043)
    for shape in [(5,), (3, 4), (2, 3, 6), (4, 1), (6, 7)]:
        x, G = 2.0 * rng.standard_normal(shape), rng.standard_normal(shape)
        tx = Tensor(x, requires_grad=True)
        functional.softmax(tx, dim=-1).backward(G)      # minilora's rule: the reference
        want = to_numpy(tx.grad).astype(np.float64)
        with forbidding((Tensor, "backward"), (functional, "softmax"), (functional, "log_softmax"),
                        learner=softmax_backward):
            result = call_learner(softmax_backward, ex, "softmax_backward", x.copy(), G.copy())
        got = as_array(returned(result, ex, "softmax_backward"), ex, f"softmax_backward(x, G) for x of shape {shape}")
        if got.shape != shape:
            raise ExerciseError(ex, f"for x of shape {shape}, your dx has shape {got.shape}; it must have x's shape.",
                                "Reduce with keepdims=True, so the per-row number broadcasts back over the row.")
        if not np.allclose(got, want, rtol=1e-9, atol=1e-12):
            raise ExerciseError(ex, f"for x of shape {shape}, your dx differs from the true gradient by up to "
                                f"{np.max(np.abs(got - want)):.3g}.", _softmax_diagnosis(got, x, G))
    correct(ex, "dx = y * (G - sum(G * y)) row by row: softmax's Jacobian is diag(y) - y y^T, and backward "
            "multiplies by it without ever building it.")


def _softmax_diagnosis(got: np.ndarray, x: np.ndarray, G: np.ndarray) -> str | None:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    y = e / e.sum(axis=-1, keepdims=True)
    if np.allclose(got, G * y * (1 - y)):
        return ("That is only the diagonal of softmax's Jacobian (i == j). Each y[i] also depends on every other "
                "x[j] of its row through the shared sum, which adds -y[i] y[j] terms.")
    if np.allclose(got, y * (G - (G * y).sum())):
        return "You summed over the whole array; the softmax, and so the sum, runs over each row (the last axis) alone."
    if x.ndim > 1 and np.allclose(got, y * (G - (G * y).sum(axis=0, keepdims=True))):
        return "You summed over the first axis; softmax normalises along the last axis, so sum over axis=-1."
    if np.allclose(got, G * y) or np.allclose(got, G):
        return "Part of the rule is missing: each dx[j] also collects -y[j] sum_i G[i] y[i] from the whole row."
    return None


# ---------------------------------------------------------------- 4.4 which tensors get a .grad

WHICH_GRADS_NAMES = ("x", "W0", "A", "B", "h")


def _which_grads_experiment() -> tuple[dict[str, Tensor], dict[str, int]]:
    """h = x W0^T + (x A^T) B^T with W0 frozen; run backward and count the work."""
    rng = np.random.default_rng(4044)
    x = Tensor(rng.standard_normal((4, 8)))                        # data: never needs a gradient
    W0 = Tensor(rng.standard_normal((6, 8)), requires_grad=False)  # the frozen pretrained weight
    A = Tensor(rng.standard_normal((2, 8)), requires_grad=True)
    B = Tensor(rng.standard_normal((6, 2)), requires_grad=True)
    h = x @ W0.T + (x @ A.T) @ B.T
    loss = (h * h).mean()
    with count_backward_work() as work:
        loss.backward()
    return {"x": x, "W0": W0, "A": A, "B": B, "h": h}, dict(work)


def reveal_which_grads(my_prediction: Any) -> None:
    """Exercise 4.4: the learner predicted which of x, W0, A, B, h hold a .grad after backward."""
    ex = "4.4"
    if my_prediction is None or my_prediction is Ellipsis:
        raise ExerciseError(ex, "my_prediction is still empty: write the set of names you expect, e.g. {\"x\", \"h\"}, "
                            "then run this cell.")
    if isinstance(my_prediction, str):
        my_prediction = {my_prediction} if my_prediction in WHICH_GRADS_NAMES else None
        if my_prediction is None:
            raise ExerciseError(ex, "my_prediction should be a set of names such as {\"A\", \"x\"}, not one string.",
                                "Write the names in curly braces: {\"name1\", \"name2\"} (or set() for none).")
    if not isinstance(my_prediction, (set, frozenset, list, tuple)):
        raise ExerciseError(ex, f"my_prediction should be a set of names, but you gave {type(my_prediction).__name__} "
                            f"{short(my_prediction)}.", "Write the names in curly braces, e.g. {\"x\", \"h\"}.")
    guess = set()
    for item in my_prediction:
        if not isinstance(item, str) or item not in WHICH_GRADS_NAMES:
            raise ExerciseError(ex, f"{short(item)} is not one of the tensors here: {', '.join(WHICH_GRADS_NAMES)}.",
                                "Use the names as strings, e.g. {\"x\", \"h\"}.")
        guess.add(item)
    tensors, work = _which_grads_experiment()
    truth = {name for name, t in tensors.items() if t.grad is not None}
    why = {"x": "input data, created without requires_grad: nothing to learn, no gradient kept",
           "W0": "frozen (requires_grad=False): backward never computes its gradient at all",
           "A": "a trainable leaf (requires_grad=True): its gradient is kept for the optimizer",
           "B": "a trainable leaf (requires_grad=True): its gradient is kept for the optimizer",
           "h": "an intermediate result: it passes its gradient on to its inputs and then drops it"}
    print(f"You predicted {sorted(guess)}; the tensors holding a .grad are {sorted(truth)}. "
          + ("Spot on." if guess == truth else "Not quite, and that is what predicting is for."))
    for name in WHICH_GRADS_NAMES:
        mark = "has a .grad " if name in truth else "grad is None"
        print(f"  {name:<3} {mark}  {why[name]}")
    print(f"Backward ran {work.get('rules', 0)} rules and computed {work.get('grads', 0)} gradient arrays: "
          "none of them for W0, the largest matrix here. Frozen means free.")

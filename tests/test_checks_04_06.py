"""Exercise checks of notebooks 04-06: right answers pass, wrong ones and library shortcuts get a hint.

For every check: a correct answer (written differently from the notebook's)
passes; plausible wrong answers fail with an ExerciseError that names the
exercise and says what is wrong; an answer that calls the minilora function
being taught is caught; None, NaN, strings and wrong types give an
ExerciseError, never another exception. Predictions (4.1, 4.4, 5.1, 6.1) never
fail for a wrong guess, only for a missing or unreadable one.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

import minilora
from minilora import Tensor, checks, data, pretrained
from minilora import functional as F
from minilora.checks import ExerciseError

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
OURS = ["04_autograd.ipynb", "05_transformer.ipynb", "06_lora_layer.ipynb"]


def rejects(check, *args, exercise: str, match: str = "") -> ExerciseError:
    """The check raises ExerciseError (and nothing else) for `exercise`, its message matching `match`."""
    with pytest.raises(ExerciseError) as info:
        check(*args)
    err = info.value
    assert err.exercise == exercise
    assert str(err).startswith(f"Exercise {exercise}: ")
    assert err.hint, "every failure comes with a hint"
    assert re.search(match, str(err), flags=re.S), str(err)
    return err


def passes(check, *args, capsys, exercise: str) -> str:
    assert check(*args) is None
    out = capsys.readouterr().out
    assert f"Correct! (Exercise {exercise})" in out
    return out


def softmax_np(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.fixture(scope="module")
def model():
    return pretrained.load_pretrained()


# ---------------------------------------------------------------- hints

@pytest.mark.parametrize("ex", ["4.1", "4.2", "4.3", "4.4", "5.1", "5.2", "5.3", "6.1", "6.2", "6.3", "6.4"])
def test_two_levels_of_hint_without_the_solution_line(ex, capsys):
    checks.hint(ex, 1)
    nudge = capsys.readouterr().out
    checks.hint(ex, 2)
    method = capsys.readouterr().out
    assert nudge.startswith(f"Exercise {ex}, nudge: ") and method.startswith(f"Exercise {ex}, method: ")
    assert nudge != method
    for line in ["G @ B.T", "A.T @ G", "(G * y).sum", "q @ k.T", "x @ W0.T", "(alpha / r) *", "B @ A",
                 "np.zeros((d_out", ".argmax()"]:
        assert line not in nudge + method


# ---------------------------------------------------------------- cmp

def test_cmp_says_exact_approximate_or_wrong(capsys):
    a = np.arange(6.0).reshape(2, 3)
    checks.cmp("same", a, a.copy())
    checks.cmp("close", a, a + 1e-9)
    checks.cmp("far", a, a + 1e-3)
    checks.cmp("tensor", Tensor(a), a)
    checks.cmp("shape", a, a.T)
    checks.cmp("text", "abc", a)
    checks.cmp("nan", a * np.nan, a)
    lines = capsys.readouterr().out.splitlines()
    verdicts = [line.split()[1] for line in lines]
    assert verdicts == ["exact", "approximate", "wrong", "exact", "wrong", "wrong", "wrong"]
    assert "max difference 1.0e-03" in lines[2] and "shape (3, 2)" in lines[4]


def test_cmp_agrees_with_finite_differences_of_a_known_gradient(capsys):
    # L = sum(tanh(x)) has dL/dx = 1 - tanh(x)^2: finite differences are approximate, never exact.
    x = np.linspace(-1, 1, 7)
    h = 1e-6
    fd = (np.tanh(x + h) - np.tanh(x - h)) / (2 * h)
    checks.cmp("tanh", 1 - np.tanh(x) ** 2, fd)
    assert capsys.readouterr().out.split()[1] == "approximate"


def test_draw_graph_places_every_node(capsys):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    a, b = Tensor(2.0, requires_grad=True), Tensor(3.0, requires_grad=True)
    L = (a * b + a) * 2.0
    ax = checks.draw_graph(L, names={"a": a, "b": b, "L": L})
    texts = [t.get_text() for t in ax.texts]
    assert any(t.startswith("a\n") for t in texts) and any(t.startswith("L\nvalue 16") for t in texts)
    assert sum("made by" in t for t in texts) == 3                   # mul, add, mul


# ---------------------------------------------------------------- 4.1

def test_reveal_chain_rule(capsys):
    assert checks.reveal_chain_rule(6, 2.0, -3.0, 10.0, -2.0) is None
    assert "Spot on" in capsys.readouterr().out
    checks.reveal_chain_rule(-3, 2.0, -3.0, 10.0, -2.0)            # de/da only: explained, not failed
    out = capsys.readouterr().out
    assert "Not quite" in out and "backward() says 6" in out and "de/da alone" in out
    checks.reveal_chain_rule(Tensor(6.0), Tensor(2.0), -3, 10, -2)
    assert "Spot on" in capsys.readouterr().out
    # the truth is f * b whatever the numbers
    checks.reveal_chain_rule(0, 1.5, 4.0, -7.0, 0.5)
    assert "backward() says 2" in capsys.readouterr().out
    for bad in (None, ..., "six", float("nan"), [6, 6]):
        rejects(checks.reveal_chain_rule, bad, 2.0, -3.0, 10.0, -2.0, exercise="4.1")


# ---------------------------------------------------------------- 4.2

def test_matmul_backward_right(capsys):
    passes(checks.check_matmul_backward, lambda A, B, G: ((B @ G.T).T, np.einsum("ik,in->kn", A, G)),
           capsys=capsys, exercise="4.2")
    passes(checks.check_matmul_backward, lambda A, B, G: (Tensor(G @ B.T), (G.T @ A).T.tolist()),
           capsys=capsys, exercise="4.2")


def test_matmul_backward_wrong():
    rejects(checks.check_matmul_backward, lambda A, B, G: (G @ B, A.T @ G), exercise="4.2",
            match="raised ValueError")                                   # no transpose: shapes clash
    rejects(checks.check_matmul_backward, lambda A, B, G: (A.T @ G, G @ B.T), exercise="4.2",
            match=r"return \(dB, dA\)")
    rejects(checks.check_matmul_backward, lambda A, B, G: (G @ B.T, (G.T @ A)), exercise="4.2",
            match=r"dB has shape \(5, 4\).*must have shape \(4, 5\)")
    rejects(checks.check_matmul_backward, lambda A, B, G: (G @ B.T, A.T @ G * 2), exercise="4.2",
            match="your dB is wrong")
    rejects(checks.check_matmul_backward, lambda A, B, G: (np.ones_like(A), A.T @ G), exercise="4.2",
            match="your dA is wrong")


def test_matmul_backward_calling_the_library_is_caught():
    def via_minilora(A, B, G):
        tA, tB = Tensor(A, requires_grad=True), Tensor(B, requires_grad=True)
        (tA @ tB).backward(G)
        return tA.grad, tB.grad

    def via_the_closure(A, B, G):                       # minilora's rule, run without backward()
        tA, tB = Tensor(A, requires_grad=True), Tensor(B, requires_grad=True)
        C = tA @ tB
        C.grad = G
        C._backward(C)
        return tA.grad, tB.grad

    rejects(checks.check_matmul_backward, via_minilora, exercise="4.2", match="Tensor.(backward|__matmul__)")
    rejects(checks.check_matmul_backward, via_the_closure, exercise="4.2", match="Tensor.__matmul__")
    assert Tensor.backward.__name__ == "backward"                      # the tripwires were removed
    assert (Tensor([[1.0]]) @ Tensor([[2.0]])).item() == 2.0


def test_matmul_backward_bad_input():
    rejects(checks.check_matmul_backward, lambda A, B, G: None, exercise="4.2", match="pair")
    rejects(checks.check_matmul_backward, lambda A, B, G: ("dA", "dB"), exercise="4.2", match="array of numbers")
    rejects(checks.check_matmul_backward, lambda A, B, G: (G @ B.T * np.nan, A.T @ G), exercise="4.2", match="NaN")
    rejects(checks.check_matmul_backward, "matmul_backward", exercise="4.2", match="expected your function")
    rejects(checks.check_matmul_backward, None, exercise="4.2", match="expected your function")
    rejects(checks.check_matmul_backward, lambda A, B: A, exercise="4.2", match="raised TypeError")


# ---------------------------------------------------------------- 4.3

def good_softmax_backward(x, G):
    y = softmax_np(x)
    # the Jacobian, built explicitly row by row: a different route from the reference
    flat_y, flat_g = y.reshape(-1, y.shape[-1]), G.reshape(-1, G.shape[-1])
    rows = [(np.diag(yy) - np.outer(yy, yy)) @ gg for yy, gg in zip(flat_y, flat_g)]
    return np.array(rows).reshape(x.shape)


def test_softmax_backward_right(capsys):
    passes(checks.check_softmax_backward, good_softmax_backward, capsys=capsys, exercise="4.3")


def test_softmax_backward_wrong():
    rejects(checks.check_softmax_backward, lambda x, G: G * softmax_np(x) * (1 - softmax_np(x)),
            exercise="4.3", match="diagonal")
    rejects(checks.check_softmax_backward, lambda x, G: softmax_np(x) * (G - (G * softmax_np(x)).sum()),
            exercise="4.3", match="whole array")
    rejects(checks.check_softmax_backward,
            lambda x, G: softmax_np(x) * (G - (G * softmax_np(x)).sum(axis=0, keepdims=True)),
            exercise="4.3", match="first axis")
    rejects(checks.check_softmax_backward, lambda x, G: softmax_np(x) * (G - (G * softmax_np(x)).sum(axis=-1)),
            exercise="4.3", match="raised ValueError|differs")
    rejects(checks.check_softmax_backward, lambda x, G: G * softmax_np(x), exercise="4.3", match="missing")


def test_softmax_backward_calling_the_library_is_caught():
    def via_backward(x, G):
        t = Tensor(x, requires_grad=True)
        F.softmax(t, dim=-1).backward(G)
        return t.grad

    def via_forward(x, G):
        y = F.softmax(Tensor(x), dim=-1).numpy()
        return y * (G - (G * y).sum(axis=-1, keepdims=True))

    rejects(checks.check_softmax_backward, via_backward, exercise="4.3", match="minilora's own")
    rejects(checks.check_softmax_backward, via_forward, exercise="4.3", match="functional.softmax")


def test_softmax_backward_bad_input():
    rejects(checks.check_softmax_backward, lambda x, G: None, exercise="4.3", match="returned None")
    rejects(checks.check_softmax_backward, lambda x, G: "dx", exercise="4.3", match="array of numbers")
    rejects(checks.check_softmax_backward, lambda x, G: x * np.nan, exercise="4.3", match="NaN")
    rejects(checks.check_softmax_backward, 42, exercise="4.3", match="expected your function")


# ---------------------------------------------------------------- 4.4

def test_reveal_which_grads(capsys):
    checks.reveal_which_grads({"A", "B"})
    out = capsys.readouterr().out
    assert "Spot on" in out and "are ['A', 'B']" in out
    assert re.search(r"W0\s+grad is None", out) and re.search(r"h\s+grad is None", out)
    for wrong in ({"A", "B", "W0"}, ["x", "W0", "A", "B", "h"], set(), "A"):
        checks.reveal_which_grads(wrong)
        out = capsys.readouterr().out
        assert "Not quite" in out and "are ['A', 'B']" in out
    for bad in (None, ..., "banana", {1, 2}, 3, float("nan"), {"A": 1, "q": 2}):
        rejects(checks.reveal_which_grads, bad, exercise="4.4")


# ---------------------------------------------------------------- 5.1

def test_reveal_attention_share(model, capsys):
    C, L = model.config.n_embd, model.config.n_layer
    truth = L * 4 * (C * C + C) / model.num_parameters()         # four C x C Linears with biases per block
    checks.reveal_attention_share(0.3, model)
    out = capsys.readouterr().out
    assert "Close" in out and f"{truth:.1%}" in out
    checks.reveal_attention_share(0.9, model)
    assert "Not quite" in capsys.readouterr().out
    checks.reveal_attention_share(32, model)
    assert "read as a percentage" in capsys.readouterr().out
    for bad in (None, -0.5, 250, "a third", float("nan"), [0.3]):
        rejects(checks.reveal_attention_share, bad, model, exercise="5.1")


# ---------------------------------------------------------------- 5.2

def head(x, Wq, bq, Wk, bk, Wv, bv, *, mask=True, scale=None, axis=-1, transpose=True):
    T = lambda W: W.T if transpose else W  # noqa: E731
    q, k, v = x @ T(Wq) + bq, x @ T(Wk) + bk, x @ T(Wv) + bv
    s = q @ k.T * (1 / math.sqrt(q.shape[1]) if scale is None else scale)
    if mask:
        s = s + np.triu(np.full(s.shape, -np.inf), k=1)
    return softmax_np(s, axis=axis) @ v


def test_attention_head_right(capsys):
    def loop_head(x, Wq, bq, Wk, bk, Wv, bv):             # token by token, a different route
        out = []
        for t in range(len(x)):
            q = Wq @ x[t] + bq
            keys = x[: t + 1] @ Wk.T + bk
            w = softmax_np(keys @ q / np.sqrt(len(q)))
            out.append(w @ (x[: t + 1] @ Wv.T + bv))
        return np.array(out)

    passes(checks.check_attention_head, head, capsys=capsys, exercise="5.2")
    passes(checks.check_attention_head, loop_head, capsys=capsys, exercise="5.2")
    passes(checks.check_attention_head, lambda *a: Tensor(head(*a)), capsys=capsys, exercise="5.2")


def test_attention_head_wrong():
    rejects(checks.check_attention_head, lambda *a: head(*a, mask=False), exercise="5.2", match="later tokens")
    rejects(checks.check_attention_head, lambda *a: head(*a, scale=1.0), exercise="5.2", match="not scaled")
    rejects(checks.check_attention_head, lambda *a: head(*a, scale=1 / 4), exercise="5.2", match="differs|scale")
    rejects(checks.check_attention_head, lambda *a: head(*a, axis=0), exercise="5.2", match="columns")
    rejects(checks.check_attention_head, lambda *a: head(*a, transpose=False), exercise="5.2",
            match="raised ValueError")
    rejects(checks.check_attention_head, lambda x, *w: x, exercise="5.2", match=r"shape \(5, 8\)")


def test_attention_head_calling_the_library_is_caught():
    def via_minilora(x, Wq, bq, Wk, bk, Wv, bv):
        T, D = x.shape[0], Wq.shape[0]

        def proj(W, b):
            return Tensor(x @ W.T + b).reshape(1, 1, T, D)

        return F.scaled_dot_product_attention(proj(Wq, bq), proj(Wk, bk), proj(Wv, bv), is_causal=True).numpy()[0, 0]

    def via_softmax(x, Wq, bq, Wk, bk, Wv, bv):
        q, k, v = x @ Wq.T + bq, x @ Wk.T + bk, x @ Wv.T + bv
        s = q @ k.T / np.sqrt(q.shape[1]) + np.triu(np.full((len(x), len(x)), -np.inf), k=1)
        return F.softmax(Tensor(s), dim=-1).numpy() @ v

    rejects(checks.check_attention_head, via_minilora, exercise="5.2", match="minilora's own")
    rejects(checks.check_attention_head, via_softmax, exercise="5.2", match="functional.softmax")


def test_attention_head_bad_input():
    rejects(checks.check_attention_head, lambda *a: None, exercise="5.2", match="returned None")
    rejects(checks.check_attention_head, lambda *a: "y", exercise="5.2", match="array of numbers")
    rejects(checks.check_attention_head, lambda *a: head(*a) * np.nan, exercise="5.2", match="NaN")
    rejects(checks.check_attention_head, None, exercise="5.2", match="expected your function")


def test_attention_weights_rows_are_causal_distributions(model):
    w = checks.attention_weights(model, "rev:123456=", layer=1)
    T = len("rev:123456=")
    assert w.shape == (model.config.n_head, T, T)
    assert np.allclose(w.sum(axis=-1), 1.0) and np.all(np.triu(w, k=1) == 0)


# ---------------------------------------------------------------- 5.3

def greedy(model, prompt, *, position=-1, stop=True, keep_prompt=False, as_ids=False):
    ids = data.TOKENIZER.encode(prompt)
    new = []
    for _ in range(10):
        logits = model(np.array([ids])).numpy()
        nxt = int(logits[0, position].argmax())
        ids.append(nxt)
        new.append(nxt)
        if stop and nxt == data.TOKENIZER.end_id:
            break
    if as_ids:
        return new
    text = data.TOKENIZER.decode(new)
    return prompt + text if keep_prompt else text


def test_greedy_answer_right(model, capsys):
    passes(checks.check_greedy_answer, greedy, model, capsys=capsys, exercise="5.3")
    passes(checks.check_greedy_answer, lambda m, p: greedy(m, p).rstrip("."), model, capsys=capsys, exercise="5.3")


def test_greedy_answer_wrong(model):
    rejects(checks.check_greedy_answer, lambda m, p: greedy(m, p, keep_prompt=True), model, exercise="5.3",
            match="the prompt and its answer")
    rejects(checks.check_greedy_answer, lambda m, p: greedy(m, p, stop=False), model, exercise="5.3",
            match="should stop")
    rejects(checks.check_greedy_answer, lambda m, p: greedy(m, p, position=0), model, exercise="5.3",
            match="greedy answer is")
    rejects(checks.check_greedy_answer, lambda m, p: greedy(m, p, as_ids=True), model, exercise="5.3",
            match="token ids")


def test_greedy_answer_calling_the_library_is_caught(model):
    from minilora.train import logits_fn

    rejects(checks.check_greedy_answer, lambda m, p: data.complete(logits_fn(m), [p], 8)[0], model,
            exercise="5.3", match="data.complete")
    rejects(checks.check_greedy_answer,
            lambda m, p: data.TOKENIZER.decode(m.generate(np.array([data.TOKENIZER.encode(p)]), 7)[0, len(p):]),
            model, exercise="5.3", match="GPT.generate")


def test_greedy_answer_bad_input(model):
    rejects(checks.check_greedy_answer, lambda m, p: None, model, exercise="5.3", match="NoneType")
    rejects(checks.check_greedy_answer, lambda m, p: float("nan"), model, exercise="5.3", match="float")
    rejects(checks.check_greedy_answer, greedy, "model", exercise="5.3", match="should be the model")
    rejects(checks.check_greedy_answer, "greedy", model, exercise="5.3", match="expected your function")


# ---------------------------------------------------------------- 6.1

def test_reveal_step_zero(capsys):
    checks.reveal_step_zero(0)
    assert "Spot on" in capsys.readouterr().out
    checks.reveal_step_zero(0.3)
    out = capsys.readouterr().out
    assert "Not quite" in out and "B is all zeros" in out
    for bad in (None, "zero", float("nan"), np.zeros(3)):
        rejects(checks.reveal_step_zero, bad, exercise="6.1")


# ---------------------------------------------------------------- 6.2

def fwd(x, W0, b, A, B, alpha, *, scale=None, bias=True):
    s = alpha / A.shape[0] if scale is None else scale(alpha, A.shape[0])
    return x @ W0.T + (b if bias else 0) + s * ((x @ A.T) @ B.T)


def test_lora_forward_right(capsys):
    passes(checks.check_lora_forward, fwd, capsys=capsys, exercise="6.2")
    # the merged route gives the same numbers: also right
    passes(checks.check_lora_forward,
           lambda x, W0, b, A, B, alpha: Tensor(x @ (W0 + alpha / len(A) * B @ A).T + b),
           capsys=capsys, exercise="6.2")


def test_lora_forward_wrong():
    rejects(checks.check_lora_forward, lambda *a: fwd(*a, scale=lambda al, r: al), exercise="6.2",
            match="scaled by alpha; LoRA scales it by alpha / r")
    rejects(checks.check_lora_forward, lambda *a: fwd(*a, scale=lambda al, r: r / al), exercise="6.2",
            match="upside down")
    rejects(checks.check_lora_forward, lambda *a: fwd(*a, scale=lambda al, r: 1.0), exercise="6.2",
            match="not scaled")
    rejects(checks.check_lora_forward, lambda *a: fwd(*a, bias=False), exercise="6.2", match="bias b is missing")
    rejects(checks.check_lora_forward, lambda x, W0, b, A, B, alpha: x @ W0.T + b, exercise="6.2",
            match="frozen layer alone")
    rejects(checks.check_lora_forward, lambda x, W0, b, A, B, alpha: x @ W0 + b, exercise="6.2",
            match="raised ValueError")


def test_lora_forward_calling_the_library_is_caught():
    def via_lora_linear(x, W0, b, A, B, alpha):
        base = minilora.nn.Linear(W0.shape[1], W0.shape[0])
        layer = minilora.LoRALinear(base)
        layer.update_layer("default", A.shape[0], alpha / A.shape[0], 0.0, False)
        layer.active_adapter = "default"
        return layer(Tensor(x)).numpy()

    def via_apply_lora(x, W0, b, A, B, alpha):
        class One(minilora.nn.Module):
            def __init__(self):
                super().__init__()
                self.proj = minilora.nn.Linear(W0.shape[1], W0.shape[0])

        m = minilora.apply_lora(One(), minilora.LoraConfig(r=A.shape[0], target_modules=["proj"]))
        return m.proj(Tensor(x)).numpy()

    def via_merge(x, W0, b, A, B, alpha):
        base = minilora.nn.Linear(W0.shape[1], W0.shape[0])
        return base(Tensor(x)).numpy()

    for cheat in (via_lora_linear, via_apply_lora, via_merge):
        rejects(checks.check_lora_forward, cheat, exercise="6.2", match="minilora's own")


def test_lora_forward_bad_input():
    rejects(checks.check_lora_forward, lambda *a: None, exercise="6.2", match="returned None")
    rejects(checks.check_lora_forward, lambda *a: "h", exercise="6.2", match="array of numbers")
    rejects(checks.check_lora_forward, lambda *a: fwd(*a) * np.nan, exercise="6.2", match="NaN")
    rejects(checks.check_lora_forward, [1, 2], exercise="6.2", match="expected your function")


# ---------------------------------------------------------------- 6.3

def test_lora_merge_right(capsys):
    passes(checks.check_lora_merge, lambda W0, A, B, alpha: W0 + np.einsum("or,ri->oi", B, A) * alpha / A.shape[0],
           capsys=capsys, exercise="6.3")
    passes(checks.check_lora_merge, lambda W0, A, B, alpha: Tensor(W0) + Tensor(B) @ Tensor(A) * (alpha / len(A)),
           capsys=capsys, exercise="6.3")


def test_lora_merge_wrong():
    rejects(checks.check_lora_merge, lambda W0, A, B, alpha: W0 + alpha * (B @ A), exercise="6.3",
            match="scaled by alpha")
    rejects(checks.check_lora_merge, lambda W0, A, B, alpha: W0 + B @ A, exercise="6.3", match="not scaled")
    rejects(checks.check_lora_merge, lambda W0, A, B, alpha: alpha / len(A) * (B @ A), exercise="6.3",
            match="update alone")
    rejects(checks.check_lora_merge, lambda W0, A, B, alpha: (W0 + alpha / len(A) * (B @ A)).T, exercise="6.3",
            match="transpose's shape")
    rejects(checks.check_lora_merge, lambda W0, A, B, alpha: W0 + alpha / len(A) * (A.T @ B.T), exercise="6.3",
            match="raised ValueError|differs")


def test_lora_merge_calling_the_library_is_caught():
    def via_merge(W0, A, B, alpha):
        class One(minilora.nn.Module):
            def __init__(self):
                super().__init__()
                self.proj = minilora.nn.Linear(W0.shape[1], W0.shape[0])

        m = One()
        minilora.merge(m)
        return W0

    def via_delta_weight(W0, A, B, alpha):
        layer = minilora.LoRALinear(minilora.nn.Linear(W0.shape[1], W0.shape[0]))
        layer.update_layer("default", A.shape[0], alpha / A.shape[0], 0.0, False)
        return W0 + layer.delta_weight("default")

    rejects(checks.check_lora_merge, via_merge, exercise="6.3", match=r"minilora's own `(minilora\.)?merge`")
    rejects(checks.check_lora_merge, via_delta_weight, exercise="6.3", match="delta_weight")


def test_lora_merge_bad_input():
    rejects(checks.check_lora_merge, lambda *a: None, exercise="6.3", match="returned None")
    rejects(checks.check_lora_merge, lambda *a: "W", exercise="6.3", match="array of numbers")
    rejects(checks.check_lora_merge, lambda W0, *a: W0 * np.nan, exercise="6.3", match="NaN")


# ---------------------------------------------------------------- 6.4

def test_lora_init_right(capsys):
    out = passes(checks.check_lora_init,
                 lambda r, d_in, d_out, rng: (rng.normal(0, 1 / r, (r, d_in)), np.zeros((d_out, r))),
                 capsys=capsys, exercise="6.4")
    assert "dL/dA is 0 at step 0" in out
    out = passes(checks.check_lora_init,
                 lambda r, d_in, d_out, rng: (np.zeros((r, d_in)), Tensor(rng.normal(size=(d_out, r)))),
                 capsys=capsys, exercise="6.4")
    assert "dL/dB is 0 at step 0" in out


def test_lora_init_both_zero_shows_both_gradients_vanish():
    err = rejects(checks.check_lora_init, lambda r, d_in, d_out, rng: (np.zeros((r, d_in)), np.zeros((d_out, r))),
                  exercise="6.4", match="so is every gradient")
    rows = re.findall(r"^\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)$", str(err), flags=re.M)
    assert len(rows) == 3 and all(float(v) == 0.0 for row in rows for v in row[1:])


def test_trace_lora_init_prints_zero_gradients_for_zero_factors(capsys):
    checks.trace_lora_init(np.zeros((2, 8)), np.zeros((6, 2)))
    rows = re.findall(r"^\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)$", capsys.readouterr().out, flags=re.M)
    assert len(rows) == 3 and all(float(v) == 0.0 for row in rows for v in row[1:])
    checks.trace_lora_init(np.ones((2, 8)), np.zeros((6, 2)))
    rows = re.findall(r"^\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)$", capsys.readouterr().out, flags=re.M)
    assert float(rows[0][1]) == 0.0 and float(rows[0][2]) == 0.0 and float(rows[0][3]) > 0   # B = 0: only dB
    assert float(rows[1][1]) > 0 and float(rows[1][2]) > 0                                # then both move
    with pytest.raises(ValueError, match="must be"):
        checks.trace_lora_init(np.zeros((2, 8)), np.zeros((6, 3)))


def test_lora_init_wrong():
    rejects(checks.check_lora_init,
            lambda r, d_in, d_out, rng: (rng.normal(size=(r, d_in)), rng.normal(size=(d_out, r))),
            exercise="6.4", match="changes the output at step 0")
    rejects(checks.check_lora_init,
            lambda r, d_in, d_out, rng: (rng.normal(size=(r, d_in)), 1e-8 * rng.normal(size=(d_out, r))),
            exercise="6.4", match="changes the output at step 0")
    rejects(checks.check_lora_init, lambda r, d_in, d_out, rng: (np.zeros((d_in, r)), np.zeros((d_out, r))),
            exercise="6.4", match=r"A has shape")
    rejects(checks.check_lora_init, lambda r, d_in, d_out, rng: (np.zeros((r, d_in)), np.zeros((r, d_out))),
            exercise="6.4", match=r"B has shape")


def test_lora_init_calling_the_library_is_caught():
    def via_lora_linear(r, d_in, d_out, rng):
        layer = minilora.LoRALinear(minilora.nn.Linear(d_in, d_out))
        layer.update_layer("default", r, 1.0, 0.0, True)
        return layer.lora_A["default"].weight.numpy(), layer.lora_B["default"].weight.numpy()

    rejects(checks.check_lora_init, via_lora_linear, exercise="6.4", match="update_layer")


def test_lora_init_bad_input():
    rejects(checks.check_lora_init, lambda *a: None, exercise="6.4", match="pair")
    rejects(checks.check_lora_init, lambda *a: ("A", "B"), exercise="6.4", match="array of numbers")
    rejects(checks.check_lora_init, lambda r, d_in, d_out, rng: (np.full((r, d_in), np.nan), np.zeros((d_out, r))),
            exercise="6.4", match="NaN")
    rejects(checks.check_lora_init, 0, exercise="6.4", match="expected your function")


# ---------------------------------------------------------------- the notebooks' student copies

def _labels(text: str) -> list[str]:
    return re.findall(r'NotImplementedError\(\\"(Exercise [\d.]+): write your answer here', text)


def test_our_notebooks_mark_exercises_for_nbgrader():
    for name in OURS:
        book = json.loads((NOTEBOOKS / name).read_text())
        ids = [c["metadata"]["nbgrader"]["grade_id"] for c in book["cells"] if "nbgrader" in c["metadata"]]
        assert len(ids) == len(set(ids)), f"{name}: grade ids repeat"
        for i, cell in enumerate(book["cells"]):
            meta = cell["metadata"].get("nbgrader")
            source = "".join(cell["source"])
            if "### BEGIN SOLUTION" in source:
                assert meta and meta["solution"] and not meta["grade"] and not meta["locked"], (name, i)
                after = book["cells"][i + 1]["metadata"]["nbgrader"]
                assert after["locked"] and not after["solution"], (name, i)
                assert after["grade_id"] == meta["grade_id"] + ("-check" if after["grade"] else "-reveal")
                if after["grade"]:
                    assert after["points"] == 1 and "".join(book["cells"][i + 1]["source"]).startswith("checks.check_")


def test_student_copies_hide_every_solution(tmp_path):
    from minilora.student import make_student_copies

    for name in OURS:
        (student,) = make_student_copies(NOTEBOOKS / name, tmp_path)
        text = student.read_text()
        assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
        prefix = student.name[:2].lstrip("0")
        count = {"4": 4, "5": 3, "6": 5}[prefix]                  # exercises in notebooks 04, 05, 06
        assert _labels(text) == [f"Exercise {prefix}.{k}" for k in range(1, count + 1)]


@pytest.mark.notebooks
@pytest.mark.parametrize("name", OURS)
def test_student_copy_stops_at_its_first_exercise(name, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from minilora.student import make_student_copies

    (student,) = make_student_copies(NOTEBOOKS / name, tmp_path)
    book = nbformat.read(student, as_version=4)
    client = nbclient.NotebookClient(book, timeout=120, kernel_name="python3",
                                      resources={"metadata": {"path": str(tmp_path)}})
    with pytest.raises(nbclient.exceptions.CellExecutionError) as info:
        client.execute()
    assert info.value.ename == "NotImplementedError"
    assert f"Exercise {name[:2].lstrip('0')}.1: write your answer here" in info.value.evalue
    first = next(i for i, c in enumerate(book.cells) if c.cell_type == "code" and "NotImplementedError" in c.source)
    ran = [i for i, c in enumerate(book.cells) if c.cell_type == "code" and c.get("execution_count")]
    assert max(ran) == first


def test_reveal_alpha_doubling_measures_sgd_squared_and_adam_linear(capsys):
    """One SGD step from B = 0 moves the output (2)^2 = 4x as far when alpha doubles: alpha / r enters
    through B's gradient and again through the scaled path. Adam's first step has a fixed size: 2x."""
    from minilora.checks.lora_layer import _first_step_change

    assert math.isclose(_first_step_change(16.0, "sgd") / _first_step_change(8.0, "sgd"), 4.0, rel_tol=1e-9)
    assert math.isclose(_first_step_change(16.0, "adam") / _first_step_change(8.0, "adam"), 2.0, rel_tol=1e-5)
    assert checks.reveal_alpha_doubling(4) is True
    assert checks.reveal_alpha_doubling(2) is False          # a wrong guess is explained, never failed
    assert "4.00x as far with SGD" in capsys.readouterr().out
    for bad in (None, ..., "4", float("nan")):
        with pytest.raises(ExerciseError):
            checks.reveal_alpha_doubling(bad)

"""The exercise checks of notebooks 09-11: right answers pass; wrong ones, and library calls, fail with a hint."""
import math

import numpy as np
import pytest

from minilora import analysis, checks, linalg, lora_count, methods
from minilora.checks.feedback import ExerciseError


def fails(check, answer, *, match=None):
    """The check rejects `answer` with an ExerciseError carrying a hint (and the text `match`, if given)."""
    with pytest.raises(ExerciseError) as info:
        check(answer)
    assert info.value.hint, f"no hint for {answer!r}"
    if match:
        assert match in str(info.value), str(info.value)
    return str(info.value)


# ---------------------------------------------------------------- 9.2 energy_rank

def energy_rank_right(M, fraction):
    s2 = np.linalg.svd(M, compute_uv=False) ** 2
    return int(np.argmax(np.cumsum(s2) / s2.sum() >= fraction - 1e-12) + 1)


def test_energy_rank():
    checks.check_energy_rank(energy_rank_right)

    def by_sigma(M, fraction):                       # forgets to square
        s = np.linalg.svd(M, compute_uv=False)
        return int(np.argmax(np.cumsum(s) / s.sum() >= fraction) + 1)

    def index_not_count(M, fraction):                # off by one
        return energy_rank_right(M, fraction) - 1

    def library(M, fraction):
        return next(r for r in range(1, min(M.shape) + 1) if analysis.energy_kept(M, r) >= fraction)

    fails(checks.check_energy_rank, by_sigma, match="sigma squared")
    fails(checks.check_energy_rank, index_not_count, match="One short")
    fails(checks.check_energy_rank, library, match="minilora's own")
    fails(checks.check_energy_rank, "3")             # not a function: a sentence, not a traceback


# ---------------------------------------------------------------- 9.3 subspace_gradient

def test_subspace_gradient():
    checks.check_subspace_gradient(lambda P, g: P.T @ g)
    fails(checks.check_subspace_gradient, lambda P, g: g[:P.shape[1]])            # truncates theta's gradient
    fails(checks.check_subspace_gradient, lambda P, g: P @ (P.T @ g), match="one entry per coordinate")
    fails(checks.check_subspace_gradient, lambda P, g: None)


# ---------------------------------------------------------------- 9.4 d_int90

def test_d_int90():
    def right(dims, accs, full):
        for d, a in zip(dims, accs):
            if a >= 0.9 * full - 1e-12:
                return d
        return None

    checks.check_d_int90(right)

    def strict(dims, accs, full):                    # > instead of >=
        return next((d for d, a in zip(dims, accs) if a > 0.9 * full), None)

    def of_best(dims, accs, full):                   # 90% of the best on the curve
        return next((d for d, a in zip(dims, accs) if a >= 0.9 * max(accs)), None)

    def returns_accuracy(dims, accs, full):
        return next((a for a in accs if a >= 0.9 * full - 1e-12), None)

    fails(checks.check_d_int90, strict)
    fails(checks.check_d_int90, of_best)
    fails(checks.check_d_int90, returns_accuracy, match="an accuracy")
    fails(checks.check_d_int90, lambda dims, accs, full: analysis.d_int90(dims, accs, full), match="minilora's own")


# ---------------------------------------------------------------- 10.2 equal_budget_rank

def test_equal_budget_rank():
    def right(budget, k, d_in, d_out, n_layer):
        per = n_layer * k * (d_in + d_out)
        return budget // per if budget % per == 0 else None

    checks.check_equal_budget_rank(right)

    def one_factor(budget, k, d_in, d_out, n_layer):        # counts only A
        per = n_layer * k * d_in
        return budget // per if budget % per == 0 else None

    def rounds(budget, k, d_in, d_out, n_layer):            # never says None
        return round(budget / (n_layer * k * (d_in + d_out)))

    def library(budget, k, d_in, d_out, n_layer):
        from minilora.model import GPTConfig
        from minilora.lora import LoraConfig
        cfg = GPTConfig(vocab_size=10, block_size=4, n_layer=n_layer, n_head=1, n_embd=d_in)
        for r in range(1, 200):
            if lora_count.count_lora_params(cfg, LoraConfig(r=r, target_modules=["q_proj"][:k])) == budget:
                return r
        return None

    fails(checks.check_equal_budget_rank, one_factor)
    fails(checks.check_equal_budget_rank, rounds, match="None")
    fails(checks.check_equal_budget_rank, library, match="minilora's own")


# ---------------------------------------------------------------- 10.3 phi

def phi_right(A1, A2, i, j):
    U1 = np.linalg.svd(A1, full_matrices=False)[2][:i].T
    U2 = np.linalg.svd(A2, full_matrices=False)[2][:j].T
    return float(np.linalg.norm(U1.T @ U2) ** 2 / min(i, j))


def test_phi():
    checks.check_phi(phi_right)

    def by_max(A1, A2, i, j):
        return phi_right(A1, A2, i, j) * min(i, j) / max(i, j)

    def not_squared(A1, A2, i, j):
        U1 = np.linalg.svd(A1, full_matrices=False)[2][:i].T
        U2 = np.linalg.svd(A2, full_matrices=False)[2][:j].T
        return float(np.linalg.norm(U1.T @ U2) / min(i, j))

    def left_vectors(A1, A2, i, j):                  # U of A (r-dimensional): the wrong space
        U1 = np.linalg.svd(A1, full_matrices=False)[0][:, :i]
        U2 = np.linalg.svd(A2, full_matrices=False)[0][:, :j]
        return float(np.linalg.norm(U1.T @ U2[:U1.shape[0]]) ** 2 / min(i, j))

    fails(checks.check_phi, by_max, match="min(i, j)")
    fails(checks.check_phi, not_squared)
    fails(checks.check_phi, left_vectors)
    fails(checks.check_phi, lambda A1, A2, i, j: linalg.subspace_similarity(A1, A2, i, j), match="minilora's own")


# ---------------------------------------------------------------- 10.4 amplification

def test_amplification():
    def right(W0, dW, r):
        U, s, Vt = np.linalg.svd(dW, full_matrices=False)
        return float(np.linalg.norm(dW) / np.linalg.norm(U[:, :r].T @ W0 @ Vt[:r].T))

    checks.check_amplification(right)

    def from_w0(W0, dW, r):
        U, s, Vt = np.linalg.svd(W0, full_matrices=False)
        return float(np.linalg.norm(dW) / np.linalg.norm(U[:, :r].T @ W0 @ Vt[:r].T))

    fails(checks.check_amplification, from_w0, match="W0's SVD")
    fails(checks.check_amplification, lambda W0, dW, r: 1 / right(W0, dW, r), match="Upside down")
    fails(checks.check_amplification, lambda W0, dW, r: analysis.amplification_factor(W0, dW, r).factor,
          match="minilora's own")


# ---------------------------------------------------------------- 11.1 adapter_forward, 11.2 adapter_params

def gelu_tanh(z):
    return 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))


def test_adapter_forward():
    checks.check_adapter_forward(lambda h, Wd, bd, Wu, bu: h + gelu_tanh(h @ Wd.T + bd) @ Wu.T + bu)
    fails(checks.check_adapter_forward, lambda h, Wd, bd, Wu, bu: gelu_tanh(h @ Wd.T + bd) @ Wu.T + bu,
          match="residual")
    fails(checks.check_adapter_forward, lambda h, Wd, bd, Wu, bu: h + np.maximum(h @ Wd.T + bd, 0) @ Wu.T + bu,
          match="ReLU")
    fails(checks.check_adapter_forward, lambda h, Wd, bd, Wu, bu: h + gelu_tanh(h @ Wd.T) @ Wu.T)   # no biases

    def library(h, Wd, bd, Wu, bu):
        ad = methods.BottleneckAdapter(h.shape[-1], Wd.shape[0])
        ad.down.weight.data, ad.down.bias.data, ad.up.weight.data, ad.up.bias.data = Wd, bd, Wu, bu
        from minilora.tensor import Tensor
        return ad(Tensor(h)).numpy()

    fails(checks.check_adapter_forward, library, match="minilora's own")


def test_adapter_params():
    checks.check_adapter_params(lambda C, m, L, where: L * len(where) * (2 * C * m + m + C))
    fails(checks.check_adapter_params, lambda C, m, L, where: L * len(where) * 2 * C * m, match="biases")
    fails(checks.check_adapter_params, lambda C, m, L, where: L * (2 * C * m + m + C), match="per sublayer")
    fails(checks.check_adapter_params,
          lambda C, m, L, where: L * len(where) * methods.adapter_layer_params(C, m), match="minilora's own")


# ---------------------------------------------------------------- 11.4 misstatements

def test_misstatements():
    checks.check_misstatements({"a", "b", "c"})
    checks.check_misstatements("a, b, c")
    fails(checks.check_misstatements, {"a", "b"}, match="missed 1")
    fails(checks.check_misstatements, {"a", "b", "c", "d"}, match="right statement")
    with pytest.raises(ExerciseError, match="not statement letters"):
        checks.check_misstatements({"z"})
    with pytest.raises(ExerciseError, match="empty"):
        checks.check_misstatements(None)


# ---------------------------------------------------------------- reveals: explain either way, refuse only garbage

FAKE = {
    "intrinsic_rank": {"delta_w_stable_rank": 2.5, "w0_stable_rank": 8.0},
    "rank_sweep": {"smallest_r_90": 2, "ranks": [1, 2, 4], "accuracy": [0.5, 0.95, 0.97], "spread": [0.1, 0, 0],
                   "seeds": 3, "full_finetune_accuracy": 1.0},
    "intrinsic_dimension": {"d_int90": [32, 48], "num_params": [244, 3844]},
}


@pytest.mark.parametrize("reveal, right, wrong", [
    (lambda p: checks.reveal_delta_w_stable_rank(p, FAKE), 2.5, 30),
    (lambda p: checks.reveal_smallest_rank(p, FAKE), 2, 64),
    (lambda p: checks.reveal_d_int90_growth(p, FAKE), 1.5, 16),
    (lambda p: checks.reveal_rslora_ratio(p, {"ranks": [1, 64], "grad_norm_alpha_over_r": [1.0, 0.125]}), 0.125, 1.0),
    (lambda p: checks.reveal_adapter_latency(p, {"base": 1.0, "adapter_layers": 1.3, "lora_merged": 1.0}), 1.3, 1.0),
])
def test_reveals(reveal, right, wrong, capsys):
    assert reveal(right) is True
    assert reveal(wrong) is False                 # a wrong guess is explained, never an error
    assert "predicted" in capsys.readouterr().out
    for garbage in (None, "lots", float("nan")):
        with pytest.raises(ExerciseError):
            reveal(garbage)


def test_hints_exist_at_two_levels(capsys):
    for ex in ("9.1", "9.2", "9.3", "9.4", "9.5", "10.1", "10.2", "10.3", "10.4", "10.5",
               "11.1", "11.2", "11.3", "11.4"):
        checks.hint(ex, 1)
        checks.hint(ex, 2)
        out = capsys.readouterr().out
        assert "nudge" in out and "method" in out, ex

"""Checks for the exercises of notebooks 01-03 (rank, SVD, parameter counts).

Every function the learner writes is run on hidden random inputs (fresh shapes
and values, seeded), and the minilora function that would answer the exercise
is replaced by a tripwire while it runs. Predictions are revealed, never failed.

    01_rank             1.1 check_factor_rank_one, 1.2 check_matrix_of_rank,
                        1.3 reveal_lora_update_rank (predict first)
    02_svd              2.1 check_truncate, 2.2 check_eckart_young,
                        2.3 check_rank_for_energy, 2.4 reveal_sum_rank (predict first)
    03_parameter_count  3.1 check_lora_param_formula, 3.2 check_paper_formula,
                        3.3 reveal_adam_ratio (predict first)
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from minilora import linalg, lora_count
from minilora.checks.feedback import ExerciseError
from minilora.checks.feedback import as_array as _array
from minilora.checks.feedback import as_integer as _integer
from minilora.checks.feedback import as_number as _number
from minilora.checks.feedback import call_learner as _call
from minilora.checks.feedback import correct as _correct
from minilora.checks.feedback import forbidding, register_hints, reveal
from minilora.linalg import numerical_rank

__all__ = [
    "check_factor_rank_one",
    "check_matrix_of_rank",
    "reveal_lora_update_rank",
    "check_truncate",
    "check_eckart_young",
    "check_rank_for_energy",
    "reveal_sum_rank",
    "check_lora_param_formula",
    "check_paper_formula",
    "reveal_adam_ratio",
]

# Everything in linalg that answers an exercise of 01-03: off limits while the learner's code runs.
_LINALG_ANSWERS = ("low_rank_approx", "thin_svd", "factorization_storage", "optimizer_state_bytes",
                   "numerical_rank", "stable_rank")
_COUNT_ANSWERS = ("count_lora_params", "lora_params_by_module")


def _run(fn: Callable, ex: str, name: str, *args: Any) -> Any:
    """Call the learner's function with minilora.linalg's answers replaced by tripwires."""
    targets = [(linalg, f) for f in _LINALG_ANSWERS] + [(lora_count, f) for f in _COUNT_ANSWERS]
    with forbidding(*targets, learner=fn if callable(fn) else None):
        return _call(fn, ex, name, *args)


register_hints("1.1", "Every row of a rank-1 matrix is a multiple of one row. Which row could you take, "
               "and how do you find each row's multiple?",
               "Pick a row of M that is not all zeros as v. Entry (i, j) of np.outer(u, v) is u[i] * v[j], so "
               "u[i] = M[i, j] / v[j] for any column j where v[j] is not zero.")
register_hints("1.2", "A sum of k outer products has rank at most k. How do you make it exactly k?",
               "Multiply a random m x k matrix by a random k x n matrix (np.random.default_rng().standard_normal): "
               "random factors are independent, so the product's rank is exactly k.")
register_hints("1.3", "Write one whole number, your honest guess: my_prediction = 5, say.",
               "Every column of B @ A is B times a column of A: a combination of B's columns. How many columns "
               "does B have?")
register_hints("2.4", "Write one whole number, your honest guess: my_prediction = 50, say.",
               "Adding a matrix can only remove a direction of W0 if it cancels it exactly. How likely is that "
               "for random matrices?")
register_hints("3.3", "Write one number, your honest guess of the factor: my_prediction = 100, say.",
               "AdamW keeps the same 2 numbers per trainable parameter, so the ratio of its state is the ratio "
               "of the trainable parameter counts.")
register_hints("2.1", "np.linalg.svd(M, full_matrices=False) gives U, s, Vt. Which pieces does the best "
               "rank-r matrix keep?",
               "Keep the first r columns of U, the first r singular values and the first r rows of Vt, and "
               "multiply them back together (scale U's columns by s, then matrix-multiply by Vt's rows).")
register_hints("2.2", "The error is made only of the singular values you drop. Which ones are those for rank r?",
               "Spectral error: the largest dropped value, s[r] (0 when nothing is dropped). Frobenius error: "
               "the square root of the sum of squares of all dropped values, s[r:].")
register_hints("2.3", "Energy kept by rank r is the sum of the first r squared singular values over the sum "
               "of all of them. Which r is the first to reach the target?",
               "Compute the squared singular values, their cumulative sum (np.cumsum) divided by the total, and "
               "return the position of the first entry >= energy, plus one (position k is rank k + 1).")
register_hints("3.1", "A is r x d_in and B is d_out x r. How many numbers do they hold together?",
               "Add the sizes of the two factors; do not assume d_in equals d_out.")
register_hints("3.2", "The paper adapts n_matrices square d_model x d_model matrices in every layer. "
               "What does one of them cost at rank r?",
               "One adapted d x d matrix costs r (d + d) = 2 d r numbers; multiply by the matrices per layer and "
               "by the number of layers.")


# ---------------------------------------------------------------- 01_rank

def check_factor_rank_one(factor_rank_one: Callable) -> None:
    """1.1: factor_rank_one(M) -> (u, v) with np.outer(u, v) == M, for hidden rank-1 matrices."""
    ex = "1.1"
    rng = np.random.default_rng(101)
    for trial in range(5):
        m, n = (int(x) for x in rng.integers(2, 9, size=2))
        a, b = rng.standard_normal(m), rng.standard_normal(n)
        if trial == 1:
            a[0] = 0.0                                 # a zero first row: the first row is no use as v
        if trial == 2:
            b[0] = 0.0                                 # a zero first column
        M = np.outer(a, b)                             # [m, n], rank 1
        got = _run(factor_rank_one, ex, "factor_rank_one", M.copy())
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise ExerciseError(ex, f"factor_rank_one(M) should return two vectors (u, v), but returned "
                                f"{type(got).__name__}.", "End your function with `return u, v`.")
        u = _array(got[0], ex, f"u for M of shape {M.shape}", ((m,), (m, 1))).reshape(m)
        v = _array(got[1], ex, f"v for M of shape {M.shape}", ((n,), (1, n))).reshape(n)
        rebuilt = np.outer(u, v)
        if not np.allclose(rebuilt, M, rtol=1e-9, atol=1e-9 * np.abs(M).max()):
            i, j = np.unravel_index(np.argmax(np.abs(rebuilt - M)), M.shape)
            extra = ""
            if trial in (1, 2):
                extra = (" This matrix has a zero first " + ("row" if trial == 1 else "column") +
                         ": dividing by it, or taking it as v, loses the information.")
            raise ExerciseError(ex, f"for a hidden {m} x {n} rank-1 matrix, np.outer(u, v) differs from M: "
                                f"at row {i}, column {j} it is {rebuilt[i, j]:.4g}, M has {M[i, j]:.4g}.{extra}")
    _correct(ex, "m x n numbers stored as m + n: a column times a row. The pair is not unique: "
             "(2u, v/2) gives the same matrix.")


def check_matrix_of_rank(matrix_of_rank: Callable) -> None:
    """1.2: matrix_of_rank(m, n, k) -> an m x n matrix of rank exactly k, for hidden (m, n, k)."""
    ex = "1.2"
    rng = np.random.default_rng(102)
    cases = [(4, 5, 2)] + [(int(m), int(n), int(rng.integers(1, min(m, n) + 1)))
                           for m, n in rng.integers(3, 12, size=(4, 2))]
    for m, n, k in cases:
        got = _run(matrix_of_rank, ex, "matrix_of_rank", m, n, k)
        M = _array(got, ex, f"matrix_of_rank({m}, {n}, {k})", ((m, n),))
        rank = numerical_rank(M)
        if rank != k:
            detail = " (it is all zeros)" if rank == 0 else ""
            raise ExerciseError(ex, f"matrix_of_rank({m}, {n}, {k}) has rank {rank}{detail}, not {k}: "
                                + ("its columns span too few directions." if rank < k else
                                   "its columns span too many directions."))
    _correct(ex, "an m x k matrix times a k x n one has rank at most k, and exactly k when the factors are "
             "random: that is LoRA's B @ A, with k = r.")


def reveal_lora_update_rank(my_prediction: Any) -> None:
    """1.3 (predict first): the rank of B @ A with B 768 x 4 and A 4 x 768, measured on random factors."""
    rng = np.random.default_rng(103)
    B, A = rng.standard_normal((768, 4)), rng.standard_normal((4, 768))
    rank = numerical_rank(B @ A)                         # [768, 4] @ [4, 768] -> [768, 768]
    explain = ("B @ A is 768 x 768, but every one of its columns is a combination of B's 4 columns, so it "
               "spans at most 4 directions: rank(B A) <= min(rank B, rank A) <= r. However wide the layer, "
               "a rank-r LoRA update moves the weights in at most r directions.")
    reveal("1.3", my_prediction, rank, explain, what="my_prediction", integer=True)


# ---------------------------------------------------------------- 02_svd

def check_truncate(truncate: Callable[[np.ndarray, int], np.ndarray]) -> None:
    """2.1: truncate(M, r) returns the best rank-r approximation of M, on hidden random matrices."""
    ex = "2.1"
    rng = np.random.default_rng(201)
    for _ in range(5):
        m, n = (int(x) for x in rng.integers(3, 15, size=2))
        r = int(rng.integers(1, min(m, n) + 1))
        M = rng.standard_normal((m, n))
        got = _run(truncate, ex, "truncate", M.copy(), r)
        got = _array(got, ex, f"truncate(M, {r}) for M of shape {M.shape}", ((m, n),))
        U, s, Vt = np.linalg.svd(M, full_matrices=False)
        want = (U[:, :r] * s[:r]) @ Vt[:r]
        if not np.allclose(got, want, atol=1e-8):
            rank = numerical_rank(got)
            best = float(np.sqrt(np.sum(s[r:] ** 2)))
            detail = (f"its rank is {rank}, not {r}" if rank != r else
                      f"its error ||M - M_r||_F is {np.linalg.norm(M - got):.4f}; the best possible is {best:.4f}")
            raise ExerciseError(ex, f"for a hidden M of shape {M.shape} and r = {r}, your truncate(M, r) is not "
                                f"the best rank-{r} approximation: {detail}.")
    _correct(ex, "keeping the top r singular triplets gives the closest rank-r matrix (Eckart-Young).")


def check_eckart_young(eckart_young: Callable) -> None:
    """2.2: eckart_young(s, r) -> (spectral error, Frobenius error) of the best rank-r approximation."""
    ex = "2.2"
    rng = np.random.default_rng(202)
    cases = [(np.array([5.0, 3.0, 2.0, 1.0]), 2)]
    for _ in range(4):
        k = int(rng.integers(2, 9))
        cases.append((np.sort(rng.uniform(0.1, 10.0, size=k))[::-1], int(rng.integers(1, k))))
    cases.append((np.array([4.0, 2.0, 1.0]), 3))       # nothing dropped: both errors are 0
    for s, r in cases:
        got = _run(eckart_young, ex, "eckart_young", s.copy(), r)
        shown = f"eckart_young({np.round(s, 3).tolist()}, {r})"
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise ExerciseError(ex, f"{shown} should return two numbers (spectral, frobenius), but returned "
                                f"{type(got).__name__}.", "End with `return spectral, frobenius`.")
        spec = _number(got[0], ex, f"the spectral error of {shown}")
        fro = _number(got[1], ex, f"the Frobenius error of {shown}")
        want_spec = float(s[r]) if r < s.size else 0.0
        want_fro = float(np.sqrt(np.sum(s[r:] ** 2)))
        problems = []
        if not math.isclose(spec, want_spec, rel_tol=1e-9, abs_tol=1e-12):
            problems.append(f"spectral error {spec:.6g}, expected {want_spec:.6g}"
                            + (" (that is the last value you keep, s[r-1]; the error is the first you drop)"
                               if r >= 1 and math.isclose(spec, s[r - 1]) else ""))
        if not math.isclose(fro, want_fro, rel_tol=1e-9, abs_tol=1e-12):
            squared = math.isclose(fro, want_fro ** 2, rel_tol=1e-9)
            problems.append(f"Frobenius error {fro:.6g}, expected {want_fro:.6g}"
                            + (" (that is the squared error; take the square root)" if squared else ""))
        if problems:
            raise ExerciseError(ex, f"{shown}: " + "; ".join(problems) + ".")
    _correct(ex, "the error is made only of what you dropped: sigma_(r+1) in the spectral norm, "
             "the root of the dropped sigma^2 in the Frobenius norm.")


def check_rank_for_energy(rank_for_energy: Callable) -> None:
    """2.3: rank_for_energy(M, energy) -> the smallest r keeping that share of ||M||_F^2, hidden matrices."""
    ex = "2.3"
    rng = np.random.default_rng(203)
    for _ in range(5):
        m, n = (int(x) for x in rng.integers(5, 30, size=2))
        k = min(m, n)
        decay = rng.uniform(0.5, 0.95)
        U, _ = np.linalg.qr(rng.standard_normal((m, k)))
        V, _ = np.linalg.qr(rng.standard_normal((n, k)))
        s = 10.0 * decay ** np.arange(k)                     # a falling spectrum, like a photo's
        M = (U * s) @ V.T
        energy = float(rng.choice([0.5, 0.8, 0.9, 0.95, 0.99]))
        share = np.cumsum(s ** 2) / np.sum(s ** 2)            # share[k-1] = energy kept by rank k
        want = int(np.searchsorted(share, energy - 1e-12) + 1)
        got = _integer(_run(rank_for_energy, ex, "rank_for_energy", M.copy(), energy), ex,
                       f"rank_for_energy(M, {energy}) for a hidden {m} x {n} M")
        if got == want:
            continue
        if not 1 <= got <= k:
            raise ExerciseError(ex, f"rank_for_energy(M, {energy}) returned {got}, outside 1..{k} "
                                f"(the hidden matrix has {k} singular values).")
        kept = 100 * share[got - 1]
        if kept < 100 * energy - 1e-9:
            raise ExerciseError(ex, f"for a hidden {m} x {n} M and energy {energy}, you returned r = {got}, which "
                                f"keeps only {kept:.2f}%." + (" Did you use sigma instead of sigma squared?"
                                                             if np.searchsorted(np.cumsum(s) / s.sum(), energy - 1e-12) + 1 == got else ""))
        raise ExerciseError(ex, f"for a hidden {m} x {n} M and energy {energy}, you returned r = {got}, which keeps "
                            f"{kept:.2f}% (enough), but r = {want} already keeps {100 * share[want - 1]:.2f}%: "
                            "you want the smallest one (mind the off-by-one).")
    _correct(ex, "energy kept = cumulative share of sigma^2; the first rank to reach the target is the answer.")


def reveal_sum_rank(my_prediction: Any) -> None:
    """2.4 (predict first): the rank of W0 + B A, W0 a random full-rank 64 x 64 matrix, B A random of rank 3."""
    rng = np.random.default_rng(204)
    d, r = 64, 3
    W0 = rng.standard_normal((d, d)) / np.sqrt(d)
    BA = rng.standard_normal((d, r)) @ rng.standard_normal((r, d))
    rank = numerical_rank(W0 + BA)
    explain = (f"rank(W0 + B A) = {rank}: a random low-rank update leaves a full-rank W0 full rank, because "
               "landing exactly on a rank drop needs B A to cancel directions of W0 precisely, which random "
               "(or trained) matrices almost never do. 'Almost never' is not 'never': the next cell builds "
               "a B A that does cancel, and the rank falls by r.")
    reveal("2.4", my_prediction, rank, explain, what="my_prediction", integer=True)


# ---------------------------------------------------------------- 03_parameter_count

def check_lora_param_formula(lora_params: Callable[[int, int, int], int]) -> None:
    """3.1: lora_params(d_in, d_out, r) = r * (d_in + d_out), on hidden random shapes."""
    ex = "3.1"
    rng = np.random.default_rng(301)
    cases = [(int(a), int(b), int(c)) for a, b, c in zip(rng.integers(2, 5000, 6), rng.integers(2, 5000, 6),
                                                          rng.integers(1, 65, 6))]
    cases.append((int(rng.integers(10, 900)), int(rng.integers(1000, 4000)), int(rng.integers(2, 9))))
    for d_in, d_out, r in cases:
        got = _integer(_run(lora_params, ex, "lora_params", d_in, d_out, r), ex,
                       f"lora_params({d_in}, {d_out}, {r})")
        want = r * (d_in + d_out)
        if got != want:
            why = ""
            if got == d_in * d_out:
                why = " That is the size of the full matrix W; LoRA trains A and B instead."
            elif got in (2 * d_in * r, 2 * d_out * r):
                why = " 2dr holds for square matrices only; here d_in != d_out."
            elif got == r * d_in * d_out:
                why = " That multiplies the sizes; the two factors' sizes add."
            raise ExerciseError(ex, f"lora_params({d_in}, {d_out}, {r}) returned {got:,}, expected {want:,}.{why}")
    _correct(ex, "r * (d_in + d_out): for a square d x d matrix that is 2dr, against d^2 for full fine-tuning.")


def check_paper_formula(paper_params: Callable[[int, int, int, int], int]) -> None:
    """3.2: paper_params(n_layer, d_model, r, n_matrices) = 2 * (n_layer * n_matrices) * d_model * r."""
    ex = "3.2"
    rng = np.random.default_rng(302)
    cases = [(int(rng.integers(1, 100)), 64 * int(rng.integers(1, 200)), int(rng.integers(1, 65)),
              int(rng.integers(1, 5))) for _ in range(6)]
    for n_layer, d, r, n_mat in cases:
        got = _integer(_run(paper_params, ex, "paper_params", n_layer, d, r, n_mat), ex,
                       f"paper_params({n_layer}, {d}, {r}, {n_mat})")
        want = 2 * n_layer * n_mat * d * r
        if got == want:
            continue
        guesses = {want // 2: "half: each adapted d x d matrix has two factors, A and B, of d r numbers each",
                   want // n_layer if n_layer > 1 else -1: "one layer only; multiply by n_layer",
                   want // n_mat if n_mat > 1 else -1: "one matrix per layer; multiply by n_matrices",
                   n_layer * n_mat * d * d: "full fine-tuning of those matrices, not LoRA"}
        why = guesses.get(got)
        raise ExerciseError(ex, f"paper_params({n_layer}, {d}, {r}, {n_mat}) returned {got:,}, expected {want:,}."
                            + (f" It looks like {why}." if why else ""))
    _correct(ex, "|Theta| = 2 * L_hat * d_model * r, with L_hat = n_layer * n_matrices adapted matrices.")


def reveal_adam_ratio(my_prediction: Any) -> None:
    """3.3 (predict first): how many times less AdamW state LoRA (r = 4 on Wq, Wv) needs than full GPT-3."""
    n_full = 175_000_000_000
    n_lora = 2 * 96 * 2 * 12288 * 4                   # 2 L_hat d r, L_hat = 96 layers x 2 matrices
    ratio = linalg.optimizer_state_bytes(n_full) / linalg.optimizer_state_bytes(n_lora)
    explain = (f"{n_full:,} x 8 bytes = {8 * n_full / 1e12:.1f} TB for full fine-tuning; {n_lora:,} x 8 bytes = "
               f"{8 * n_lora / 1e6:.0f} MB with LoRA: a factor of about {ratio:,.0f}, the ratio of trainable "
               "parameters, since AdamW keeps the same 2 fp32 numbers for each trainable parameter and "
               "nothing for a frozen one.")
    reveal("3.3", my_prediction, ratio, explain, what="my_prediction", rel_tol=0.2)

"""Checks for the exercises of notebooks 01-03 (rank, SVD, parameter counts).

Exercises, by notebook:
    01_rank             1.1 check_outer_factors, 1.2 check_rank_two_matrix,
                        1.3 check_lora_update_rank
    02_svd              2.1 check_truncate, 2.2 check_eckart_young,
                        2.3 check_rank_for_energy
    03_parameter_count  3.1 check_lora_param_formula, 3.2 check_gpt2_small_count,
                        3.3 check_adam_state_bytes
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from minilora.checks.feedback import ExerciseError
from minilora.checks.feedback import as_array as _array
from minilora.checks.feedback import as_integer as _integer
from minilora.checks.feedback import as_number as _number
from minilora.checks.feedback import call_learner as _call
from minilora.checks.feedback import correct as _correct
from minilora.linalg import low_rank_approx, numerical_rank

__all__ = [
    "OUTER_EXAMPLE",
    "check_outer_factors",
    "check_rank_two_matrix",
    "check_lora_update_rank",
    "check_truncate",
    "check_eckart_young",
    "check_rank_for_energy",
    "check_lora_param_formula",
    "check_gpt2_small_count",
    "check_adam_state_bytes",
]


# ---------------------------------------------------------------- 01_rank

# Exercise 1.1's matrix: every row is a multiple of (1, 2, 3).
OUTER_EXAMPLE = np.array([[2.0, 4.0, 6.0],
                          [1.0, 2.0, 3.0],
                          [3.0, 6.0, 9.0]])


def check_outer_factors(u: Any, v: Any) -> None:
    """Exercise 1.1: u, v with np.outer(u, v) == OUTER_EXAMPLE."""
    ex = "1.1"
    u_ = _array(u, ex, "u", ((3,), (3, 1))).reshape(3)
    v_ = _array(v, ex, "v", ((3,), (1, 3))).reshape(3)
    got = np.outer(u_, v_)
    if np.allclose(got, OUTER_EXAMPLE, atol=1e-9):
        _correct(ex, "9 numbers stored as 6: a column times a row. Many (u, v) work: "
                 "(2u, v/2) gives the same matrix.")
        return
    bad = tuple(int(i) for i in np.argwhere(~np.isclose(got, OUTER_EXAMPLE, atol=1e-9))[0])
    raise ExerciseError(ex, f"np.outer(u, v) is\n{got}\nbut M is\n{OUTER_EXAMPLE}\n"
                        f"(first difference at row {bad[0]}, column {bad[1]}: {got[bad]:g} vs {OUTER_EXAMPLE[bad]:g}).",
                        "Entry (i, j) of np.outer(u, v) is u[i] * v[j]. Take v as one row of M and u as the "
                        "multiple each row is of it.")


def check_rank_two_matrix(M: Any) -> None:
    """Exercise 1.2: any 4 x 5 matrix of rank exactly 2."""
    ex = "1.2"
    arr = _array(M, ex, "M", ((4, 5),))
    rank = numerical_rank(arr)
    if rank == 2:
        _correct(ex, "a 4 x 5 matrix of rank 2 is a sum of two outer products, a (4 x 2) @ (2 x 5): "
                 "that is LoRA's B @ A with r = 2.")
        return
    hint = ("Add two outer products, np.outer(a1, b1) + np.outer(a2, b2), with a1, a2 not parallel, "
            "or multiply a 4 x 2 matrix by a 2 x 5 one.")
    if rank < 2:
        raise ExerciseError(ex, f"your matrix has rank {rank}, one too few{' (it is all zeros)' if rank == 0 else ''}: "
                            "its columns do not span two directions.", hint)
    raise ExerciseError(ex, f"your matrix has rank {rank}, more than 2: its columns span {rank} directions.", hint)


def check_lora_update_rank(answer: Any) -> None:
    """Exercise 1.3: the largest possible rank of B @ A, B 768 x 4, A 4 x 768."""
    ex = "1.3"
    value = _integer(answer, ex, "your answer")
    if value == 4:
        _correct(ex, "rank(B @ A) <= min(rank B, rank A) <= 4, the inner size r. However large d is, "
                 "a LoRA update of rank r moves the weights in at most r directions.")
        return
    if value == 768:
        raise ExerciseError(ex, "768 is the size of B @ A (768 x 768), not its rank.",
                            "Every column of B @ A is a combination of B's 4 columns.")
    raise ExerciseError(ex, f"{value} is not the largest rank B @ A can have.",
                        "rank(X @ Y) <= min(rank(X), rank(Y)), and a 768 x 4 matrix has rank at most 4.")


# ---------------------------------------------------------------- 02_svd

def check_truncate(truncate: Callable[[np.ndarray, int], np.ndarray]) -> None:
    """Exercise 2.1: truncate(M, r) returns the best rank-r approximation of M."""
    ex = "2.1"
    rng = np.random.default_rng(2021)
    for shape, r in [((6, 4), 1), ((5, 8), 2), ((10, 10), 3), ((7, 5), 5)]:
        M = rng.standard_normal(shape)
        got = _call(truncate, ex, "truncate", M.copy(), r)
        got = _array(got, ex, f"truncate(M, {r}) for M of shape {shape}", (shape,))
        want, info = low_rank_approx(M, r)
        if not np.allclose(got, want, atol=1e-8):
            err = np.linalg.norm(M - got)
            rank = numerical_rank(got)
            detail = (f"its rank is {rank}, not {r}" if rank != r else
                      f"its error ||M - M_r||_F is {err:.4f}; the best possible is {info.frobenius_error:.4f}")
            raise ExerciseError(ex, f"for M of shape {shape} and r = {r}, your truncate(M, r) is not the best "
                                f"rank-{r} approximation: {detail}.",
                                "U, s, Vt = np.linalg.svd(M, full_matrices=False); keep U[:, :r], s[:r], "
                                "Vt[:r, :] and multiply back: (U[:, :r] * s[:r]) @ Vt[:r, :].")
    _correct(ex, "keeping the top r singular triplets gives the closest rank-r matrix (Eckart-Young).")


def check_eckart_young(spectral_error: Any, frobenius_error: Any) -> None:
    """Exercise 2.2: errors of the best rank-2 approximation when sigma = (5, 3, 2, 1)."""
    ex = "2.2"
    spec = _number(spectral_error, ex, "spectral_error")
    fro = _number(frobenius_error, ex, "frobenius_error")
    ok_spec = math.isclose(spec, 2.0, rel_tol=1e-6)
    ok_fro = math.isclose(fro, math.sqrt(5.0), rel_tol=1e-6)
    if ok_spec and ok_fro:
        _correct(ex, "the error is made only of what you dropped: sigma_3 = 2 in the spectral norm, "
                 "sqrt(2^2 + 1^2) in the Frobenius norm.")
        return
    problems = []
    if not ok_spec:
        problems.append(f"spectral_error = {spec:g} is not right")
    if not ok_fro:
        note = " (that is the squared error; take the square root)" if math.isclose(fro, 5.0) else ""
        problems.append(f"frobenius_error = {fro:g} is not right{note}")
    raise ExerciseError(ex, "; ".join(problems) + ".",
                        "Rank 2 keeps sigma_1 = 5 and sigma_2 = 3. The spectral error is the largest singular "
                        "value you dropped; the Frobenius error is the square root of the sum of squares of "
                        "all the ones you dropped.")


def check_rank_for_energy(r: Any, M: Any, energy: float = 0.9) -> None:
    """Exercise 2.3: the smallest r whose rank-r approximation keeps `energy` of ||M||_F^2."""
    ex = "2.3"
    value = _integer(r, ex, "r")
    arr = np.asarray(M, dtype=np.float64)
    s = np.linalg.svd(arr, compute_uv=False)
    share = np.cumsum(s ** 2) / np.sum(s ** 2)          # share[k-1] = energy kept by rank k
    want = int(np.searchsorted(share, energy - 1e-12) + 1)
    if value == want:
        _correct(ex, f"rank {want} of {s.size} keeps {100 * share[want - 1]:.1f}% of the energy, storing "
                 f"{want * sum(arr.shape):,} numbers instead of {arr.size:,}.")
        return
    if not 1 <= value <= s.size:
        raise ExerciseError(ex, f"r = {value} is outside 1..{s.size} (the matrix has {s.size} singular values).")
    kept = 100 * share[value - 1]
    if kept < 100 * energy:
        raise ExerciseError(ex, f"rank {value} keeps only {kept:.2f}% of the energy; you need at least "
                            f"{100 * energy:.0f}%.",
                            "energy kept by rank r = (s[:r]**2).sum() / (s**2).sum(); find the first r "
                            "where it reaches the target (np.cumsum helps).")
    raise ExerciseError(ex, f"rank {value} keeps {kept:.2f}% (enough), but a smaller rank already keeps "
                        f"{100 * energy:.0f}%: you want the smallest one.",
                        "Look for the *first* r where the cumulative share reaches the target; "
                        "mind off-by-one: index k of np.cumsum is rank k + 1.")


# ---------------------------------------------------------------- 03_parameter_count

def check_lora_param_formula(lora_params: Callable[[int, int, int], int]) -> None:
    """Exercise 3.1: lora_params(d_in, d_out, r) = r * (d_in + d_out)."""
    ex = "3.1"
    for d_in, d_out, r in [(768, 768, 8), (768, 3072, 4), (12288, 12288, 1), (5, 7, 3)]:
        got = _integer(_call(lora_params, ex, "lora_params", d_in, d_out, r), ex,
                       f"lora_params({d_in}, {d_out}, {r})")
        want = r * (d_in + d_out)
        if got != want:
            hint = "A is r x d_in and B is d_out x r; add their sizes."
            if got == d_in * d_out:
                hint = "That is the size of the full matrix W. LoRA trains A (r x d_in) and B (d_out x r) instead."
            elif got == 2 * d_in * r and d_in != d_out:
                hint = "2dr holds for square matrices only; here d_in != d_out."
            raise ExerciseError(ex, f"lora_params({d_in}, {d_out}, {r}) returned {got:,}, expected {want:,}.", hint)
    _correct(ex, "r * (d_in + d_out): for a square d x d matrix that is 2dr, against d^2 for full fine-tuning.")


def check_gpt2_small_count(answer: Any) -> None:
    """Exercise 3.2: LoRA parameters for GPT-2 small (12 layers, d 768), q and v, r = 8."""
    ex = "3.2"
    value = _integer(answer, ex, "your count")
    want = 12 * 2 * 8 * (768 + 768)                      # layers * matrices * r(d_in + d_out) = 294,912
    if value == want:
        _correct(ex, f"{want:,} trainable numbers, about 0.24% of GPT-2 small's 124M.")
        return
    hints = {want // 2: "you counted one matrix per layer; LoRA adapts both Wq and Wv.",
             want // 12: "that is one layer; GPT-2 small has 12.",
             12 * 2 * 768 * 768: "that is full fine-tuning of Wq and Wv; LoRA trains B A instead."}
    raise ExerciseError(ex, f"{value:,} is not the number of LoRA parameters.",
                        hints.get(value, "per adapted matrix r * (768 + 768); two matrices per layer; 12 layers."))


def check_adam_state_bytes(full_bytes: Any, lora_bytes: Any) -> None:
    """Exercise 3.3: AdamW state (2 fp32 numbers per trainable parameter) for GPT-3:
    full fine-tuning of 175e9 parameters versus LoRA r = 4 on q, v (18,874,368)."""
    ex = "3.3"
    full = _number(full_bytes, ex, "full_bytes")
    lora = _number(lora_bytes, ex, "lora_bytes")
    want_full, want_lora = 2 * 4 * 175e9, 2 * 4 * 18_874_368
    ok_full = math.isclose(full, want_full, rel_tol=1e-6)
    ok_lora = math.isclose(lora, want_lora, rel_tol=1e-6)
    if ok_full and ok_lora:
        _correct(ex, f"{want_full / 1e12:.1f} TB of optimizer state for full fine-tuning, "
                 f"{want_lora / 1e6:.0f} MB for LoRA: frozen weights need no state at all.")
        return
    problems = []
    for name, got, want in [("full_bytes", full, want_full), ("lora_bytes", lora, want_lora)]:
        if math.isclose(got, want, rel_tol=1e-6):
            continue
        ratio = got / want
        why = {0.5: " (half: AdamW keeps two numbers, m and v, and fp32 takes 4 bytes, not 2)",
               0.25: " (that looks like a count of numbers; each fp32 number takes 4 bytes)",
               0.125: " (that is the parameter count itself; times 2 states, times 4 bytes)",
               2.0: " (twice too much: 2 states of 4 bytes is 8 bytes per parameter)"}
        why = next((text for r, text in why.items() if math.isclose(ratio, r, rel_tol=1e-6)), "")
        problems.append(f"{name} = {got:,.0f} but should be {want:,.0f}{why}")
    raise ExerciseError(ex, "; ".join(problems) + ".",
                        "bytes = trainable parameters x 2 states (m, v) x 4 bytes (fp32).")

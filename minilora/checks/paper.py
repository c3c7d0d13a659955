"""Checks for notebook 10_what_the_paper_found (section 7 of the LoRA paper, on our model).

Exercises:
    10.1  reveal_smallest_rank       predict the smallest r that reaches 90% of full fine-tuning
    10.2  check_equal_budget_rank    the rank that gives k adapted matrix types the same budget
    10.3  check_phi                  subspace similarity phi(A1, A2, i, j), written with NumPy
    10.4  check_amplification        ||Delta W||_F / ||U^T W0 V||_F, written with NumPy
    10.5  reveal_rslora_ratio        predict how the gradient at r = 64 compares with r = 1 under alpha / r
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from minilora import analysis, linalg, lora_count
from minilora.checks.feedback import (ExerciseError, as_integer, as_number, call_learner, correct, forbidding,
                                      register_hints, reveal, short)

__all__ = ["reveal_smallest_rank", "check_equal_budget_rank", "check_phi", "check_amplification",
           "reveal_rslora_ratio"]

register_hints(
    "10.1",
    "Table 6 of the paper: r = 1 already scored 73.4 against 73.5 at r = 64.",
    "Any rank from the sweep is a fair guess; the reveal shows every seed.")
register_hints(
    "10.2",
    "One LoRA on a d_out x d_in matrix costs r (d_in + d_out) numbers, in every layer.",
    "The budget is split evenly over n_layer layers and k matrix types: solve budget = n_layer * k * r * "
    "(d_in + d_out) for r. If that r is not a whole number, no equal budget exists: return None.")
register_hints(
    "10.3",
    "A is r x d: its rows live in the d-dimensional input space, so the subspace is spanned by its *right* "
    "singular vectors.",
    "Take the SVD of each A, keep the first i (resp. j) right singular vectors as columns of U1 (d x i) and "
    "U2 (d x j), then ||U1^T U2||_F^2 divided by min(i, j).")
register_hints(
    "10.4",
    "U and V come from Delta W's SVD, not from W0's.",
    "SVD of Delta W, keep the top r left singular vectors U (m x r) and right ones V (n x r); project W0 to "
    "the r x r matrix U^T W0 V; divide ||Delta W||_F by the Frobenius norm of that projection.")
register_hints(
    "10.5",
    "At step 0, B = 0, so dL/dB = scaling * (dL/dh) (A x)^T. How does ||A x|| grow with r, and the scaling?",
    "A x has r entries of similar size, so its norm grows like sqrt(r); the scaling alpha / r shrinks like 1/r. "
    "Multiply the two.")


# ---------------------------------------------------------------- 10.1

def reveal_smallest_rank(prediction: Any, results: dict) -> bool:
    rs = results["rank_sweep"]
    truth = rs["smallest_r_90"]
    lines = ", ".join(f"r={r}: {a:.0%} (spread {s:.0%})" for r, a, s in zip(rs["ranks"], rs["accuracy"], rs["spread"]))
    if truth is None:
        as_integer(prediction, "10.1", "your predicted rank")
        print(f"No rank in the sweep reached 90% of full fine-tuning here. Mean over {rs['seeds']} seeds: {lines}.")
        return False
    return reveal("10.1", prediction, truth,
                  f"Mean over {rs['seeds']} seeds: {lines}; full fine-tuning {rs['full_finetune_accuracy']:.0%}. "
                  "The spread across seeds is often larger than the gap between neighbouring ranks: one seed "
                  "per rank would let luck pick the winner.", what="your predicted rank", integer=True)


# ---------------------------------------------------------------- 10.2

def _budget_rank(budget, k, d_in, d_out, n_layer):
    per_rank = n_layer * k * (d_in + d_out)
    return budget // per_rank if budget % per_rank == 0 else None


def check_equal_budget_rank(equal_budget_rank: Callable) -> None:
    """equal_budget_rank(budget, k, d_in, d_out, n_layer) -> r or None, on hidden shapes."""
    ex = "10.2"
    cases = [(2048, 1, 64, 64, 2), (2048, 4, 64, 64, 2), (12 * 3 * 640, 3, 320, 320, 12),
             (5 * 2 * 300, 2, 100, 200, 5), (1000, 3, 64, 64, 2)]
    rng = np.random.default_rng(1021)
    d_in, d_out, L = (int(v) for v in rng.integers(20, 90, size=3))
    cases.append((L * 2 * 6 * (d_in + d_out), 2, d_in, d_out, L))
    for budget, k, d_in, d_out, n_layer in cases:
        with forbidding((lora_count, "count_lora_params"), (lora_count, "lora_params_by_module"), learner=equal_budget_rank):
            got = call_learner(equal_budget_rank, ex, "equal_budget_rank", budget, k, d_in, d_out, n_layer)
        want = _budget_rank(budget, k, d_in, d_out, n_layer)
        args = f"budget {budget}, {k} matrix type(s) of {d_out}x{d_in}, {n_layer} layers"
        if want is None:
            if got is not None:
                raise ExerciseError(ex, f"for {args} no whole rank spends exactly the budget, so the answer is "
                                    f"None; you returned {short(got)}.")
            continue
        if got is None:
            raise ExerciseError(ex, f"for {args} you returned None, but r = {want} spends the budget exactly.")
        r = as_integer(got, ex, "your rank")
        if r != want:
            extra = ""
            if r == want * 2:
                extra = " Twice too large: each LoRA has two factors, A (r x d_in) and B (d_out x r)."
            elif r == want * n_layer:
                extra = " Every layer gets its own A and B."
            raise ExerciseError(ex, f"for {args} you returned r = {r}, but r = {want} spends the budget.{extra}")
    correct(ex, "r = budget / (n_layer * k * (d_in + d_out)): adapting more matrix types at a fixed budget means a "
            "smaller r for each. Table 5 asks which of those trades is best.")


# ---------------------------------------------------------------- 10.3

def _phi(A1, A2, i, j):
    V1 = np.linalg.svd(A1, full_matrices=False)[2][:i].T
    V2 = np.linalg.svd(A2, full_matrices=False)[2][:j].T
    return float(np.linalg.norm(V1.T @ V2) ** 2 / min(i, j))


def check_phi(phi: Callable) -> None:
    """phi(A1, A2, i, j) against the paper's formula, on hidden adapters of different ranks."""
    ex = "10.3"
    rng = np.random.default_rng(1031)
    d = 12
    shared = rng.standard_normal((1, d))
    cases = []
    for r1, r2, i, j in ((4, 8, 1, 1), (4, 8, 2, 5), (3, 6, 3, 2), (5, 5, 4, 4)):
        # The adapters share one strong direction, so phi is neither 0 nor 1 and every slip shows.
        A1 = rng.standard_normal((r1, d)) + 3 * rng.standard_normal((r1, 1)) * shared
        A2 = rng.standard_normal((r2, d)) + 3 * rng.standard_normal((r2, 1)) * shared
        cases.append((A1, A2, i, j))
    forbidden = [(linalg, "subspace_similarity"), (linalg, "subspace_similarity_grid"),
                 (analysis, "subspace_similarity"), (analysis, "subspace_similarity_grid"),
                 (analysis, "random_subspace_baseline")]
    for A1, A2, i, j in cases:
        with forbidding(*forbidden, learner=phi):
            got = call_learner(phi, ex, "phi", A1.copy(), A2.copy(), i, j)
        value = as_number(got, ex, "your phi")
        want = _phi(A1, A2, i, j)
        if not np.isclose(value, want, rtol=1e-8, atol=1e-10):
            extra = ""
            if np.isclose(value, want * min(i, j) / max(i, j), rtol=1e-8) and i != j:
                extra = " You divided by max(i, j); the paper divides by min(i, j), so phi reaches 1 when the smaller subspace lies inside the larger."
            elif np.isclose(value ** 2, want, rtol=1e-8) and i == j:
                extra = " The norm must be squared: phi is a mean of squared cosines."
            raise ExerciseError(ex, f"for A1 {A1.shape}, A2 {A2.shape}, i={i}, j={j} you returned {value:.6g}, "
                                f"but phi = {want:.6g}.{extra}")
        if not 0 <= value <= 1 + 1e-12:
            raise ExerciseError(ex, f"phi must lie in [0, 1], but you returned {value:.6g}.")
    correct(ex, "phi is 1 when the top-min(i, j) directions of one adapter lie inside the other's, 0 when they "
            "are orthogonal, and about max(i, j) / d for random matrices: the paper's yardstick for 'shared'.")


# ---------------------------------------------------------------- 10.4

def check_amplification(amplification: Callable) -> None:
    """amplification(W0, delta_w, r) against ||Delta W||_F / ||U^T W0 V||_F on hidden matrices."""
    ex = "10.4"
    rng = np.random.default_rng(1041)
    for m, n, r in ((8, 6, 1), (10, 7, 2), (9, 9, 3)):
        W0 = rng.standard_normal((m, n))
        dW = rng.standard_normal((m, r)) @ rng.standard_normal((r, n)) + 0.01 * rng.standard_normal((m, n))
        with forbidding((analysis, "amplification_factor"), learner=amplification):
            got = call_learner(amplification, ex, "amplification", W0.copy(), dW.copy(), r)
        value = as_number(got, ex, "your amplification factor")
        want = analysis.amplification_factor(W0, dW, r).factor
        if not np.isclose(value, want, rtol=1e-8):
            U0, _, V0t = np.linalg.svd(W0, full_matrices=False)
            wrong_src = np.linalg.norm(dW) / np.linalg.norm(U0[:, :r].T @ W0 @ V0t[:r].T)
            extra = ""
            if np.isclose(value, 1 / want, rtol=1e-8):
                extra = " Upside down: Delta W's norm goes on top."
            elif np.isclose(value, wrong_src, rtol=1e-8):
                extra = " You took U and V from W0's SVD; the paper takes them from Delta W's."
            raise ExerciseError(ex, f"for W0 {W0.shape}, a rank-{r} Delta W and r={r} you returned {value:.6g}, "
                                f"but the factor is {want:.6g}.{extra}")
    correct(ex, "a large factor means Delta W is big in directions where W0 is small: the fine-tune amplifies "
            "features the pretrained model had but did not emphasise (section 7.3).")


# ---------------------------------------------------------------- 10.5

def reveal_rslora_ratio(prediction: Any, grad_norms: dict) -> bool:
    g = grad_norms["grad_norm_alpha_over_r"]
    ranks = grad_norms["ranks"]
    truth = g[-1] / g[0]
    return reveal("10.5", prediction, round(truth, 3),
                  f"With scaling alpha / r, the gradient of B at step 0 went from {g[0]:.3g} (r={ranks[0]}) to "
                  f"{g[-1]:.3g} (r={ranks[-1]}), about 1/sqrt({ranks[-1] // ranks[0]}) = "
                  f"{(ranks[0] / ranks[-1]) ** 0.5:.3f}: A x grows like sqrt(r) while the scaling shrinks like 1/r. "
                  "rsLoRA's alpha / sqrt(r) cancels that, so a larger r does not learn more slowly.",
                  what="your predicted ratio", rel_tol=0.35)

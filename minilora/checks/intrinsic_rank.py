"""Checks for notebook 09_intrinsic_rank (the update is low rank even when the weights are not).

Exercises:
    9.1  reveal_delta_w_stable_rank   predict the mean stable rank of full fine-tuning's Delta W
    9.2  check_energy_rank            the smallest r whose top-r directions keep a share of ||Delta W||_F^2
    9.3  check_subspace_gradient      dL/dz from dL/dtheta when theta = theta0 + P z (the chain rule)
    9.4  check_d_int90                Li et al.'s d_int90 from a sweep over d
    9.5  reveal_d_int90_growth        predict how much d_int90 grows when the network gets much wider
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from minilora import analysis, linalg
from minilora.checks.feedback import (ExerciseError, as_array, as_integer, as_number, call_learner, correct,
                                      forbidding, register_hints, reveal, short)

__all__ = ["reveal_delta_w_stable_rank", "check_energy_rank", "check_subspace_gradient", "check_d_int90",
           "reveal_d_int90_growth"]

register_hints(
    "9.1",
    "Stable rank is ||M||_F^2 / ||M||_2^2: how many directions carry real weight.",
    "Any honest number between 1 and 64 will do; then compare with W0's.")
register_hints(
    "9.2",
    "The energy of a direction is its singular value squared, and ||M||_F^2 is the sum of all of them.",
    "Take the singular values (largest first), square them, and find the first count r whose running sum "
    "reaches fraction * total. A running sum of the squares is np.cumsum.")
register_hints(
    "9.3",
    "theta depends on z through theta = theta0 + P z. What does the chain rule give for one z_k?",
    "dL/dz_k = sum_i dL/dtheta_i * dtheta_i/dz_k, and dtheta_i/dz_k = P[i, k]. Collect that for every k "
    "as one matrix-vector product; check the shape: the result has d entries, one per column of P.")
register_hints(
    "9.4",
    "d_int90 compares each accuracy with 90% of the *directly trained* network's accuracy, not with the "
    "best accuracy on the curve.",
    "Compute the threshold 0.9 * full_accuracy, walk through the d's from small to large and return the first "
    "d (not its accuracy) whose accuracy is at least the threshold; if none reaches it, return None.")
register_hints(
    "9.5",
    "Li et al. widened an MNIST network until it had 24x the parameters.",
    "Look at how d_int90 changed in the shipped results, then compare with the parameter count.")


# ---------------------------------------------------------------- 9.1

def reveal_delta_w_stable_rank(prediction: Any, results: dict) -> bool:
    ir = results["intrinsic_rank"]
    return reveal("9.1", prediction, round(ir["delta_w_stable_rank"], 2),
                  f"Full fine-tuning changed every weight of the block matrices, yet the change has a mean stable "
                  f"rank of {ir['delta_w_stable_rank']:.2f}, against {ir['w0_stable_rank']:.2f} for the pretrained "
                  f"weights themselves. The update is more concentrated than the weights it changes. That "
                  f"gap is what LoRA's r exploits.", what="your predicted stable rank", rel_tol=0.25)


# ---------------------------------------------------------------- 9.2

def _energy_rank_reference(M: np.ndarray, fraction: float) -> int:
    s2 = np.linalg.svd(M, compute_uv=False) ** 2
    return int(np.searchsorted(np.cumsum(s2), fraction * s2.sum() * (1 - 1e-12)) + 1)


def _matrix_with_spectrum(rng, m, n, s):
    U = np.linalg.qr(rng.standard_normal((m, len(s))))[0]
    V = np.linalg.qr(rng.standard_normal((n, len(s))))[0]
    return (U * s) @ V.T


def check_energy_rank(energy_rank: Callable) -> None:
    """Run energy_rank(M, fraction) on hidden matrices with known spectra."""
    ex = "9.2"
    rng = np.random.default_rng(9021)
    cases = []
    # Spectra chosen so that counting sigma (not sigma^2), or answering with an index, gives a different r.
    for s, fraction in (([4.0, 2.0, 1.0, 1.0], 0.9), ([5.0, 1.0, 1.0, 1.0, 1.0], 0.8),
                        ([3.0, 3.0, 1.0, 0.5], 0.95), ([10.0, 1.0, 0.5], 0.5)):
        m, n = rng.integers(len(s) + 1, 9, size=2)
        cases.append((_matrix_with_spectrum(rng, int(m), int(n), np.array(s)), fraction))
    cases.append((rng.standard_normal((7, 5)) @ np.diag([6, 2, 1, 0.3, 0.1]), 0.99))
    forbidden = [(analysis, "energy_kept"), (analysis, "truncate_updates"), (linalg, "low_rank_approx"),
                 (linalg, "stable_rank")]
    for M, fraction in cases:
        with forbidding(*forbidden, learner=energy_rank):
            got = call_learner(energy_rank, ex, "energy_rank", M.copy(), fraction)
        if got is None:
            raise ExerciseError(ex, "your energy_rank returned None; it should return a whole number r.")
        r = as_integer(got, ex, "the rank your energy_rank returned")
        want = _energy_rank_reference(M, fraction)
        if r != want:
            s = np.linalg.svd(M, compute_uv=False)
            by_sigma = int(np.searchsorted(np.cumsum(s), fraction * s.sum() * (1 - 1e-12)) + 1)
            extra = ""
            if r == by_sigma and by_sigma != want:
                extra = " That is the count for the singular values themselves; energy is sigma squared."
            elif r == want - 1:
                extra = " One short: a position in a 0-based array is not a count of directions."
            raise ExerciseError(ex, f"for a {M.shape[0]}x{M.shape[1]} matrix with singular values "
                                f"{np.round(s, 3).tolist()} and fraction {fraction}, you returned r = {r}, "
                                f"but the top {want} directions are needed.{extra}")
    correct(ex, "the share of ||Delta W||_F^2 kept by the top r directions is sum_{i<=r} sigma_i^2 / sum sigma_i^2 "
            "(Eckart-Young: no rank-r matrix does better). A sharply falling spectrum means a small r keeps most of it.")


# ---------------------------------------------------------------- 9.3

def check_subspace_gradient(subspace_gradient: Callable) -> None:
    """subspace_gradient(P, grad_theta) -> dL/dz, on hidden P [D, d] and gradients [D]."""
    ex = "9.3"
    rng = np.random.default_rng(9031)
    for D, d in ((12, 3), (30, 7), (9, 9)):
        P = rng.standard_normal((D, d))
        P /= np.linalg.norm(P, axis=0)
        g = rng.standard_normal(D)
        got = as_array(call_learner(subspace_gradient, ex, "subspace_gradient", P.copy(), g.copy()), ex,
                       "the gradient your subspace_gradient returned")
        want = P.T @ g
        if got.shape != want.shape:
            raise ExerciseError(ex, f"for P of shape {P.shape} and a gradient of {D} numbers you returned shape "
                                f"{got.shape}; dL/dz has one entry per coordinate of z, {d} in all.")
        if D == d and np.allclose(got, P @ g, atol=1e-9) and not np.allclose(got, want, atol=1e-9):
            raise ExerciseError(ex, "with a square P your answer equals P @ grad: that maps z-space to theta-space, "
                                "the way the forward pass goes. The gradient travels back.")
        if not np.allclose(got, want, rtol=1e-10, atol=1e-12):
            i = int(np.argmax(np.abs(got - want)))
            raise ExerciseError(ex, f"for P of shape {P.shape}, entry {i} of your gradient is {got.flat[i]:.6g} "
                                f"but the chain rule gives {want.flat[i]:.6g}.")
    correct(ex, "dL/dz = P^T dL/dtheta: the ordinary backward pass, then one projection. That is why training "
            "in a random subspace needs no new autograd, and why it costs one D x d product per step.")


# ---------------------------------------------------------------- 9.4

def check_d_int90(d_int90: Callable) -> None:
    """d_int90(dims, accuracies, full_accuracy) on hidden sweeps, including ties and a sweep that never reaches."""
    ex = "9.4"
    cases = [
        ([2, 4, 8, 16, 32], [0.2, 0.3, 0.45, 0.5, 0.49], 0.5, 8),       # 0.45 == 0.9 * 0.5 exactly: a tie counts
        ([10, 20, 40, 80], [0.3, 0.86, 0.88, 0.95], 1.0, 80),           # the best on the curve is not the reference
        ([5, 50, 500], [0.1, 0.2, 0.3], 0.9, None),                     # never reaches
        ([1, 3, 9, 27, 81], [0.05, 0.65, 0.4, 0.64, 0.7], 0.7, 3),      # the first one, not a later one
    ]
    for dims, accs, full, want in cases:
        with forbidding((analysis, "d_int90"), (analysis, "smallest_reaching"), learner=d_int90):
            got = call_learner(d_int90, ex, "d_int90", list(dims), list(accs), full)
        if want is None:
            if got is not None:
                raise ExerciseError(ex, f"no d in {dims} reaches 90% of {full} (accuracies {accs}), so the answer "
                                    f"is None, but you returned {short(got)}.")
            continue
        if got is None:
            raise ExerciseError(ex, f"for dims {dims}, accuracies {accs} and full accuracy {full} you returned "
                                f"None, but d = {want} reaches the threshold.")
        value = as_number(got, ex, "your d_int90")
        if value in accs and value not in dims:
            raise ExerciseError(ex, f"you returned {value}, an accuracy; d_int90 is a dimension d from {dims}.")
        if value != want:
            raise ExerciseError(ex, f"for dims {dims}, accuracies {accs} and full accuracy {full} you returned "
                                f"{value:g}, but the answer is {want}.")
    correct(ex, "d_int90 is the first d whose accuracy reaches 0.9 x the directly trained network's. It can only be "
            "as fine as the grid of d you tried: report the grid beside the number.")


# ---------------------------------------------------------------- 9.5

def reveal_d_int90_growth(prediction: Any, results: dict) -> bool:
    idim = results["intrinsic_dimension"]
    d, D = idim["d_int90"], idim["num_params"]
    if None in d:
        print("In these results some width never reached 90%, so there is no ratio to compare.")
        return False
    growth = d[-1] / d[0]
    return reveal("9.5", prediction, round(growth, 2),
                  f"The parameter count grew {D[-1] / D[0]:.1f}x ({D[0]} -> {D[-1]}), and d_int90 went "
                  f"{d[0]:g} -> {d[-1]:g}. What the task needs is a property of the task more than of the network: "
                  f"a wider network has more parameters, not more to learn. (Li et al.: 24x the parameters, d_int90 1.33x.)",
                  what="your predicted growth factor of d_int90", rel_tol=0.3)

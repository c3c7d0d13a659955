"""The linear algebra behind LoRA, in small NumPy functions.

LoRA rests on one claim: the change a fine-tune makes to a weight matrix,
Delta W (out x in), can be written as a product B @ A of a tall (out x r) and a
wide (r x in) matrix with r much smaller than both sides. This file holds the
tools to look at that claim with numbers:

- rank: how many independent directions a matrix really has
  (`numerical_rank`, `stable_rank`);
- the best rank-r approximation and what it costs you (`low_rank_approx`,
  the Eckart-Young theorem);
- storage: r(m + n) numbers instead of m * n (`factorization_storage`,
  `break_even_rank`, `num_bytes`; for a whole GPT config, `count_lora_params`
  lives above the model, in lora_count.py);
- how much two learned adapters agree (`subspace_similarity`, section 7.2 of
  the LoRA paper).

These are host-side helpers for notebooks and reports: they take and return
plain NumPy arrays and Python numbers, and they compute in float64 so that the
answers are the maths, not rounding noise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "numerical_rank",
    "default_rank_tol",
    "low_rank_approx",
    "thin_svd",
    "LowRankError",
    "stable_rank",
    "factorization_storage",
    "Storage",
    "break_even_rank",
    "subspace_similarity",
    "subspace_similarity_grid",
    "num_bytes",
    "optimizer_state_bytes",
]


def _as_matrix(M: Any, name: str = "M") -> np.ndarray:
    """Return M as a 2-D float64 array, or say clearly why it is not one."""
    try:
        arr = np.asarray(M, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a 2-D array of numbers; got {type(M).__name__} ({exc})") from None
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix; got an array of shape {arr.shape} "
                         f"(ndim={arr.ndim}). Reshape it first, e.g. M.reshape(m, n).")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or Inf; rank and SVD are undefined for it.")
    return arr


def _check_count(value: Any, name: str, minimum: int = 0) -> int:
    """An integer >= minimum (bools and floats refused: they are usually a bug)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer; got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return int(value)


# ----------------------------------------------------------------------------
# rank
# ----------------------------------------------------------------------------

def default_rank_tol(singular_values: np.ndarray, shape: tuple[int, int],
                     dtype: Any = np.float64) -> float:
    """The tolerance below which a singular value counts as zero.

    tol = sigma_max * max(m, n) * eps, the rule NumPy's `matrix_rank` uses.

    Why this rule: floating point stores each number with a relative error of
    about eps (2.2e-16 for float64, 1.2e-7 for float32). An SVD computed in
    that arithmetic returns singular values that are exact for a matrix within
    about eps * ||M||_2 = eps * sigma_max of the one you gave it, and the error
    grows roughly with the size of the matrix, max(m, n). So a singular value
    smaller than sigma_max * max(m, n) * eps cannot be told apart from zero:
    it is what rounding alone produces from a matrix of lower rank.

    Pass the dtype the data was *produced* in: a float32 matrix carries float32
    rounding even after we cast it to float64 for the SVD.
    """
    s = np.asarray(singular_values, dtype=np.float64)
    if s.size == 0:
        return 0.0
    eps = np.finfo(dtype).eps if np.issubdtype(np.dtype(dtype), np.floating) else np.finfo(np.float64).eps
    return float(s.max() * max(shape) * eps)


def numerical_rank(M: Any, tol: float | None = None) -> int:
    """The number of singular values of M above `tol`: M's rank, as computers see it.

    In exact arithmetic, rank(M) is the number of linearly independent columns
    (equivalently rows), which equals the number of non-zero singular values.
    In floating point almost nothing is exactly zero: the rank-1 matrix
    [[1, 2], [2, 4]] built from float32 data may have a second singular value of
    1e-8 instead of 0. So we count singular values above a tolerance.

    tol=None uses NumPy's rule, sigma_max * max(m, n) * eps (see
    `default_rank_tol` for why), with eps of M's own floating dtype (float64 for
    integer input). Give a larger tol to ask "how many directions matter at this
    noise level?": the rank then depends on the question, not only on M.

    >>> numerical_rank(np.outer([1.0, 2.0, 3.0], [4.0, 5.0]))
    1
    """
    src_dtype = np.asarray(M).dtype
    A = _as_matrix(M)
    if A.size == 0:
        return 0
    s = np.linalg.svd(A, compute_uv=False)          # [min(m, n)], descending
    if tol is None:
        dtype = src_dtype if np.issubdtype(src_dtype, np.floating) else np.float64
        tol = default_rank_tol(s, A.shape, dtype)
    elif tol < 0:
        raise ValueError(f"tol must be >= 0; got {tol}")
    return int(np.count_nonzero(s > tol))


def stable_rank(M: Any) -> float:
    """||M||_F^2 / ||M||_2^2 = sum(sigma_i^2) / sigma_max^2: a rank that does not jump.

    numerical_rank counts directions, however weak; stable rank weighs them by
    energy. It is at least 1 (for any non-zero M) and at most rank(M), and
    equals rank(M) when all non-zero singular values are equal. A small change
    to M changes it a little (unlike the rank, which jumps from 1 to n when you
    add a speck of noise). Use it to ask how many directions of a trained LoRA
    update B A really carry weight, compared with its nominal rank r.

    The zero matrix has stable rank 0.
    """
    A = _as_matrix(M)
    if A.size == 0:
        return 0.0
    s = np.linalg.svd(A, compute_uv=False)
    if s[0] == 0.0:
        return 0.0
    return float(np.sum(s ** 2) / s[0] ** 2)


# ----------------------------------------------------------------------------
# the best rank-r approximation (Eckart-Young)
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class LowRankError:
    """What keeping only the top r singular values costs.

    With M = sum_i sigma_i u_i v_i^T and M_r its first r terms:

    - spectral_error  = ||M - M_r||_2 = sigma_{r+1}
    - frobenius_error = ||M - M_r||_F = sqrt(sigma_{r+1}^2 + ... + sigma_k^2)
    - relative_error  = frobenius_error / ||M||_F
    - energy_kept     = (sigma_1^2 + ... + sigma_r^2) / ||M||_F^2
                      = 1 - relative_error^2

    Eckart-Young: no matrix of rank <= r has a smaller error in either norm.
    """

    rank: int                    # r actually used (clipped to min(m, n))
    shape: tuple[int, int]       # (m, n)
    singular_values: np.ndarray  # all of M's singular values, descending
    spectral_error: float
    frobenius_error: float
    relative_error: float
    energy_kept: float

    @property
    def storage_ratio(self) -> float:
        """Numbers stored as factors (m x r and r x n) over numbers in M: r(m+n)/(mn)."""
        return factorization_storage(*self.shape, self.rank).ratio


def thin_svd(M: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """M = U diag(s) Vt with U [m, k], s [k] descending, Vt [k, n], k = min(m, n), in float64.

    Compute it once and pass it to `low_rank_approx(M, r, svd=...)` to try many
    ranks cheaply (the rank sliders do this).
    """
    A = _as_matrix(M)
    return np.linalg.svd(A, full_matrices=False)


def low_rank_approx(M: Any, r: int, svd: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                    ) -> tuple[np.ndarray, LowRankError]:
    """The best rank-r approximation of M, from its SVD, and what it costs.

    M = U diag(s) V^T, with singular values s_1 >= s_2 >= ... >= 0. Keeping the
    first r terms,

        M_r = U[:, :r] diag(s[:r]) V^T[:r, :]   # [m, r] [r, r] [r, n] -> [m, n]

    gives the rank-r matrix closest to M (Eckart-Young-Mirsky theorem), both in
    the spectral norm (error s_{r+1}) and in the Frobenius norm (error
    sqrt(s_{r+1}^2 + ... )). Storing M_r as the two factors U_r diag(s_r) and V_r^T
    takes r(m + n) numbers instead of mn: this is exactly the B @ A of LoRA.

    r = 0 gives the zero matrix; r >= min(m, n) gives M back (up to rounding).
    `svd`, if given, must be `thin_svd(M)` (it saves recomputing it for each r).
    Returns (M_r as float64, LowRankError).
    """
    A = _as_matrix(M)
    r = _check_count(r, "r", minimum=0)
    m, n = A.shape
    if svd is None:
        svd = np.linalg.svd(A, full_matrices=False)
    U, s, Vt = svd                                      # [m, k], [k], [k, n]; k = min(m, n)
    if U.shape != (m, s.size) or Vt.shape != (s.size, n):
        raise ValueError(f"svd does not belong to a {m}x{n} matrix: U {U.shape}, s {s.shape}, "
                         f"Vt {Vt.shape}; pass svd=thin_svd(M)")
    r = min(r, s.size)
    M_r = (U[:, :r] * s[:r]) @ Vt[:r, :]                # scale columns of U_r by s_r, then [m, r] @ [r, n]

    tail = s[r:]                                        # what we threw away
    total_sq = float(np.sum(s ** 2))                    # ||M||_F^2
    fro = float(np.sqrt(np.sum(tail ** 2)))
    spectral = float(tail[0]) if tail.size else 0.0
    if total_sq == 0.0:                                 # the zero matrix is its own best approximation
        rel, kept = 0.0, 1.0
    else:
        rel = fro / np.sqrt(total_sq)
        kept = float(np.sum(s[:r] ** 2) / total_sq)
    info = LowRankError(rank=r, shape=(m, n), singular_values=s, spectral_error=spectral,
                        frobenius_error=fro, relative_error=float(rel), energy_kept=kept)
    return M_r, info


# ----------------------------------------------------------------------------
# storage: r(m + n) versus mn
# ----------------------------------------------------------------------------

class Storage(NamedTuple):
    """Numbers needed for an m x n matrix of rank r, factored versus dense."""

    factored: int   # r * (m + n): an m x r factor and an r x n factor
    dense: int      # m * n

    @property
    def ratio(self) -> float:
        """factored / dense; below 1 means the factors are cheaper."""
        return self.factored / self.dense if self.dense else float("inf")

    @property
    def saves(self) -> bool:
        return self.factored < self.dense


def factorization_storage(m: int, n: int, r: int) -> Storage:
    """How many numbers an m x n matrix takes as B @ A (B: m x r, A: r x n) versus dense.

    factored = r * (m + n), dense = m * n. For a square d x d weight this is
    2dr against d^2, the ratio 2r/d: at d = 12288 (GPT-3) and r = 4, 0.065%.

    >>> factorization_storage(3, 3, 1)
    Storage(factored=6, dense=9)
    """
    m = _check_count(m, "m", 1)
    n = _check_count(n, "n", 1)
    r = _check_count(r, "r", 0)
    return Storage(factored=r * (m + n), dense=m * n)


def break_even_rank(m: int, n: int) -> float:
    """The rank at which the two factors take as much room as the matrix: mn / (m + n).

    Factoring saves storage exactly when r < break_even_rank(m, n). For a square
    d x d matrix that is d / 2: a rank-r factorization pays off until r reaches
    half the width. (Every m x n matrix has rank <= min(m, n), and
    min(m, n) / 2 <= mn / (m + n) <= min(m, n), so a matrix of *full* rank is
    always cheaper to store dense.)
    """
    m = _check_count(m, "m", 1)
    n = _check_count(n, "n", 1)
    return m * n / (m + n)


# ----------------------------------------------------------------------------
# subspace similarity (LoRA paper, section 7.2)
# ----------------------------------------------------------------------------

def _top_right_singular_vectors(A: np.ndarray, k: int) -> np.ndarray:
    """The top k right singular vectors of A as columns: [d, k]."""
    _, _, Vt = np.linalg.svd(A, full_matrices=False)    # Vt: [min(r, d), d]
    return Vt[:k].T                                     # [d, k]


def subspace_similarity(A1: Any, A2: Any, i: int, j: int) -> float:
    """phi(A1, A2, i, j) = ||U1_i^T U2_j||_F^2 / min(i, j), a number in [0, 1].

    A1 and A2 are two LoRA "A" matrices for the same layer, shapes (r1, d) and
    (r2, d). U1_i holds the top i right singular vectors of A1 as columns (d x i),
    U2_j the top j of A2. The columns are orthonormal, so U1_i^T U2_j holds the
    cosines between the two sets of directions and its squared Frobenius norm
    sums the squared cosines of the principal angles between the two subspaces.

    phi = 1 when the smaller subspace lies inside the larger one, 0 when they
    are orthogonal. Two random subspaces of R^d give about max(i, j) / d. The
    LoRA paper (section 7.2) found that A for r=8 and A for r=64, trained
    separately, share their top direction (phi > 0.5 at i = j = 1): the most
    useful direction is found again and again.
    """
    a1 = _as_matrix(A1, "A1")
    a2 = _as_matrix(A2, "A2")
    if a1.shape[1] != a2.shape[1]:
        raise ValueError(f"A1 and A2 must act on the same input space: A1 is {a1.shape}, A2 is "
                         f"{a2.shape} (LoRA's A is (r, in_features); the second sizes must match).")
    i = _check_count(i, "i", 1)
    j = _check_count(j, "j", 1)
    k1, k2 = min(a1.shape), min(a2.shape)
    if i > k1 or j > k2:
        raise ValueError(f"i must be <= min{a1.shape} = {k1} and j <= min{a2.shape} = {k2}; "
                         f"got i={i}, j={j}")
    U1 = _top_right_singular_vectors(a1, i)        # [d, i]
    U2 = _top_right_singular_vectors(a2, j)        # [d, j]
    overlap = U1.T @ U2                                   # [i, j], the cosines
    return float(np.sum(overlap ** 2) / min(i, j))


def subspace_similarity_grid(A1: Any, A2: Any, max_i: int | None = None,
                             max_j: int | None = None) -> np.ndarray:
    """phi(A1, A2, i, j) for all i = 1..max_i, j = 1..max_j, as an array [max_i, max_j].

    Entry [i-1, j-1] equals subspace_similarity(A1, A2, i, j); this computes
    both SVDs once (the grid is what the paper's Figure 3 draws as a heat map).
    """
    a1 = _as_matrix(A1, "A1")
    a2 = _as_matrix(A2, "A2")
    if a1.shape[1] != a2.shape[1]:
        raise ValueError(f"A1 and A2 must have the same number of columns: {a1.shape} vs {a2.shape}")
    k1, k2 = min(a1.shape), min(a2.shape)
    max_i = k1 if max_i is None else _check_count(max_i, "max_i", 1)
    max_j = k2 if max_j is None else _check_count(max_j, "max_j", 1)
    if max_i > k1 or max_j > k2:
        raise ValueError(f"max_i must be <= {k1} and max_j <= {k2}; got {max_i}, {max_j}")
    U1 = _top_right_singular_vectors(a1, max_i)
    U2 = _top_right_singular_vectors(a2, max_j)
    sq = (U1.T @ U2) ** 2                                  # [max_i, max_j] squared cosines
    cum = sq.cumsum(axis=0).cumsum(axis=1)                 # cum[i-1, j-1] = ||U1_i^T U2_j||_F^2
    ii = np.arange(1, max_i + 1)[:, None]
    jj = np.arange(1, max_j + 1)[None, :]
    return cum / np.minimum(ii, jj)


# ----------------------------------------------------------------------------
# bytes
# ----------------------------------------------------------------------------
# Counting LoRA's parameters for a GPT config (count_lora_params) needs the
# model's shapes, so it lives above the model, in minilora/lora_count.py.

_DTYPE_BYTES = {"float64": 8, "fp64": 8, "float32": 4, "fp32": 4, "float16": 2, "fp16": 2,
                "bfloat16": 2, "bf16": 2, "int8": 1}


def num_bytes(n_params: int, dtype: str = "float16") -> int:
    """Bytes to store n_params numbers of the given dtype (float16: 2 bytes each).

    GPT-3's LoRA at r=4 on q and v: 18,874,368 fp16 numbers = 37,748,736 bytes,
    36 MiB (the paper rounds this to "35MB"), against 350 GB for the model.
    """
    n_params = _check_count(n_params, "n_params", 0)
    key = str(dtype).lower()
    if key not in _DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPE_BYTES)}")
    return n_params * _DTYPE_BYTES[key]


def optimizer_state_bytes(n_trainable: int, states_per_param: int = 2, dtype: str = "float32") -> int:
    """Bytes of optimizer state: AdamW keeps 2 numbers (m and v) per *trainable* parameter.

    Frozen weights get no state at all, which is where much of LoRA's memory
    saving during training comes from: full fine-tuning of 175B parameters in
    fp32 needs 2 * 175e9 * 4 bytes = 1.4 TB of Adam state; LoRA at r=4 needs
    about 151 MB.
    """
    n_trainable = _check_count(n_trainable, "n_trainable", 0)
    states_per_param = _check_count(states_per_param, "states_per_param", 0)
    return num_bytes(n_trainable * states_per_param, dtype)

# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: nbgrader,-all
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 2. The SVD and the best low-rank approximation
#
# Notebook 01 showed that a rank-$r$ matrix is a sum of $r$ outer products. The
# **singular value decomposition** (SVD) says that *every* matrix is such a sum,
# with the pieces sorted from most to least important. Cutting the sum short
# gives the closest matrix of lower rank. That is this notebook's one idea:
#
# > the SVD orders a matrix's directions by importance, and keeping the top
# > $r$ of them is the best rank-$r$ approximation.
#
# We see it on random matrices, on a photograph (with a rank slider), and end
# with what it means for LoRA's $W_0 + BA$.

# %%
import matplotlib.pyplot as plt
import numpy as np

from minilora import checks, linalg
from minilora.widgets import load_sample_image, svd_explorer

np.set_printoptions(precision=3, suppress=True)
rng = np.random.default_rng(0)

# %% [markdown]
# ## The SVD
#
# Any real $m \times n$ matrix factors as
#
# $$M = U \Sigma V^\top = \sum_{i=1}^{k} \sigma_i \, u_i v_i^\top, \qquad k = \min(m, n),$$
#
# where the columns $u_i$ of $U$ are orthonormal, the columns $v_i$ of $V$ are
# orthonormal, and the **singular values** $\sigma_1 \ge \sigma_2 \ge \dots \ge 0$
# say how much each rank-1 piece contributes. The rank is the number of
# non-zero $\sigma_i$. (On a computer "non-zero" means "above a tolerance":
# rounding leaves tiny $\sigma_i$ where exact arithmetic would give 0, and
# `linalg.numerical_rank` counts only those above NumPy's
# $\sigma_{\max} \cdot \max(m, n) \cdot \varepsilon$.)

# %%
M = rng.standard_normal((5, 4))
U, s, Vt = np.linalg.svd(M, full_matrices=False)    # [5, 4], [4], [4, 4]
print("singular values:", s)
print("U^T U = I:", np.allclose(U.T @ U, np.eye(4)), "  V^T V = I:", np.allclose(Vt @ Vt.T, np.eye(4)))
pieces = sum(s[i] * np.outer(U[:, i], Vt[i]) for i in range(4))
print("sum of sigma_i u_i v_i^T equals M:", np.allclose(pieces, M))

# %% [markdown]
# ## The best rank-$r$ approximation
#
# Keep the first $r$ pieces: $M_r = \sum_{i \le r} \sigma_i u_i v_i^\top$.
# The **Eckart–Young theorem** says no matrix of rank $\le r$ is closer to $M$,
# and the error is made only of what was dropped:
#
# $$\|M - M_r\|_2 = \sigma_{r+1}, \qquad \|M - M_r\|_F = \sqrt{\sigma_{r+1}^2 + \dots + \sigma_k^2}.$$
#
# `linalg.low_rank_approx` returns $M_r$ and these numbers; let us check them
# against the norms computed directly.

# %%
M = rng.standard_normal((60, 40))
M_r, info = linalg.low_rank_approx(M, 10)
print("rank of M_r      :", linalg.numerical_rank(M_r))
print("spectral error   :", info.spectral_error, " direct:", np.linalg.norm(M - M_r, 2))
print("Frobenius error  :", info.frobenius_error, " direct:", np.linalg.norm(M - M_r, "fro"))
print("relative error   :", round(info.relative_error, 4), "  energy kept:", round(info.energy_kept, 4))

# %% [markdown]
# ### Exercise 2.1
#
# Write `truncate(M, r)` yourself with `np.linalg.svd`: it should return the
# best rank-`r` approximation of `M`. The check runs it on hidden random
# matrices of several shapes (and `linalg.low_rank_approx` is off limits while it does).

# %% nbgrader={"grade": false, "grade_id": "ex-2-1", "locked": false, "schema_version": 3, "solution": true}
# Exercise 2.1: the best rank-r approximation with np.linalg.svd
def truncate(M, r):
    ### BEGIN SOLUTION
    U, s, Vt = np.linalg.svd(M, full_matrices=False)   # [m, k], [k], [k, n]
    return (U[:, :r] * s[:r]) @ Vt[:r, :]              # [m, r] @ [r, n] -> [m, n]
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex-2-1-check", "locked": true, "points": 1, "schema_version": 3, "solution": false}
checks.check_truncate(truncate)

# %% [markdown]
# ### Exercise 2.2
#
# Eckart–Young says the errors depend only on the singular values. Write
# `eckart_young(s, r)`: given the singular values `s` (sorted, largest first)
# and a rank `r`, return `(spectral_error, frobenius_error)` of the best
# rank-`r` approximation, with no matrix in sight.

# %% nbgrader={"grade": false, "grade_id": "ex-2-2", "locked": false, "schema_version": 3, "solution": true}
# Exercise 2.2: the errors of the best rank-r approximation, from the singular values alone
def eckart_young(s, r):
    ### BEGIN SOLUTION
    dropped = np.asarray(s, dtype=float)[r:]
    spectral = dropped[0] if dropped.size else 0.0
    return spectral, np.sqrt(np.sum(dropped ** 2))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex-2-2-check", "locked": true, "points": 1, "schema_version": 3, "solution": false}
checks.check_eckart_young(eckart_young)

# %% [markdown]
# ## A photograph is a matrix
#
# A grayscale image is a matrix of brightness values. Move the slider: the
# middle picture is built from the top $r$ singular pieces, the right plot is
# the spectrum with the cut at $r$, and below are the relative error and the
# storage, $r(m + n)$ numbers against $m n$. (The image is Grace Hopper's
# portrait, which ships with matplotlib.)

# %%
svd_explorer()

# %% [markdown]
# A few dozen pieces out of 256 already give a recognisable face: the spectrum
# falls steeply.
#
# What does "energy kept" measure? It is $\sum_{i \le r}\sigma_i^2 / \sum_i \sigma_i^2
# = 1 - \|M - M_r\|_F^2 / \|M\|_F^2$, a share of the **sum of squared pixel
# values**. A photo's pixels are all positive, so most of that sum is the
# average brightness, which a single rank-1 piece (nearly a constant image)
# already captures: rank 1 keeps about 73% of the photo's energy while looking
# like a smudge. To ask how many directions the *picture* needs, take the mean
# away first (centre it) and measure the energy of what is left:

# %%
photo = load_sample_image()
for name, X in [("raw photo", photo), ("centred photo", photo - photo.mean())]:
    sv = np.linalg.svd(X, compute_uv=False)
    kept = np.cumsum(sv ** 2) / np.sum(sv ** 2)
    print(f"{name:>14}: rank 1 keeps {kept[0]:.0%}, rank 10 keeps {kept[9]:.0%}, rank 50 keeps {kept[49]:.0%}")

# %% [markdown]
# ## Random versus structured
#
# That fall is a property of *structured* data, not of matrices in general.
# A matrix of independent random numbers spreads its energy over all
# directions; a smooth, patterned one concentrates it. Compare how much energy
# the first $r$ pieces keep:

# %%
n = 128
t = np.linspace(0, 1, n)
structured = np.exp(-((t[:, None] - t[None, :]) ** 2) / 0.02) + np.outer(np.sin(6 * t), np.cos(3 * t))
random = rng.standard_normal((n, n))

fig, ax = plt.subplots(figsize=(6, 3.2))
for name, X in [("structured", structured), ("photo, centred", photo - photo.mean()), ("random", random)]:
    sv = np.linalg.svd(X, compute_uv=False)
    ax.plot(np.arange(1, 65), (np.cumsum(sv ** 2) / np.sum(sv ** 2))[:64], label=name)
ax.set_xlabel("rank r")
ax.set_ylabel("energy kept")
ax.set_title("how fast the best rank-r approximation catches up")
ax.legend()
plt.show()

# %%
svd_explorer(structured, title="structured 128x128 (smooth kernel + a rank-1 wave)", rank=3)

# %%
svd_explorer(random, title="random 128x128 (independent Gaussian entries)", rank=3)

# %% [markdown]
# ### Exercise 2.3
#
# Write `rank_for_energy(M, energy)`: the smallest rank `r` whose best
# approximation of `M` keeps at least that share of the energy,
# $\sum_{i \le r} \sigma_i^2 / \sum_i \sigma_i^2 \ge$ `energy`. The check uses
# hidden matrices; below, we then ask it about the centred photo.

# %% nbgrader={"grade": false, "grade_id": "ex-2-3", "locked": false, "schema_version": 3, "solution": true}
# Exercise 2.3: the smallest rank keeping a given share of the energy
def rank_for_energy(M, energy):
    ### BEGIN SOLUTION
    sv = np.linalg.svd(M, compute_uv=False)
    share = np.cumsum(sv ** 2) / np.sum(sv ** 2)   # share[k] = energy kept by rank k + 1
    return int(np.argmax(share >= energy)) + 1
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex-2-3-check", "locked": true, "points": 1, "schema_version": 3, "solution": false}
checks.check_rank_for_energy(rank_for_energy)

# %%
centred = photo - photo.mean()
print("90% of the raw photo's energy:     rank", rank_for_energy(photo, 0.9))
print("90% of the centred photo's energy: rank", rank_for_energy(centred, 0.9))

# %% [markdown]
# ## Why a low-rank *update* is cheap and still expressive
#
# LoRA does not approximate the weights $W_0$ by a low-rank matrix. It keeps
# $W_0$ whole and frozen and learns a low-rank **change**:
#
# $$W = W_0 + B A, \qquad B \in \mathbb{R}^{d \times r},\ A \in \mathbb{R}^{r \times k}.$$
#
# Cheap: $r(d + k)$ trainable numbers. Expressive in two ways. First, the
# update is *added* to $W_0$, not swapped in for it: $W_0$ is kept whole, and
# $BA$ only changes it in at most $r$ directions. Does $W_0 + BA$ stay
# **full rank**, then?
#
# ### Predict (2.4)
#
# $W_0$ is a random $64 \times 64$ matrix (full rank, 64) and $BA$ a random update
# of rank 3. What is the rank of $W_0 + BA$? Write your guess first.

# %% nbgrader={"grade": false, "grade_id": "ex-2-4", "locked": false, "schema_version": 3, "solution": true}
# Exercise 2.4: your prediction of rank(W0 + B A)
### BEGIN SOLUTION
my_prediction = 64
### END SOLUTION

# %% nbgrader={"grade": false, "grade_id": "ex-2-4-reveal", "locked": true, "schema_version": 3, "solution": false}
checks.reveal_sum_rank(my_prediction)

# %% [markdown]
# That is the **generic** case, not a guarantee. Subtracting a rank-$r$ matrix
# can lower the rank by up to $r$: take $BA = -\sum_{i \le r} \sigma_i u_i v_i^\top$,
# minus $W_0$'s own top $r$ SVD pieces, and those directions vanish from the sum.

# %%
d, r = 64, 3
W0 = rng.standard_normal((d, d)) / np.sqrt(d)
U, s, Vt = np.linalg.svd(W0)
cancel = -(U[:, :r] * s[:r]) @ Vt[:r]               # rank 3, built to cancel W0's top 3 pieces
print("rank W0            :", linalg.numerical_rank(W0))
print("rank of the update :", linalg.numerical_rank(cancel))
print("rank W0 + update   :", linalg.numerical_rank(W0 + cancel), "(dropped by r =", r, ")")

# %% [markdown]
# Training has no reason to aim at such an exact cancellation, so in practice
# $W_0 + BA$ stays full rank; "the sum is always full rank" is still wrong.
#
# Second, a rank-$r$ change can send $r$ chosen inputs exactly where you want.
# For inputs $X$ ($k \times r$) and targets $Y$ ($d \times r$), the update
# $\Delta W = (Y - W_0 X)\, X^{+}$ has rank $\le r$ and gives $(W_0 + \Delta W) X = Y$.

# %%
X = rng.standard_normal((d, r))                  # r inputs, as columns
Y = rng.standard_normal((d, r))                  # where we want them to go
dW = (Y - W0 @ X) @ np.linalg.pinv(X)            # [d, r] @ [r, d] -> [d, d]

print("rank of the update      :", linalg.numerical_rank(dW))
print("hits the r targets      :", np.allclose((W0 + dW) @ X, Y))
print("numbers to store it     :", linalg.factorization_storage(d, d, r))

# %% [markdown]
# ## What to remember
#
# - SVD: $M = \sum_i \sigma_i u_i v_i^\top$, pieces sorted by $\sigma_i$.
# - Truncating to $r$ pieces is the best rank-$r$ approximation; its error is
#   exactly the dropped $\sigma$'s.
# - "Energy kept" is a share of the sum of squares; for data with a large mean
#   (a photo), centre it first or the mean alone looks like most of the energy.
# - $W_0 + BA$ is full rank in the generic case, but a rank-$r$ update can
#   lower the rank by up to $r$.
#
# Next, **03_parameter_count**: how small $r(d+k)$ is for real models, and what
# that does to training memory.

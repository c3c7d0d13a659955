# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: -all
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
# gives the closest matrix of lower rank. This notebook:
#
# 1. the SVD as a sum of rank-1 pieces,
# 2. the best rank-$r$ approximation and its error (Eckart–Young),
# 3. a rank slider on a photograph, and on a random versus a structured matrix,
# 4. why a low-rank *update* can be cheap and still expressive.

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
# non-zero $\sigma_i$.

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
# best rank-`r` approximation of `M`.

# %%
# Exercise 2.1: the best rank-r approximation with np.linalg.svd
def truncate(M, r):
    # BEGIN SOLUTION
    U, s, Vt = np.linalg.svd(M, full_matrices=False)   # [m, k], [k], [k, n]
    return (U[:, :r] * s[:r]) @ Vt[:r, :]              # [m, r] @ [r, n] -> [m, n]
    # END SOLUTION


checks.check_truncate(truncate)

# %% [markdown]
# ### Exercise 2.2
#
# A matrix has singular values $(5, 3, 2, 1)$. For its best rank-2
# approximation, what are the spectral error and the Frobenius error? (No code
# needed beyond arithmetic.)

# %%
# Exercise 2.2: the errors of the best rank-2 approximation
# BEGIN SOLUTION
spectral_error = 2.0
frobenius_error = np.sqrt(2.0 ** 2 + 1.0 ** 2)
# END SOLUTION
checks.check_eckart_young(spectral_error, frobenius_error)

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
# falls steeply, so most of the image's energy sits in its first directions.
#
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
photo = load_sample_image()

fig, ax = plt.subplots(figsize=(6, 3.2))
for name, X in [("structured", structured), ("photo", photo), ("random", random)]:
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
# What is the smallest rank `r` whose best approximation of the photo keeps at
# least 90% of its energy, $\sum_{i \le r} \sigma_i^2 / \sum_i \sigma_i^2 \ge 0.9$?

# %%
# Exercise 2.3: the smallest rank keeping 90% of the photo's energy
# BEGIN SOLUTION
sv = np.linalg.svd(photo, compute_uv=False)
share = np.cumsum(sv ** 2) / np.sum(sv ** 2)   # share[k] = energy kept by rank k + 1
r = int(np.argmax(share >= 0.9)) + 1
# END SOLUTION
checks.check_rank_for_energy(r, photo, energy=0.9)

# %% [markdown]
# ## Why a low-rank *update* is cheap and still expressive
#
# LoRA does not approximate the weights $W_0$ by a low-rank matrix. It keeps
# $W_0$ whole and frozen and learns a low-rank **change**:
#
# $$W = W_0 + B A, \qquad B \in \mathbb{R}^{d \times r},\ A \in \mathbb{R}^{r \times k}.$$
#
# Cheap: $r(d + k)$ trainable numbers. Expressive in two ways:
#
# - $W_0 + BA$ is still full rank: every output can still use every direction
#   $W_0$ already has.
# - A rank-$r$ change can send $r$ chosen inputs exactly where you want. For
#   inputs $X$ ($k \times r$) and targets $Y$ ($d \times r$), the update
#   $\Delta W = (Y - W_0 X)\, X^{+}$ has rank $\le r$ and gives $(W_0 + \Delta W) X = Y$.

# %%
d, r = 64, 3
W0 = rng.standard_normal((d, d)) / np.sqrt(d)
X = rng.standard_normal((d, r))                  # r inputs, as columns
Y = rng.standard_normal((d, r))                  # where we want them to go
dW = (Y - W0 @ X) @ np.linalg.pinv(X)            # [d, r] @ [r, d] -> [d, d]

print("rank of the update      :", linalg.numerical_rank(dW))
print("rank of W0 + update     :", linalg.numerical_rank(W0 + dW))
print("hits the r targets      :", np.allclose((W0 + dW) @ X, Y))
print("numbers to store it     :", linalg.factorization_storage(d, d, r))

# %% [markdown]
# ## What to remember
#
# - SVD: $M = \sum_i \sigma_i u_i v_i^\top$, pieces sorted by $\sigma_i$.
# - Truncating to $r$ pieces is the best rank-$r$ approximation; its error is
#   exactly the dropped $\sigma$'s.
# - Structured data has fast-falling spectra; random noise does not.
# - A low-rank update $BA$ costs $r(d+k)$ numbers, leaves $W_0$'s full rank
#   intact, and can still move $r$ directions anywhere.
#
# Next, **03_parameter_count**: how small $r(d+k)$ is for real models, and what
# that does to training memory.

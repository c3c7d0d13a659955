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
# # 1. Rank: how many directions does a matrix really use?
#
# LoRA makes one bet: when you fine-tune a big model, the *change* to each
# weight matrix, $\Delta W$, needs only a few directions. "Few directions" has
# a precise name, **rank**, and this notebook is about it:
#
# 1. linear independence and the rank of a matrix,
# 2. the rank-1 matrix: a column times a row,
# 3. numerical rank: what "zero" means for floating-point numbers,
# 4. the rank of a product, which is where LoRA's $B A$ comes from.
#
# Exercises end with a `checks.check_...(...)` call that tells you if you got it.

# %%
import matplotlib.pyplot as plt
import numpy as np

from minilora import checks, linalg

np.set_printoptions(precision=3, suppress=True)

# %% [markdown]
# ## Linear independence
#
# Vectors $v_1, \dots, v_k$ are **linearly independent** when the only way to
# combine them into zero is with all-zero weights:
#
# $$c_1 v_1 + c_2 v_2 + \dots + c_k v_k = 0 \quad\Longrightarrow\quad c_1 = c_2 = \dots = c_k = 0.$$
#
# If some other combination gives zero, one of the vectors is a mix of the
# others: it adds no new direction. The **rank** of a matrix is the largest
# number of independent columns it has. (It is also the largest number of
# independent rows; the two counts always agree.)

# %%
v1 = np.array([1.0, 0.0, 2.0])
v2 = np.array([0.0, 1.0, 1.0])
v3 = v1 + 2 * v2                     # a mix of the other two: no new direction

V = np.column_stack([v1, v2, v3])    # [3, 3], the vectors as columns
print(V)
print("1*v1 + 2*v2 - 1*v3 =", v1 + 2 * v2 - v3)
print("rank:", linalg.numerical_rank(V))

# %% [markdown]
# Three columns in $\mathbb{R}^3$, but only two directions: the columns fill a
# plane, not the whole space. The matrix has rank 2.

# %% [markdown]
# ## Rank 1: a column times a row
#
# The simplest matrices with rank above zero are **outer products**. Take a
# column $u \in \mathbb{R}^m$ and a row $v^\top$ with $v \in \mathbb{R}^n$:
#
# $$u v^\top = \begin{pmatrix} u_1 v_1 & u_1 v_2 & \cdots \\ u_2 v_1 & u_2 v_2 & \cdots \\ \vdots & & \ddots \end{pmatrix}.$$
#
# Column $j$ is $v_j \, u$: every column points along $u$, so the rank is 1.
# Here is a $3 \times 3$ example. It has 9 entries, but it is fully described by
# $3 + 3 = 6$ numbers:

# %%
u = np.array([[1.0], [2.0], [3.0]])   # a column, [3, 1]
v = np.array([[4.0, 5.0, 6.0]])       # a row,    [1, 3]
M = u @ v                             # [3, 1] @ [1, 3] -> [3, 3]
print(M)
print("rank:", linalg.numerical_rank(M))
print("stored as factors:", linalg.factorization_storage(3, 3, 1))

# %% [markdown]
# For an $m \times n$ matrix of rank 1, the saving grows fast: $m + n$ numbers
# instead of $m n$. For $1000 \times 1000$ that is 2,000 instead of a million.
#
# ### Exercise 1.1
#
# The matrix `checks.OUTER_EXAMPLE` below has rank 1. Find a column `u` and a
# row `v` (as 3-vectors) with `np.outer(u, v)` equal to it.

# %%
print(checks.OUTER_EXAMPLE)

# %%
# Exercise 1.1: write OUTER_EXAMPLE as np.outer(u, v)
# BEGIN SOLUTION
v = checks.OUTER_EXAMPLE[1]           # the row (1, 2, 3); every row is a multiple of it
u = checks.OUTER_EXAMPLE[:, 0] / v[0] # how many times that row each row is: (2, 1, 3)
# END SOLUTION
checks.check_outer_factors(u, v)

# %% [markdown]
# ## Sums of outer products, and LoRA's $B A$
#
# Adding $r$ outer products gives a matrix of rank **at most** $r$. That is
# exactly what a product of a tall and a wide matrix is: with $B$ of shape
# $m \times r$ (columns $b_k$) and $A$ of shape $r \times n$ (rows $a_k^\top$),
#
# $$B A = \sum_{k=1}^{r} b_k \, a_k^\top .$$
#
# LoRA writes the update of a weight matrix as this $B A$, storing
# $r(m + n)$ numbers instead of $m n$.

# %%
rng = np.random.default_rng(0)
B = rng.standard_normal((6, 2))       # [m, r] = [6, 2]
A = rng.standard_normal((2, 7))       # [r, n] = [2, 7]
as_sum = np.outer(B[:, 0], A[0]) + np.outer(B[:, 1], A[1])
print("B @ A equals the sum of 2 outer products:", np.allclose(B @ A, as_sum))
print("rank of B @ A:", linalg.numerical_rank(B @ A), "  shape:", (B @ A).shape)

# %% [markdown]
# ### Exercise 1.2
#
# Build any $4 \times 5$ matrix `M` whose rank is exactly 2.

# %%
# Exercise 1.2: a 4 x 5 matrix of rank exactly 2
# BEGIN SOLUTION
M = np.outer([1.0, 0.0, 1.0, 2.0], [1.0, 2.0, 0.0, 1.0, 1.0]) + np.outer([0.0, 1.0, 1.0, 0.0], [3.0, 0.0, 1.0, 0.0, 2.0])
# END SOLUTION
checks.check_rank_two_matrix(M)

# %% [markdown]
# ## Numerical rank: when is a number zero?
#
# Computers round. Build a rank-1 matrix in `float32` and look at its singular
# values (the next notebook explains them; for now: the rank is how many are
# non-zero). One is large; the others should be exactly 0 but come out as tiny
# non-zero numbers, the traces of rounding. So
# `numerical_rank` counts the singular values above a tolerance. Its default is
# NumPy's rule:
#
# $$\text{tol} = \sigma_{\max} \cdot \max(m, n) \cdot \varepsilon,$$
#
# where $\varepsilon$ is the precision of the number type ($1.2 \times 10^{-7}$
# for `float32`, $2.2 \times 10^{-16}$ for `float64`). Rounding changes each
# entry by about $\varepsilon$ relative to the matrix's size, and the errors add
# up across a row, so anything below that line is indistinguishable from 0.

# %%
x = np.linspace(1.0, 2.0, 40, dtype=np.float32)
M32 = np.outer(np.sin(x), np.cos(x)).astype(np.float32)        # rank 1 in exact arithmetic
s = np.linalg.svd(M32.astype(np.float64), compute_uv=False)
tol = linalg.default_rank_tol(s, M32.shape, np.float32)

fig, ax = plt.subplots(figsize=(6, 3))
ax.semilogy(np.arange(1, s.size + 1), s, "o", markersize=4, label="singular values")
ax.axhline(tol, color="C3", linestyle="--", label=r"tol = $\sigma_{max} \cdot \max(m,n) \cdot \varepsilon_{32}$")
ax.set_xlabel("index")
ax.legend()
ax.set_title("a float32 rank-1 matrix: one real direction, the rest is rounding")
plt.show()
print("numerical rank:", linalg.numerical_rank(M32))

# %% [markdown]
# The tolerance is also a question you can ask on purpose: "how many
# directions matter **at this noise level**?" Add noise of size $10^{-6}$ and
# the exact rank jumps to full, while at a tolerance just above the noise it is
# still 1:

# %%
noisy = M32.astype(np.float64) + 1e-6 * rng.standard_normal(M32.shape)
print("default tolerance:", linalg.numerical_rank(noisy))
print("tol = 1e-3       :", linalg.numerical_rank(noisy, tol=1e-3))
print("stable rank      :", round(linalg.stable_rank(noisy), 4), "(weighs directions by their size)")

# %% [markdown]
# ## The rank of a product
#
# Every column of $X Y$ is a combination of the columns of $X$, and every row a
# combination of the rows of $Y$. So
#
# $$\operatorname{rank}(X Y) \le \min\big(\operatorname{rank}(X), \operatorname{rank}(Y)\big).$$
#
# In particular the inner size caps the rank: a $(m \times r)(r \times n)$
# product has rank at most $r$, however large $m$ and $n$ are.

# %%
for r in [1, 2, 5, 10]:
    P = rng.standard_normal((300, r)) @ rng.standard_normal((r, 200))   # [300, r] @ [r, 200]
    print(f"inner size r = {r:2d}: product is {P.shape}, rank {linalg.numerical_rank(P)}")

# %% [markdown]
# ### Exercise 1.3
#
# In GPT-2 small a weight matrix is $768 \times 768$. LoRA with $r = 4$ learns
# $B$ ($768 \times 4$) and $A$ ($4 \times 768$). What is the **largest** rank
# the update $B A$ can have? Set `answer` to that number.

# %%
# Exercise 1.3: the largest possible rank of B @ A
# BEGIN SOLUTION
answer = 4
# END SOLUTION
checks.check_lora_update_rank(answer)

# %% [markdown]
# ## What to remember
#
# - Rank = the number of independent directions in a matrix's columns (or rows).
# - A column times a row has rank 1; $r$ of them summed, $B A$, rank at most $r$.
# - A rank-$r$ $m \times n$ matrix can be stored as $r(m+n)$ numbers instead of $mn$.
# - On a computer, rank is counted above a tolerance, $\sigma_{\max} \max(m,n)\,\varepsilon$ by default.
#
# Next, **02_svd**: every matrix is a sum of rank-1 pieces, sorted by size, and
# cutting that sum short gives the best low-rank approximation.

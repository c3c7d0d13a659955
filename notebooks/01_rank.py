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
# # 1. Rank: how many directions does a matrix really use?
#
# LoRA makes one bet: when you fine-tune a big model, the *change* to each
# weight matrix, $\Delta W$, needs only a few directions. "Few directions" has
# a precise name, **rank**, and this notebook holds one idea:
#
# > the rank of a matrix is the number of independent directions its columns
# > span; a column times a row has rank 1, and a sum of $r$ of them, $BA$,
# > has rank at most $r$.
#
# Exercises end with a `checks.check_...(...)` call that tells you if you got
# it; `checks.hint("1.1", 1)` nudges, `checks.hint("1.1", 2)` gives the method.

# %%
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
# Write `factor_rank_one(M)`: given any rank-1 matrix `M`, return a column `u`
# and a row `v` (as 1-D arrays) with `np.outer(u, v)` equal to `M`. The check
# hands it rank-1 matrices of sizes you have not seen, some with a row or a
# column of zeros. Use NumPy only (not `np.linalg.svd` either: it is possible
# with indexing and one division).

# %% nbgrader={"grade": false, "grade_id": "ex-1-1", "locked": false, "schema_version": 3, "solution": true}
# Exercise 1.1: write a rank-1 matrix as np.outer(u, v)
def factor_rank_one(M):
    ### BEGIN SOLUTION
    i, j = np.unravel_index(np.argmax(np.abs(M)), M.shape)   # the largest entry: surely not zero
    v = M[i]                     # row i; every row is a multiple of it
    u = M[:, j] / M[i, j]        # how many times row i each row is
    return u, v
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex-1-1-check", "locked": true, "points": 1, "schema_version": 3, "solution": false}
checks.check_factor_rank_one(factor_rank_one)

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
# "At most", not "exactly": if $b_2$ is a multiple of $b_1$, the two pieces
# share a direction and the rank is 1.
#
# ### Exercise 1.2
#
# Write `matrix_of_rank(m, n, k)`: return an $m \times n$ matrix whose rank is
# **exactly** $k$. The check calls it with sizes and ranks of its own choosing.

# %% nbgrader={"grade": false, "grade_id": "ex-1-2", "locked": false, "schema_version": 3, "solution": true}
# Exercise 1.2: an m x n matrix of rank exactly k
def matrix_of_rank(m, n, k):
    ### BEGIN SOLUTION
    g = np.random.default_rng()
    return g.standard_normal((m, k)) @ g.standard_normal((k, n))   # [m, k] @ [k, n]
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex-1-2-check", "locked": true, "points": 1, "schema_version": 3, "solution": false}
checks.check_matrix_of_rank(matrix_of_rank)

# %% [markdown]
# ## Predict: the rank of LoRA's update
#
# In GPT-2 small a weight matrix is $768 \times 768$. LoRA with $r = 4$ learns
# $B$ ($768 \times 4$) and $A$ ($4 \times 768$), so the update $BA$ is a
# $768 \times 768$ matrix. **Before running anything**, write down the rank you
# expect $BA$ to have when $A$ and $B$ are random.

# %% nbgrader={"grade": false, "grade_id": "ex-1-3", "locked": false, "schema_version": 3, "solution": true}
# Exercise 1.3: your prediction of rank(B @ A)
### BEGIN SOLUTION
my_prediction = 4
### END SOLUTION

# %% nbgrader={"grade": false, "grade_id": "ex-1-3-reveal", "locked": true, "schema_version": 3, "solution": false}
checks.reveal_lora_update_rank(my_prediction)

# %% [markdown]
# ## What to remember
#
# - Rank = the number of independent directions in a matrix's columns (or rows).
# - A column times a row has rank 1; $r$ of them summed, $B A$, rank at most $r$,
#   however large the matrix.
# - A rank-$r$ $m \times n$ matrix can be stored as $r(m+n)$ numbers instead of $mn$.
#
# Next, **02_svd**: every matrix is a sum of rank-1 pieces, sorted by size, and
# cutting that sum short gives the best low-rank approximation.

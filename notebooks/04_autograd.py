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
# # 4. Autograd: backward is the chain rule, run over a graph in reverse
#
# Training a LoRA adapter means nudging A and B downhill on the loss, so we need
# $\partial L / \partial A$ and $\partial L / \partial B$. In minilora, as in
# PyTorch, one call computes them: `loss.backward()`. This notebook opens that
# call. It is only three ideas:
#
# 1. every operation records a node in a **graph**: its inputs, and a small
#    function that knows its local derivative;
# 2. the **chain rule** multiplies local derivatives along the paths from the loss
#    back to each input;
# 3. a **topological order** makes sure each node hears from all its users
#    before it passes the gradient on.
#
# Then you write two backward rules yourself, and see why a frozen weight,
# LoRA's W0, costs backward nothing at all.

# %%
import inspect
import time

import matplotlib.pyplot as plt
import numpy as np

from minilora import Tensor, checks, count_backward_work
from minilora import functional as F

np.set_printoptions(precision=4, suppress=True)

# %% [markdown]
# ## A computation is a graph
#
# Four numbers and three operations: $e = ab$, $d = e + c$, $L = d f$.
# Each result is a `Tensor` that remembers the tensors it was made from
# (`_parents`) and the operation that made it (`_op`).

# %%
a = Tensor(2.0, requires_grad=True, dtype=np.float64)
b = Tensor(-3.0, requires_grad=True, dtype=np.float64)
c = Tensor(10.0, requires_grad=True, dtype=np.float64)
f = Tensor(-2.0, requires_grad=True, dtype=np.float64)
e = a * b
d = e + c
L = d * f
print("L =", L.item(), "made by", L._op, "from", [p._op or "a leaf" for p in L._parents])

# %%
checks.draw_graph(L, names={"a": a, "b": b, "c": c, "f": f, "e": e, "d": d, "L": L})
plt.show()

# %% [markdown]
# ### Exercise 4.1 (predict first)
#
# If $a$ grows by a tiny amount $\varepsilon$, $L$ changes by about
# $\frac{\partial L}{\partial a}\varepsilon$. What is $\partial L / \partial a$
# here? Work it out on paper from the graph, then write your number.

# %% nbgrader={"grade": false, "grade_id": "ex-4-1", "locked": false, "schema_version": 3, "solution": true}
# Exercise 4.1: your prediction of dL/da
my_prediction = ...   # replace ... with your number
### BEGIN SOLUTION
my_prediction = 6.0
### END SOLUTION

# %% nbgrader={"grade": false, "grade_id": "ex-4-1-reveal", "locked": true, "schema_version": 3, "solution": false}
checks.reveal_chain_rule(my_prediction, a, b, c, f)

# %% [markdown]
# ## The chain rule, one closure per operation
#
# Each operation computes its result and, right beside it, a `_backward`
# closure. Here is multiplication, straight from minilora's source:

# %%
print(inspect.getsource(Tensor.__mul__))

# %% [markdown]
# Read the closure as the chain rule for one edge. When backward reaches
# `out`, `out.grad` holds $\partial L / \partial\,\text{out}$. Since
# $\partial(ab)/\partial a = b$, the closure adds `out.grad * b` to `a`'s
# gradient. Three details:
#
# - **adds** (`_add_grad`), never overwrites: a tensor used twice collects a
#   gradient from each use;
# - `_unbroadcast` sums the gradient back to the input's shape when NumPy
#   broadcast a small input against a large one;
# - `if self.requires_grad`: no gradient is computed for an input that does not
#   want one. Remember this line for the end of the notebook.
#
# The "adds" rule is easy to test: $y = x \cdot x + x$ uses $x$ three times,
# and $dy/dx = 2x + 1$.

# %%
x = Tensor(3.0, requires_grad=True, dtype=np.float64)
y = x * x + x
y.backward()
print("dy/dx from backward:", x.grad, "  2x + 1 =", 2 * 3.0 + 1)


# %% [markdown]
# ## The order: a topological sort
#
# A node may pass its gradient on only once **all** of it has arrived, that is,
# after every node that used it has run its rule. Listing the nodes so that
# each comes after everything it was made from (a *topological order*), and
# walking that list backwards, guarantees it. A depth-first search builds
# the list:

# %%
def topological_order(root):
    order, seen = [], set()

    def visit(node):
        if id(node) not in seen:
            seen.add(id(node))
            for parent in node._parents:
                visit(parent)          # everything it was made from goes first
            order.append(node)

    visit(root)
    return order


print([node._op or "leaf" for node in topological_order(L)])

# %% [markdown]
# Now run backward by hand: seed $\partial L/\partial L = 1$, then call each
# closure in reverse order. minilora's `backward()` does exactly this (with
# an iterative search instead of recursion, and some bookkeeping).

# %%
for leaf in (a, b, c, f):
    leaf.grad = None
L.grad = np.ones_like(L.data)
for node in reversed(topological_order(L)):
    if node._backward is not None:     # leaves have no rule: their .grad is the answer
        node._backward(node)
by_hand = [leaf.grad.item() for leaf in (a, b, c, f)]

for leaf in (a, b, c, f):
    leaf.grad = None
((a * b + c) * f).backward()
print("by hand   :", by_hand)
print("backward():", [leaf.grad.item() for leaf in (a, b, c, f)])


# %% [markdown]
# ## Your turn: the backward rule of matrix multiplication
#
# LoRA's layer is matrix products: $XA^\top$, then that times $B^\top$. For
# $C = AB$ with $A$ of shape $(m, k)$ and $B$ of shape $(k, n)$, backward
# receives $G = \partial L/\partial C$, shape $(m, n)$, and must return
# $\partial L/\partial A$, shape $(m, k)$, and $\partial L/\partial B$,
# shape $(k, n)$.
#
# Start from one entry: $C_{in} = \sum_j A_{ij} B_{jn}$. Which entries of $C$
# does $A_{ij}$ touch, and with what slope? Let the shapes check your answer.
#
# ### Exercise 4.2
#
# Write `matmul_backward(A, B, G)` with NumPy, returning `(dA, dB)`. The check
# runs it on hidden matrices of several shapes and compares with minilora's rule.

# %% nbgrader={"grade": false, "grade_id": "ex-4-2", "locked": false, "schema_version": 3, "solution": true}
# Exercise 4.2: the backward rule of C = A @ B
def matmul_backward(A, B, G):
    ### BEGIN SOLUTION
    dA = G @ B.T          # [m, n] @ [n, k] -> [m, k]
    dB = A.T @ G          # [k, m] @ [m, n] -> [k, n]
    return dA, dB
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex-4-2-check", "locked": true, "points": 1, "schema_version": 3, "solution": false}
checks.check_matmul_backward(matmul_backward)


# %% [markdown]
# ## A second opinion: finite differences
#
# A derivative is a slope, and a slope can be measured: nudge one number up
# and down by $h$ and watch the loss,
#
# $$\frac{\partial L}{\partial X_{ij}} \approx \frac{L(X_{ij} + h) - L(X_{ij} - h)}{2h}.$$
#
# It is slow (two forward passes per number) and only approximate, but it
# needs no calculus, so it catches a wrong rule. With the loss
# $L = \sum_{in} C_{in} G_{in}$, whose gradient with respect to $C$ is exactly $G$:

# %%
def numerical_grad(loss, X, h=1e-6):
    """Central differences of loss() with respect to every entry of X (changed in place, then restored)."""
    grad = np.zeros_like(X)
    for i in np.ndindex(X.shape):
        keep = X[i]
        X[i] = keep + h
        up = loss()
        X[i] = keep - h
        down = loss()
        X[i] = keep
        grad[i] = (up - down) / (2 * h)
    return grad


rng = np.random.default_rng(0)
A, B, G = rng.standard_normal((3, 4)), rng.standard_normal((4, 2)), rng.standard_normal((3, 2))
dA, dB = matmul_backward(A, B, G)
tA, tB = Tensor(A, requires_grad=True), Tensor(B, requires_grad=True)
(tA @ tB).backward(G)

checks.cmp("dA vs minilora", dA, tA.grad)
checks.cmp("dB vs minilora", dB, tB.grad)
checks.cmp("dA vs finite", dA, numerical_grad(lambda: np.sum((A @ B) * G), A))
checks.cmp("dB vs finite", dB, numerical_grad(lambda: np.sum((A @ B) * G), B))


# %% [markdown]
# "exact" means equal to the last bit; "approximate" means within a relative
# $10^{-6}$. Finite differences are never exact: rounding in $L(X+h) - L(X-h)$
# and the curvature of $L$ both leave a small error.
#
# ## One more rule: softmax
#
# Attention (notebook 05) turns each row of scores into weights with a softmax,
# $y_i = e^{x_i} / \sum_j e^{x_j}$, along the last axis. Unlike multiplication,
# every output of a row depends on every input of that row.
#
# ### Exercise 4.3
#
# Write `softmax_backward(x, G)`: for $y = \mathrm{softmax}(x)$ along the last
# axis and $G = \partial L / \partial y$, return $\partial L / \partial x$
# (x's shape). Compute $y$ yourself with NumPy. Hidden inputs have 1, 2 and 3 axes.

# %% nbgrader={"grade": false, "grade_id": "ex-4-3", "locked": false, "schema_version": 3, "solution": true}
# Exercise 4.3: the backward rule of softmax along the last axis
def softmax_backward(x, G):
    ### BEGIN SOLUTION
    e = np.exp(x - x.max(axis=-1, keepdims=True))        # shifted: exp cannot overflow
    y = e / e.sum(axis=-1, keepdims=True)
    return y * (G - (G * y).sum(axis=-1, keepdims=True))  # one number per row, broadcast back
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex-4-3-check", "locked": true, "points": 1, "schema_version": 3, "solution": false}
checks.check_softmax_backward(softmax_backward)

# %% [markdown]
# The same second opinion, and a picture of its limits. The finite-difference
# error first shrinks with $h$ (the curvature term, about $h^2$) and then grows
# again (rounding, about $10^{-16}/h$): the best $h$ is in between.

# %%
x_test, G_test = rng.standard_normal((2, 5)), rng.standard_normal((2, 5))


def softmax_loss():
    e = np.exp(x_test - x_test.max(axis=-1, keepdims=True))
    return np.sum(e / e.sum(axis=-1, keepdims=True) * G_test)


mine = softmax_backward(x_test, G_test)
checks.cmp("dx vs finite", mine, numerical_grad(softmax_loss, x_test))

steps = np.logspace(-12, -1, 23)
errors = [np.max(np.abs(numerical_grad(softmax_loss, x_test, h) - mine)) for h in steps]
fig, ax = plt.subplots(figsize=(5.5, 3.2))
ax.loglog(steps, errors, ".-")
ax.set_xlabel("step h")
ax.set_ylabel("max |finite difference - your rule|")
ax.set_title("finite differences: too small h is as bad as too large")
plt.show()

# %% [markdown]
# ## Why a frozen weight costs nothing
#
# A LoRA layer computes $h = x W_0^\top + (x A^\top) B^\top$ with the pretrained
# $W_0$ frozen (`requires_grad=False`) and only $A$, $B$ trainable. Recall the
# line `if self.requires_grad:` inside every backward rule.
#
# ### Exercise 4.4 (predict first)
#
# After `loss.backward()`, which of `x` (the input data), `W0`, `A`, `B` and
# `h` (the layer's output) hold a `.grad`? Write the set of names, e.g.
# `{"x", "h"}`, or `set()` for none.

# %% nbgrader={"grade": false, "grade_id": "ex-4-4", "locked": false, "schema_version": 3, "solution": true}
# Exercise 4.4: which tensors hold a .grad after backward?
my_prediction = ...   # replace ... with a set of names
### BEGIN SOLUTION
my_prediction = {"A", "B"}
### END SOLUTION

# %% nbgrader={"grade": false, "grade_id": "ex-4-4-reveal", "locked": true, "schema_version": 3, "solution": false}
checks.reveal_which_grads(my_prediction)

# %% [markdown]
# `count_backward_work()` counts the gradient arrays backward computes. Here
# is a wider layer (512 x 512, rank 8) run twice, once with $W_0$ trainable
# (full fine-tuning) and once frozen (LoRA):

# %%
rng = np.random.default_rng(1)
X = Tensor(rng.standard_normal((256, 512)).astype(np.float32))
W0_values = (rng.standard_normal((512, 512)) / np.sqrt(512)).astype(np.float32)
A = Tensor(rng.standard_normal((8, 512)).astype(np.float32) * 0.05, requires_grad=True)
B = Tensor(rng.standard_normal((512, 8)).astype(np.float32) * 0.05, requires_grad=True)

for frozen in (False, True):
    W0 = Tensor(W0_values, requires_grad=not frozen)
    h = X @ W0.T + (X @ A.T) @ B.T
    loss = (h * h).mean()
    start = time.perf_counter()
    with count_backward_work() as work:
        loss.backward()
    ms = 1000 * (time.perf_counter() - start)
    print(f"W0 {'frozen   ' if frozen else 'trainable'}: {work['grads']} gradient arrays, "
          f"{work['grads:matmul']} from matmuls, W0.grad is {'None' if W0.grad is None else W0.grad.shape}, "
          f"{ms:.1f} ms")
    A.grad = B.grad = None

# %% [markdown]
# Freezing $W_0$ skips its gradient, a 512 x 512 matrix product, and with it
# the optimizer state that would follow it. The forward pass is unchanged:
# $x W_0^\top$ is still computed. That is the whole saving, and notebook 07
# measures it in bytes.
#
# ## What to remember
#
# - Every operation stores its inputs and a `_backward` closure with its local
#   derivative; backward multiplies them along the paths (the chain rule).
# - Reverse topological order lets each node collect all its gradient first.
# - matmul: $dA = G B^\top$, $dB = A^\top G$; softmax: $dx = y \odot (G - \sum G \odot y)$.
# - Check a rule with finite differences; mind the step size.
# - A frozen tensor gets no gradient: backward never computes it.
#
# **Next: 05_transformer**, the tiny GPT opened up, and the four attention
# matrices LoRA sits beside.

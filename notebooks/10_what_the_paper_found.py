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
# # 10. What the paper found, measured on our model
#
# Section 7 of the LoRA paper asks four questions about trained adapters.
# Each has an experiment in `minilora paper`, run on the tiny GPT with a
# recipe fixed before any result was seen:
#
# | question | the paper (GPT-3 175B) |
# |---|---|
# | How small can $r$ be? (Table 6) | $r = 1$ gives 73.4 on WikiSQL, $r = 64$ gives 73.5 |
# | Which matrices, at a fixed budget? (Table 5) | $W_q, W_v$ at $r=4$: 73.7; $W_q$ alone at $r=8$: 70.4 |
# | Do adapters of different $r$ share directions? (§7.2) | top direction of $A_{r=8}$ and $A_{r=64}$: $\phi > 0.5$ |
# | How does $\Delta W$ relate to $W_0$? (§7.3) | amplification about 21.5 at $r = 4$, about 2 at $r = 64$ |
#
# and one question from later work, rsLoRA: why the scaling $\alpha/r$
# slows learning at large $r$. Each section quotes the paper, shows ours, and
# gives the verdict. A claim our small model does not reproduce is reported
# as such.

# %%
import numpy as np
from IPython.display import Image, display

from minilora import LoraConfig, analysis, apply_lora, checks, data, paper, pretrained
from minilora import functional as F
from minilora.lora import lora_layers
from minilora.tensor import manual_seed

results = paper.load_results()
print(f"shipped results: {results['mode']} run; recipe {results['recipe']}")


def verdict(fragment):
    """Print the verdict row whose claim contains `fragment`."""
    for row in results["verdicts"]:
        if fragment in row["claim"]:
            print(f"claim:    {row['claim']}\npaper:    {row['paper']}\nmeasured: {row['measured']}\n"
                  f"verdict:  {row['verdict'].upper()}")


# %% [markdown]
# ## How small can $r$ be? (Table 6)
#
# LoRA on $W_q$ and $W_v$ of both blocks, $r$ from 1 up, on `inc` (add one to
# each digit), several seeds per rank, against full fine-tuning with the same
# number of steps.
#
# ### Exercise 10.1 (predict first)
#
# What is the smallest $r$ whose mean accuracy reaches 90% of full
# fine-tuning's?

# %% nbgrader={"grade": false, "grade_id": "ex-10-1", "locked": false, "schema_version": 3, "solution": true}
# Exercise 10.1: your predicted smallest rank
### BEGIN SOLUTION
my_rank = 2
### END SOLUTION

# %% nbgrader={"grade": false, "grade_id": "ex-10-1-reveal", "locked": true, "schema_version": 3, "solution": false}
checks.reveal_smallest_rank(my_rank, results);

# %%
display(Image(filename=str(paper.ASSET_DIR / "rank_sweep.png")))
verdict("smallest r")

# %% [markdown]
# Read the faint dots (single seeds) before the line (their mean). On `inc`
# a run tends to either learn the task within the step budget or not learn
# it at all, so a mean over three seeds moves in steps of a third, and one
# unlucky seed can put a larger $r$ below a smaller one (here $r = 8$ and
# $r = 16$ each lost one seed of three, while $r = 4$ lost none outright).
# The verdict is what this fixed recipe gives, not the best a tuned one could.
#
# Compare notebook 08's sweep on the same task: with 600 steps instead of
# 400 and $\alpha = r$ instead of $2r$, every seed at $r = 4$, 8 and 16
# reached 99.5% or more, while $r = 1$ and $r = 2$ stayed below 10%. The
# rank a task "needs" is measured under a training budget; change the budget
# and the answer moves. On neither recipe does $r = 1$ do what it did for
# GPT-3 on WikiSQL.

# %% [markdown]
# ## Which matrices, at a fixed budget? (Table 5)
#
# A fair comparison holds the number of trainable parameters fixed. On a
# $d \times d$ matrix a rank-$r$ LoRA costs $r \cdot 2d$ per layer; adapting
# more kinds of matrix means a smaller $r$ for each.
#
# ### Exercise 10.2
#
# Write `equal_budget_rank(budget, k, d_in, d_out, n_layer)`: the rank that
# makes LoRA on `k` matrix types (each `d_out x d_in`, in each of `n_layer`
# layers) spend exactly `budget` parameters, or `None` if no whole rank does.

# %% nbgrader={"grade": false, "grade_id": "ex-10-2", "locked": false, "schema_version": 3, "solution": true}
# Exercise 10.2: the rank that spends a budget exactly
def equal_budget_rank(budget, k, d_in, d_out, n_layer):
    ### BEGIN SOLUTION
    per_rank = n_layer * k * (d_in + d_out)
    return budget // per_rank if budget % per_rank == 0 else None
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex-10-2-check", "locked": true, "points": 1, "schema_version": 3, "solution": false}
checks.check_equal_budget_rank(equal_budget_rank)

# %%
for row in results["budget_table"]:
    print(f"{'+'.join(row['targets']):<32} r={row['r']}  {row['trainable_params']:5d} params  "
          f"accuracy {row['accuracy']:.1%}  (seeds: {[round(a, 2) for a in row['accuracy_per_seed']]})")
verdict("equal trainable")
verdict("several matrices")

# %% [markdown]
# An equal budget makes the comparison fair; it does not make the answer
# the same on every model. The paper's own pair comes out the same way here:
# $W_q, W_v$ at $r = 4$ beat $W_q$ alone at $r = 8$. The general claim fails
# because $W_o$ alone at $r = 8$ learns the task completely: on the tiny GPT,
# *which* matrix is adapted can matter more than how many. Compare the
# single-matrix rows with each other.

# %% [markdown]
# ## Do adapters of different rank learn the same directions? (§7.2)
#
# Take $A$ from an $r=8$ adapter and from an $r=64$ adapter trained on the
# same task. Their rows live in the 64-dimensional input space. With $U_i$
# the top $i$ right singular vectors of $A_{r=8}$ and $U_j$ those of
# $A_{r=64}$, the paper defines
#
# $$\phi(A_1, A_2, i, j) = \frac{\|U_i^\top U_j\|_F^2}{\min(i, j)} \in [0, 1]:$$
#
# 1 when one subspace lies inside the other, 0 when they are orthogonal.
#
# ### Exercise 10.3
#
# Write `phi(A1, A2, i, j)` with NumPy.

# %% nbgrader={"grade": false, "grade_id": "ex-10-3", "locked": false, "schema_version": 3, "solution": true}
# Exercise 10.3: subspace similarity
def phi(A1, A2, i, j):
    ### BEGIN SOLUTION
    U1 = np.linalg.svd(A1, full_matrices=False)[2][:i].T     # [d, i]
    U2 = np.linalg.svd(A2, full_matrices=False)[2][:j].T     # [d, j]
    return float(np.linalg.norm(U1.T @ U2) ** 2 / min(i, j))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex-10-3-check", "locked": true, "points": 1, "schema_version": 3, "solution": false}
checks.check_phi(phi)

# %% [markdown]
# The shipped heat map, $\phi(A_{r=8}, A_{r=64}, i, j)$ for one matrix, next
# to the same for two random matrices of those shapes. For random
# subspaces $\phi$ is about $\max(i, j)/64$: it climbs to 1 on the right
# only because 64 directions fill the whole 64-dimensional space.

# %%
display(Image(filename=str(paper.ASSET_DIR / "subspace_similarity.png")))
ss = results["subspace_similarity"]
print("phi_top1 per adapted matrix:", np.round(ss["phi_top1_per_matrix"], 3))
verdict("phi_top1")

# %% [markdown]
# The verdict is *not reproduced*: our $\phi_\text{top1}$ is about 0.05,
# three times the random baseline but far from the paper's 0.5. That is a
# finding about our scale, not a bug to tune away. One tempting excuse does not hold: $A$ starts
# random, but it does not stay there. In our runs, 400 steps move $A$ by
# about one to three times its initial norm, and its top direction ends up
# nearly orthogonal to where it began. A question to take further: with a
# model this small, are there simply many different low-rank solutions?

# %% [markdown]
# ## How does $\Delta W$ relate to $W_0$? (§7.3)
#
# Take $U$, $V$: the top-$r$ left and right singular vectors of $\Delta W$.
# $U^\top W_0 V$ is $W_0$ seen only in the directions $\Delta W$ uses. If
# $\|\Delta W\|_F$ is much larger than $\|U^\top W_0 V\|_F$, the update
# *amplifies* directions that $W_0$ has but does not emphasise.
#
# ### Exercise 10.4
#
# Write `amplification(W0, delta_w, r)` $= \|\Delta W\|_F / \|U^\top W_0 V\|_F$.

# %% nbgrader={"grade": false, "grade_id": "ex-10-4", "locked": false, "schema_version": 3, "solution": true}
# Exercise 10.4: the amplification factor
def amplification(W0, delta_w, r):
    ### BEGIN SOLUTION
    U, s, Vt = np.linalg.svd(delta_w, full_matrices=False)
    projected = U[:, :r].T @ W0 @ Vt[:r].T                 # [r, r]
    return float(np.linalg.norm(delta_w) / np.linalg.norm(projected))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex-10-4-check", "locked": true, "points": 1, "schema_version": 3, "solution": false}
checks.check_amplification(amplification)

# %%
am = results["amplification"]
for r, f in zip(am["ranks"], am["factor"]):
    print(f"r = {r:3d}: amplification {f:6.2f}  (mean over the adapted matrices)")
verdict("amplification")

# %% [markdown]
# Ours falls steeply from $r = 1$ to $r = 32$, and at $r = 4$ it is about 22,
# close to the paper's 21.5 by coincidence of scale. But it rises a little
# again at $r = 64$, so the strict test "falls as $r$ grows" fails: the trend
# is there, the monotone fall is not.

# %% [markdown]
# ## rsLoRA: the scaling and the rank
#
# With $h = W_0x + \frac{\alpha}{r}BAx$ and $B = 0$ at the start, the first
# gradient of $B$ is $\frac{\alpha}{r}\,\frac{\partial L}{\partial h}(Ax)^\top$.
#
# ### Exercise 10.5 (predict first)
#
# Going from $r = 1$ to $r = 64$ with $\alpha$ fixed, what **ratio**
# $\|\nabla_B\|_{r=64} / \|\nabla_B\|_{r=1}$ do you expect at step 0?

# %% nbgrader={"grade": false, "grade_id": "ex-10-5", "locked": false, "schema_version": 3, "solution": true}
# Exercise 10.5: your predicted ratio of gradient norms, r = 64 over r = 1
### BEGIN SOLUTION
my_ratio = 0.125
### END SOLUTION

# %% [markdown]
# Live: one batch, one backward pass per rank and scaling rule.

# %%
x, y = pretrained.task_batches(["inc"], 32, 32, seed=123)(0)
grad_norms = {"ranks": [1, 4, 16, 64], "grad_norm_alpha_over_r": [], "grad_norm_alpha_over_sqrt_r": []}
for rs in (False, True):
    for r in grad_norms["ranks"]:
        manual_seed(0)
        model = apply_lora(pretrained.load_pretrained(), LoraConfig(r=r, lora_alpha=8, use_rslora=rs))
        F.cross_entropy(model(x), y, ignore_index=data.IGNORE).backward()
        norm = np.sqrt(sum((layer.lora_B["default"].weight.grad.astype(np.float64) ** 2).sum()
                           for layer in lora_layers(model).values()))
        grad_norms["grad_norm_alpha_over_sqrt_r" if rs else "grad_norm_alpha_over_r"].append(norm)
for key in ("grad_norm_alpha_over_r", "grad_norm_alpha_over_sqrt_r"):
    print(f"{key:<28}", np.round(grad_norms[key], 4))

# %% nbgrader={"grade": false, "grade_id": "ex-10-5-reveal", "locked": true, "schema_version": 3, "solution": false}
checks.reveal_rslora_ratio(my_ratio, grad_norms);

# %% [markdown]
# ## All the verdicts
#
# The whole table from the shipped run. Run `minilora paper --quick` (a few
# minutes) to measure your own.

# %%
paper.print_table(results["verdicts"])

# %% [markdown]
# ## What to remember
#
# - The paper found $r = 1$ enough for GPT-3; on our tiny GPT, $r = 1$ on
#   $W_q, W_v$ fails and $r = 4$ is the smallest that works with a long
#   enough recipe. Across seeds the spread can exceed the gap between
#   ranks, so compare ranks over several seeds, under a stated recipe.
# - At a fixed budget the question is *which* matrices, not only how large
#   an $r$: on our model $W_o$ alone or all four at $r = 2$ learn `inc`,
#   while $W_q$ or $W_k$ alone at $r = 8$ do not.
# - $\phi$ compares subspaces, not matrices: its random baseline is about
#   $\max(i, j)/d$, and "shared" means well above it.
# - The amplification factor asks whether $\Delta W$ points where $W_0$ is
#   weak; the paper saw it fall as $r$ grows, and ours mostly does too.
# - With $\alpha / r$ the first gradient shrinks like $1/\sqrt{r}$; rsLoRA's
#   $\alpha/\sqrt{r}$ removes that.
#
# **Next: 11_earlier_methods**: adapter layers and prompt tuning, the methods
# LoRA replaced, measured beside it.

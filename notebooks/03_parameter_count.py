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
# # 3. Counting: $2dr$ against $d^2$
#
# Full fine-tuning trains every number of a weight matrix $W_0 \in \mathbb{R}^{d \times k}$.
# LoRA freezes $W_0$ and trains $B \in \mathbb{R}^{d \times r}$ and
# $A \in \mathbb{R}^{r \times k}$ instead:
#
# $$\underbrace{d \cdot k}_{\text{full fine-tuning}} \quad\text{versus}\quad \underbrace{r\,(d + k)}_{\text{LoRA}},
# \qquad\text{and for a square } d \times d \text{ matrix: } d^2 \text{ versus } 2dr, \text{ a ratio of } \frac{2r}{d}.$$
#
# This notebook puts numbers on that: real model widths, the LoRA paper's
# GPT-3 figures reproduced from shapes alone, and what a small trainable
# fraction does to the optimizer's memory.

# %%
import matplotlib.pyplot as plt
import numpy as np

from minilora import checks, linalg, lora_count
from minilora.lora import LoraConfig
from minilora.model import GPTConfig
from minilora.widgets import param_count_explorer

# %% [markdown]
# ## One matrix
#
# The ratio $2r/d$ shrinks as models get wider, so LoRA pays off most exactly
# where fine-tuning is most expensive:

# %%
print(f"{'model':>14} {'d':>6} {'r':>3} {'full d^2':>13} {'LoRA 2dr':>9} {'ratio':>8}")
for model, d in [("GPT-2 small", 768), ("GPT-2 medium", 1024), ("GPT-3 175B", 12288)]:
    for r in [1, 8, 64]:
        st = linalg.factorization_storage(d, d, r)
        print(f"{model:>14} {d:>6} {r:>3} {st.dense:>13,} {st.factored:>9,} {st.ratio:>8.3%}")

# %% [markdown]
# ### Exercise 3.1
#
# Write `lora_params(d_in, d_out, r)`: the number of trainable numbers LoRA adds
# to a Linear layer with `d_in` inputs and `d_out` outputs ($A$ is
# $r \times d_{in}$, $B$ is $d_{out} \times r$). Careful: not every matrix is
# square. The check tries shapes of its own (and `linalg`'s counters are off
# limits while it does).

# %% nbgrader={"grade": false, "grade_id": "ex-3-1", "locked": false, "schema_version": 3, "solution": true}
# Exercise 3.1: LoRA's parameters for one Linear layer
def lora_params(d_in, d_out, r):
    ### BEGIN SOLUTION
    return r * d_in + d_out * r
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex-3-1-check", "locked": true, "points": 1, "schema_version": 3, "solution": false}
checks.check_lora_param_formula(lora_params)

# %% [markdown]
# ## The paper's GPT-3 numbers, from shapes alone
#
# The LoRA paper adapts the query and value projections $W_q, W_v$ of GPT-3
# (96 layers, $d_{model} = 12288$) and counts
# $|\Theta| = 2 \cdot \hat{L} \cdot d_{model} \cdot r$ trainable parameters,
# with $\hat L = 96 \times 2$ adapted matrices. `lora_count.count_lora_params` adds
# up $r\,(d_{in} + d_{out})$ over every module a `LoraConfig` targets, reading
# only the model's shapes: nothing with 175 billion weights is ever built.

# %%
gpt3 = GPTConfig(vocab_size=50257, block_size=2048, n_layer=96, n_head=96, n_embd=12288)
for r in [1, 4, 8]:
    cfg = LoraConfig(r=r, lora_alpha=r, target_modules=["q_proj", "v_proj"])
    n = lora_count.count_lora_params(gpt3, cfg)
    size = linalg.num_bytes(n, "float16")
    print(f"r = {r}: {n:>11,} trainable parameters = {size / 1e6:5.1f} MB = {size / 2**20:5.1f} MiB in fp16")

# %% [markdown]
# These are **our** counts, from the formula and the shapes. The paper lists
# 4.7M and 37.7M trainable parameters for its $r = 1$ and $r = 8$ GPT-3 runs,
# the same numbers. For $r = 4$ it speaks of a *budget* of **18M** parameters,
# "roughly 35MB" in FP16: a round figure (18M x 2 bytes = 36 MB). Our exact
# count, 18,874,368, takes 37.7 MB (36.0 MiB). Either way, one task's adapter
# is a file of tens of megabytes beside a 350 GB model.
#
# ### Exercise 3.2
#
# The paper's formula is $|\Theta| = 2 \cdot \hat{L} \cdot d_{model} \cdot r$.
# Write `paper_params(n_layer, d_model, r, n_matrices)`: the trainable
# parameters of LoRA on `n_matrices` square $d_{model} \times d_{model}$
# matrices in each of `n_layer` layers. The check tries model sizes of its own.

# %% nbgrader={"grade": false, "grade_id": "ex-3-2", "locked": false, "schema_version": 3, "solution": true}
# Exercise 3.2: the paper's count, 2 * L_hat * d_model * r
def paper_params(n_layer, d_model, r, n_matrices):
    ### BEGIN SOLUTION
    L_hat = n_layer * n_matrices          # adapted matrices in the whole model
    return 2 * L_hat * d_model * r        # each: A (r x d) and B (d x r)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex-3-2-check", "locked": true, "points": 1, "schema_version": 3, "solution": false}
checks.check_paper_formula(paper_params)

# %% [markdown]
# ## Explore: where real models sit
#
# Both axes are logarithmic, so $d^2$ (slope 2) and $2dr$ (slope 1) pull apart
# as $d$ grows. Move $d$ and $r$; the dashed lines mark GPT-2 small and GPT-3.

# %%
param_count_explorer()

# %% [markdown]
# ## What the trainable fraction means for memory
#
# Training needs more than the weights. The optimizer AdamW keeps two running
# averages for **each trainable parameter** (the mean $m$ and the mean square
# $v$ of its gradient), usually in fp32: 8 bytes per trainable parameter. A
# gradient is needed only for trainable parameters too. Frozen weights get
# neither, so with LoRA the optimizer's share almost vanishes.
#
# ### Predict (3.3)
#
# AdamW keeps 2 fp32 numbers per trainable parameter. How many **times** less
# AdamW state does LoRA ($r = 4$ on $W_q, W_v$) need than full fine-tuning of
# GPT-3's 175 billion parameters? Guess the factor before the tally below shows it.

# %% nbgrader={"grade": false, "grade_id": "ex-3-3", "locked": false, "schema_version": 3, "solution": true}
# Exercise 3.3: your prediction of (full fine-tuning's AdamW bytes) / (LoRA's AdamW bytes)
### BEGIN SOLUTION
my_prediction = 10_000
### END SOLUTION

# %% nbgrader={"grade": false, "grade_id": "ex-3-3-reveal", "locked": true, "schema_version": 3, "solution": false}
checks.reveal_adam_ratio(my_prediction)

# %% [markdown]
# A rough tally for GPT-3 (weights and gradients in fp16, Adam state in fp32,
# ignoring activations):

# %%
N = 175_000_000_000
n_lora = 18_874_368                                # r = 4 on q, v
tally = {
    "full fine-tuning": {"weights": linalg.num_bytes(N, "fp16"),
                         "gradients": linalg.num_bytes(N, "fp16"),
                         "AdamW state": linalg.optimizer_state_bytes(N)},
    "LoRA r = 4": {"weights": linalg.num_bytes(N + n_lora, "fp16"),
                   "gradients": linalg.num_bytes(n_lora, "fp16"),
                   "AdamW state": linalg.optimizer_state_bytes(n_lora)},
}
fig, ax = plt.subplots(figsize=(6, 2.6))
for row, (name, parts) in enumerate(tally.items()):
    left = 0.0
    for k, (part, size) in enumerate(parts.items()):
        ax.barh(row, size / 1e9, left=left, color=f"C{k}", label=part if row == 0 else None)
        left += size / 1e9
    ax.text(left + 20, row, f"{left:,.0f} GB", va="center")
ax.set_yticks([0, 1], list(tally))
ax.set_xlabel("GB")
ax.set_xlim(0, 2600)
ax.legend(loc="upper right")
ax.set_title("GPT-3 training memory, rough tally")
plt.show()
for name, parts in tally.items():
    print(f"{name:>16}: " + ", ".join(f"{p} {b / 1e9:,.2f} GB" for p, b in parts.items()))

# %% [markdown]
# The optimizer state shrank by the factor revealed above, but the total only
# by about 6x: the frozen weights are still there, and now they are nearly all
# of it. The paper measured 1.2 TB for full fine-tuning and 350 GB with LoRA;
# it does not break its figure down the way we did, so our 2.1 TB is a
# simpler, rougher model. The lesson is the same: with LoRA, training memory
# is essentially one frozen copy of the weights.

# %% [markdown]
# ## What to remember
#
# - Per $d \times k$ matrix: $dk$ numbers for full fine-tuning, $r(d+k)$ for LoRA;
#   for square matrices the ratio is $2r/d$.
# - GPT-3, $W_q$ and $W_v$, $r = 4$: 18.9M trainable parameters by our count
#   (the paper's budget: 18M), 37.7 MB in fp16.
# - AdamW keeps 2 fp32 numbers per *trainable* parameter; frozen weights cost
#   no optimizer state and no gradient, which is where LoRA's memory saving
#   comes from.
#
# Next, **04_autograd**: how a gradient is computed at all, and why a frozen
# weight never gets one.

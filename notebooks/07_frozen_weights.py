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
# # 7. Frozen means free: what a frozen weight does not cost
#
# After `apply_lora`, the pretrained weights are **frozen**: `requires_grad` is
# False. This notebook measures what that buys, and holds one idea:
#
# > a frozen weight gets no gradient and no optimizer state; the forward pass
# > still uses it as before.
#
# Everything here is measured on the shipped tiny GPT, not computed from a formula.

# %%
import numpy as np

from minilora import checks, data
from minilora import functional as F
from minilora.lora import LoraConfig, apply_lora, print_trainable_parameters
from minilora.optim import AdamW
from minilora.pretrained import load_pretrained
from minilora.tensor import count_backward_work, no_grad
from minilora.timing import alternate
from minilora.widgets import trainable_toggle

# %% [markdown]
# ## A LoRA on the tiny GPT
#
# Rank 4 on attention's query and value projections, the LoRA paper's choice.
# PEFT's one-line summary says how much of the model will train:

# %%
model = apply_lora(load_pretrained(), LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
print_trainable_parameters(model)
print("parameter tensors:", len(list(model.named_parameters())))
for name, p in list(model.named_parameters())[:12]:
    print(f"{name:42s} {str(p.shape):12s}")
print("...")

# %% [markdown]
# ## Predict (7.1): who gets a gradient?
#
# We are about to run one batch through the model and call `loss.backward()`.
# The model has 44 parameter tensors (counted above). How many of them will hold a `.grad`
# afterwards? Commit to a number first.

# %% nbgrader={"grade": false, "grade_id": "ex-7-1", "locked": false, "schema_version": 3, "solution": true}
# Exercise 7.1: your prediction of how many parameter tensors get a .grad
### BEGIN SOLUTION
my_prediction = 8
### END SOLUTION

# %% nbgrader={"grade": false, "grade_id": "ex-7-1-reveal", "locked": true, "schema_version": 3, "solution": false}
checks.reveal_grad_count(my_prediction)

# %% [markdown]
# See it for yourself on our model: one batch of the `inc` task, a loss, a
# backward pass, and a look at every `.grad`.

# %%
x, y = data.make_batch(["inc"], 32, model.config.block_size, np.random.default_rng(0))   # [32, T] each
loss = F.cross_entropy(model(x), y, ignore_index=data.IGNORE)
loss.backward()
got = [(n, p.grad.shape) for n, p in model.named_parameters() if p.grad is not None]
for name, shape in got:
    print(f"{name:48s} grad {shape}")
q = model.transformer.h[0].attn.q_proj
print("\nthe frozen weight beside the first adapter has grad:", q.base_layer.weight.grad)

# %% [markdown]
# ## What it saves: full fine-tuning against LoRA, measured
#
# For each way of training we run one backward pass and one AdamW step, then
# count: the bytes of gradients that were stored, the bytes of AdamW state
# (its two moment arrays $m$ and $v$, created at the first step), and the
# backward work, with `count_backward_work()`: how many backward rules ran and
# how many gradients they computed.

# %%
def training_costs(model, seed=0):
    """One backward pass and one AdamW step; what they stored and how much work they did."""
    x, y = data.make_batch(["inc"], 32, model.config.block_size, np.random.default_rng(seed))
    for p in model.parameters():
        p.grad = None
    with count_backward_work() as work:
        F.cross_entropy(model(x), y, ignore_index=data.IGNORE).backward()
    grad_bytes = sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)
    optimizer = AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    optimizer.step()
    return {"trainable": model.num_parameters(trainable_only=True), "gradient bytes": grad_bytes,
            "AdamW bytes": optimizer.state_bytes(), "backward rules": work["rules"],
            "gradients computed": work["grads"]}


full = load_pretrained()                      # every weight trainable: full fine-tuning
for p in full.parameters():
    p.requires_grad = True
costs = {"full fine-tuning": training_costs(full), "LoRA r=4 on q, v": training_costs(model)}
print(f"{'':20s}" + "".join(f"{k:>22s}" for k in costs))
for key in costs["full fine-tuning"]:
    print(f"{key:20s}" + "".join(f"{c[key]:>22,}" for c in costs.values()))

# %% [markdown]
# Read the table row by row:
#
# - **Gradient and AdamW bytes** shrink by the ratio of trainable parameters:
#   a frozen weight gets neither. AdamW keeps 2 numbers per trainable number,
#   so its state is twice the gradients.
# - **Backward rules** do not fall (LoRA even adds a few, for its own A and B
#   products): the gradient still has to flow *through* every frozen layer to
#   reach the adapters in block 0.
# - **Gradients computed** fall: at a frozen matmul, the rule computes the
#   gradient for its input $x$ (needed further back) and skips the one for
#   the weight, which is the expensive, weight-sized one.
#
# ### Exercise 7.2
#
# Write `adam_state_bytes(model)`: how many bytes of state AdamW will keep for
# this model, *without* building an optimizer. The check runs it on hidden
# models: LoRAs of random ranks and targets, models frozen by hand, fully
# trainable ones (and `state_bytes` is off limits while it does).

# %% nbgrader={"grade": false, "grade_id": "ex-7-2", "locked": false, "schema_version": 3, "solution": true}
# Exercise 7.2: AdamW's state in bytes, from the model alone
def adam_state_bytes(model):
    ### BEGIN SOLUTION
    return sum(2 * p.data.nbytes for p in model.parameters() if p.requires_grad)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex-7-2-check", "locked": true, "points": 1, "schema_version": 3, "solution": false}
checks.check_adam_state_bytes_fn(adam_state_bytes)

# %% [markdown]
# ## Predict (7.3): is a frozen model faster to *run*?
#
# Freezing saved memory in the backward pass and the optimizer. What about
# the forward pass? Predict the ratio
# (LoRA model's forward time) / (base model's forward time), for the same
# batch: below 1 means LoRA is faster.

# %% nbgrader={"grade": false, "grade_id": "ex-7-3", "locked": false, "schema_version": 3, "solution": true}
# Exercise 7.3: your prediction of LoRA's forward time / the base model's
### BEGIN SOLUTION
my_prediction = 1.1
### END SOLUTION

# %% nbgrader={"grade": false, "grade_id": "ex-7-3-reveal", "locked": true, "schema_version": 3, "solution": false}
base = load_pretrained()


def forward(m):
    def run():
        with no_grad():
            m(x)
    return run


times = alternate({"base": forward(base), "lora": forward(model)}, repeats=15)
checks.reveal_forward_ratio(my_prediction, times["lora"] / times["base"])

# %% [markdown]
# ## Choose what trains
#
# Tick the kinds of weight that train. After each change the widget runs one
# real backward pass and one AdamW step on this tiny GPT and reports what it
# measured. Try: full fine-tuning, then LoRA only, then LoRA plus the
# LayerNorms (tiny vectors: almost free), then the embeddings alone.

# %%
trainable_toggle()

# %% [markdown]
# ## What to remember
#
# - `apply_lora` sets `requires_grad = False` on every pretrained weight; only
#   the new A and B get gradients.
# - A frozen weight costs no gradient and no AdamW state (2 numbers per
#   trainable number); the gradient still flows *through* it.
# - The forward pass is not cheaper: an unmerged adapter even adds a little.
#
# Next, **08_train_lora**: train adapters for real, compare with full
# fine-tuning, merge, save, swap, and see how accuracy depends on the rank.

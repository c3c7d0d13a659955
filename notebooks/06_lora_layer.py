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
# # 6. The LoRA layer
#
# One line holds the whole method:
#
# $$h = W_0 x + b + \frac{\alpha}{r}\, B A x,
# \qquad W_0 \in \mathbb{R}^{d_\text{out} \times d_\text{in}} \text{ frozen},\quad
# A \in \mathbb{R}^{r \times d_\text{in}},\quad B \in \mathbb{R}^{d_\text{out} \times r}.$$
#
# The pretrained weight stays as it is. Beside it runs a narrow path: $A$
# squeezes the input to $r$ numbers, $B$ spreads them back out, and
# $\alpha / r$ sets how loud that path is. Only $A$ and $B$ train. LoRA does
# not pick a subset of $W_0$ to train: it trains *new* matrices beside it.
#
# In this notebook you write the layer's forward pass and its merge, work out
# how $A$ and $B$ must start, and move $\alpha$ and $r$ to see what they do.

# %%
import numpy as np

from minilora import LoraConfig, Tensor, apply_lora, checks, merge, no_grad, pretrained, print_trainable_parameters
from minilora.widgets import lora_scaling_explorer

np.set_printoptions(precision=4, suppress=True)

# %% [markdown]
# ## The layer in minilora
#
# `apply_lora` wraps the chosen Linears, here $W_q$ and $W_v$ of both blocks
# of the tiny GPT, and freezes everything else.

# %%
model = pretrained.load_pretrained()
apply_lora(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
layer = model.transformer.h[0].attn.q_proj
print_trainable_parameters(model)
print(layer)
for name, p in layer.named_parameters():
    print(f"  {name:<24} {str(p.shape):<9} trainable: {p.requires_grad}")

# %% [markdown]
# ### Exercise 6.1 (predict first)
#
# The adapter was just created, before any training. Feed the same input to
# the adapted layer and to its frozen base layer. What is the largest
# difference between their outputs, $\max |h_\text{LoRA} - h_\text{base}|$?

# %% nbgrader={"grade": false, "grade_id": "ex-6-1", "locked": false, "schema_version": 3, "solution": true}
# Exercise 6.1: your prediction of max |h_lora - h_base| for a fresh adapter
my_prediction = ...   # replace ... with your number
### BEGIN SOLUTION
my_prediction = 0.0
### END SOLUTION

# %% nbgrader={"grade": false, "grade_id": "ex-6-1-reveal", "locked": true, "schema_version": 3, "solution": false}
checks.reveal_step_zero(my_prediction)

# %% [markdown]
# The same holds for the whole model: with every adapter at $B = 0$, the
# adapted GPT computes exactly what the pretrained one does.

# %%
ids = np.array([[3, 7, 1, 4, 1, 5, 9, 2]])
with no_grad():
    adapted = model(ids).numpy()
    plain = pretrained.load_pretrained()(ids).numpy()
print("logits identical:", np.array_equal(adapted, plain))


# %% [markdown]
# ## Your turn: the forward pass
#
# ### Exercise 6.2
#
# Write `lora_forward(x, W0, b, A, B, alpha)` with NumPy. `x` has any leading
# shape and `d_in` numbers last; the weights are stored as in PyTorch, (out, in).
# Read $r$ from the shapes. The check compares with minilora's `LoRALinear`
# on hidden inputs whose $B$ is not zero (as after training).

# %% nbgrader={"grade": false, "grade_id": "ex-6-2", "locked": false, "schema_version": 3, "solution": true}
# Exercise 6.2: the LoRA forward pass
def lora_forward(x, W0, b, A, B, alpha):
    ### BEGIN SOLUTION
    r = A.shape[0]
    frozen = x @ W0.T + b                   # [..., in] @ [in, out] -> [..., out]
    low_rank = (x @ A.T) @ B.T              # [..., in] -> [..., r] -> [..., out]
    return frozen + (alpha / r) * low_rank
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex-6-2-check", "locked": true, "points": 1, "schema_version": 3, "solution": false}
checks.check_lora_forward(lora_forward)

# %% [markdown]
# Your function should now agree with the real `q_proj` of the GPT. Give its
# $B$ some values, as training would, and compare:

# %%
rng = np.random.default_rng(0)
B_param = layer.lora_B["default"].weight
B_param.data = (0.1 * rng.standard_normal(B_param.shape)).astype(np.float32)
x = rng.standard_normal((5, 64)).astype(np.float32)

with no_grad():
    theirs = layer(Tensor(x)).numpy()
mine = lora_forward(x, layer.base_layer.weight.numpy(), layer.base_layer.bias.numpy(),
                    layer.lora_A["default"].weight.numpy(), B_param.numpy(), alpha=8)
checks.cmp("q_proj output", mine, theirs, rtol=1e-5, atol=1e-6)


# %% [markdown]
# ## Merging: back to one matrix
#
# $W_0 x + \frac{\alpha}{r} B A x = (W_0 + \frac{\alpha}{r} B A)\, x$.
# After training, the update can be added into the weight once, and the
# layer is a plain Linear again: no extra work per token, no added latency.
#
# ### Exercise 6.3
#
# Write `lora_merge(W0, A, B, alpha)`, returning the merged weight.

# %% nbgrader={"grade": false, "grade_id": "ex-6-3", "locked": false, "schema_version": 3, "solution": true}
# Exercise 6.3: merge the update into the weight
def lora_merge(W0, A, B, alpha):
    ### BEGIN SOLUTION
    r = A.shape[0]
    return W0 + (alpha / r) * (B @ A)       # [out, r] @ [r, in] -> [out, in], W0's shape
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex-6-3-check", "locked": true, "points": 1, "schema_version": 3, "solution": false}
checks.check_lora_merge(lora_merge)

# %% [markdown]
# minilora's `merge` does the same to every adapted layer; the model's outputs
# do not change (up to float32 rounding):

# %%
ids = np.array([[1, 2, 3, 4, 5, 6]])
with no_grad():
    before = model(ids).numpy()
    merge(model)
    after = model(ids).numpy()
checks.cmp("merged logits", after, before, rtol=1e-4, atol=1e-5)
print("adapters merged into q_proj's weight:", model.transformer.h[0].attn.q_proj.merged_adapters)


# %% [markdown]
# ## Why $B$ starts at zero, and not $A$ as well
#
# Starting with $BA = 0$ makes step 0 the pretrained model, so training begins
# from what the model already knows. The tempting way is to set both to zero.
# Think about the gradients: $\partial L/\partial B$ is built from $A x$, and
# $\partial L/\partial A$ is built from $B$.
#
# ### Exercise 6.4
#
# Write `init_lora(r, d_in, d_out, rng)` returning your initial `(A, B)`.
# Use `rng` (a NumPy Generator) for anything random. The check runs three
# steps of training from your choice and prints the output change and both
# gradients at every step, so try the tempting answer first if you like.

# %% nbgrader={"grade": false, "grade_id": "ex-6-4", "locked": false, "schema_version": 3, "solution": true}
# Exercise 6.4: an initialisation that starts at the base model and can learn
def init_lora(r, d_in, d_out, rng):
    ### BEGIN SOLUTION
    A = rng.uniform(-1, 1, size=(r, d_in)) / np.sqrt(d_in)    # random and small, as PEFT does
    B = np.zeros((d_out, r))                                    # zero: B A = 0 at step 0
    return A, B
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex-6-4-check", "locked": true, "points": 1, "schema_version": 3, "solution": false}
checks.check_lora_init(init_lora)

# %% [markdown]
# For the record, the tempting answer. With $A = B = 0$ the output starts
# right, but nothing can ever move:

# %%
r, d_in, d_out = 2, 8, 6
checks.trace_lora_init(np.zeros((r, d_in)), np.zeros((d_out, r)))

# %% [markdown]
# ## What $\alpha / r$ does
#
# The update is multiplied by $\alpha / r$. Two reasons to have it:
#
# - **$\alpha$ sets the update's size.** Doubling $\alpha$ doubles how far the
#   output moves for the same $A$ and $B$.
# - **Dividing by $r$** stops the update from growing as you add directions,
#   so trying another $r$ needs less retuning. The paper fixes $\alpha$ to the
#   first $r$ it tries and does not tune it.

# ### Exercise 6.5 (predict first)
#
# "So $\alpha$ is just a learning rate?" Test it. Take a fresh layer ($B = 0$),
# one batch, **one plain SGD step** with a fixed learning rate, and measure how
# far the output moves. Now do the same with $\alpha$ doubled. By what factor
# does the output move further? (The reveal also runs Adam.)

# %% nbgrader={"grade": false, "grade_id": "ex-6-5", "locked": false, "schema_version": 3, "solution": true}
# Exercise 6.5: your prediction of the factor (a number, e.g. 1, 2 or 4)
### BEGIN SOLUTION
my_prediction = 4
### END SOLUTION

# %% nbgrader={"grade": false, "grade_id": "ex-6-5-reveal", "locked": true, "schema_version": 3, "solution": false}
checks.reveal_alpha_doubling(my_prediction);

# %% [markdown]
# Move the sliders. The layer has a random $A$ and a non-zero $B$, standing in
# for a trained adapter. The left plot is one output before and after the
# update; the right one shows how far all outputs move as $\alpha$ grows, for
# several ranks. Here, with $\alpha$ fixed, a larger $r$ moves the output
# *less*: $\alpha / r$ falls faster than $BAx$ grows (with random directions,
# $BAx$ grows like $\sqrt{r}$). Tick rsLoRA ($\alpha / \sqrt{r}$) to see a
# rule that keeps the size about the same across ranks.

# %%
lora_scaling_explorer(alpha=8, r=4)

# %% [markdown]
# ## What to remember
#
# - $h = W_0 x + b + \frac{\alpha}{r} B(Ax)$; $A$ is (r, in), $B$ is (out, r),
#   $W_0$ is frozen; compute $Ax$ first.
# - $B = 0$ at the start: step 0 is the pretrained model. Not both zero: then
#   both gradients are zero forever.
# - Merge: $W = W_0 + \frac{\alpha}{r} BA$, a plain Linear again, no latency.
# - $\alpha$ scales the update linearly; it is not a learning rate, though
#   with Adam it acts much like one. Dividing by $r$ more than cancels the
#   growth of $BAx$ with $r$ (which grows like $\sqrt{r}$), so at fixed $\alpha$ a
#   larger $r$ moves the output less; rsLoRA's $\alpha/\sqrt{r}$ keeps it level.
#
# **Next: 07_frozen_weights**, where "frozen means free" is measured in
# bytes: gradients and optimizer state for full fine-tuning against LoRA.

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
# # 12. The same code on a GPU
#
# Everything in this course ran on NumPy. CuPy is a copy of NumPy's API whose
# arrays live in GPU memory, so minilora runs unchanged on an NVIDIA GPU after
# one line, `minilora.set_device("cuda")`. Three questions:
#
# 1. What moves between the CPU and the GPU, and when?
# 2. Why is a GPU slow on small operations?
# 3. How much faster is a LoRA step than a full one, and why not more?
#
# This notebook measures on a GPU when it finds one. Without one (no CuPy,
# or no NVIDIA card) it says so and shows the figures recorded on an earlier
# H100 run, read from a file shipped with minilora. It never makes numbers up.

# %%
import time

import numpy as np

import minilora as ml
from minilora import checks, nn
from minilora import functional as F
from minilora.timing import in_blocks

try:
    ml.set_device("cuda")
    ON_GPU = True
    import cupy as xp                      # the array library of the device we measure
    print("A GPU is here: the timings below are measured on it.")
except RuntimeError as err:
    ON_GPU = False
    xp = np
    print(f"No GPU here, so this notebook shows recorded figures for the GPU parts.\n  ({err})")
ml.set_device("cpu")                       # new models start on the CPU; we move them on purpose

recorded = checks.recorded_gpu_figures()
print(f"recorded run: {recorded['device']}, CuPy {recorded['software']['cupy']}")


def to_gpu_if_any(model):
    """The model moved to the GPU when there is one, else left on the CPU."""
    return model.to("cuda") if ON_GPU else model


def sync():
    """Wait for queued GPU work (a GPU call returns before the work is done)."""
    if ON_GPU:
        xp.cuda.Device().synchronize()


# %% [markdown]
# ## 1. Arrays follow their data
#
# A tensor lives where its array lives: a NumPy array on the CPU, a CuPy
# array on the GPU. An operation's result lives where its inputs live, so
# once the model's weights and the batch are on the GPU, the forward pass,
# the loss, the backward pass and the optimizer all stay there. Nothing
# comes back unless you ask: `loss.item()` copies one number.

# %%
config = ml.GPTConfig(vocab_size=64, block_size=64, n_layer=4, n_head=4, n_embd=256)
ml.manual_seed(0)
model = ml.GPT(config)
first = model.transformer.wte.weight
print(f"before: weight on {first.device}, held in a {type(first.data).__module__}.{type(first.data).__name__}")
model = to_gpu_if_any(model)
print(f"after:  weight on {first.device}, held in a {type(first.data).__module__}.{type(first.data).__name__}"
      + ("" if ON_GPU else "   (no GPU here: model.to('cuda') would have moved it)"))

rng = np.random.default_rng(0)
x_host, y_host = rng.integers(0, 64, (16, 64)), rng.integers(0, 64, (16, 64))
x = ml.tensor(x_host, device=model.device)      # a new tensor goes where you say (default: set_device's)
y = ml.tensor(y_host, device=model.device)
print(f"the batch's arrays come from {x.xp.__name__} (x.xp: the library holding x, which every op on x uses)")
logits = model(x)
loss = F.cross_entropy(logits.reshape(y.size, -1), y.reshape(-1))
print(f"logits on {logits.device}, loss on {loss.device}; loss.item() = {loss.item():.3f} (one number copied back)")

# %% [markdown]
# How much crosses between the two memories? The weights cross once, when
# the model moves. Each step then sends a batch of token ids and brings back
# one float:

# %%
weight_bytes = sum(p.data.nbytes for p in model.parameters())
print(f"weights, once:         {weight_bytes / 2**20:8.2f} MiB")
print(f"each batch, per step:  {(x_host.nbytes + y_host.nbytes) / 2**10:8.2f} KiB (token ids and targets)")
print(f"the loss, per step:    {np.dtype(np.float32).itemsize:8d} bytes")

# %% [markdown]
# ## 2. Why small operations are slow on a GPU
#
# Every CuPy operation is one *kernel launch*: the CPU asks the GPU to run a
# small program over the array. A launch has a fixed cost, whatever the size
# of the array. Below, one multiplication `a * 2` on arrays from a hundred to
# ten million numbers, timed on this notebook's device. Watch the time per
# call for the small arrays: that is the fixed cost (on a CPU, NumPy's own
# per-call cost plays the same role, smaller).

# %%
def seconds_per_call(fn, calls=50):
    fn()
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return (time.perf_counter() - start) / calls


for n in (100, 10_000, 1_000_000, 10_000_000):
    a = xp.ones(n, dtype=xp.float32)
    t = seconds_per_call(lambda: a * 2.0, calls=20 if n > 1_000_000 else 200)
    print(f"{n:>10,} numbers: {t * 1e6:9.1f} µs per call, {t / n * 1e9:8.3f} ns per number "
          f"({'GPU' if ON_GPU else 'CPU'})")

# %% [markdown]
# GELU in GPT-2's form, $0.5\,x\,(1 + \tanh(\sqrt{2/\pi}\,(x + 0.044715\,x^3)))$,
# is eight elementwise operations when written with array operations: eight
# launches, each reading and writing the whole array. PyTorch ships one
# fused kernel for it, and for LayerNorm, softmax with cross-entropy, and
# AdamW's update. A GPT step is hundreds of such operations, most of them on
# small arrays, so the fixed cost adds up:

# %%
fig = recorded["figures"]["minilora_over_torch_cuda_step"]
print(f"recorded on {recorded['device']}: a minilora training step took about {fig['value']:g}x "
      f"PyTorch CUDA's ({fig['why']}).")

# %% [markdown]
# ## 3. LoRA on the GPU
#
# Take the model above with LoRA of rank 8 on $W_q$ and $W_v$. Only a small
# share of its parameters train:

# %%
ml.manual_seed(0)
lora = ml.apply_lora(ml.GPT(config), ml.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
lora = to_gpu_if_any(lora)
trainable = lora.num_parameters(trainable_only=True)
print(f"LoRA trains {trainable:,} of {lora.num_parameters():,} parameters "
      f"({trainable / lora.num_parameters():.1%})")

# %% [markdown]
# ### Exercise 12.1 (predict first)
#
# How long does a LoRA training step take on the GPU, as a fraction of a
# full fine-tuning step on the same model and batch? Write your guess of
# (LoRA step time) / (full step time) before running the timing.

# %% nbgrader={"grade": false, "grade_id": "ex-12-1", "locked": false, "schema_version": 3, "solution": true}
# Exercise 12.1: your predicted ratio LoRA step / full step (GPU)
### BEGIN SOLUTION
my_prediction = 0.3
### END SOLUTION

# %%
def step_of(m):
    opt = ml.optim.AdamW(m.parameters(), lr=1e-4)

    def step():
        opt.zero_grad()
        F.cross_entropy(m(x).reshape(y.size, -1), y.reshape(-1)).backward()
        opt.step()
        sync()
    return step, opt


(full_step, full_opt), (lora_step, lora_opt) = step_of(model), step_of(lora)
if ON_GPU:
    t = in_blocks({"full": full_step, "lora": lora_step}, runs=3, block=5)
    ratio, source = t.ratio("lora", "full").median, f"measured on this GPU, runs {t.ratio('lora', 'full')}"
else:
    ratio = recorded["figures"]["lora_over_full_step"]["value"]
    source = f"recorded on {recorded['device']}: {recorded['figures']['lora_over_full_step']['setup']}"

# %% nbgrader={"grade": false, "grade_id": "ex-12-1-reveal", "locked": true, "schema_version": 3, "solution": false}
checks.reveal_lora_step_ratio(my_prediction, ratio, source)

# %% [markdown]
# ### Exercise 12.2: count the matrix products
#
# Most of a step's arithmetic is matrix products in Linear layers. A Linear
# layer with weight $W$ ($d_{out} \times d_{in}$) applied to `tokens` rows
# does, in one training step:
#
# - forward: $Y = X W^\top$
# - backward: $dX = dY\, W$ (the layers before it need this)
# - backward: $dW = dY^\top X$ (only if $W$ is trained)
#
# Each product is `tokens * d_in * d_out` multiply-adds, 2 FLOPs each. Write
# `linear_step_flops(d_in, d_out, tokens, trainable)`.

# %% nbgrader={"grade": false, "grade_id": "ex-12-2", "locked": false, "schema_version": 3, "solution": true}
# Exercise 12.2: the FLOPs of one Linear layer's matrix products in one training step
def linear_step_flops(d_in, d_out, tokens, trainable):
    ### BEGIN SOLUTION
    products = 3 if trainable else 2
    return products * 2 * tokens * d_in * d_out
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex-12-2-check", "locked": true, "points": 1, "schema_version": 3, "solution": false}
checks.check_linear_step_flops(linear_step_flops)

# %% [markdown]
# Now add it up over every Linear layer of both models. The attention
# products ($QK^\top$ and the weighted sum of $V$) hold no weights, so both
# models do them in full: $12 \cdot \text{tokens} \cdot T \cdot C$ FLOPs per
# layer (two products, forward and two gradients each).

# %%
def step_matmul_flops(m, batch, seq):
    tokens = batch * seq
    linear = sum(linear_step_flops(mod.weight.shape[1], mod.weight.shape[0], tokens, mod.weight.requires_grad)
                 for _, mod in m.named_modules() if isinstance(mod, nn.Linear))
    attention = m.config.n_layer * 12 * tokens * seq * m.config.n_embd
    return linear + attention


full_flops, lora_flops = step_matmul_flops(model, *x_host.shape), step_matmul_flops(lora, *x_host.shape)
print(f"full step: {full_flops / 1e9:.2f} GFLOP of matrix products; LoRA step: {lora_flops / 1e9:.2f} GFLOP")
print(f"LoRA / full, matrix products alone: {lora_flops / full_flops:.2f}   (step time ratio above: {ratio:.2f})")

# %% [markdown]
# The matrix products alone predict about two thirds. The rest of LoRA's
# saving is in what a frozen weight does not need kept: its gradient, and
# AdamW's two moment buffers. That is memory on the device, measured after
# one step of each:

# %%
full_step()
lora_step()
for name, m, opt in (("full", model, full_opt), ("LoRA", lora, lora_opt)):
    grads = sum(p.grad.nbytes for p in m.parameters() if p.grad is not None)
    weights = sum(p.data.nbytes for p in m.parameters())
    print(f"{name:5s} weights {weights / 2**20:6.2f} MiB   gradients {grads / 2**20:6.2f} MiB   "
          f"AdamW state {opt.state_bytes() / 2**20:6.2f} MiB")

# %% [markdown]
# And once training is done, merging $W_0 + \frac{\alpha}{r} BA$ leaves the
# base model's matrices, so inference costs what the base model costs:

# %%
merged = recorded["figures"]["merged_over_base_forward"]
suite = recorded["figures"].get("gpu_test_suite", {})
print(f"recorded on {recorded['device']}: merged forward / base forward = {merged['value']:.2f} "
      "(1 up to timing noise)")
if suite:
    print(f"recorded: the test suite on the GPU ({suite['command']}): {suite['passed']} passed, "
          f"{suite['failed']} failed")
print(f"source: {recorded['provenance']}")

# %% [markdown]
# ## What to remember
#
# - Arrays follow their data: move the model once, send each batch, bring
#   back only what you print.
# - A GPU pays a fixed cost per operation; small elementwise operations are
#   where minilora loses to PyTorch's fused kernels.
# - LoRA skips each frozen weight's gradient and optimizer update, about a
#   third of the matrix products and most of the training memory; the
#   forward pass and the input gradients still cost what they cost.
#
# **Next:** this is the end of the course. The teacher's guide
# (`docs/teachers_guide.md`, also on the course website) shows how the
# lessons fit together; the scripts in `benchmarks/` measure your own
# machine (`python benchmarks/bench_lora.py`).

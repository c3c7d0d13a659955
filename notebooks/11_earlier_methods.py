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
# # 11. Before LoRA: adapter layers and prompt tuning
#
# LoRA was not the first way to fine-tune a large model cheaply. The paper
# (section 3) names two families it wanted to improve on:
#
# - **adapter layers** (Houlsby et al. 2019): a small bottleneck network
#   inserted after a sublayer, $h \mapsto h + W_\text{up}\,
#   \mathrm{gelu}(W_\text{down} h)$. Cheap to train, but they are extra
#   layers in every forward pass, and the nonlinearity means they can never
#   be folded into $W_0$;
# - **prompt tuning** (Lester et al. 2021): $n$ learned vectors placed in
#   front of every input. They take $n$ positions of the context window,
#   and they are known to be harder to optimise.
#
# Both are real layers in `minilora.methods`, trained with the same loop as
# LoRA. Here you time them and train them beside a merged LoRA.

# %%
import numpy as np

from minilora import LoraConfig, apply_lora, checks, merge, paper, pretrained
from minilora.methods import PromptTuning, apply_adapter_layers
from minilora.tensor import manual_seed, no_grad
from minilora.timing import alternate
from minilora.train import TrainConfig, train
from minilora.widgets import prompt_length_explorer

results = paper.load_results()

# %% [markdown]
# ## Adapter layers
#
# `apply_adapter_layers` freezes the GPT and wraps each block's attention
# and MLP so that their output passes through a bottleneck adapter.

# %%
manual_seed(0)
adapted = apply_adapter_layers(pretrained.load_pretrained(), bottleneck=8)
print(adapted.transformer.h[0].attn.adapter)
print("trainable:", adapted.num_parameters(trainable_only=True), "of", adapted.num_parameters())

# %% [markdown]
# ### Exercise 11.1
#
# Write `adapter_forward(h, W_down, b_down, W_up, b_up)` with NumPy: one
# adapter applied to `h` (any leading shape, $C$ numbers last; weights stored
# (out, in) as in PyTorch; GELU in GPT-2's tanh form,
# $\mathrm{gelu}(z) = \tfrac12 z\,(1 + \tanh(\sqrt{2/\pi}\,(z + 0.044715 z^3)))$).

# %% nbgrader={"grade": false, "grade_id": "ex-11-1", "locked": false, "schema_version": 3, "solution": true}
# Exercise 11.1: a bottleneck adapter's forward pass
def adapter_forward(h, W_down, b_down, W_up, b_up):
    ### BEGIN SOLUTION
    z = h @ W_down.T + b_down                                             # [..., C] -> [..., m]
    g = 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3)))
    return h + g @ W_up.T + b_up                                          # [..., m] -> [..., C], residual
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex-11-1-check", "locked": true, "points": 1, "schema_version": 3, "solution": false}
checks.check_adapter_forward(adapter_forward)

# %% [markdown]
# ### Exercise 11.2
#
# Write `adapter_params(n_embd, bottleneck, n_layer, where)`: the trainable
# parameters of adapters after the sublayers named in `where` (a tuple such
# as `("attn", "mlp")`) in each of `n_layer` blocks. Check yourself against
# the count printed above.

# %% nbgrader={"grade": false, "grade_id": "ex-11-2", "locked": false, "schema_version": 3, "solution": true}
# Exercise 11.2: count adapter parameters
def adapter_params(n_embd, bottleneck, n_layer, where):
    ### BEGIN SOLUTION
    one = (n_embd * bottleneck + bottleneck) + (bottleneck * n_embd + n_embd)
    return n_layer * len(where) * one
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex-11-2-check", "locked": true, "points": 1, "schema_version": 3, "solution": false}
checks.check_adapter_params(adapter_params)

# %% [markdown]
# ## Latency at batch size 1
#
# Serving one request at a time is where extra layers hurt: the machine
# waits on each layer in turn. We time four models on one sequence of 24
# tokens, in turns (A, B, C, D, A, B, ...) so that a busy machine slows them
# all alike, and compare medians.
#
# ### Exercise 11.3 (predict first)
#
# The adapters add about 4% to the parameter count. What ratio do you expect
# for **adapter model time / base model time** at batch size 1?

# %% nbgrader={"grade": false, "grade_id": "ex-11-3", "locked": false, "schema_version": 3, "solution": true}
# Exercise 11.3: your predicted forward-time ratio, adapter layers over base
### BEGIN SOLUTION
my_ratio = 1.2
### END SOLUTION

# %%
base = pretrained.load_pretrained()
merged = apply_lora(pretrained.load_pretrained(), LoraConfig(r=4, lora_alpha=8))
merge(merged)
unmerged = apply_lora(pretrained.load_pretrained(), LoraConfig(r=4, lora_alpha=8))
ids = np.random.default_rng(0).integers(1, 11, size=(1, 24))


def forward_of(model):
    def run():
        with no_grad():
            model(ids)
    return run


seconds = alternate({"base": forward_of(base), "lora_merged": forward_of(merged),
                     "lora_unmerged": forward_of(unmerged), "adapter_layers": forward_of(adapted)}, repeats=30)
latency_ms = {k: v * 1e3 for k, v in seconds.items()}
for name, ms in latency_ms.items():
    print(f"{name:<15} {ms:6.2f} ms   {ms / latency_ms['base']:.2f}x base")

# %% nbgrader={"grade": false, "grade_id": "ex-11-3-reveal", "locked": true, "schema_version": 3, "solution": false}
checks.reveal_adapter_latency(my_ratio, latency_ms);

# %% [markdown]
# The shipped run measured the same (with more repeats); timings vary from
# machine to machine, the ratios much less:

# %%
em = results["earlier_methods"]
print({k: round(v, 3) for k, v in em.items() if k.endswith("latency_ratio")})

# %% [markdown]
# ## Prompt tuning
#
# `PromptTuning` puts `n_virtual` learned vectors in front of the token
# embeddings. The model's window is 32 positions; the prompt takes its share.

# %%
manual_seed(0)
prompted = PromptTuning(pretrained.load_pretrained(), n_virtual=8)
print(prompted.extra_repr(), "| trainable:", prompted.num_parameters(trainable_only=True))
run = train(prompted, pretrained.task_batches(["inc"], 32, prompted.config.block_size, seed=0),
            TrainConfig(steps=150, lr=3e-2, warmup=15), progress=False)
print(f"loss {run.losses[0]:.2f} -> {np.mean(run.losses[-10:]):.2f}; accuracy on inc after 150 steps: "
      f"{pretrained.task_accuracy(prompted, ['inc'], n=100)['inc']:.0%}")

# %% [markdown]
# The slider shows the shipped run: accuracy against prompt length, with
# LoRA ($r = 4$ on $W_q, W_v$, same steps) as the dashed line. That run
# trained one seed of each: prompt tuning stayed at 0% at every length, LoRA
# reached 41.5% (notebook 10 showed how far one seed can fall at $r = 4$
# with that recipe), and the adapter layers reached 100%.

# %%
prompt_length_explorer(results)

# %% [markdown]
# ## Which of these are wrong?
#
# ### Exercise 11.4
#
# Some statements below are common, and wrong. Give the letters of the
# **wrong** ones as a set, e.g. `{"a", "d"}`.

# %%
for letter, text in checks.STATEMENTS.items():
    print(f"({letter}) {text}")

# %% nbgrader={"grade": false, "grade_id": "ex-11-4", "locked": false, "schema_version": 3, "solution": true}
# Exercise 11.4: the letters of the wrong statements
### BEGIN SOLUTION
wrong_ones = {"a", "b", "c"}
### END SOLUTION

# %% nbgrader={"grade": true, "grade_id": "ex-11-4-check", "locked": true, "points": 1, "schema_version": 3, "solution": false}
checks.check_misstatements(wrong_ones)

# %% [markdown]
# ## What to remember
#
# - Adapter layers train a number of parameters of the same order as LoRA
#   (here about twice LoRA's at $r = 4$) and learned `inc` well in the shipped
#   run; their price is not accuracy but time: they stay in the forward pass,
#   at batch size 1 they cost time, and no merge removes them.
# - Prompt tuning trains even fewer numbers and spends context positions; in
#   the shipped run it did not learn `inc` at any prompt length.
# - Merged LoRA is $W_0 + \frac{\alpha}{r} BA$ in $W_0$'s shape: the base
#   model's cost, exactly.
#
# **Next: 12_gpu** (optional): the same code on a GPU, and what changes in
# the cost.

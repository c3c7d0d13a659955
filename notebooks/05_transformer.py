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
# # 5. Inside the Transformer: where LoRA sits
#
# LoRA does not change a network's design. It picks some of its weight
# matrices and puts a low-rank update beside each. The paper adapts the four
# matrices of self-attention, $W_q, W_k, W_v, W_o$. This notebook opens the
# tiny GPT that ships with minilora and finds them: what they are, their
# shapes, what they compute, and what the model can do before any LoRA.

# %%
import matplotlib.pyplot as plt
import numpy as np

from minilora import checks, data, no_grad, pretrained
from minilora import functional as F
from minilora.train import logits_fn

np.set_printoptions(precision=3, suppress=True)
model = pretrained.load_pretrained()
print(model)

# %% [markdown]
# ## The modules
#
# Read the printout from the top:
#
# - `wte` turns each of the 41 characters into a 64-number vector; `wpe` adds
#   a vector for each of the 32 positions;
# - two `Block`s, each: LayerNorm, **attention**, LayerNorm, MLP, each added back
#   to the running vector (the "residual stream");
# - a final LayerNorm and `lm_head`, which scores all 41 characters as the next one.
#
# Every `Linear` stores its weight as (out_features, in_features), as PyTorch
# does, and computes $y = x W^\top + b$ for a row vector $x$.

# %%
for name, p in model.named_parameters():
    if name.startswith("transformer.h.0.") or not name.startswith("transformer.h."):
        print(f"{name:<36} {str(p.shape):<10} {p.size:>6,}")
print(f"{'... block 1 is the same as block 0':<36}")
print(f"{'total':<47} {model.num_parameters():>6,}")

# %% [markdown]
# ### Exercise 5.1 (predict first)
#
# What share of the model's numbers sit in the attention projections,
# `q_proj`, `k_proj`, `v_proj` and `o_proj` of both blocks? Guess a number
# between 0 and 1 before you add anything up.

# %% nbgrader={"grade": false, "grade_id": "ex-5-1", "locked": false, "schema_version": 3, "solution": true}
# Exercise 5.1: your guess of the attention projections' share of all parameters
my_prediction = ...   # replace ... with a share between 0 and 1
### BEGIN SOLUTION
my_prediction = 0.3
### END SOLUTION

# %% nbgrader={"grade": false, "grade_id": "ex-5-1-reveal", "locked": true, "schema_version": 3, "solution": false}
checks.reveal_attention_share(my_prediction, model)

# %% [markdown]
# ## What `q_proj` is
#
# Attention lets each position gather information from earlier positions. For
# each token's vector $x$ (64 numbers) it makes three new vectors with three
# plain matrix products:
#
# - a **query** $q = x W_q^\top + b_q$, "what am I looking for?" (`q_proj`),
# - a **key** $k = x W_k^\top + b_k$, "what do I contain?" (`k_proj`),
# - a **value** $v = x W_v^\top + b_v$, "what do I pass on?" (`v_proj`).
#
# The 64 numbers of each are cut into 4 **heads** of $D = 16$, so head $h$
# uses rows $16h$ to $16h + 15$ of each weight. In each head, token $t$ scores
# every token $s \le t$ by $q_t \cdot k_s / \sqrt{D}$, turns the scores into
# weights with a softmax, and takes the weighted sum of the $v_s$. The four
# heads' outputs, side by side, go through `o_proj` ($W_o$) back into the
# residual stream.
#
# So `q_proj` is nothing exotic: a 64 x 64 matrix and a bias, which is exactly
# what LoRA can sit beside.

# %%
attn = model.transformer.h[0].attn
H, C = attn.n_head, model.config.n_embd
D = C // H
print("q_proj:", attn.q_proj, "  weight", attn.q_proj.weight.shape, "  bias", attn.q_proj.bias.shape)
print(f"{H} heads of D = {D}: head 2 uses rows {2 * D}..{3 * D - 1} of Wq, Wk and Wv")

# %% [markdown]
# ## One head, by hand
#
# The input to the first block's attention is a prompt's embeddings after
# LayerNorm: one 64-vector per character.

# %%
prompt = "rev:048213="
ids = np.array([data.TOKENIZER.encode(prompt)])                  # [1, T]
with no_grad():
    x_embed = model.transformer.wte(ids) + model.transformer.wpe(np.arange(ids.shape[1]))
    x_in = model.transformer.h[0].ln_1(x_embed)                   # [1, T, 64]
x = x_in.numpy()[0].astype(np.float64)                            # [T, 64]
print("prompt", repr(prompt), "->", x.shape)


# %% [markdown]
# ### Exercise 5.2
#
# Write `one_head(x, Wq, bq, Wk, bk, Wv, bv)` in NumPy: `x` is (T, C), each
# `W` is one head's rows, (D, C), each `b` is (D,). Return the head's output,
# (T, D). Remember that token $t$ may not look at tokens after it. The check
# runs it on hidden random shapes against minilora's attention.

# %% nbgrader={"grade": false, "grade_id": "ex-5-2", "locked": false, "schema_version": 3, "solution": true}
# Exercise 5.2: one causal attention head in NumPy
def one_head(x, Wq, bq, Wk, bk, Wv, bv):
    ### BEGIN SOLUTION
    q, k, v = x @ Wq.T + bq, x @ Wk.T + bk, x @ Wv.T + bv     # [T, D] each
    scores = q @ k.T / np.sqrt(q.shape[1])                     # [T, T]
    future = np.triu(np.ones(scores.shape, dtype=bool), k=1)    # True above the diagonal
    scores = np.where(future, -np.inf, scores)
    weights = np.exp(scores - scores.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)               # each row sums to 1
    return weights @ v                                          # [T, D]
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex-5-2-check", "locked": true, "points": 1, "schema_version": 3, "solution": false}
checks.check_attention_head(one_head)


# %% [markdown]
# Now run your head on the model's own weights, head 2 of the first block, and
# compare with what the model computes. (The model works in float32, so the
# match is approximate, not exact.)

# %%
def head_weights(layer, h):
    rows = slice(h * D, (h + 1) * D)
    out = []
    for proj in (layer.q_proj, layer.k_proj, layer.v_proj):
        out += [proj.weight.numpy()[rows].astype(np.float64), proj.bias.numpy()[rows].astype(np.float64)]
    return out


mine = one_head(x, *head_weights(attn, 2))

with no_grad():
    def split_heads(t):                                       # [1, T, C] -> [1, H, T, D]
        return t.reshape(1, -1, H, D).transpose(1, 2)
    heads = F.causal_attention(split_heads(attn.q_proj(x_in)), split_heads(attn.k_proj(x_in)),
                               split_heads(attn.v_proj(x_in)))
checks.cmp("head 2", mine, heads.numpy()[0, 2], rtol=1e-4, atol=1e-5)

# %% [markdown]
# Four heads side by side, then $W_o$, is the whole attention layer:

# %%
all_heads = np.concatenate([one_head(x, *head_weights(attn, h)) for h in range(H)], axis=1)   # [T, 64]
by_hand = all_heads @ attn.o_proj.weight.numpy().T + attn.o_proj.bias.numpy()
with no_grad():
    by_model = attn(x_in).numpy()[0]
checks.cmp("attention", by_hand, by_model, rtol=1e-4, atol=1e-5)

# %% [markdown]
# ## What the heads look at
#
# Each head's softmax weights form a (T, T) picture: row $t$ shows how much
# token $t$ takes from each earlier token. Here is the second block on a
# reversal, prompt and answer together. Look at the answer rows (after `=`):
# some heads hold a clean anti-diagonal. Each answer digit is read from the
# mirrored position of the input, and $W_q$, $W_k$ learned to find it.

# %%
text = "rev:048213=312840."
weights = checks.attention_weights(model, text, layer=1)          # [H, T, T]
fig, axes = plt.subplots(1, H, figsize=(13, 3.6))
for h, ax in enumerate(axes):
    ax.imshow(weights[h], cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(text)), list(text), fontsize=7)
    ax.set_yticks(range(len(text)), list(text), fontsize=7)
    ax.set_title(f"block 1, head {h}", fontsize=9)
axes[0].set_ylabel("token looking (query)")
axes[0].set_xlabel("token looked at (key)")
plt.tight_layout()
plt.show()


# %% [markdown]
# ## Generating text
#
# The model maps characters so far to scores for the next one. To answer a
# prompt, run it, take the most likely next character, append it, and repeat
# until it writes the end mark `.`: **greedy decoding**.
#
# ### Exercise 5.3
#
# Write `greedy_answer(model, prompt)` returning the model's answer as a
# string, up to and including the first `.` (for `"rev:048213="` that should
# be `"312840."`). Use `data.TOKENIZER.encode`/`decode` and call `model(ids)`
# on a (1, T) integer array; it returns a Tensor of logits (1, T, 41).
# The check runs it on hidden prompts of all three tasks.

# %% nbgrader={"grade": false, "grade_id": "ex-5-3", "locked": false, "schema_version": 3, "solution": true}
# Exercise 5.3: greedy decoding
def greedy_answer(model, prompt, max_new_tokens=10):
    ### BEGIN SOLUTION
    ids = data.TOKENIZER.encode(prompt)
    answer = ""
    with no_grad():
        for _ in range(max_new_tokens):
            logits = model(np.array([ids])).numpy()                # [1, T, vocab]
            next_id = int(logits[0, -1].argmax())                  # the last position predicts what comes next
            ids.append(next_id)
            answer += data.TOKENIZER.decode([next_id])
            if answer.endswith(data.END):
                break
    return answer
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "ex-5-3-check", "locked": true, "points": 1, "schema_version": 3, "solution": false}
checks.check_greedy_answer(greedy_answer, model)

# %% [markdown]
# ## What the model knows, and what it does not
#
# It was pretrained on three tasks: copy, reverse and sort six digits.
# `data.complete` does the same greedy decoding for many prompts at once.
# Here are held-out prompts, which training never showed it, its answers, and
# its exact-match accuracy on 50 held-out prompts per task:

# %%
fn = logits_fn(model)
for name in data.PRETRAIN_TASKS + ("dsc",):
    examples = data.heldout_examples(name, n=3)
    answers = data.complete(fn, [p for p, _ in examples], max_new_tokens=8, block_size=model.config.block_size)
    print(f"{name} ({data.get_task(name).description})")
    for (prompt, truth), got in zip(examples, answers):
        print(f"    {prompt}{got:<9} {'right' if got == truth else 'wrong, expected ' + truth}")

# %%
accuracy = pretrained.task_accuracy(model, data.PRETRAIN_TASKS + data.DOWNSTREAM_TASKS, n=50)
for name, value in accuracy.items():
    print(f"{name}: {value:6.1%}   {data.get_task(name).description}")

# %% [markdown]
# Perfect on what it was trained for, and zero on the three new tasks, whose
# prefixes (`dsc`, `rot`, `inc`) it has never seen. Sorting downwards is
# sorting plus reversing, two skills it has: a small change to the weights
# should be enough. Teaching it that change, with only a low-rank update
# beside $W_q$ and $W_v$, is what the rest of the course does.
#
# ## What to remember
#
# - A GPT block is LayerNorm, attention, LayerNorm, MLP, each added back.
# - Attention's learned numbers are four plain matrices: $W_q, W_k, W_v, W_o$
#   (`q_proj`, `k_proj`, `v_proj`, `o_proj`), here 64 x 64 each, split into
#   4 heads of 16.
# - One head: $\mathrm{softmax}(q k^\top / \sqrt{D}$, future masked$)\, v$.
# - Greedy decoding: run, argmax of the last position, append, repeat.
#
# **Next: 06_lora_layer**, where you build the layer that goes beside `q_proj`.

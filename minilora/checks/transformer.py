"""Checks and helpers for notebook 05_transformer (where LoRA sits: attention's four matrices).

Exercises:
    5.1  reveal_attention_share  predict what share of the tiny GPT's numbers sit in Wq, Wk, Wv, Wo
    5.2  check_attention_head    the learner's one attention head in NumPy, on hidden shapes
    5.3  check_greedy_answer     the learner's greedy decoding loop, on hidden prompts

Helper the notebook calls: `attention_weights(model, prompt)`, the attention
pattern of every head, for plotting.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from minilora import data, functional
from minilora.backend import to_numpy
from minilora.checks.feedback import (
    ExerciseError,
    as_array,
    as_number,
    call_learner,
    correct,
    forbidding,
    register_hints,
    returned,
    short,
)
from minilora.model import GPT, CausalSelfAttention
from minilora.tensor import Tensor, no_grad

__all__ = ["reveal_attention_share", "check_attention_head", "check_greedy_answer", "attention_weights",
           "ATTENTION_PROJECTIONS"]

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")

register_hints(
    "5.1",
    "Each projection is a C x C matrix plus a bias; the MLP has two C x 4C matrices.",
    "Count per block: 4 (C^2 + C) for attention against 8 C^2 + 5 C for the MLP, then add the embeddings "
    "(vocab x C and block_size x C) and the LayerNorms.")
register_hints(
    "5.2",
    "Three projections, one score matrix, a mask, a softmax per row, a weighted sum. Print each shape as you go.",
    "q, k, v are x times the transpose of each weight plus its bias ([T, D] each). Scores are q against every "
    "k, divided by sqrt(D) ([T, T]). Set the entries above the diagonal (the future) to -inf before the softmax, "
    "take the softmax along each row, and use the rows as weights over v.")
register_hints(
    "5.3",
    "Generation is a loop: run the model on the text so far, pick the most likely next character, append it, "
    "and stop after '.'.",
    "Encode the prompt with data.TOKENIZER.encode into a (1, T) int64 array; the model returns logits "
    "(1, T, vocab). Only the last position predicts the next character: take argmax over its logits, decode it "
    "with data.TOKENIZER.decode, append it to the ids, and repeat until the new character is data.END.")



# ---------------------------------------------------------------- 5.1 (predict first)

def _attention_share(model: GPT) -> tuple[int, int]:
    total = attention = 0
    for name, p in model.named_parameters():
        total += p.size
        if any(f".attn.{proj}." in name for proj in ATTENTION_PROJECTIONS):
            attention += p.size
    return attention, total


def reveal_attention_share(my_prediction: Any, model: GPT) -> None:
    """Exercise 5.1: the learner guessed the share (0..1) of parameters in Wq, Wk, Wv, Wo of all blocks."""
    ex = "5.1"
    if my_prediction is None or my_prediction is Ellipsis:
        raise ExerciseError(ex, "my_prediction is still empty: write a share between 0 and 1 first, then run "
                            "this cell.", "Any honest guess is fine; the explanation is the point.")
    guess = as_number(my_prediction, ex, "my_prediction")
    note = ""
    if 1 < guess <= 100:
        guess, note = guess / 100, " (read as a percentage)"
    elif not 0 <= guess <= 1:
        raise ExerciseError(ex, f"my_prediction = {guess:g} is not a share: write a number between 0 and 1, "
                            "such as 0.5 for half.")
    attention, total = _attention_share(model)
    truth = attention / total
    close = abs(guess - truth) <= 0.05
    print(f"You predicted {guess:.0%}{note}; the four attention projections hold {attention:,} of the model's "
          f"{total:,} numbers, {truth:.1%}. " + ("Close." if close else "Not quite, and that is what predicting "
                                                 "is for."))
    c = model.config.n_embd
    print(f"Per block, attention is 4 x ({c} x {c} + {c}) = {4 * (c * c + c):,} numbers and the MLP "
          f"{c} x {4 * c} x 2 + {5 * c} = {8 * c * c + 5 * c:,}: the MLP is twice as big. The rest is the "
          "embeddings. In GPT-3 the same ratio holds (attention is a third of each block), so adapting "
          "only Wq and Wv touches a small corner of the model, and LoRA trains far less even than that.")


# ---------------------------------------------------------------- 5.2 one attention head

def _head_reference(x, Wq, bq, Wk, bk, Wv, bv) -> np.ndarray:
    """minilora's causal attention on the projections: [T, C] -> [T, D]."""
    def project(W, b):
        return Tensor(x @ W.T + b).reshape(1, 1, x.shape[0], W.shape[0])   # [1, 1, T, D]

    y = functional.causal_attention(project(Wq, bq), project(Wk, bk), project(Wv, bv))
    return to_numpy(y.data)[0, 0]


def _head_variant(x, Wq, bq, Wk, bk, Wv, bv, *, mask=True, scale=None, axis=-1) -> np.ndarray:
    q, k, v = x @ Wq.T + bq, x @ Wk.T + bk, x @ Wv.T + bv
    s = (q @ k.T) * (1 / math.sqrt(q.shape[1]) if scale is None else scale)
    if mask:
        s = np.where(np.triu(np.ones(s.shape, dtype=bool), k=1), -np.inf, s)
    e = np.exp(s - s.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)) @ v


# minilora's own attention, under every name that computes it: the learner writes it instead.
_ATTENTION_ANSWERS = tuple((owner, name) for owner, name in [
    (functional, "causal_attention"), (functional, "scaled_dot_product_attention"), (functional, "softmax"),
    (functional, "log_softmax"), (CausalSelfAttention, "forward")] if hasattr(owner, name))


def check_attention_head(one_head: Callable) -> None:
    """Exercise 5.2: one_head(x, Wq, bq, Wk, bk, Wv, bv) -> [T, D], one causal attention head, on hidden shapes."""
    ex = "5.2"
    rng = np.random.default_rng(4052)
    for T, C, D in [(5, 8, 2), (3, 6, 3), (7, 12, 4), (1, 4, 4), (6, 10, 5)]:
        x = rng.standard_normal((T, C))
        W = [rng.standard_normal((D, C)) / math.sqrt(C) * 2 for _ in range(3)]
        b = [0.3 * rng.standard_normal(D) for _ in range(3)]
        args = (x, W[0], b[0], W[1], b[1], W[2], b[2])
        want = _head_reference(*args)
        with forbidding(*_ATTENTION_ANSWERS, learner=one_head):
            result = call_learner(one_head, ex, "one_head", *[a.copy() for a in args])
        where = f"for T = {T} tokens, C = {C}, D = {D}"
        got = as_array(returned(result, ex, "one_head"), ex, f"one_head(...) {where}")
        if got.shape != (T, D):
            raise ExerciseError(ex, f"{where}, your head returned shape {got.shape}; it should be (T, D) = {(T, D)}: "
                                "one D-vector per token.",
                                "The result is the attention weights [T, T] times v [T, D].")
        if not np.allclose(got, want, rtol=1e-9, atol=1e-12):
            diagnosis = None
            if np.allclose(got, _head_variant(*args, mask=False)):
                diagnosis = ("Your head lets every token look at later tokens too. In a causal model token t only "
                             "sees tokens 0..t: set the scores above the diagonal to -inf before the softmax.")
            elif np.allclose(got, _head_variant(*args, scale=1.0)):
                diagnosis = "The scores are not scaled: divide q k^T by sqrt(D), the head's width."
            elif np.allclose(got, _head_variant(*args, scale=1 / D)) or \
                    np.allclose(got, _head_variant(*args, scale=1 / math.sqrt(C))):
                diagnosis = ("The scale is off: divide by sqrt(D), the square root of the head's width, "
                             "not D or sqrt(C).")
            elif T > 1 and np.allclose(got, _head_variant(*args, axis=0)):
                diagnosis = "The softmax runs down the columns; each token's row of scores should sum to 1 (axis=-1)."
            raise ExerciseError(ex, f"{where}, your output differs from the model's attention by up to "
                                f"{np.max(np.abs(got - want)):.3g}.", diagnosis)
    correct(ex, "softmax(q k^T / sqrt(D), future masked) v: the only learned numbers in it are Wq, Wk, Wv (and "
            "Wo after the heads are joined), four plain matrices LoRA can sit beside.")


# ---------------------------------------------------------------- 5.3 greedy generation

def _hidden_prompts(rng: np.random.Generator, n_per_task: int = 3) -> list[str]:
    prompts = []
    for name in data.PRETRAIN_TASKS:
        task = data.get_task(name)
        prompts += [task.prompt(data.random_digits(rng)) for _ in range(n_per_task)]
    return prompts


def check_greedy_answer(greedy_answer: Callable, model: GPT) -> None:
    """Exercise 5.3: greedy_answer(model, prompt) -> the model's greedy answer, up to and including '.'."""
    ex = "5.3"
    from minilora import pretrained
    from minilora.train import logits_fn

    if not isinstance(model, GPT):
        raise ExerciseError(ex, f"the second argument should be the model, but it is {short(model)}.",
                            "Pass the tiny GPT: check_greedy_answer(greedy_answer, model).")
    prompts = _hidden_prompts(np.random.default_rng(4053))
    wants = data.complete(logits_fn(model), prompts, max_new_tokens=10, block_size=model.config.block_size)
    for prompt, want in zip(prompts, wants):
        with forbidding((data, "complete"), (data, "exact_match"), (GPT, "generate"),
                        (pretrained, "task_accuracy"), learner=greedy_answer):
            got = call_learner(greedy_answer, ex, "greedy_answer", model, prompt)
        if isinstance(got, (list, tuple, np.ndarray)) and all(isinstance(i, (int, np.integer)) for i in np.ravel(got)):
            raise ExerciseError(ex, f"for {prompt!r} you returned token ids {short(got)}; return the text.",
                                "data.TOKENIZER.decode turns ids into characters.")
        if not isinstance(got, str):
            raise ExerciseError(ex, f"for {prompt!r}, greedy_answer returned {type(got).__name__} {short(got)}; "
                                "it should return the answer as a string, such as '654321.'.")
        if got.startswith(prompt) and got[len(prompt):] in (want, want.rstrip(data.END)):
            raise ExerciseError(ex, f"for {prompt!r} you returned {got!r}, the prompt and its answer; return only "
                                f"the new characters, {want!r}.", "Keep the prompt's length and slice it off.")
        if got == want or (got + data.END == want):
            continue
        if got.startswith(want):
            raise ExerciseError(ex, f"for {prompt!r} you returned {got!r}: the answer is {want!r}, and generation "
                                "should stop once it has written '.'.",
                                "Check each new character and leave the loop after data.END.")
        raise ExerciseError(ex, f"for {prompt!r} the model's greedy answer is {want!r}, but yours is {got!r}.",
                            "Take the logits at the *last* position (index -1): that is the prediction of the "
                            "next character. argmax picks it.")
    correct(ex, "run the model, take the last position's argmax, append, repeat until '.': greedy decoding. "
            "Each step reruns the whole sequence; real systems cache the keys and values instead.")


# ---------------------------------------------------------------- helper for the attention picture

def attention_weights(model: GPT, prompt: str, layer: int = 0) -> np.ndarray:
    """The attention weights of every head of one block for `prompt`: an array [H, T, T].

    Row t of head h says how much token t takes from each earlier token. Computed
    from the model's own modules, step by step, as the block does.
    """
    ids = np.array([data.TOKENIZER.encode(prompt)], dtype=np.int64)          # [1, T]
    with no_grad():
        x = model.transformer.wte(ids) + model.transformer.wpe(np.arange(ids.shape[1]))
        for block in model.transformer.h[:layer]:
            x = block(x)
        block = model.transformer.h[layer]
        xn = block.ln_1(x)
        attn = block.attn
        H = attn.n_head
        T, C = ids.shape[1], model.config.n_embd
        D = C // H
        q = to_numpy(attn.q_proj(xn).data)[0].reshape(T, H, D).transpose(1, 0, 2)   # [H, T, D]
        k = to_numpy(attn.k_proj(xn).data)[0].reshape(T, H, D).transpose(1, 0, 2)
    s = q @ k.transpose(0, 2, 1) / math.sqrt(D)                                    # [H, T, T]
    s = np.where(np.triu(np.ones((T, T), dtype=bool), k=1), -np.inf, s)
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)

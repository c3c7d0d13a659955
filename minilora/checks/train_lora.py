"""Checks for notebook 08_train_lora: trainable parameters of a real model, ranks, merged speed.

    8.1 reveal_merged_speed       predict the merged model's forward time against the base model's
    8.2 reveal_best_rank          predict which rank wins the sweep, then see the spread
    8.3 check_trainable_params    write trainable_params(n_layer, n_embd, r, targets), hidden inputs
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from minilora.checks.feedback import ExerciseError, as_integer, as_number, call_learner, correct, forbidding, \
    register_hints, reveal

__all__ = ["reveal_best_rank", "check_trainable_params", "reveal_merged_speed", "KINDS"]

# The Linear layers of one block of minilora's GPT, as (d_in, d_out) in units of n_embd.
KINDS = {"q_proj": (1, 1), "k_proj": (1, 1), "v_proj": (1, 1), "o_proj": (1, 1), "fc": (1, 4), "proj": (4, 1)}

register_hints(
    "8.3",
    "Each adapted Linear with d_in inputs and d_out outputs adds A (r x d_in) and B (d_out x r). "
    "Which of the six Linears in a block are square, and which are not?",
    "Per block, add r * (d_in + d_out) over the targeted Linears: q, k, v, o are n_embd -> n_embd, "
    "fc is n_embd -> 4 n_embd and proj is 4 n_embd -> n_embd. Then multiply by the number of blocks.")
register_hints("8.2", "Write one of the swept ranks, 1, 2, 4, 8 or 16: my_prediction = 4, say.",
               "Think of the smallest change that does the task, and of what a larger r adds once that "
               "is reached: more parameters, and more ways for one run to go differently.")
register_hints("8.1", "Write one number, your honest guess of the ratio: my_prediction = 1.3, say.",
               "After merging, what shape is each weight matrix, and how many matrix products does a layer do?")


# ---------------------------------------------------------------- 8.2

def reveal_best_rank(my_prediction: Any, targets: str = "q,v", path=None) -> None:
    """8.2: which rank of the shipped sweep has the highest mean accuracy for `targets`?"""
    from minilora.sweep import load_sweep, summarize

    summary = summarize(load_sweep(path))
    rows = {r: s for (t, r), s in summary.items() if t == targets}
    if not rows:
        raise ExerciseError("8.2", f"the sweep has no target set {targets!r}.")
    best = max(rows, key=lambda r: rows[r]["mean"])
    table = "\n".join(f"  r = {r:2d}: mean {100 * s['mean']:5.1f}%   seeds " +
                      ", ".join(f"{100 * a:5.1f}%" for a in s["accuracies"]) for r, s in sorted(rows.items()))
    # Means within one point (2 of the 200 held-out prompts) of the best are a tie, not a ranking.
    tied = sorted(r for r in rows if rows[r]["mean"] >= rows[best]["mean"] - 0.01)
    note = (f"Ranks {tied} are within one point of each other (2 prompts in 200): a tie, not a ranking."
            if len(tied) > 1 else f"r = {best} has the best mean.")
    widest = max(rows, key=lambda r: rows[r]["max"] - rows[r]["min"])
    spread = 100 * (rows[widest]["max"] - rows[widest]["min"])
    explain = (f"Mean held-out accuracy over seeds, adapting {targets}:\n{table}\n{note} "
               f"The seeds of one rank differ by up to {spread:.1f} points (at r = {widest}), so compare "
               "ranks only when the gap is larger than that spread. Below the rank the task needs, every "
               "seed fails; from there on, a larger r buys parameters, not accuracy.")
    truth = tied[0]
    if my_prediction is not None and my_prediction is not Ellipsis:
        guess = as_integer(my_prediction, "8.2", "my_prediction")
        truth = guess if guess in tied else tied[0]           # a tie: any of the tied ranks is right
    reveal("8.2", my_prediction, truth, explain, what="my_prediction", integer=True)


# ---------------------------------------------------------------- 8.3

def _want(n_layer: int, n_embd: int, r: int, targets) -> int:
    return n_layer * sum(r * (a + b) * n_embd for t, (a, b) in KINDS.items() if t in targets)


def check_trainable_params(trainable_params: Callable) -> None:
    """8.3: trainable_params(n_layer, n_embd, r, targets) for minilora's GPT, on hidden random inputs."""
    from minilora import lora, lora_count, nn

    ex = "8.3"
    rng = np.random.default_rng(808)
    names = list(KINDS)
    cases = [(2, 64, 4, ["q_proj", "v_proj"])]                      # the notebook's own model first
    for _ in range(6):
        targets = sorted(rng.choice(names, size=int(rng.integers(1, 7)), replace=False).tolist(),
                         key=names.index)
        cases.append((int(rng.integers(1, 13)), 16 * int(rng.integers(1, 50)), int(rng.integers(1, 17)), targets))
    cases.append((3, 48, 2, ["fc", "proj"]))                          # only the non-square ones
    for n_layer, n_embd, r, targets in cases:
        with forbidding((lora_count, "count_lora_params"), (nn.Module, "num_parameters"), (lora, "apply_lora"),
                        learner=trainable_params):
            got = call_learner(trainable_params, ex, "trainable_params", n_layer, n_embd, r, list(targets))
        shown = f"trainable_params({n_layer}, {n_embd}, {r}, {targets})"
        got = as_integer(got, ex, shown)
        want = _want(n_layer, n_embd, r, targets)
        if got == want:
            continue
        square = n_layer * len(targets) * 2 * r * n_embd
        guesses = {square: "you treated every Linear as square (2 r n_embd); fc and proj are 4x wider on one side",
                   want // n_layer if n_layer > 1 else -1: "that is one block; multiply by n_layer",
                   n_layer * sum(n_embd * n_embd * a * b for t, (a, b) in KINDS.items() if t in targets):
                       "that is full fine-tuning of those matrices, not LoRA's A and B"}
        why = guesses.get(got)
        raise ExerciseError(ex, f"{shown} returned {got:,}, but that LoRA trains {want:,} numbers."
                            + (f" It looks like {why}." if why else ""))
    correct(ex, "r (d_in + d_out) per adapted Linear, summed over the targets and the blocks: the number "
            "the rank explorer shows, and it grows linearly with r.")


# ---------------------------------------------------------------- 8.1

def reveal_merged_speed(my_prediction: Any, ratio: Any) -> None:
    """8.1: (merged LoRA model's forward time) / (base model's forward time), measured in the notebook."""
    measured = as_number(ratio, "8.1", "the measured ratio")
    explain = (f"Measured: {measured:.2f}. After merging, W = W0 + (alpha/r) B A is one matrix of W0's shape, "
               "so the merged model does exactly the base model's arithmetic: a ratio of 1, up to timing "
               "noise. LoRA does not make inference faster than the base model, and merged it does not "
               "make it slower; unmerged, the extra B(A x) costs a little.")
    reveal("8.1", my_prediction, measured, explain, what="my_prediction", rel_tol=0.15)

"""Checks for notebook 07_frozen_weights: which parameters get a gradient, and what they cost.

    7.1 reveal_grad_count       predict how many parameter tensors get a .grad
    7.2 check_adam_state_bytes_fn   write adam_state_bytes(model), tested on hidden models
    7.3 reveal_forward_ratio    predict LoRA's forward time against the base model's
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from minilora.checks.feedback import ExerciseError, as_integer, as_number, call_learner, correct, forbidding, \
    register_hints, reveal

__all__ = ["reveal_grad_count", "check_adam_state_bytes_fn", "reveal_forward_ratio",
           "lora_model", "one_backward"]

register_hints(
    "7.2",
    "AdamW keeps state only for parameters it trains. Which ones are those, and how many numbers "
    "does it keep per trainable number?",
    "Loop over model.parameters(); skip a parameter whose requires_grad is False; every other one "
    "costs two arrays of its own shape (the moments m and v), each p.data.itemsize bytes per number. "
    "Add it all up.")


register_hints("7.1", "Write one whole number, your honest guess: my_prediction = 20, say.",
               "Which parameters have requires_grad=True after apply_lora? Only those get a .grad.")
register_hints("7.3", "Write one number, your honest guess of the ratio: my_prediction = 0.5, say.",
               "Does freezing change what the forward pass computes? What does an unmerged adapter add to it?")


def lora_model(r: int = 4, targets=("q_proj", "v_proj")):
    """The shipped tiny GPT with a fresh LoRA on `targets` (what the notebook uses)."""
    from minilora.lora import LoraConfig, apply_lora
    from minilora.pretrained import load_pretrained

    return apply_lora(load_pretrained(), LoraConfig(r=r, lora_alpha=r, target_modules=list(targets)))


def one_backward(model, seed: int = 0, task: str = "inc"):
    """One training batch through `model`, loss.backward(); returns the loss value."""
    from minilora import data
    from minilora import functional as F
    from minilora.pretrained import BATCH_SIZE

    x, y = data.make_batch([task], BATCH_SIZE, model.config.block_size, np.random.default_rng(seed))
    model.train()
    for p in model.parameters():
        p.grad = None
    loss = F.cross_entropy(model(x).reshape(y.size, -1), y.reshape(-1), ignore_index=data.IGNORE)
    loss.backward()
    model.eval()
    return loss.item()


# ---------------------------------------------------------------- 7.1

def reveal_grad_count(my_prediction: Any) -> None:
    """7.1: after one backward pass of the LoRA model, how many parameter tensors hold a .grad?"""
    model = lora_model()
    one_backward(model)
    named = list(model.named_parameters())
    with_grad = [n for n, p in named if p.grad is not None]
    lora = [n for n, _ in named if "lora_" in n]
    explain = (f"Of the {len(named)} parameter tensors, {len(with_grad)} got a gradient, and they are exactly "
               f"the {len(lora)} LoRA matrices (A and B in each adapted layer), e.g. {with_grad[0]}.\n"
               "Not even q_proj.base_layer.weight, which the adapter sits beside, gets one: LoRA does not "
               "train a subset of the old weights, it trains new matrices next to frozen ones. The gradient "
               "still flows *through* every frozen layer (the adapters in block 0 need it), but no "
               "gradient *for* a frozen weight is ever computed or stored.")
    reveal("7.1", my_prediction, len(with_grad), explain, what="my_prediction", integer=True)


# ---------------------------------------------------------------- 7.2

def _hidden_models(rng: np.random.Generator):
    """Small random GPTs: LoRA at random ranks and targets, partly frozen ones, fully trainable ones."""
    from minilora.lora import LoraConfig, apply_lora
    from minilora.model import GPT, GPTConfig

    kinds = ["q_proj", "k_proj", "v_proj", "o_proj", "fc", "proj"]
    for case in range(5):
        n_head = int(rng.choice([1, 2, 4]))
        cfg = GPTConfig(vocab_size=int(rng.integers(10, 50)), block_size=int(rng.integers(8, 24)),
                        n_layer=int(rng.integers(1, 4)), n_head=n_head, n_embd=n_head * int(rng.integers(4, 9)))
        model = GPT(cfg)
        if case in (0, 1, 2):                          # a LoRA: only A and B train
            targets = sorted(rng.choice(kinds, size=int(rng.integers(1, 5)), replace=False).tolist())
            r = int(rng.integers(1, min(7, cfg.n_embd + 1)))     # a rank the layers can hold
            apply_lora(model, LoraConfig(r=r, lora_alpha=r, target_modules=targets))
            what = f"a GPT with LoRA r={r} on {targets}"
        elif case == 3:                                # some base modules frozen by hand
            frozen = rng.choice(kinds, size=3, replace=False).tolist()
            for name, p in model.named_parameters():
                p.requires_grad = not any(f".{k}." in name for k in frozen)
            what = f"a GPT with {frozen} frozen by hand"
        else:
            what = "a GPT with every parameter trainable"
        yield what, model


def _truth(model) -> int:
    """2 fp32 (or whatever dtype) moment arrays per trainable parameter, as AdamW allocates them."""
    return sum(2 * int(p.data.nbytes) for p in model.parameters() if p.requires_grad)


def check_adam_state_bytes_fn(adam_state_bytes: Callable) -> None:
    """7.2: adam_state_bytes(model) -> bytes of AdamW state, tested on hidden random models."""
    from minilora import linalg, optim

    ex = "7.2"
    rng = np.random.default_rng(707)
    for what, model in _hidden_models(rng):
        with forbidding((optim.Optimizer, "state_bytes"), (linalg, "optimizer_state_bytes"),
                        learner=adam_state_bytes):
            got = call_learner(adam_state_bytes, ex, "adam_state_bytes", model)
        got = as_integer(got, ex, f"adam_state_bytes(model) for {what}")
        want = _truth(model)
        if got == want:
            continue
        everything = sum(2 * int(p.data.nbytes) for p in model.parameters())
        trainable = sum(int(p.size) for p in model.parameters() if p.requires_grad)
        why = {everything: "you counted frozen parameters too; AdamW never sees a frozen one",
               want // 2: "that is one moment array; AdamW keeps two (m and v) per parameter",
               trainable: "that is the number of trainable numbers, not bytes of state",
               2 * trainable: "that counts numbers, not bytes: each number takes p.data.itemsize bytes",
               want * 2: "that is twice too much: two arrays, each the parameter's own size"}
        raise ExerciseError(ex, f"for {what}, adam_state_bytes(model) returned {got:,}, but AdamW keeps "
                            f"{want:,} bytes of state." + (f" It looks like {why[got]}." if got in why else ""))
    correct(ex, "state exists only for what trains: 2 moment arrays per trainable parameter. "
            "Freezing a weight removes its gradient *and* its optimizer state, which is why LoRA "
            "trains in so little memory.")


# ---------------------------------------------------------------- 7.3

def reveal_forward_ratio(my_prediction: Any, ratio: Any) -> None:
    """7.3: LoRA model's forward time / the base model's forward time (measured in the notebook)."""
    measured = as_number(ratio, "7.3", "the measured ratio")
    explain = ("Freezing changes nothing in the forward pass: the frozen W0 x is computed exactly as "
               "before, and an unmerged adapter adds B(A x) on top, so the LoRA model is a little "
               f"*slower* ({measured:.2f}x here). What freezing saves is in the backward pass and the "
               "optimizer: no weight gradients and no AdamW state for frozen weights. Merging B A into "
               "W0 (notebook 08) removes the extra forward cost.")
    reveal("7.3", my_prediction, measured, explain, what="my_prediction", rel_tol=0.1)

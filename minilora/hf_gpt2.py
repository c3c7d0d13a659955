"""Hugging Face GPT-2's names for minilora's GPT, written once.

Hugging Face's `GPT2LMHeadModel` holds the same numbers as minilora's GPT
under other names, and keeps q, k and v fused in one layer:

    minilora                        Hugging Face GPT-2
    transformer.h.i.attn.q_proj     transformer.h.i.attn.c_attn, output rows 0..C
    transformer.h.i.attn.k_proj     transformer.h.i.attn.c_attn, output rows C..2C
    transformer.h.i.attn.v_proj     transformer.h.i.attn.c_attn, output rows 2C..3C
    transformer.h.i.attn.o_proj     transformer.h.i.attn.c_proj
    transformer.h.i.mlp.fc          transformer.h.i.mlp.c_fc
    transformer.h.i.mlp.proj        transformer.h.i.mlp.c_proj
    any other module                the same name (wte, wpe, ln_1, ln_2, ln_f, lm_head)

The c_* layers are Conv1D: a Linear whose weight is stored (in, out), the
transpose of a Linear's (out, in). A LoRA's A (r, in) and B (out, r) have the
same shapes on both; PEFT's `fan_in_fan_out=True` only says how B A is added
into a Conv1D's weight when merging.

`load_gpt2` uses `checkpoint_to_ours` for the model's weights; the adapter
files use `to_hf` / `from_hf` and the two adapter converters at the end.
"""
from __future__ import annotations

import re

import numpy as np

# minilora module inside block i -> (Hugging Face module inside block i, which third of its output)
_IN_BLOCK = {"attn.q_proj": ("attn.c_attn", 0), "attn.k_proj": ("attn.c_attn", 1),
             "attn.v_proj": ("attn.c_attn", 2), "attn.o_proj": ("attn.c_proj", None),
             "mlp.fc": ("mlp.c_fc", None), "mlp.proj": ("mlp.c_proj", None)}
CONV1D = {hf for hf, _ in _IN_BLOCK.values()}          # Hugging Face layers stored (in, out)
_BLOCK = re.compile(r"(transformer\.h\.\d+)\.(.+)")


def to_hf(name: str) -> tuple[str, int | None]:
    """minilora module name -> (Hugging Face module name, third of c_attn's rows or None)."""
    m = _BLOCK.fullmatch(name)
    if m and m.group(2) in _IN_BLOCK:
        hf, third = _IN_BLOCK[m.group(2)]
        return f"{m.group(1)}.{hf}", third
    return name, None


def from_hf(name: str) -> list[str]:
    """Hugging Face module name -> minilora module names in row order (c_attn gives q, k, v).
    [] for a name only minilora uses (q_proj, ..., mlp.proj): it is no GPT-2 module."""
    m = _BLOCK.fullmatch(name)
    if m:
        if m.group(2) in _IN_BLOCK:
            return []
        ours = [f"{m.group(1)}.{mine}" for mine, (hf, _) in _IN_BLOCK.items() if hf == m.group(2)]
        if ours:
            return ours
    return [name]


def is_conv1d(hf_module: str) -> bool:
    m = _BLOCK.fullmatch(hf_module)
    return bool(m) and m.group(2) in CONV1D


def checkpoint_to_ours(state: dict) -> tuple[dict, list[str]]:
    """A GPT-2 state dict (keys with or without "transformer.") in minilora's names:
    Conv1D weights transposed to (out, in), c_attn's weight and bias cut into q, k, v.
    Returns (converted, keys that are minilora's names rather than GPT-2's)."""
    ours, foreign = {}, []
    for key, value in state.items():
        if not key.startswith(("transformer.", "lm_head.")):
            key = "transformer." + key                    # GPT2Model's keys lack the prefix
        module, _, param = key.rpartition(".")
        names = from_hf(module)
        if not names:
            foreign.append(key)
            continue
        if is_conv1d(module) and param == "weight":
            value = value.T                                # (in, out) -> (out, in)
        for name, piece in zip(names, np.split(value, len(names), axis=0)):
            ours[f"{name}.{param}"] = piece
    return ours, foreign


# --------------------------------------------------------------------------
# Adapters: one LoRA per module, as {module: (A, B)} with B already scaled
# --------------------------------------------------------------------------
def adapter_to_hf(layers: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """minilora LoRAs {name: (A, scaling * B)} -> Hugging Face GPT-2 LoRAs {name: (A, B)}.

    LoRAs on q, k, v become one LoRA on c_attn: B A x must be
    [B_q A_q x ; B_k A_k x ; B_v A_v x], so A stacks the A's and B places each
    B as a block in its third of the rows (a missing projection's rows stay 0).
    When the A's are one and the same (an adapter that came from c_attn), A is
    kept once and the B's are stacked: the original rank comes back.
    """
    out, fused = {}, {}
    for name, (A, B) in layers.items():
        hf, third = to_hf(name)
        if third is None:
            out[hf] = (A, B)
        else:
            fused.setdefault(hf, {})[third] = (A, B)
    for hf, parts in fused.items():
        C = next(iter(parts.values()))[1].shape[0]             # rows of one projection
        As = [A for A, _ in parts.values()]
        if all(A.shape == As[0].shape and np.array_equal(A, As[0]) for A in As):
            A = As[0]                                          # shared A: B blocks share columns
            B = np.zeros((3 * C, A.shape[0]), dtype=A.dtype)
            for third, (_, Bp) in parts.items():
                B[third * C:(third + 1) * C] = Bp
        else:
            thirds = sorted(parts)
            A = np.concatenate([parts[t][0] for t in thirds], axis=0)      # (r_q + r_k + r_v, C)
            B = np.zeros((3 * C, A.shape[0]), dtype=A.dtype)
            col = 0
            for t in thirds:
                Bp = parts[t][1]
                B[t * C:(t + 1) * C, col:col + Bp.shape[1]] = Bp
                col += Bp.shape[1]
        out[hf] = (A, B)
    return out


def adapter_from_hf(hf_name: str, A: np.ndarray, B: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One Hugging Face LoRA -> the minilora LoRAs that compute exactly the same.

    A LoRA on c_attn is three LoRAs on q, k, v that share A, each with its
    third of B's rows. A projection whose rows of B are all exactly zero adds
    nothing and is left out; any other value, however small, is kept.
    Raises ValueError when c_attn's B cannot be cut into three.
    """
    names = from_hf(hf_name)
    if len(names) == 1:
        return {names[0]: (A, B)}
    if B.ndim != 2 or B.shape[0] % len(names):
        raise ValueError(f"{hf_name}: lora_B has shape {B.shape}; a LoRA on the fused q, k, v "
                         f"layer needs {len(names)} equal row blocks")
    pieces = {name: (A, Bp) for name, Bp in zip(names, np.split(B, len(names), axis=0))}
    kept = {name: (A, Bp) for name, (A, Bp) in pieces.items() if Bp.any()}
    return kept or pieces                       # all zero: keep them all, the adapter is still there


def bias_from_hf(hf_name: str, value: np.ndarray) -> dict[str, np.ndarray]:
    """A Hugging Face layer's bias -> {minilora layer: bias}: c_attn's is cut into q, k, v."""
    names = from_hf(hf_name)
    if not names or value.ndim != 1 or value.shape[0] % len(names):
        raise ValueError(f"bias {hf_name}: shape {value.shape} does not fit GPT-2's layer there")
    return dict(zip(names, np.split(value, len(names))))

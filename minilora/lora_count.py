"""How many parameters LoRA adds to a GPT, from its config alone.

No model is built and no weight is touched: the GPT's shapes (`module_shapes`)
and the LoRA config's targets are enough. A LoRA on a Linear with in_features x
out_features adds A (r x in) and B (out x r), r * (in + out) numbers, which is
linalg's `factorization_storage(out, in, r).factored`; on an Embedding
(num x dim) it adds r * (num + dim). So it works as well for GPT-3 (175 billion
weights) as for our tiny GPT.

linalg.py stays pure NumPy, below the model in the data flow, so these two
functions live here, above the model and LoRA.
"""
from __future__ import annotations

from typing import Any

from minilora import linalg
from minilora.lora import target_matches
from minilora.model import module_shapes


def lora_params_by_module(gpt_config: Any, lora_config: Any) -> dict[str, int]:
    """{module name: LoRA parameters added to it} for every module LoRA targets."""
    counts: dict[str, int] = {}
    for name, (kind, size_a, size_b) in module_shapes(gpt_config).items():
        if not target_matches(name, lora_config.target_modules):
            continue
        if kind not in ("linear", "embedding"):
            raise ValueError(f"module_shapes gave an unknown kind {kind!r} for {name}")
        r = int(lora_config.rank_for(name))
        # linear: (in, out) -> A [r, in], B [out, r];  embedding: (num, dim) -> A [r, num], B [dim, r]
        counts[name] = linalg.factorization_storage(size_b, size_a, r).factored
    return counts


def count_lora_params(gpt_config: Any, lora_config: Any) -> int:
    """The number of trainable LoRA parameters for this model and LoRA config.

    The paper's formula |Theta| = 2 * L_hat * d_model * r is the special case
    of square d_model x d_model targets with one rank; this sums r * (in + out)
    over the targeted modules, honouring rank_pattern.
    GPT-3 (96 layers, d 12288) with q_proj, v_proj: r=1 -> 4,718,592,
    r=4 -> 18,874,368, r=8 -> 37,748,736.
    """
    return sum(lora_params_by_module(gpt_config, lora_config).values())


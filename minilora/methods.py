"""The methods LoRA was compared against, as real layers you can train and time.

Two earlier ways to fine-tune a big model cheaply (the LoRA paper, section 3):

- **Adapter layers** (Houlsby et al. 2019): a small bottleneck MLP inserted
  after a sublayer, h -> h + W_up gelu(W_down h), with W_down (m, C) and
  W_up (C, m), m much smaller than C. Only the adapters train. They are extra
  layers run one after another, so at batch size 1, where the GPU (or CPU)
  waits on each layer in turn, they add latency; and they cannot be merged
  away, because of the nonlinearity in the middle.
- **Prompt (soft-prompt) tuning** (Lester et al. 2021): n learned vectors are
  put in front of every input's token embeddings. Only those vectors train.
  They use up n positions of the context window that the task can no longer
  have, and the optimisation is known to be touchy.

LoRA's B A, once merged into W0, adds neither: that is the comparison the
`minilora paper` command and notebook 11 measure.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from minilora import backend
from minilora import functional as F
from minilora import nn
from minilora.tensor import Tensor, concatenate

__all__ = ["BottleneckAdapter", "WithAdapter", "apply_adapter_layers", "adapter_layer_params",
           "PromptTuning"]


class BottleneckAdapter(nn.Module):
    """h -> h + up(gelu(down(h))): a residual bottleneck, near the identity at the start.

    down: C -> m, up: m -> C. `up` starts at zero (as LoRA's B), so before any
    training the adapter passes h through unchanged and the model is the base one.
    """

    def __init__(self, dim: int, bottleneck: int):
        super().__init__()
        if not (isinstance(bottleneck, (int, np.integer)) and 1 <= bottleneck):
            raise ValueError(f"BottleneckAdapter: bottleneck={bottleneck!r} must be a positive integer")
        self.down = nn.Linear(dim, bottleneck)          # weight (m, C)
        self.up = nn.Linear(bottleneck, dim)            # weight (C, m)
        self.up.weight.data = self.up.weight.xp.zeros_like(self.up.weight.data)
        self.up.bias.data = self.up.bias.xp.zeros_like(self.up.bias.data)

    def forward(self, h: Tensor) -> Tensor:
        # GPT-2's tanh GELU, as in the model's MLP: [B, T, C] -> [B, T, m] -> [B, T, C]
        return h + self.up(F.gelu(self.down(h), approximate="tanh"))


class WithAdapter(nn.Module):
    """A sublayer followed by an adapter: adapter(sublayer(x))."""

    def __init__(self, sublayer: nn.Module, adapter: BottleneckAdapter):
        super().__init__()
        self.sublayer = sublayer
        self.adapter = adapter

    def forward(self, x: Tensor) -> Tensor:
        return self.adapter(self.sublayer(x))


def adapter_layer_params(n_embd: int, bottleneck: int) -> int:
    """Parameters of one adapter: down (m C + m) plus up (C m + C)."""
    return 2 * n_embd * bottleneck + bottleneck + n_embd


def apply_adapter_layers(model, bottleneck: int = 8, where=("attn", "mlp")):
    """Freeze the GPT and insert a Houlsby adapter after each block's attention and MLP.

    The adapter goes after the sublayer's output projection and before the
    residual addition, as in Houlsby et al.; each block's forward is unchanged,
    because `block.attn` and `block.mlp` are simply replaced by wrapped ones.
    Returns the model (changed in place).
    """
    bad = [w for w in where if w not in ("attn", "mlp")]
    if bad or not where:
        raise ValueError(f"apply_adapter_layers: where={where!r}; use 'attn', 'mlp' or both")
    for p in model.parameters():
        p.requires_grad = False
    C = model.config.n_embd
    for block in model.transformer.h:
        for name in where:
            sublayer = getattr(block, name)
            if isinstance(sublayer, WithAdapter):
                raise ValueError(f"apply_adapter_layers: this block's {name} already has an adapter")
            setattr(block, name, WithAdapter(sublayer, BottleneckAdapter(C, bottleneck)))
    return model


class PromptTuning(nn.Module):
    """A frozen GPT with n_virtual learned input vectors put in front of every sequence.

    forward(idx) takes the same token ids (B, T) as the GPT and returns logits
    (B, T, vocab) for those tokens only, so the training loop and the
    evaluation work unchanged. Inside, the sequence is n_virtual + T long:
    `config.block_size` is the base model's minus n_virtual, the context the
    task has lost to the prompt.
    """

    def __init__(self, model, n_virtual: int, seed: int = 0):
        super().__init__()
        limit = model.config.block_size
        if not (isinstance(n_virtual, (int, np.integer)) and 1 <= n_virtual < limit):
            raise ValueError(f"PromptTuning: n_virtual={n_virtual!r} must be an integer from 1 to "
                             f"{limit - 1} (the base model's block_size is {limit})")
        for p in model.parameters():
            p.requires_grad = False
        self.base = model
        self.n_virtual = int(n_virtual)
        self.config = replace(model.config, block_size=limit - self.n_virtual)
        # Start from the embeddings of random vocabulary tokens (Lester et al.'s
        # "sampled vocabulary" initialisation): vectors the model already reads.
        wte = backend.to_numpy(model.transformer.wte.weight.data)
        rows = np.random.default_rng(seed).integers(0, wte.shape[0], size=self.n_virtual)
        self.prompt = nn.Parameter(wte[rows].copy(), device=model.transformer.wte.weight.device)

    def forward(self, idx) -> Tensor:
        gpt = self.base
        idx = backend.to_device(idx.data if isinstance(idx, Tensor) else idx, self.prompt.device)
        if idx.ndim != 2 or idx.shape[1] > self.config.block_size:
            raise ValueError(f"PromptTuning: ids must be (B, T) with T <= {self.config.block_size} "
                             f"({self.n_virtual} of the model's {gpt.config.block_size} positions hold the prompt); "
                             f"got shape {tuple(idx.shape)}")
        B, T = idx.shape
        n, C = self.n_virtual, gpt.config.n_embd
        tokens = gpt.transformer.wte(idx)                                      # [B, T, C]
        prompt = self.prompt.reshape(1, n, C).expand(B, n, C)                 # [B, n, C]
        # The tokens keep positions 0..T-1, where the base model learned to read
        # them; the prompt vectors are free parameters, so they need no position.
        tokens = tokens + gpt.transformer.wpe(self.prompt.xp.arange(T))       # [B, T, C]
        x = concatenate([prompt, tokens], axis=1)                              # [B, n + T, C]
        x = gpt.transformer.drop(x)
        for block in gpt.transformer.h:
            x = block(x)
        x = gpt.transformer.ln_f(x)
        return gpt.lm_head(x)[:, n:, :]                                       # the real tokens: [B, T, vocab]

    def extra_repr(self) -> str:
        return f"n_virtual={self.n_virtual}, context left={self.config.block_size}"

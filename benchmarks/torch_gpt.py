"""The same GPT in PyTorch, parameter for parameter, for benchmarks and parity tests.

Its parameter names equal minilora's (`transformer.h.0.attn.q_proj.weight`, ...),
so `torch_model.load_state_dict(minilora_model.state_dict())` copies the weights.
Attention is written out (scores, mask, softmax, weighted sum) exactly as in
minilora's model.py, so both sides do the same arithmetic; `fused_attention=True`
switches to PyTorch's scaled_dot_product_attention for comparison.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as tnn
import torch.nn.functional as TF


class Attention(tnn.Module):
    def __init__(self, cfg, fused: bool):
        super().__init__()
        C = cfg.n_embd
        self.n_head, self.fused = cfg.n_head, fused
        self.q_proj, self.k_proj = tnn.Linear(C, C, bias=cfg.bias), tnn.Linear(C, C, bias=cfg.bias)
        self.v_proj, self.o_proj = tnn.Linear(C, C, bias=cfg.bias), tnn.Linear(C, C, bias=cfg.bias)

    def forward(self, x):
        B, T, C = x.shape
        H, D = self.n_head, C // self.n_head
        q, k, v = (p(x).view(B, T, H, D).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        if self.fused:
            y = TF.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D))
            mask = torch.triu(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=1)
            y = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1) @ v
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(tnn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.fc = tnn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = tnn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(self, x):
        return self.proj(TF.gelu(self.fc(x), approximate="tanh"))


class Block(tnn.Module):
    def __init__(self, cfg, fused: bool):
        super().__init__()
        self.ln_1 = tnn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = Attention(cfg, fused)
        self.ln_2 = tnn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TorchGPT(tnn.Module):
    def __init__(self, cfg, fused_attention: bool = False):
        super().__init__()
        self.transformer = tnn.ModuleDict(dict(
            wte=tnn.Embedding(cfg.vocab_size, cfg.n_embd),
            wpe=tnn.Embedding(cfg.block_size, cfg.n_embd),
            h=tnn.ModuleList(Block(cfg, fused_attention) for _ in range(cfg.n_layer)),
            ln_f=tnn.LayerNorm(cfg.n_embd, bias=cfg.bias),
        ))
        self.lm_head = tnn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight

    def forward(self, idx):
        T = idx.shape[1]
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(T, device=idx.device))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


def twin_of(model, fused_attention: bool = False, dtype=torch.float32) -> TorchGPT:
    """A TorchGPT holding the same weights as the minilora GPT `model`."""
    twin = TorchGPT(model.config, fused_attention).to(dtype)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)).to(dtype) for k, v in model.state_dict().items()}
    state["lm_head.weight"] = state["transformer.wte.weight"]   # tied, listed once by minilora
    twin.load_state_dict(state)
    return twin

"""A GPT-2 style Transformer, in reading order: config, attention, MLP, Block, GPT.

It is GPT-2 exactly (pre-LayerNorm blocks, learned positions, tanh GELU,
causal attention scaled by 1/sqrt(head_dim), an output head tied to the token
embedding) with one change made for LoRA: the query, key, value and output
projections are four separate Linears (the paper's Wq, Wk, Wv, Wo) instead of
GPT-2's fused `c_attn`, so each can be adapted on its own. `load_gpt2` splits a
Hugging Face checkpoint into that layout.

Shapes: B batch, T time (tokens), C = n_embd, H = n_head, D = C / H.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from minilora import backend
from minilora.data import greedy_decode
from minilora import functional as F
from minilora import hf_gpt2
from minilora import nn
from minilora.tensor import Tensor, no_grad


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int          # the longest sequence the model accepts (learned positions)
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool = True        # biases in Linears and LayerNorms, as GPT-2

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"GPTConfig: {name}={value!r} must be a positive integer")
            setattr(self, name, int(value))                  # a NumPy integer becomes a plain int
        if not isinstance(self.bias, (bool, np.bool_)):      # "false" is a string, and truthy
            raise ValueError(f"GPTConfig: bias={self.bias!r} must be True or False "
                             f"(a {type(self.bias).__name__} is not a bool)")
        self.bias = bool(self.bias)
        if isinstance(self.dropout, (bool, np.bool_)) or not isinstance(self.dropout, (int, float, np.number)):
            raise ValueError(f"GPTConfig: dropout={self.dropout!r} must be a number in [0, 1)")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd={self.n_embd} must be divisible by "
                             f"n_head={self.n_head} (each head gets n_embd / n_head dimensions)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig: dropout={self.dropout} must be in [0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    """Every position attends to itself and the positions before it, in n_head heads."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        C, bias = config.n_embd, config.bias
        self.n_head = config.n_head
        self.q_proj = nn.Linear(C, C, bias=bias)   # W_q
        self.k_proj = nn.Linear(C, C, bias=bias)   # W_k
        self.v_proj = nn.Linear(C, C, bias=bias)   # W_v
        self.o_proj = nn.Linear(C, C, bias=bias)   # W_o
        self.attn_dropout = nn.Dropout(config.dropout)      # on the attention weights
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        H, D = self.n_head, C // self.n_head

        def heads(t):                                        # [B, T, C] -> [B, H, T, D]
            return t.reshape(B, T, H, D).transpose(1, 2)

        q = heads(self.q_proj(x))                            # [B, H, T, D]
        k = heads(self.k_proj(x))                            # [B, H, T, D]
        v = heads(self.v_proj(x))                            # [B, H, T, D]
        # Attention: scores q.k / sqrt(D) [B, H, T, T], the future masked out,
        # softmax over the keys, then a weighted sum of the values -> [B, H, T, D].
        # functional.scaled_dot_product_attention writes out that maths and its backward rule.
        p = self.attn_dropout.p if self.training else 0.0   # dropout on the weights, training only
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        y = y.transpose(1, 2).reshape(B, T, C)               # heads side by side again: [B, T, C]
        return self.resid_dropout(self.o_proj(y))            # [B, T, C]


class MLP(nn.Module):
    """Position-wise feed-forward: widen 4x, GELU, project back."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = F.gelu(self.fc(x), approximate="tanh")          # GPT-2's GELU: [B, T, C] -> [B, T, 4C]
        return self.dropout(self.proj(h))                   # [B, T, 4C] -> [B, T, C]


class Block(nn.Module):
    """A Transformer block: attention then MLP, each on a LayerNorm-ed copy, each added back."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    """Token and position embeddings, n_layer Blocks, a final LayerNorm, and a tied output head."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: the output head reuses the token embedding (one Parameter, two uses).
        self.lm_head.weight = self.transformer.wte.weight
        self._init_weights()

    def _init_weights(self) -> None:
        """GPT-2's initialisation: N(0, 0.02), zero biases, and the projections that
        write into the residual stream scaled down by sqrt(2 * n_layer) so the
        stream's variance does not grow with depth."""
        rng = backend.rng()
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                values = np.zeros(p.shape, np.float32)
            elif name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                values = np.ones(p.shape, np.float32)
            else:
                std = residual_std if name.endswith(("o_proj.weight", "mlp.proj.weight")) else 0.02
                values = rng.normal(0.0, std, size=p.shape).astype(np.float32)
            p.data = backend.to_device(values, p.device)      # drawn on the host, kept where p is

    @property
    def device(self) -> str:
        """Where the weights are, "cpu" or "cuda" (as Hugging Face's model.device)."""
        return next(self.parameters()).device

    def forward(self, idx) -> Tensor:
        """Token ids (B, T) -> next-token logits (B, T, vocab_size)."""
        idx = backend.to_device(_check_ids(idx, self.config), self.device)   # ids go to the weights
        B, T = idx.shape
        positions = backend.to_device(np.arange(T), self.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(positions)   # [B, T, C] + [T, C]
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x)                                     # [B, T, C]
        x = self.transformer.ln_f(x)
        return self.lm_head(x)                               # [B, T, C] -> [B, T, vocab]

    def generate(self, idx, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, seed: int | None = None) -> np.ndarray:
        """Extend each row of idx (B, T) by max_new_tokens tokens.

        temperature 0 picks the most likely token (greedy); above 0 it samples
        from softmax(logits / temperature), optionally from the top_k only.
        Returns a NumPy array (B, T + max_new_tokens).
        """
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.number)) \
                or not 0 <= temperature < math.inf:
            raise ValueError(f"generate: temperature={temperature!r} must be a number >= 0 (0 means greedy)")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) \
                or max_new_tokens < 0:
            raise ValueError(f"generate: max_new_tokens={max_new_tokens!r} must be an integer >= 0")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer))
                                  or top_k < 1):
            raise ValueError(f"generate: top_k={top_k!r} must be a positive integer or None")
        rng = np.random.default_rng(seed) if seed is not None else backend.rng()
        idx = backend.to_numpy(_check_ids(idx, self.config))
        was_training = self.training
        self.eval()
        try:
            with no_grad():
                if temperature == 0:       # the package's one greedy decoder
                    return greedy_decode(self._numpy_logits, idx, max_new_tokens, self.config.block_size)
                return self._sample(idx, max_new_tokens, temperature, top_k, rng)
        finally:
            self.train(was_training)

    def _numpy_logits(self, idx: np.ndarray) -> np.ndarray:
        """ids (B, T) -> logits (B, T, vocab) as a host array, the form the decoders take."""
        return backend.to_numpy(self(idx).data)

    def _sample(self, idx, max_new_tokens: int, temperature: float, top_k, rng) -> np.ndarray:
        """Append max_new_tokens tokens drawn from softmax(logits / temperature), top_k only if set."""
        for _ in range(max_new_tokens):
            context = idx[:, -self.config.block_size:]
            logits = self._numpy_logits(context)[:, -1, :].astype(np.float64) / temperature
            if top_k is not None:
                cut = np.sort(logits, axis=-1)[:, -min(top_k, logits.shape[-1])][:, None]
                logits = np.where(logits < cut, -np.inf, logits)
            p = np.exp(logits - logits.max(axis=-1, keepdims=True))
            p /= p.sum(axis=-1, keepdims=True)
            nxt = np.array([rng.choice(len(row), p=row) for row in p])
            idx = np.concatenate([idx, nxt[:, None]], axis=1)
        return idx


def _check_ids(idx, config: GPTConfig):
    """Validate token ids: 2-D integers, within the vocabulary and the context length."""
    idx = idx.data if isinstance(idx, Tensor) else idx
    idx = idx if hasattr(idx, "dtype") else np.asarray(idx)   # checked on the host when it comes from there
    if idx.ndim != 2 or idx.dtype.kind not in "iu":
        raise ValueError(f"GPT expects token ids of shape (batch, time) and integer dtype, "
                         f"got shape {tuple(idx.shape)} and dtype {idx.dtype}; "
                         "for one sequence use ids[None, :].")
    if idx.shape[1] > config.block_size:
        raise ValueError(f"GPT: sequence of {idx.shape[1]} tokens is longer than block_size="
                         f"{config.block_size}; crop it to the last {config.block_size} tokens "
                         "or build the model with a larger block_size.")
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= config.vocab_size):
        bad = int(idx.max()) if int(idx.max()) >= config.vocab_size else int(idx.min())
        raise ValueError(f"GPT: token id {bad} is outside the vocabulary of {config.vocab_size} "
                         f"(valid ids are 0..{config.vocab_size - 1}); check the tokenizer.")
    return idx


def check_weights(weights: dict, where) -> None:
    """Refuse weights no training leaves behind: integer or bool arrays, NaN or inf.

    load_state_dict would cast them to float32 and load them without a word.
    """
    problems = []
    for name, value in weights.items():
        if value.dtype.kind != "f":
            problems.append(f"{name} has dtype {value.dtype}, not floating point")
        elif not np.isfinite(value).all():
            problems.append(f"{name} holds NaN or inf")
    if problems:
        raise ValueError(f"{where}: {'; '.join(problems[:3])}{'; ...' if len(problems) > 3 else ''}. "
                         "The file is broken or from a diverged run; nothing was loaded")


def module_shapes(config: GPTConfig) -> dict[str, tuple[str, int, int]]:
    """Every Linear and Embedding of GPT(config), by name, without building it.

    Linear: ("linear", in_features, out_features); Embedding: ("embedding",
    num_embeddings, embedding_dim). Enough to count LoRA parameters for a
    model far too large to build, such as GPT-3.
    """
    C = config.n_embd
    shapes = {"transformer.wte": ("embedding", config.vocab_size, C),
              "transformer.wpe": ("embedding", config.block_size, C)}
    for i in range(config.n_layer):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"transformer.h.{i}.attn.{proj}"] = ("linear", C, C)
        shapes[f"transformer.h.{i}.mlp.fc"] = ("linear", C, 4 * C)
        shapes[f"transformer.h.{i}.mlp.proj"] = ("linear", 4 * C, C)
    shapes["lm_head"] = ("linear", C, config.vocab_size)
    return shapes


# --------------------------------------------------------------------------
# Loading a Hugging Face GPT-2 checkpoint
# --------------------------------------------------------------------------
_HF_BUFFERS = (".attn.bias", ".attn.masked_bias")   # causal-mask buffers some checkpoints carry
# Options that change the arithmetic but not the weights' shapes: loading anyway
# would give a model that runs and silently computes something else.
_HF_FIXED = (("layer_norm_epsilon", 1e-5), ("scale_attn_weights", True),
             ("scale_attn_by_inverse_layer_idx", False))


def load_gpt2(path_or_state_dict, n_head: int | None = None) -> GPT:
    """Build a GPT from a Hugging Face GPT-2 checkpoint.

    Accepts a directory with config.json and model.safetensors, a .safetensors
    file (config.json beside it, or pass n_head), or a dict of arrays (pass
    n_head). GPT-2 fuses q, k, v into one Conv1D `c_attn` whose weight is
    stored (in, out), the transpose of a Linear's; both are undone here
    (minilora.hf_gpt2 holds the names). The model remembers where it came from
    in `name_or_path`, which adapters saved for Hugging Face's GPT-2 record.
    """
    state, hf_config, source = _read_gpt2(path_or_state_dict)
    state = {k: v for k, v in state.items() if not k.endswith(_HF_BUFFERS)}
    check_weights(state, source or "load_gpt2's state dict")
    _check_gpt2_config(hf_config)
    ours, foreign = hf_gpt2.checkpoint_to_ours(state)
    config = _gpt2_config(ours, n_head or hf_config.get("n_head"))
    tied = ours.pop("lm_head.weight", None)
    if tied is not None and not np.array_equal(tied, ours["transformer.wte.weight"]):
        raise ValueError("load_gpt2: lm_head.weight differs from wte.weight, but minilora's GPT ties them")
    model = GPT(config)
    expected = set(dict(model.named_parameters()))
    unknown = sorted((set(ours) - expected) | set(foreign))
    missing = sorted(expected - set(ours))
    if unknown or missing:
        raise KeyError(f"load_gpt2: checkpoint does not match GPT-2's layout: unknown keys "
                       f"{unknown}, missing keys {missing}")
    model.load_state_dict({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in ours.items()})
    model.name_or_path = source
    return model


def _read_gpt2(path_or_state_dict) -> tuple[dict, dict, str | None]:
    """(arrays, config.json contents or {}, the path read or None) from a path or a dict."""
    if isinstance(path_or_state_dict, dict):
        state = {k: backend.to_numpy(v.data if isinstance(v, Tensor) else v)
                 for k, v in path_or_state_dict.items()}
        return state, {}, None
    from minilora.files import read_json, read_safetensors

    path = Path(path_or_state_dict)
    weights = path / "model.safetensors" if path.is_dir() else path
    config_path = (path if path.is_dir() else path.parent) / "config.json"
    if not weights.exists():
        raise FileNotFoundError(f"load_gpt2: no weights at {weights}; expected a directory with "
                                "model.safetensors and config.json, or a .safetensors file")
    state = read_safetensors(weights)                   # a corrupt file: ValueError naming it
    hf_config = read_json(config_path) if config_path.exists() else {}
    if not isinstance(hf_config, dict):
        raise ValueError(f"load_gpt2: {config_path} holds a JSON {type(hf_config).__name__}, "
                         "not the object of settings a Hugging Face config.json is")
    return state, hf_config, str(path)


def _check_gpt2_config(hf_config: dict) -> None:
    """Refuse a config.json whose model computes something minilora's GPT does not."""
    if hf_config.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"load_gpt2: activation {hf_config['activation_function']!r} is not "
                         "GPT-2's tanh GELU, which is the only one minilora implements")
    for key, ours_value in _HF_FIXED:
        if key in hf_config and hf_config[key] != ours_value:
            raise ValueError(f"load_gpt2: config.json has {key}={hf_config[key]!r}, but minilora's "
                             f"GPT computes with {key}={ours_value!r}; this checkpoint cannot be "
                             "reproduced exactly")


def _gpt2_config(ours: dict, n_head) -> GPTConfig:
    """The GPTConfig that the weights' shapes (and n_head, which they do not show) describe."""
    if "transformer.wte.weight" not in ours or "transformer.wpe.weight" not in ours:
        raise KeyError(f"load_gpt2: not a GPT-2 checkpoint: no wte.weight / wpe.weight among "
                       f"its keys {sorted(ours)[:8]}...")
    if n_head is None:
        raise ValueError("load_gpt2: the number of heads cannot be read from weight shapes; "
                         "put config.json beside the weights or pass n_head=...")
    vocab_size, C = ours["transformer.wte.weight"].shape
    n_layer = len({k.split(".")[2] for k in ours if k.startswith("transformer.h.")})
    return GPTConfig(vocab_size=vocab_size, block_size=ours["transformer.wpe.weight"].shape[0],
                     n_layer=n_layer, n_head=n_head, n_embd=C, bias="transformer.ln_f.bias" in ours)

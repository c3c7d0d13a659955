"""LoRA: freeze the pretrained weight W0 and learn a low-rank update B A beside it.

For a Linear with W0 of shape (out, in), LoRA adds A (r, in) and B (out, r):

    h = W0 x + b + scaling * B (A x),      scaling = lora_alpha / r

Only A and B train: 2 d r numbers instead of d^2 for a d x d layer. B starts at
zero, so at step 0 the model is exactly the pretrained one. After training,
B A can be added into W0 (merge), and the model costs nothing extra to run.

Every name and number follows PEFT (see docs and REFERENCE), so what a learner
does here carries over to PEFT unchanged: `lora_A.default.weight`, the
scaling, the initialisations, the bias modes, `print_trainable_parameters`.
"""
from __future__ import annotations

import contextlib
import math
import re
from dataclasses import asdict, dataclass, field

import numpy as np

from minilora import backend
from minilora import functional as F
from minilora import nn
from minilora.tensor import Tensor


@dataclass
class LoraConfig:
    """What to adapt and how, with PEFT's field names and defaults where they apply."""

    r: int = 8                                   # the rank of B A
    lora_alpha: float = 8                        # scaling = lora_alpha / r
    target_modules: list | str = field(default_factory=lambda: ["q_proj", "v_proj"])
    lora_dropout: float = 0.0                    # dropout on the input of A
    bias: str = "none"                           # "none" | "all" | "lora_only"
    use_rslora: bool = False                     # scaling = lora_alpha / sqrt(r) instead
    init_lora_weights: bool | str = True         # True | "gaussian" | "pissa"
    rank_pattern: dict = field(default_factory=dict)    # {module-name pattern: r}
    alpha_pattern: dict = field(default_factory=dict)   # {module-name pattern: alpha}

    def __post_init__(self):
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        if not isinstance(self.r, (int, np.integer)) or isinstance(self.r, bool) or self.r < 1:
            raise ValueError(f"LoraConfig: r={self.r!r} must be a positive integer (try 4 or 8)")
        if not self.lora_alpha > 0:
            raise ValueError(f"LoraConfig: lora_alpha={self.lora_alpha!r} must be positive")
        if self.bias not in ("none", "all", "lora_only"):
            raise ValueError(f"LoraConfig: bias={self.bias!r} must be 'none', 'all' or 'lora_only'")
        if self.init_lora_weights not in (True, False, "gaussian", "pissa"):
            raise ValueError(f"LoraConfig: init_lora_weights={self.init_lora_weights!r} must be "
                             "True, False, 'gaussian' or 'pissa'")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"LoraConfig: lora_dropout={self.lora_dropout} must be in [0, 1)")
        if not self.target_modules:
            raise ValueError("LoraConfig: target_modules is empty; name the layers to adapt, "
                             "e.g. ['q_proj', 'v_proj']")
        for pattern, value in self.rank_pattern.items():
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"LoraConfig: rank_pattern[{pattern!r}]={value!r} must be a "
                                 "positive integer, like r")
        for pattern, value in self.alpha_pattern.items():
            if not value > 0:
                raise ValueError(f"LoraConfig: alpha_pattern[{pattern!r}]={value!r} must be "
                                 "positive, like lora_alpha")

    def rank_for(self, module_name: str) -> int:
        """r for this module: rank_pattern overrides the default, PEFT style."""
        return int(_pattern_value(self.rank_pattern, module_name, self.r))

    def alpha_for(self, module_name: str) -> float:
        return _pattern_value(self.alpha_pattern, module_name, self.lora_alpha)

    def scaling_for(self, module_name: str) -> float:
        r, alpha = self.rank_for(module_name), self.alpha_for(module_name)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r

    def to_dict(self) -> dict:
        return asdict(self)


def _pattern_value(patterns: dict, module_name: str, default):
    """The value of the first pattern matching the end of the module name (dotted boundary)."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module_name):
            return value
    return default


def target_matches(module_name: str, target_modules) -> bool:
    """PEFT's rule: a list matches a name exactly or as a dotted suffix ("q_proj" matches
    "transformer.h.0.attn.q_proj"); a string is a regex that must match the whole name."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, module_name) is not None
    return any(module_name == t or module_name.endswith("." + t) for t in target_modules)


# --------------------------------------------------------------------------
# The LoRA layers
# --------------------------------------------------------------------------
class _LoraLayer(nn.Module):
    """What both LoRA layers share: the frozen base layer and the adapters' bookkeeping."""

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer
        self.scaling: dict[str, float] = {}        # per adapter: lora_alpha / r (or / sqrt(r))
        self.active_adapter: str | None = None
        self.merged_adapters: list[str] = []       # adapters whose B A is inside base_layer's weight
        self.disabled = False                      # set by disable_adapters()

    def adapter_in_use(self) -> str | None:
        """The adapter the forward pass adds, or None: disabled, merged, or none active here."""
        if self.disabled or self.merged_adapters:
            return None
        return self.active_adapter


class LoRALinear(_LoraLayer):
    """A frozen Linear (`base_layer`) plus, per adapter name, A (r, in) and B (out, r)."""

    def __init__(self, base_layer: nn.Linear):
        super().__init__(base_layer)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()

    def update_layer(self, name: str, r: int, scaling: float, dropout: float, init) -> None:
        """Add adapter `name`: A and B with the chosen initialisation."""
        out_features, in_features = self.base_layer.weight.shape
        self.lora_A[name] = nn.Linear(in_features, r, bias=False)   # weight (r, in)
        self.lora_B[name] = nn.Linear(r, out_features, bias=False)  # weight (out, r)
        self.lora_dropout[name] = nn.Dropout(dropout)
        self.scaling[name] = scaling
        A, B = self.lora_A[name].weight, self.lora_B[name].weight
        like = self.base_layer.weight           # A and B take W0's dtype and device, as in PEFT
        rng = backend.rng()
        if init is True:       # A ~ U(-1/sqrt(in), 1/sqrt(in)) (PyTorch's kaiming_uniform, a=sqrt(5)); B = 0
            A.data = _on_device(rng.uniform(-1, 1, A.shape) / math.sqrt(in_features), like)
            B.data = _on_device(np.zeros(B.shape), like)
        elif init == "gaussian":   # A ~ N(0, (1/r)^2); B = 0
            A.data = _on_device(rng.normal(0.0, 1.0 / r, A.shape), like)
            B.data = _on_device(np.zeros(B.shape), like)
        elif init == "pissa":
            self._pissa_init(name, r, scaling)
        else:   # init False: keep nn.Linear's random A and B (the model changes at step 0; for tests)
            A.data = _on_device(backend.to_numpy(A.data), like)
            B.data = _on_device(backend.to_numpy(B.data), like)

    def _pissa_init(self, name: str, r: int, scaling: float) -> None:
        """PiSSA: start A, B on W0's top-r singular directions and remove them from W0,
        so W0' + scaling * B A equals W0 and the output is unchanged at step 0."""
        W = backend.to_numpy(self.base_layer.weight.data).astype(np.float64)
        U, S, Vh = np.linalg.svd(W, full_matrices=False)            # W = U diag(S) Vh
        root = np.sqrt(S[:r] / scaling)
        A = root[:, None] * Vh[:r]                                   # (r, in)
        B = U[:, :r] * root[None, :]                                 # (out, r)
        weight = self.base_layer.weight
        self.lora_A[name].weight.data = _on_device(A, weight)
        self.lora_B[name].weight.data = _on_device(B, weight)
        weight.data = _on_device(W - scaling * (B @ A), weight)

    def delta_weight(self, name: str):
        """scaling * B @ A: what merging adds to W0 (an array of W0's shape)."""
        return self.scaling[name] * (self.lora_B[name].weight.data @ self.lora_A[name].weight.data)

    def forward(self, x: Tensor) -> Tensor:
        h = self.base_layer(x)                                   # W0 x + b  (frozen)
        name = self.adapter_in_use()
        if name is None:
            return h                                             # merged: B A is already in W0
        A, B = self.lora_A[name], self.lora_B[name]
        # + scaling * B A x. The scaling multiplies the small (..., r) activation A x
        # rather than the (..., out) result: the same number, r/out of the work.
        return h + B(A(self.lora_dropout[name](x)) * self.scaling[name])

    def extra_repr(self) -> str:
        return f"adapters={list(self.lora_A.keys())}, active={self.active_adapter!r}"


class LoRAEmbedding(_LoraLayer):
    """A frozen Embedding plus, per adapter, A (r, num_embeddings) and B (dim, r).

    A row lookup is a product with a one-hot vector, so a LoRA on it is the
    same idea: row i changes by scaling * B A[:, i]. Here A starts at 0 and B
    random (the other way round from a Linear), and there is no dropout.
    """

    def __init__(self, base_layer: nn.Embedding):
        super().__init__(base_layer)
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()

    def update_layer(self, name: str, r: int, scaling: float, dropout: float, init) -> None:
        num, dim = self.base_layer.weight.shape
        rng = backend.rng()
        like = self.base_layer.weight
        if init is False:
            A, B = rng.normal(size=(r, num)), rng.normal(size=(dim, r))
        else:
            A, B = np.zeros((r, num)), rng.normal(size=(dim, r))
        self.lora_embedding_A[name] = nn.Parameter(_on_device(A, like))
        self.lora_embedding_B[name] = nn.Parameter(_on_device(B, like))
        self.scaling[name] = scaling

    def delta_weight(self, name: str):
        """(num, dim): row i moves by scaling * (B A)[:, i]."""
        B, A = self.lora_embedding_B[name].data, self.lora_embedding_A[name].data
        return self.scaling[name] * (B @ A).T

    def forward(self, ids) -> Tensor:
        h = self.base_layer(ids)                                 # W0[ids]  (frozen)
        name = self.adapter_in_use()
        if name is None:
            return h
        A, B = self.lora_embedding_A[name], self.lora_embedding_B[name]
        picked = F.embedding(A.T, ids)                           # columns of A: [..., r]
        return h + (picked @ B.T) * self.scaling[name]           # [..., r] @ [r, dim]

    def extra_repr(self) -> str:
        return f"adapters={list(self.lora_embedding_A.keys())}, active={self.active_adapter!r}"


LORA_LAYERS = (LoRALinear, LoRAEmbedding)


def _on_device(array: np.ndarray, like: Tensor):
    """A host array as an array of `like`'s dtype on `like`'s device."""
    return backend.to_device(np.asarray(array, dtype=like.dtype), like.device)


def lora_layers(model) -> dict[str, nn.Module]:
    """{module name: LoRA layer} for every LoRA layer in the model."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LORA_LAYERS)}


def _adapter_names(layer) -> list[str]:
    return list(layer.lora_A.keys() if isinstance(layer, LoRALinear) else layer.lora_embedding_A.keys())


def _adapter_params(layer, name: str) -> list[Tensor]:
    if isinstance(layer, LoRALinear):
        return [layer.lora_A[name].weight, layer.lora_B[name].weight]
    return [layer.lora_embedding_A[name], layer.lora_embedding_B[name]]


# --------------------------------------------------------------------------
# Injecting LoRA into a model
# --------------------------------------------------------------------------
def apply_lora(model, config: LoraConfig, adapter_name: str = "default"):
    """Wrap every targeted Linear/Embedding with a LoRA layer and freeze the rest.

    Calling it again with a new adapter_name adds a second adapter beside the
    first; the first one added stays active until `set_adapter` switches.
    Returns the model (changed in place).
    """
    if not isinstance(adapter_name, str) or not adapter_name or "." in adapter_name:
        raise ValueError(f"apply_lora: adapter_name={adapter_name!r} must be a non-empty string "
                         "without dots (it becomes part of parameter names)")
    configs = getattr(model, "peft_config", {})
    if adapter_name in configs:
        raise ValueError(f"apply_lora: the model already has an adapter named {adapter_name!r} "
                         f"(adapters: {list(configs)}); pick another name or delete_adapter it first")
    targets = _find_targets(model, config)
    for name, module in targets:
        layer = module
        if not isinstance(module, LORA_LAYERS):
            layer = (LoRALinear if isinstance(module, nn.Linear) else LoRAEmbedding)(module)
            parent, child = _parent_of(model, name)
            setattr(parent, child, layer)
        layer.update_layer(adapter_name, config.rank_for(name), config.scaling_for(name),
                           config.lora_dropout, config.init_lora_weights)
    model.peft_config = {**configs, adapter_name: config}
    if getattr(model, "active_adapter", None) is None:
        set_adapter(model, adapter_name)
    else:
        _mark_trainable(model)
    return model


def _find_targets(model, config: LoraConfig) -> list[tuple[str, nn.Module]]:
    inside_lora = set()
    found, unsupported = [], []
    for name, module in model.named_modules():
        if any(name.startswith(p + ".") for p in inside_lora):
            continue                                  # never wrap a LoRA layer's own parts
        if isinstance(module, LORA_LAYERS):
            inside_lora.add(name)
        if name and target_matches(name, config.target_modules):
            if isinstance(module, (nn.Linear, nn.Embedding, *LORA_LAYERS)):
                found.append((name, module))
            else:
                unsupported.append(f"{name} ({type(module).__name__})")
    if unsupported and isinstance(config.target_modules, list):
        raise ValueError(f"apply_lora: target_modules={config.target_modules} matched modules that "
                         f"are neither Linear nor Embedding: {unsupported}. Name the Linear layers "
                         "inside them instead, e.g. 'q_proj'.")
    if not found:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                        if isinstance(m, (nn.Linear, nn.Embedding, *LORA_LAYERS))
                        and not any(n.startswith(p + ".") for p in inside_lora)})
        raise ValueError(f"apply_lora: target_modules={config.target_modules!r} matched no Linear "
                         f"or Embedding in the model. Layer names you can target: {names}")
    return found


def _parent_of(model, name: str):
    parent_name, _, child = name.rpartition(".")
    return model.get_submodule(parent_name), child


def _mark_trainable(model) -> None:
    """Freeze everything, then unfreeze the active adapter's A and B (and biases, per mode)."""
    for p in model.parameters():
        p.requires_grad = False
    active = model.active_adapter
    if active is None:
        return
    layers = lora_layers(model)
    for layer in layers.values():
        if active in _adapter_names(layer):
            for p in _adapter_params(layer, active):
                p.requires_grad = True
    mode = model.peft_config[active].bias
    if mode == "all":
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.requires_grad = True
    elif mode == "lora_only":
        for layer in layers.values():
            bias = getattr(layer.base_layer, "bias", None)
            if bias is not None and active in _adapter_names(layer):
                bias.requires_grad = True


def trainable_bias_names(model, adapter_name: str) -> list[str]:
    """Names of the biases an adapter trains (saved with it when its bias mode is not "none")."""
    mode = model.peft_config[adapter_name].bias
    if mode == "none":
        return []
    if mode == "all":
        return [n for n, _ in model.named_parameters() if n.endswith("bias")]
    return [f"{name}.base_layer.bias" for name, layer in lora_layers(model).items()
            if isinstance(layer, LoRALinear) and layer.base_layer.bias is not None
            and adapter_name in _adapter_names(layer)]


def print_trainable_parameters(model) -> tuple[int, int]:
    """Print PEFT's one-line summary and return (trainable, all)."""
    trainable = model.num_parameters(trainable_only=True)
    total = model.num_parameters()
    print(f"trainable params: {trainable:,d} || all params: {total:,d} || "
          f"trainable%: {100 * trainable / total:.4f}")
    return trainable, total


# --------------------------------------------------------------------------
# Several adapters on one base
# --------------------------------------------------------------------------
def _require_adapter(model, adapter_name: str) -> None:
    names = list(getattr(model, "peft_config", {}))
    if adapter_name not in names:
        raise KeyError(f"no adapter named {adapter_name!r}; the model has {names or 'none'} "
                       "(add one with apply_lora or load_adapter)")


def set_adapter(model, adapter_name: str) -> None:
    """Make `adapter_name` the one the forward pass uses (and the one that trains)."""
    _require_adapter(model, adapter_name)
    if any(layer.merged_adapters for layer in lora_layers(model).values()):
        raise RuntimeError(f"set_adapter({adapter_name!r}): the model has a merged adapter; "
                           "unmerge(model) first, then switch")
    for layer in lora_layers(model).values():
        layer.active_adapter = adapter_name if adapter_name in _adapter_names(layer) else None
    model.active_adapter = adapter_name
    _mark_trainable(model)


@contextlib.contextmanager
def disable_adapters(model):
    """Run the base model: inside this block every LoRA layer skips its adapter.

    A merged model is unmerged on entry and merged again on exit.
    """
    remerge = any(layer.merged_adapters for layer in lora_layers(model).values())
    if remerge:
        unmerge(model)
    layers = list(lora_layers(model).values())
    for layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer in layers:
            layer.disabled = False
        if remerge:
            merge(model)


def delete_adapter(model, adapter_name: str) -> None:
    """Remove an adapter's A and B everywhere. The active adapter cannot be deleted
    while others exist (set_adapter to another first); deleting the last one leaves
    the LoRA layers empty, so the model behaves as the base."""
    _require_adapter(model, adapter_name)
    others = [n for n in model.peft_config if n != adapter_name]
    if model.active_adapter == adapter_name and others:
        raise RuntimeError(f"delete_adapter({adapter_name!r}): it is the active adapter; "
                           f"set_adapter(model, {others[0]!r}) first")
    for layer in lora_layers(model).values():
        if adapter_name in layer.merged_adapters:
            raise RuntimeError(f"delete_adapter({adapter_name!r}): it is merged; unmerge(model) first")
        if adapter_name in _adapter_names(layer):
            for table in ("lora_A", "lora_B", "lora_dropout", "lora_embedding_A", "lora_embedding_B"):
                if hasattr(layer, table) and adapter_name in getattr(layer, table):
                    del getattr(layer, table)[adapter_name]
            del layer.scaling[adapter_name]
            if layer.active_adapter == adapter_name:
                layer.active_adapter = None
    model.peft_config = {n: c for n, c in model.peft_config.items() if n != adapter_name}
    if model.active_adapter == adapter_name:
        model.active_adapter = None
    _mark_trainable(model)


# --------------------------------------------------------------------------
# Merging: W = W0 + scaling * B A, so inference costs what the base model costs
# --------------------------------------------------------------------------
def merge(model) -> None:
    """Add the active adapter's scaling * B A into each base weight.

    All merged weights are computed and checked first; if any holds NaN or Inf
    (a diverged adapter) nothing is changed and an error names the layers.
    """
    active = getattr(model, "active_adapter", None)
    if active is None:
        raise RuntimeError("merge: the model has no active adapter to merge")
    plan, bad = [], []
    shared = _shared_weights(model)
    for name, layer in lora_layers(model).items():
        if layer.active_adapter is None or layer.merged_adapters:
            continue
        weight = layer.base_layer.weight
        if id(weight) in shared:
            raise RuntimeError(f"merge: {name}'s weight is tied to another layer ({shared[id(weight)]}); "
                               "merging would change that layer too. Keep this adapter unmerged.")
        merged = weight.data + layer.delta_weight(active).astype(weight.dtype)
        if not bool(backend.get_array_module(merged).isfinite(merged).all()):
            bad.append(name)
        plan.append((layer, merged))
    if bad:
        raise ValueError(f"merge refused: the merged weights of {bad} would contain NaN or Inf "
                         f"(adapter {active!r} has diverged); nothing was changed. Retrain it with "
                         "a smaller learning rate.")
    for layer, merged in plan:
        layer.base_layer.weight.data = merged
        layer.merged_adapters = [active]


def unmerge(model) -> None:
    """Subtract the merged adapter's scaling * B A again, restoring W0 (up to rounding)."""
    for layer in lora_layers(model).values():
        for name in layer.merged_adapters:
            weight = layer.base_layer.weight
            weight.data = weight.data - layer.delta_weight(name).astype(weight.dtype)
        layer.merged_adapters = []


def merge_and_unload(model):
    """Merge the active adapter and replace every LoRA layer by its base layer: a plain model.

    Like a freshly built model, every parameter of the result requires grad again
    (PEFT leaves the flags as they were); freeze it yourself to keep it frozen.
    """
    if getattr(model, "active_adapter", None) is not None:
        merge(model)
    for name, layer in lora_layers(model).items():
        parent, child = _parent_of(model, name)
        setattr(parent, child, layer.base_layer)
    for attr in ("peft_config", "active_adapter"):
        if attr in model.__dict__:
            object.__delattr__(model, attr)
    for p in model.parameters():
        p.requires_grad = True
    return model


def _shared_weights(model) -> dict[int, str]:
    """{id(parameter): names} for parameters used by more than one module (weight tying)."""
    uses: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        uses.setdefault(id(p), []).append(name)
    return {pid: " and ".join(names) for pid, names in uses.items() if len(names) > 1}

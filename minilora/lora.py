"""LoRA: freeze the pretrained weight W0 and learn a low-rank update B A beside it.

For a Linear with W0 of shape (out, in), LoRA adds A (r, in) and B (out, r):

    h = W0 x + b + scaling * B (A x),      scaling = lora_alpha / r

Only A and B train: 2 d r numbers instead of d^2 for a d x d layer. B starts at
zero, so at step 0 the model is exactly the pretrained one. After training,
B A can be added into W0 (merge), and the model costs nothing extra to run.

Every name and number follows PEFT (see docs and REFERENCE), so what a learner
does here carries over to PEFT unchanged: `lora_A.default.weight`, the
scaling, the initialisations, the bias modes, `print_trainable_parameters`,
`target_modules="all-linear"`.

Each LoRA layer type lists the tables holding its adapters in
`adapter_layer_names` (PEFT's name for it); adding, deleting, saving, loading
and marking adapters trainable loop over those names, whatever the layer.
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


ALL_LINEAR = "all-linear"      # PEFT's shorthand: every Linear except the output head


@dataclass
class LoraConfig:
    """What to adapt and how, with PEFT's field names and defaults where they apply.

    Every field is checked when the config is made (in Python or from a file):
    a string is not a bool, NaN is not a number, and a wrong value is an error
    naming the field, never a silently different adapter.
    """

    r: int = 8                                   # the rank of B A
    lora_alpha: float = 8                        # scaling = lora_alpha / r
    target_modules: list | str = field(default_factory=lambda: ["q_proj", "v_proj"])
    lora_dropout: float = 0.0                    # dropout on the input of A
    bias: str = "none"                           # "none" | "all" | "lora_only"
    use_rslora: bool = False                     # scaling = lora_alpha / sqrt(r) instead
    init_lora_weights: bool | str = True         # True | False | "gaussian" | "pissa"
    rank_pattern: dict = field(default_factory=dict)    # {module-name pattern: r}
    alpha_pattern: dict = field(default_factory=dict)   # {module-name pattern: alpha}

    def __post_init__(self):
        if isinstance(self.target_modules, (tuple, set, frozenset)):
            self.target_modules = sorted(self.target_modules) if isinstance(
                self.target_modules, (set, frozenset)) else list(self.target_modules)
        if not _is_int(self.r) or self.r < 1:
            raise ValueError(f"LoraConfig: r={self.r!r} must be a positive integer (try 4 or 8)")
        if not _is_positive_number(self.lora_alpha):
            raise ValueError(f"LoraConfig: lora_alpha={self.lora_alpha!r} must be positive "
                             "(a finite number, e.g. 2 * r)")
        _check_targets(self.target_modules)
        if not (_is_number(self.lora_dropout) and 0.0 <= self.lora_dropout < 1.0):
            raise ValueError(f"LoraConfig: lora_dropout={self.lora_dropout!r} must be in [0, 1)")
        if self.bias not in ("none", "all", "lora_only") or not isinstance(self.bias, str):
            raise ValueError(f"LoraConfig: bias={self.bias!r} must be 'none', 'all' or 'lora_only'")
        if not isinstance(self.use_rslora, (bool, np.bool_)):
            raise ValueError(f"LoraConfig: use_rslora={self.use_rslora!r} must be True or False "
                             f"(a {type(self.use_rslora).__name__} is not a bool)")
        self.use_rslora = bool(self.use_rslora)
        if not (self.init_lora_weights is True or self.init_lora_weights is False
                or (isinstance(self.init_lora_weights, str)
                    and self.init_lora_weights in ("gaussian", "pissa"))):
            raise ValueError(f"LoraConfig: init_lora_weights={self.init_lora_weights!r} must be "
                             "True, False, 'gaussian' or 'pissa'")
        for pattern, value in _pattern_dict(self.rank_pattern, "rank_pattern").items():
            if not _is_int(value) or value < 1:
                raise ValueError(f"LoraConfig: rank_pattern[{pattern!r}]={value!r} must be a "
                                 "positive integer, like r")
        for pattern, value in _pattern_dict(self.alpha_pattern, "alpha_pattern").items():
            if not _is_positive_number(value):
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


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value) -> bool:
    """A real, finite number (a bool or a string is not one, NaN and inf are refused)."""
    return (isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, (bool, np.bool_)) and math.isfinite(value))


def _is_positive_number(value) -> bool:
    return _is_number(value) and value > 0


def _check_regex(pattern, what: str) -> None:
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"LoraConfig: {what} {pattern!r} must be a non-empty string")
    try:
        re.compile(pattern)
    except re.error as err:
        raise ValueError(f"LoraConfig: {what} {pattern!r} is not a valid regular expression "
                         f"({err})") from None


def _pattern_dict(table, name: str) -> dict:
    if not isinstance(table, dict):
        raise ValueError(f"LoraConfig: {name}={table!r} must be a dict {{module-name pattern: value}}")
    for pattern in table:
        _check_regex(pattern, f"{name} key")
    return table


def _check_targets(targets) -> None:
    """A list of module names (or dotted suffixes), a regex string, or "all-linear"."""
    if isinstance(targets, str):
        _check_regex(targets, "target_modules")
        return
    if not isinstance(targets, list):
        raise ValueError(f"LoraConfig: target_modules={targets!r} must be a list of layer names "
                         "such as ['q_proj', 'v_proj'], a regex string, or 'all-linear'")
    if not targets:
        raise ValueError("LoraConfig: target_modules is empty; name the layers to adapt, "
                         "e.g. ['q_proj', 'v_proj']")
    for name in targets:
        if not isinstance(name, str) or not name:
            raise ValueError(f"LoraConfig: target_modules entry {name!r} must be a non-empty "
                             "layer name such as 'q_proj'")


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
class LoraLayer(nn.Module):
    """What every LoRA layer shares: the frozen base layer and the adapters' bookkeeping.

    Each subclass declares in `adapter_layer_names` the tables that hold one entry
    per adapter, A's table first, then B's (PEFT's idea and name). Code that adds,
    deletes, saves, loads or merges adapters loops over these names, so it never
    has to ask which kind of LoRA layer it holds.
    """

    adapter_layer_names: tuple[str, ...] = ()       # the tables of A and B, e.g. ("lora_A", "lora_B")
    other_adapter_tables: tuple[str, ...] = ()      # per-adapter tables without weights (dropout)

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

    def adapter_names(self) -> list[str]:
        return list(getattr(self, self.adapter_layer_names[0]).keys())

    def adapter_weights(self, name: str) -> dict[str, Tensor]:
        """{key in an adapter file: Parameter} for one adapter, A first, e.g.
        {"lora_A.weight": A, "lora_B.weight": B}: the parameter's own name with the
        adapter's name left out, as PEFT writes it."""
        out = {}
        for table in self.adapter_layer_names:
            entry = getattr(self, table)[name]
            if isinstance(entry, nn.Module):          # a Linear holding the weight
                out[f"{table}.weight"] = entry.weight
            else:
                out[table] = entry
        return out

    def set_adapter_weights(self, name: str, arrays) -> None:
        """Overwrite one adapter's A and B (in the order of adapter_weights) with host arrays,
        stored in W0's dtype on W0's device, as PEFT does."""
        for param, array in zip(self.adapter_weights(name).values(), arrays):
            param.data = self.base_layer.weight.xp.asarray(array, dtype=self.base_layer.weight.dtype)

    def delete_adapter(self, name: str) -> None:
        for table in self.adapter_layer_names + self.other_adapter_tables:
            del getattr(self, table)[name]
        del self.scaling[name]
        if self.active_adapter == name:
            self.active_adapter = None

    def extra_repr(self) -> str:
        return f"adapters={self.adapter_names()}, active={self.active_adapter!r}"


class LoRALinear(LoraLayer):
    """A frozen Linear (`base_layer`) plus, per adapter name, A (r, in) and B (out, r)."""

    adapter_layer_names = ("lora_A", "lora_B")
    other_adapter_tables = ("lora_dropout",)
    file_keys = ("lora_A.weight", "lora_B.weight")         # in an adapter file, A then B

    def __init__(self, base_layer: nn.Linear):
        super().__init__(base_layer)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()

    @staticmethod
    def adapter_shapes(base_layer: nn.Linear, r: int) -> tuple[tuple, tuple]:
        out_features, in_features = base_layer.weight.shape
        return (r, in_features), (out_features, r)

    def update_layer(self, name: str, r: int, scaling: float, dropout: float, init) -> None:
        """Add adapter `name`: A and B with the chosen initialisation."""
        (out_features, in_features), device = self.base_layer.weight.shape, self.base_layer.weight.device
        self.lora_A[name] = nn.Linear(in_features, r, bias=False, device=device)   # weight (r, in)
        self.lora_B[name] = nn.Linear(r, out_features, bias=False, device=device)  # weight (out, r)
        self.lora_dropout[name] = nn.Dropout(dropout)
        self.scaling[name] = scaling
        A, B = self.lora_A[name].weight, self.lora_B[name].weight
        rng = backend.rng()
        if init is True:       # A ~ U(-1/sqrt(in), 1/sqrt(in)) (PyTorch's kaiming_uniform, a=sqrt(5)); B = 0
            self.set_adapter_weights(name, (rng.uniform(-1, 1, A.shape) / math.sqrt(in_features),
                                            np.zeros(B.shape)))
        elif init == "gaussian":   # A ~ N(0, (1/r)^2); B = 0
            self.set_adapter_weights(name, (rng.normal(0.0, 1.0 / r, A.shape), np.zeros(B.shape)))
        elif init == "pissa":
            self._pissa_init(name, r, scaling)
        else:   # init False: keep nn.Linear's random A and B (the model changes at step 0; for tests)
            self.set_adapter_weights(name, (backend.to_numpy(A.data), backend.to_numpy(B.data)))

    def _pissa_init(self, name: str, r: int, scaling: float) -> None:
        """PiSSA: start A, B on W0's top-r singular directions and remove them from W0,
        so W0' + scaling * B A equals W0 and the output is unchanged at step 0."""
        W = backend.to_numpy(self.base_layer.weight.data).astype(np.float64)
        U, S, Vh = np.linalg.svd(W, full_matrices=False)            # W = U diag(S) Vh
        root = np.sqrt(S[:r] / scaling)
        A = root[:, None] * Vh[:r]                                   # (r, in)
        B = U[:, :r] * root[None, :]                                 # (out, r)
        self.set_adapter_weights(name, (A, B))
        weight = self.base_layer.weight
        weight.data = weight.xp.asarray(W - scaling * (B @ A), dtype=weight.dtype)

    def delta_weight(self, name: str):
        """scaling * B @ A: what merging adds to W0 (an array of W0's shape)."""
        return self.scaling[name] * (self.lora_B[name].weight.data @ self.lora_A[name].weight.data)

    def forward(self, x: Tensor) -> Tensor:
        """h = W0 x + b + scaling * B A x: the frozen layer plus the low-rank update."""
        name = self.adapter_in_use()
        if name is None:
            return self.base_layer(x)                            # merged (B A is in W0) or disabled
        if self._merged_product_pays(x, name):
            # The same h, as x (W0 + scaling B A)^T + b: one product instead of three
            # (functional.lora_linear, which also shows the plain form and its gradients).
            return F.lora_linear(x, self.base_layer.weight, self.base_layer.bias,
                                 self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name])
        A, B = self.lora_A[name], self.lora_B[name]
        # The scaling multiplies the small (..., r) activation A x rather than the
        # (..., out) result: the same number, r/out of the work.
        return self.base_layer(x) + B(A(self.lora_dropout[name](x)) * self.scaling[name])

    def _merged_product_pays(self, x: Tensor, name: str) -> bool:
        """Whether functional.lora_linear computes this forward faster: no dropout on A's
        input, one dtype throughout, and enough rows N that building W0 + s B A (out in r
        multiply-adds) costs less than the thin products it replaces (N r (in + out))."""
        W, A, B = self.base_layer.weight, self.lora_A[name].weight, self.lora_B[name].weight
        out_features, in_features = W.shape
        dropout = self.lora_dropout[name]
        if not isinstance(x, Tensor) or x.ndim == 0 or x.shape[-1] != in_features:
            return False                                         # the plain path explains the error
        rows = x.numel() // in_features
        return ((dropout.p == 0 or not dropout.training)
                and x.dtype == W.dtype == A.dtype == B.dtype
                and rows * (in_features + out_features) > in_features * out_features)


class LoRAEmbedding(LoraLayer):
    """A frozen Embedding plus, per adapter, A (r, num_embeddings) and B (dim, r).

    A row lookup is a product with a one-hot vector, so a LoRA on it is the
    same idea: row i changes by scaling * B A[:, i]. Here A starts at 0 and B
    random (the other way round from a Linear), and there is no dropout.
    """

    adapter_layer_names = ("lora_embedding_A", "lora_embedding_B")
    file_keys = ("lora_embedding_A", "lora_embedding_B")

    def __init__(self, base_layer: nn.Embedding):
        super().__init__(base_layer)
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()

    @staticmethod
    def adapter_shapes(base_layer: nn.Embedding, r: int) -> tuple[tuple, tuple]:
        num, dim = base_layer.weight.shape
        return (r, num), (dim, r)

    def update_layer(self, name: str, r: int, scaling: float, dropout: float, init) -> None:
        (a_shape, b_shape), rng = self.adapter_shapes(self.base_layer, r), backend.rng()
        A = rng.normal(size=a_shape) if init is False else np.zeros(a_shape)
        B = rng.normal(size=b_shape)
        like = self.base_layer.weight
        self.lora_embedding_A[name] = nn.Parameter(A, dtype=like.dtype, device=like.device)
        self.lora_embedding_B[name] = nn.Parameter(B, dtype=like.dtype, device=like.device)
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


# Which LoRA layer wraps which base layer.
LORA_LAYER_FOR = {nn.Linear: LoRALinear, nn.Embedding: LoRAEmbedding}
LORA_LAYERS = tuple(LORA_LAYER_FOR.values())


def lora_class_for(module) -> type | None:
    """The LoRA layer class that can wrap this module (itself if it already is one), or None."""
    if isinstance(module, LORA_LAYERS):
        return type(module)
    return next((cls for base, cls in LORA_LAYER_FOR.items() if isinstance(module, base)), None)


def lora_layers(model) -> dict[str, LoraLayer]:
    """{module name: LoRA layer} for every LoRA layer in the model."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def wrap_module(model, name: str) -> LoraLayer:
    """The LoRA layer at `name`, wrapping the Linear/Embedding there first if needed."""
    module = model.get_submodule(name)
    if isinstance(module, LoraLayer):
        return module
    layer = lora_class_for(module)(module)
    parent, child = parent_of(model, name)
    setattr(parent, child, layer)
    return layer


def check_rank_fits(name: str, base_layer, r: int) -> None:
    """A rank above min(out, in) adds nothing a smaller one could not, and PiSSA cannot
    even build it (W0 has only min(out, in) singular directions): refuse it."""
    if r > min(base_layer.weight.shape):
        raise ValueError(f"{name}: r={r} is larger than the layer allows: its weight is "
                         f"{tuple(base_layer.weight.shape)}, so r must be at most "
                         f"{min(base_layer.weight.shape)}. Use a smaller r (or rank_pattern for "
                         "this layer).")


# --------------------------------------------------------------------------
# Injecting LoRA into a model
# --------------------------------------------------------------------------
def apply_lora(model, config: LoraConfig, adapter_name: str = "default"):
    """Wrap every targeted Linear/Embedding with a LoRA layer and freeze the rest.

    Calling it again with a new adapter_name adds a second adapter beside the
    first; the first one added stays active until `set_adapter` switches.
    Returns the model (changed in place). Everything is checked before the
    model changes: an error leaves it as it was.
    """
    check_adapter_name(adapter_name, "apply_lora")
    if not isinstance(config, LoraConfig):
        raise TypeError(f"apply_lora: config must be a LoraConfig, not {type(config).__name__}")
    configs = getattr(model, "peft_config", {})
    if adapter_name in configs:
        raise ValueError(f"apply_lora: the model already has an adapter named {adapter_name!r} "
                         f"(adapters: {list(configs)}); pick another name or delete_adapter it first")
    targets = find_targets(model, config)
    for name, module in targets.items():
        check_rank_fits(name, getattr(module, "base_layer", module), config.rank_for(name))
    for name in targets:
        wrap_module(model, name).update_layer(adapter_name, config.rank_for(name), config.scaling_for(name),
                                              config.lora_dropout, config.init_lora_weights)
    model.peft_config = {**configs, adapter_name: config}
    if getattr(model, "active_adapter", None) is None:
        set_adapter(model, adapter_name)
    else:
        mark_trainable(model)
    return model


def check_adapter_name(adapter_name, where: str) -> None:
    if not isinstance(adapter_name, str) or not adapter_name or "." in adapter_name:
        raise ValueError(f"{where}: adapter_name={adapter_name!r} must be a non-empty string "
                         "without dots (it becomes part of parameter names)")


def targeted_modules(model, target_modules) -> tuple[dict[str, nn.Module], list[str]]:
    """({name: module} LoRA can wrap, [other matched modules]) for target_modules, by PEFT's rules.
    The parts inside an existing LoRA layer (its base_layer, its A and B) never match."""
    inside_lora, candidates, modules = set(), {}, {}
    for name, module in model.named_modules():
        if not name or any(name.startswith(p + ".") for p in inside_lora):
            continue                                  # never wrap a LoRA layer's own parts
        if isinstance(module, LoraLayer):
            inside_lora.add(name)
        candidates[name], modules[name] = lora_class_for(module), module
    head = next((n for n, m in modules.items() if m is getattr(model, "lm_head", None)), None)
    found, unsupported = match_targets(candidates, target_modules, head)
    return {n: modules[n] for n in found}, [f"{n} ({type(modules[n]).__name__})" for n in unsupported]


def match_targets(candidates: dict, target_modules, head: str | None = None) -> tuple[list, list]:
    """Split {module name: LoRA class, or None if LoRA cannot wrap it} into the names
    target_modules selects that can be wrapped, and those selected that cannot.

    A list matches a name exactly or as a dotted suffix, a string is a regex over
    the whole name, and "all-linear" is every Linear except the output head
    (`head`, the model's lm_head), as in PEFT.
    """
    if isinstance(target_modules, str) and target_modules.lower() == ALL_LINEAR:
        return [n for n, cls in candidates.items() if cls is LoRALinear and n != head], []
    found, unsupported = [], []
    for name, cls in candidates.items():
        if target_matches(name, target_modules):
            (unsupported if cls is None else found).append(name)
    return found, unsupported


def find_targets(model, config: LoraConfig) -> dict[str, nn.Module]:
    """The modules apply_lora wraps, or an error saying what could be targeted."""
    found, unsupported = targeted_modules(model, config.target_modules)
    if unsupported and isinstance(config.target_modules, list):
        raise ValueError(f"apply_lora: target_modules={config.target_modules} matched modules that "
                         f"are neither Linear nor Embedding: {unsupported}. Name the Linear layers "
                         "inside them instead, e.g. 'q_proj'.")
    if not found:
        names = sorted({n.rsplit(".", 1)[-1] for n in targeted_modules(model, ".*")[0]})
        raise ValueError(f"apply_lora: target_modules={config.target_modules!r} matched no Linear "
                         f"or Embedding in the model. Layer names you can target: {names}")
    return found


def parent_of(model, name: str):
    """(parent module, attribute name) of the module called `name`."""
    parent_name, _, child = name.rpartition(".")
    return model.get_submodule(parent_name), child


def mark_trainable(model) -> None:
    """Freeze everything, then unfreeze the active adapter's A and B (and biases, per mode)."""
    for p in model.parameters():
        p.requires_grad = False
    active = model.active_adapter
    if active is None:
        return
    for layer in lora_layers(model).values():
        if active in layer.adapter_names():
            for p in layer.adapter_weights(active).values():
                p.requires_grad = True
    for p in trainable_biases(model, active).values():
        p.requires_grad = True


def trainable_biases(model, adapter_name: str) -> dict[str, Tensor]:
    """{parameter name: bias} an adapter trains, per its bias mode (PEFT's rule): "all"
    every bias, "lora_only" those of its LoRA layers' base layers. Saved with it."""
    mode = model.peft_config[adapter_name].bias
    if mode == "all":
        return {n: p for n, p in model.named_parameters() if n.endswith("bias")}
    if mode == "lora_only":
        return {f"{name}.base_layer.bias": layer.base_layer.bias
                for name, layer in lora_layers(model).items()
                if getattr(layer.base_layer, "bias", None) is not None
                and adapter_name in layer.adapter_names()}
    return {}


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
        layer.active_adapter = adapter_name if adapter_name in layer.adapter_names() else None
    model.active_adapter = adapter_name
    mark_trainable(model)


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
    layers = lora_layers(model).values()
    if any(adapter_name in layer.merged_adapters for layer in layers):
        raise RuntimeError(f"delete_adapter({adapter_name!r}): it is merged; unmerge(model) first")
    for layer in layers:
        if adapter_name in layer.adapter_names():
            layer.delete_adapter(adapter_name)
    model.peft_config = {n: c for n, c in model.peft_config.items() if n != adapter_name}
    if model.active_adapter == adapter_name:
        model.active_adapter = None
    mark_trainable(model)


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
        if not bool(weight.xp.isfinite(merged).all()):
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
        parent, child = parent_of(model, name)
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

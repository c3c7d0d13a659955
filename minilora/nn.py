"""Layers: Module, Linear, Embedding, LayerNorm, activations, losses, Dropout and the containers.

A Module is a tree. Assigning a Parameter or a Module to an attribute registers
it, so `named_parameters()` can walk the tree and produce PyTorch's dotted
names (`transformer.h.0.attn.q_proj.weight`). Those names are the contract
that state dicts, optimizers, LoRA targets and adapter files all rely on.
"""
from __future__ import annotations

import math
from collections import OrderedDict, namedtuple

import numpy as np

from minilora import backend
from minilora import functional as F
from minilora.tensor import Tensor

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class StateDictError(ValueError, RuntimeError):
    """A state dict that does not fit the module. PyTorch raises RuntimeError here and
    minilora raised ValueError before, so code catching either still catches it."""


class Parameter(Tensor):
    """A Tensor that a Module owns and an optimizer updates (requires_grad=True by default)."""

    def __init__(self, data, requires_grad: bool = True, dtype=None, device=None):
        super().__init__(data, requires_grad=requires_grad, dtype=dtype, device=device)

    def __repr__(self) -> str:
        return "Parameter" + super().__repr__()[len("Tensor"):]


class Module:
    """Base class of every layer and model."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # Registration happens on assignment: self.weight = Parameter(...), self.fc = Linear(...)
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before "
                                 f"assigning attributes (assigning {name!r})")
        # Replacing an entry of the same kind keeps its place in the OrderedDict, as in
        # PyTorch, so swapping a Linear for a LoRALinear does not reorder the names.
        # An entry of another kind (or a plain attribute such as bias=None) is removed
        # first; a plain attribute left in __dict__ would hide the registered one.
        if isinstance(value, Parameter):
            self._modules.pop(name, None)
            self.__dict__.pop(name, None)
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._parameters.pop(name, None)
            self.__dict__.pop(name, None)
            self._modules[name] = value
        elif name in self._parameters or name in self._modules:
            # As PyTorch: a registered name takes only its own kind, or None (which keeps the
            # slot empty). Anything else would silently drop it from parameters() and state_dict.
            table, kind = ("_parameters", "nn.Parameter") if name in self._parameters else ("_modules", "Module")
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} to {name!r}: it is a registered "
                                f"{kind}, so assign a {kind} or None (wrap an array: nn.Parameter(data)), "
                                f"or delete it first with `del module.{name}`")
            getattr(self, table)[name] = None
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):  # only called when normal lookup fails
        for table in ("_parameters", "_modules"):
            entries = self.__dict__.get(table, {})
            if name in entries:
                return entries[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __delattr__(self, name):
        if name in self._parameters:
            del self._parameters[name]
        elif name in self._modules:
            del self._modules[name]
        else:
            object.__delattr__(self, name)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    # ------------------------------------------------------------ the tree
    def add_module(self, name: str, module: "Module | None") -> None:
        """Register `module` under `name` (what `self.name = module` does)."""
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module: {name!r} must be a Module, got {type(module).__name__}")
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f"add_module: module name must be a non-empty string without '.', got {name!r}")
        if module is None:
            self._modules[name] = None
        else:
            setattr(self, name, module)

    register_module = add_module

    def register_parameter(self, name: str, param: "Parameter | None") -> None:
        """Register `param` under `name` (what `self.name = Parameter(...)` does)."""
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter: {name!r} must be a Parameter or None, "
                            f"got {type(param).__name__}; wrap it: nn.Parameter(tensor)")
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f"register_parameter: name must be a non-empty string without '.', got {name!r}")
        if param is None:
            self._parameters[name] = None
        else:
            setattr(self, name, param)

    def register_buffer(self, name: str, tensor, persistent: bool = True) -> None:
        raise NotImplementedError(
            f"register_buffer({name!r}): minilora modules have no buffers; keep a constant as a "
            "plain attribute (self.name = array), which state_dict does not save")

    def named_buffers(self, prefix: str = "", recurse: bool = True):
        return iter(())                                  # minilora modules have no buffers

    def buffers(self, recurse: bool = True):
        return iter(())

    def children(self):
        return (m for m in self._modules.values() if m is not None)

    def named_children(self):
        return ((n, m) for n, m in self._modules.items() if m is not None)

    def named_modules(self, memo=None, prefix: str = "", remove_duplicate: bool = True):
        """Every module in the tree (this one first) with its dotted name; a module that
        appears twice is listed once unless remove_duplicate=False."""
        if isinstance(memo, str):                        # named_modules("prefix"), minilora's older call
            memo, prefix = None, memo
        seen = set() if memo is None else memo
        stack = [(prefix, self)]
        while stack:
            name, module = stack.pop()
            if remove_duplicate:
                if module in seen:
                    continue
                seen.add(module)
            yield name, module
            children = [(f"{name}.{n}" if name else n, m) for n, m in module._modules.items() if m is not None]
            stack.extend(reversed(children))

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        """(dotted name, Parameter) pairs; a shared (tied) parameter is listed once.

        recurse=False lists only this module's own parameters."""
        seen = set()
        modules = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse \
            else [(prefix, self)]
        for module_name, module in modules:
            for name, p in module._parameters.items():
                if p is None or (remove_duplicate and id(p) in seen):
                    continue
                seen.add(id(p))
                yield (f"{module_name}.{name}" if module_name else name), p

    def parameters(self, recurse: bool = True):
        return (p for _, p in self.named_parameters(recurse=recurse))

    def apply(self, fn) -> "Module":
        """Call fn(module) on every child (depth first), then on this module; returns self."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def get_parameter(self, target: str) -> "Parameter":
        module_path, _, name = target.rpartition(".")
        module = self.get_submodule(module_path)
        if name not in module._parameters or module._parameters[name] is None:
            raise AttributeError(f"no parameter {target!r}: {type(module).__name__} has parameters "
                                 f"{[n for n, p in module._parameters.items() if p is not None]}")
        return module._parameters[name]

    def get_submodule(self, target: str) -> "Module":
        module = self
        for part in target.split(".") if target else []:
            if part not in module._modules:
                raise AttributeError(f"no submodule {target!r}: {type(module).__name__} "
                                     f"has no child {part!r} (children: {list(module._modules)})")
            module = module._modules[part]
        return module

    # ------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> "Module":
        if not isinstance(mode, bool):
            raise ValueError(f"train: mode must be True or False, got {mode!r}")
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradients (None, as PyTorch; set_to_none=False fills them with zeros)."""
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad = p.xp.zeros_like(p.grad)

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only)

    def cpu(self) -> "Module":
        return self.to("cpu")

    def cuda(self) -> "Module":
        return self.to("cuda")

    def float(self) -> "Module":
        return self.to(np.float32)

    def double(self) -> "Module":
        return self.to(np.float64)

    def half(self) -> "Module":
        return self.to(np.float16)

    def to(self, target) -> "Module":
        """Move every parameter to a device ("cpu", "cuda") or cast it to a float dtype."""
        for p in self.parameters():
            if isinstance(target, str):
                p.data = backend.to_device(p.data, target)
            else:
                p.data = p.data.astype(target)
            p.grad = None
        return self

    # ------------------------------------------------------------ state
    def state_dict(self, *, destination=None, prefix: str = "", keep_vars: bool = False) -> dict:
        """{dotted name: NumPy copy of the parameter}; a tied parameter appears once.

        keep_vars=True gives the Parameters themselves, as PyTorch's."""
        out = OrderedDict() if destination is None else destination
        for name, p in self.named_parameters():
            out[prefix + name] = p if keep_vars else backend.to_numpy(p.data).copy()
        return out

    def load_state_dict(self, state_dict, strict: bool = True) -> IncompatibleKeys:
        """Copy arrays into the parameters with the same names, all or nothing.

        Every name and shape is checked before anything is written, so a bad
        state dict raises and leaves the module exactly as it was.
        """
        own = dict(self.named_parameters())
        aliases = {n for n, _ in self.named_parameters(remove_duplicate=False)} - set(own)
        missing = [n for n in own if n not in state_dict]
        unexpected = [n for n in state_dict if n not in own and n not in aliases]
        problems = []
        if strict and missing:
            problems.append(f"missing keys {missing}")
        if strict and unexpected:
            problems.append(f"unexpected keys {unexpected}")
        new_values = {}
        for name, p in own.items():
            if name not in state_dict:
                continue
            value = state_dict[name]
            value = value.data if isinstance(value, Tensor) else value
            if not hasattr(value, "shape"):
                problems.append(f"{name}: expected an array, got {type(value).__name__}")
                continue
            if tuple(value.shape) != p.shape:
                problems.append(f"{name}: checkpoint shape {tuple(value.shape)} != model shape {p.shape}")
                continue
            new_values[name] = value
        if problems:
            raise StateDictError(
                f"load_state_dict into {type(self).__name__} failed, nothing was changed: "
                + "; ".join(problems)
                + ". Build the model with the same configuration as the checkpoint, "
                "or pass strict=False to skip missing and unexpected keys."
            )
        for name, value in new_values.items():
            p = own[name]
            p.data = backend.to_device(value, p.device).astype(p.dtype, copy=True)
            p.grad = None
        return IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------ printing
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self._modules.items():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        return lines[0] + ")" if len(lines) == 1 else "\n".join(lines) + "\n)"


def _uniform(bound: float, shape) -> np.ndarray:
    return backend.rng().uniform(-bound, bound, size=shape).astype(np.float32)


def _positive_int(value, what: str, layer: str) -> int:
    """`value` if it is a positive int (not a bool, which Python counts as an int), else a clear error."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{layer}: {what} must be a positive int, got {value!r}")
    return int(value)


class Linear(Module):
    """y = x @ W^T + b with W (out_features, in_features), initialised as in PyTorch.

    PyTorch draws W and b from U(-1/sqrt(in), 1/sqrt(in)) (its kaiming_uniform
    with a = sqrt(5) simplifies to that bound).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, dtype=None,
                 device=None):
        super().__init__()
        in_features = _positive_int(in_features, "in_features", "Linear")
        out_features = _positive_int(out_features, "out_features", "Linear")
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)
        self.weight = Parameter(_uniform(bound, (out_features, in_features)), dtype=dtype, device=device)
        self.bias = Parameter(_uniform(bound, (out_features,)), dtype=dtype, device=device) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A lookup table of num_embeddings rows of size embedding_dim, initialised N(0, 1).

    As in PyTorch, the row `padding_idx` (if given) starts at zero and gets no gradient.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, *,
                 dtype=None, device=None):
        super().__init__()
        num_embeddings = _positive_int(num_embeddings, "num_embeddings", "Embedding")
        embedding_dim = _positive_int(embedding_dim, "embedding_dim", "Embedding")
        if padding_idx is not None:
            if isinstance(padding_idx, bool) or not isinstance(padding_idx, (int, np.integer)) \
                    or not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"Embedding: padding_idx={padding_idx!r} must be an int in "
                                 f"[{-num_embeddings}, {num_embeddings - 1}]")
            padding_idx = int(padding_idx) % num_embeddings
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = padding_idx
        weight = backend.rng().standard_normal((num_embeddings, embedding_dim)).astype(np.float32)
        if padding_idx is not None:
            weight[padding_idx] = 0.0
        self.weight = Parameter(weight, dtype=dtype, device=device)

    @classmethod
    def from_pretrained(cls, embeddings, freeze: bool = True, padding_idx: int | None = None) -> "Embedding":
        """An Embedding holding a copy of `embeddings` (rows, dim), frozen unless freeze=False.
        As PyTorch, the padding row keeps its values (it only gets no gradient), and a
        Tensor's copy stays on its device."""
        device = embeddings.device if isinstance(embeddings, Tensor) else None
        table = backend.to_numpy(embeddings.data if isinstance(embeddings, Tensor) else np.asarray(embeddings))
        if table.ndim != 2:
            raise ValueError(f"Embedding.from_pretrained: embeddings must be 2-D (rows, dim), got shape {table.shape}")
        layer = cls(*table.shape, padding_idx=padding_idx, dtype=table.dtype, device=device)
        layer.weight = Parameter(table.copy(), requires_grad=not freeze, device=device)
        return layer

    def forward(self, ids) -> Tensor:
        return F.embedding(ids, self.weight, padding_idx=self.padding_idx)

    def extra_repr(self) -> str:
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"


class LayerNorm(Module):
    """Normalise over the trailing `normalized_shape` dims, then scale by weight (ones)
    and shift by bias (zeros), as torch.nn.LayerNorm.

    normalized_shape is an int (the last dim) or a list/tuple of the trailing dims.
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, *, dtype=None, device=None):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) \
            and not isinstance(normalized_shape, bool) else normalized_shape
        try:
            shape = tuple(_positive_int(d, "each size in normalized_shape", "LayerNorm") for d in shape)
        except TypeError:
            raise ValueError(f"LayerNorm: normalized_shape must be a positive int or a list of "
                             f"them, got {normalized_shape!r}") from None
        if not shape:
            raise ValueError("LayerNorm: normalized_shape must not be empty")
        if not eps >= 0:
            raise ValueError(f"LayerNorm: eps={eps} must be >= 0")
        self.normalized_shape, self.eps = shape, eps
        self.elementwise_affine = elementwise_affine
        self.weight = Parameter(np.ones(shape, dtype=np.float32), dtype=dtype, device=device) \
            if elementwise_affine else None
        self.bias = Parameter(np.zeros(shape, dtype=np.float32), dtype=dtype, device=device) \
            if elementwise_affine and bias else None

    @property
    def dim(self) -> int:
        """The size of the last normalised dim (the model's width for a GPT)."""
        return self.normalized_shape[-1]

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None}")


# ----------------------------------------------------------------- activations
class ReLU(Module):
    def __init__(self, inplace: bool = False):
        super().__init__()
        F._refuse_inplace("ReLU", inplace)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x)


class Tanh(Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.tanh(x)


class Sigmoid(Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.sigmoid(x)


class SiLU(Module):
    def __init__(self, inplace: bool = False):
        super().__init__()
        F._refuse_inplace("SiLU", inplace)

    def forward(self, x: Tensor) -> Tensor:
        return F.silu(x)


class GELU(Module):
    """x Phi(x); approximate="tanh" for GPT-2's approximation (PyTorch's default: "none")."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate={approximate!r} must be 'none' or 'tanh'")
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x, approximate=self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class LeakyReLU(Module):
    def __init__(self, negative_slope: float = 0.01, inplace: bool = False):
        super().__init__()
        F._refuse_inplace("LeakyReLU", inplace)
        self.negative_slope = negative_slope

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class Softplus(Module):
    def __init__(self, beta: float = 1.0, threshold: float = 20.0):
        super().__init__()
        self.beta, self.threshold = beta, threshold

    def forward(self, x: Tensor) -> Tensor:
        return F.softplus(x, self.beta, self.threshold)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, threshold={self.threshold}"


class Softmax(Module):
    def __init__(self, dim: int | None = None):
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return F.softmax(x, dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LogSoftmax(Softmax):
    def forward(self, x: Tensor) -> Tensor:
        return F.log_softmax(x, dim=self.dim)


class Identity(Module):
    """Returns its input; takes (and ignores) any arguments, as PyTorch's."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x


# ----------------------------------------------------------------- losses
# After `weight`, the options are keyword-only: PyTorch's positional order still has the
# deprecated size_average and reduce in it, so a positional value would land elsewhere here.
class CrossEntropyLoss(Module):
    def __init__(self, weight=None, *, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0):
        super().__init__()
        F._check_reduction(reduction, "CrossEntropyLoss")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"CrossEntropyLoss: label_smoothing={label_smoothing} must be in [0, 1]")
        self.weight, self.ignore_index = weight, ignore_index
        self.reduction, self.label_smoothing = reduction, label_smoothing

    def forward(self, input: Tensor, target) -> Tensor:
        return F.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)


class NLLLoss(Module):
    def __init__(self, weight=None, *, ignore_index: int = -100, reduction: str = "mean"):
        super().__init__()
        F._check_reduction(reduction, "NLLLoss")
        self.weight, self.ignore_index, self.reduction = weight, ignore_index, reduction

    def forward(self, input: Tensor, target) -> Tensor:
        return F.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index,
                          reduction=self.reduction)


class MSELoss(Module):
    def __init__(self, *, reduction: str = "mean"):
        super().__init__()
        F._check_reduction(reduction, "MSELoss")
        self.reduction = reduction

    def forward(self, input: Tensor, target) -> Tensor:
        return F.mse_loss(input, target, reduction=self.reduction)


class BCEWithLogitsLoss(Module):
    def __init__(self, weight=None, *, reduction: str = "mean", pos_weight=None):
        super().__init__()
        F._check_reduction(reduction, "BCEWithLogitsLoss")
        self.weight, self.reduction, self.pos_weight = weight, reduction, pos_weight

    def forward(self, input: Tensor, target) -> Tensor:
        return F.binary_cross_entropy_with_logits(input, target, weight=self.weight,
                                                  reduction=self.reduction, pos_weight=self.pos_weight)


class Dropout(Module):
    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__()
        F._refuse_inplace("Dropout", inplace)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p={p} must be in [0, 1)")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace=False"


def _index(i, n: int, container: str) -> int:
    """A list index made non-negative, or IndexError as for a list."""
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
        raise TypeError(f"{container} indices must be integers or slices, not {type(i).__name__}")
    if not -n <= i < n:
        raise IndexError(f"{container} index {i} is out of range for {n} modules")
    return int(i) % n


class _ModuleSequence(Module):
    """Modules registered under the names "0", "1", ... (ModuleList and Sequential).

    A slice gives a new container of the same kind; deleting renumbers the rest, as PyTorch."""

    def __init__(self, modules=None):
        super().__init__()
        for m in modules or ():
            self.append(m)

    def append(self, module: Module) -> "_ModuleSequence":
        self.add_module(str(len(self._modules)), module)
        return self

    def extend(self, modules) -> "_ModuleSequence":
        for m in modules:
            self.append(m)
        return self

    def insert(self, index: int, module: Module) -> None:
        items = list(self._modules.values())
        items.insert(index, module)
        self._renumber(items)

    def _renumber(self, items) -> None:
        self._modules.clear()
        for m in items:
            self.append(m)

    def __getitem__(self, i):
        items = list(self._modules.values())
        if isinstance(i, slice):       # as PyTorch: a Sequential slice keeps the names, a ModuleList renumbers
            if isinstance(self, Sequential):
                return type(self)(OrderedDict(list(self._modules.items())[i]))
            return type(self)(items[i])
        return items[_index(i, len(items), type(self).__name__)]

    def __setitem__(self, i, module: Module) -> None:
        key = list(self._modules)[_index(i, len(self._modules), type(self).__name__)]
        self.add_module(key, module)

    def __delitem__(self, i) -> None:
        items = list(self._modules.values())
        if isinstance(i, slice):
            del items[i]
        else:
            del items[_index(i, len(items), type(self).__name__)]
        self._renumber(items)

    def __iter__(self):
        return iter(self._modules.values())

    def __len__(self) -> int:
        return len(self._modules)

    def __add__(self, other):
        if not isinstance(other, type(self)):
            raise TypeError(f"can only add a {type(self).__name__} to a {type(self).__name__}, "
                            f"not {type(other).__name__}")
        items = list(self) + list(other)
        return type(self)(*items) if isinstance(self, Sequential) else type(self)(items)

    def __iadd__(self, other):
        return self.extend(other)


class ModuleList(_ModuleSequence):
    """A list of modules, registered under the names "0", "1", ..."""


class _NamedDict(Module):
    """A dict whose entries are registered on the module (so they get dotted names).

    Subclasses choose the table: ModuleDict keeps modules, ParameterDict parameters.
    """

    _table = "_modules"

    def __init__(self, entries=None):
        super().__init__()
        self.update(entries or {})

    def _entries(self) -> dict:
        return getattr(self, self._table)

    def __getitem__(self, name: str):
        return self._entries()[name]

    def __setitem__(self, name: str, item) -> None:
        if self._table == "_parameters":
            if isinstance(item, Tensor) and not isinstance(item, Parameter):
                item = Parameter(item.data)                     # as PyTorch: a Tensor is made a Parameter
            if not isinstance(item, Parameter):
                raise TypeError(f"{type(self).__name__}[{name!r}]: expected a Parameter, got {type(item).__name__}")
            self.register_parameter(name, item)
        else:
            self.add_module(name, item)

    def __delitem__(self, name: str) -> None:
        del self._entries()[name]

    def pop(self, name: str):
        item = self[name]
        del self[name]
        return item

    def clear(self) -> None:
        self._entries().clear()

    def update(self, entries) -> None:
        pairs = entries.items() if hasattr(entries, "items") else entries
        for name, item in pairs:
            self[name] = item

    def __contains__(self, name: str) -> bool:
        return name in self._entries()

    def __iter__(self):
        return iter(self._entries())

    def __len__(self) -> int:
        return len(self._entries())

    def keys(self):
        return self._entries().keys()

    def items(self):
        return self._entries().items()

    def values(self):
        return self._entries().values()


class ModuleDict(_NamedDict):
    """A dict of named modules (LoRA keeps one A and one B per adapter name in these)."""

    _table = "_modules"


class Sequential(_ModuleSequence):
    """Modules applied one after another: Sequential(a, b, c), or from an OrderedDict of
    named modules (their names are kept)."""

    def __init__(self, *modules: Module):
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            Module.__init__(self)
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            super().__init__(modules)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x


class ParameterDict(_NamedDict):
    """A dict of named Parameters (an embedding LoRA keeps one A and one B per adapter here)."""

    _table = "_parameters"

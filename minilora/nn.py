"""Layers: Module, Linear, Embedding, LayerNorm, Dropout and the containers.

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


class Parameter(Tensor):
    """A Tensor that a Module owns and an optimizer updates (requires_grad=True by default)."""

    def __init__(self, data, requires_grad: bool = True, dtype=None):
        super().__init__(data, requires_grad=requires_grad, dtype=dtype)

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
        else:
            self._parameters.pop(name, None)
            self._modules.pop(name, None)
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
    def children(self):
        return iter(self._modules.values())

    def named_children(self):
        return iter(self._modules.items())

    def named_modules(self, prefix: str = ""):
        """Every module in the tree (this one first) with its dotted name."""
        seen = set()
        stack = [(prefix, self)]
        while stack:
            name, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            children = [(f"{name}.{n}" if name else n, m) for n, m in module._modules.items()]
            stack.extend(reversed(children))

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_parameters(self, prefix: str = "", remove_duplicate: bool = True):
        """(dotted name, Parameter) pairs; a shared (tied) parameter is listed once."""
        seen = set()
        for module_name, module in self.named_modules(prefix):
            for name, p in module._parameters.items():
                if remove_duplicate and id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{module_name}.{name}" if module_name else name), p

    def parameters(self):
        return (p for _, p in self.named_parameters())

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
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only)

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
    def state_dict(self) -> dict[str, np.ndarray]:
        """{dotted name: NumPy copy of the parameter}; a tied parameter appears once."""
        return {name: backend.to_numpy(p.data).copy() for name, p in self.named_parameters()}

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
            if tuple(value.shape) != p.shape:
                problems.append(f"{name}: checkpoint shape {tuple(value.shape)} != model shape {p.shape}")
                continue
            new_values[name] = value
        if problems:
            raise ValueError(
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


class Linear(Module):
    """y = x @ W^T + b with W (out_features, in_features), initialised as in PyTorch.

    PyTorch draws W and b from U(-1/sqrt(in), 1/sqrt(in)) (its kaiming_uniform
    with a = sqrt(5) simplifies to that bound).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)
        self.weight = Parameter(_uniform(bound, (out_features, in_features)))
        self.bias = Parameter(_uniform(bound, (out_features,))) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A lookup table of num_embeddings rows of size embedding_dim, initialised N(0, 1)."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        weight = backend.rng().standard_normal((num_embeddings, embedding_dim)).astype(np.float32)
        self.weight = Parameter(weight)

    def forward(self, ids) -> Tensor:
        return F.embedding(self.weight, ids)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(Module):
    """Normalise the last axis, then scale by weight (ones) and shift by bias (zeros)."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = Parameter(np.ones(dim, dtype=np.float32))
        self.bias = Parameter(np.zeros(dim, dtype=np.float32)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"({self.dim},), eps={self.eps}"


class Dropout(Module):
    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p={p} must be in [0, 1)")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ModuleList(Module):
    """A list of modules, registered under the names "0", "1", ..."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module: Module) -> "ModuleList":
        setattr(self, str(len(self._modules)), module)
        return self

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __iter__(self):
        return iter(self._modules.values())

    def __len__(self) -> int:
        return len(self._modules)


class _NamedDict(Module):
    """A dict whose entries are registered on the module (so they get dotted names).

    Subclasses choose the table: ModuleDict keeps modules, ParameterDict parameters.
    """

    _table = "_modules"

    def __init__(self, entries=None):
        super().__init__()
        for name, item in (entries or {}).items():
            self[name] = item

    def _entries(self) -> dict:
        return getattr(self, self._table)

    def __getitem__(self, name: str):
        return self._entries()[name]

    def __setitem__(self, name: str, item) -> None:
        setattr(self, name, item)

    def __delitem__(self, name: str) -> None:
        del self._entries()[name]

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


class Sequential(Module):
    """Modules applied one after another."""

    def __init__(self, *modules: Module):
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __len__(self) -> int:
        return len(self._modules)


class ParameterDict(_NamedDict):
    """A dict of named Parameters (an embedding LoRA keeps one A and one B per adapter here)."""

    _table = "_parameters"

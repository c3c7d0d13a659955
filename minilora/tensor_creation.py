"""Creation functions: new tensors from a size, a value or a range, as in PyTorch.

PyTorch's defaults: float32 for random and float-filled tensors, int64 for
integer ranges. Random numbers come from the generator `manual_seed` resets.
Each is made on the host and placed on `device=`, by default where
`set_device` says new tensors go; the `*_like` functions follow their model
tensor's device, as every result follows its inputs (see backend.py).
"""
from __future__ import annotations

import math

import numpy as np

from minilora import backend
from minilora.tensor import Tensor
from minilora.tensor_rules import _size_args


def tensor(data, requires_grad: bool = False, dtype=None, device=None) -> Tensor:
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, device=device)


def _make(array, dtype, requires_grad, device) -> Tensor:
    return Tensor(array if dtype is None else array.astype(np.dtype(dtype)),
                  requires_grad=requires_grad, device=device)


def zeros(*size, dtype=None, requires_grad: bool = False, device=None) -> Tensor:
    return _make(np.zeros(_size_args(size), np.float32), dtype, requires_grad, device)


def ones(*size, dtype=None, requires_grad: bool = False, device=None) -> Tensor:
    return _make(np.ones(_size_args(size), np.float32), dtype, requires_grad, device)


def full(size, fill_value, dtype=None, requires_grad: bool = False, device=None) -> Tensor:
    """A tensor of `size` filled with `fill_value` (its dtype follows the value, as PyTorch)."""
    kind = np.bool_ if isinstance(fill_value, bool) else (
        np.int64 if isinstance(fill_value, int) else np.float32)
    return _make(np.full(_size_args((size,)), fill_value, dtype=kind), dtype, requires_grad, device)


def eye(n: int, m: int | None = None, dtype=None, requires_grad: bool = False, device=None) -> Tensor:
    return _make(np.eye(n, m, dtype=np.float32), dtype, requires_grad, device)


def rand(*size, dtype=None, requires_grad: bool = False, device=None) -> Tensor:
    """Uniform numbers in [0, 1), drawn from the generator `manual_seed` resets."""
    return _make(backend.rng().random(_size_args(size), dtype=np.float32), dtype, requires_grad, device)


def randn(*size, dtype=None, requires_grad: bool = False, device=None) -> Tensor:
    """Standard normal numbers, drawn from the generator `manual_seed` resets."""
    return _make(backend.rng().standard_normal(_size_args(size), dtype=np.float32), dtype,
                 requires_grad, device)


def arange(start, end=None, step=1, dtype=None, requires_grad: bool = False, device=None) -> Tensor:
    """start, start + step, ... up to end (excluded); int64 when all three are ints."""
    if end is None:
        start, end = 0, start
    if step == 0:
        raise RuntimeError("arange: step must be nonzero")
    ints = all(isinstance(v, int) for v in (start, end, step))
    count = max(math.ceil((end - start) / step), 0)
    values = start + step * np.arange(count, dtype=np.int64 if ints else np.float64)
    return _make(values.astype(np.int64 if ints else np.float32), dtype, requires_grad, device)


def zeros_like(x: Tensor, dtype=None, requires_grad: bool = False) -> Tensor:
    return zeros(x.shape, dtype=x.dtype if dtype is None else dtype, requires_grad=requires_grad, device=x.device)


def ones_like(x: Tensor, dtype=None, requires_grad: bool = False) -> Tensor:
    return ones(x.shape, dtype=x.dtype if dtype is None else dtype, requires_grad=requires_grad, device=x.device)


def full_like(x: Tensor, fill_value, dtype=None, requires_grad: bool = False) -> Tensor:
    return full(x.shape, fill_value, dtype=x.dtype if dtype is None else dtype,
                requires_grad=requires_grad, device=x.device)


def rand_like(x: Tensor, dtype=None, requires_grad: bool = False) -> Tensor:
    dtype = np.dtype(x.dtype if dtype is None else dtype)
    if dtype.kind != "f":
        raise RuntimeError(f"rand_like: random numbers need a floating point dtype, got {dtype}")
    return rand(x.shape, dtype=dtype, requires_grad=requires_grad, device=x.device)


def randn_like(x: Tensor, dtype=None, requires_grad: bool = False) -> Tensor:
    dtype = np.dtype(x.dtype if dtype is None else dtype)
    if dtype.kind != "f":
        raise RuntimeError(f"randn_like: random numbers need a floating point dtype, got {dtype}")
    return randn(x.shape, dtype=dtype, requires_grad=requires_grad, device=x.device)

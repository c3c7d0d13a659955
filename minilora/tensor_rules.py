"""The rules every tensor op applies before its maths: PyTorch's, written once.

- Which dtype a result has: PyTorch's promotion (bool < int < float; a 0-d
  tensor or a Python number only decides when it is of a higher kind).
- What may become a Tensor: numbers only, and Python floats become float32.
- What a `dim` argument may be, and how the NumPy aliases (`axis=`,
  `keepdims=`) meet the PyTorch names.
- The errors a learner sees when shapes do not line up.

Nothing here knows about Tensor or the graph: these are functions of arrays,
dtypes and ints, used by tensor.py and the op families beside it.
"""
from __future__ import annotations

import numpy as np

from minilora import backend

# ----------------------------------------------------------------- dtypes
# A Tensor holds numbers: bool, integers or floats. PyTorch's default float is
# float32, so Python floats become float32 (NumPy would pick float64).
_NUMERIC_KINDS = "biuf"


def _check_numeric(array, data) -> None:
    if array.dtype.kind not in _NUMERIC_KINDS:
        shown = repr(data)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise TypeError(
            f"Tensor data must be numbers (bool, int or float), got {shown}, which NumPy reads "
            f"as dtype {array.dtype}. Convert it first, for example tokens to ids with a "
            "tokenizer, or strings to floats with float(...)."
        )


def _as_array(data, dtype=None, device=None):
    """Turn data into an array on `device`; Python floats become float32.

    Without a device, a GPU array stays on the GPU and host data (lists, numbers,
    NumPy arrays) goes where new tensors are created (see backend.set_device).
    NumPy arrays keep their dtype, so float64 stays float64, and their memory
    when nothing has to change.
    """
    if dtype is not None:
        dtype = np.dtype(dtype)
        _check_numeric(np.empty(0, dtype), dtype)
    if backend.device_of(data) == "cuda":            # already a GPU array
        data = data if dtype is None else data.astype(dtype)
        return data if device in (None, "cuda") else backend.to_device(data, device)
    if not hasattr(data, "dtype"):
        array = np.asarray(data)
        _check_numeric(array, data)
        if dtype is None and array.dtype == np.float64:
            array = array.astype(np.float32)
        data = array
    else:
        _check_numeric(data, data)
    array = np.asarray(data, dtype=dtype)
    device = backend.default_device() if device is None else device
    return array if device == "cpu" else backend.to_device(array, device)


_CATEGORY = {"b": 0, "u": 1, "i": 1, "f": 2}


def _category(dtype) -> int:
    """bool < integer < float: the order in which PyTorch promotes kinds."""
    return _CATEGORY[dtype.kind]


def _common_dtype(tensors):
    """PyTorch's result dtype for an op over `tensors`.

    The highest kind wins (float over int over bool). Within that kind, tensors
    with dimensions decide; a 0-d tensor (or a wrapped Python number) only decides
    when it is of a higher kind than every tensor with dimensions. So
    float32 [3] + float64 0-d is float32, and int64 [3] + float32 0-d is float32.
    """
    top = max(_category(t.dtype) for t in tensors)
    for tier in (True, False):
        dtypes = [t.dtype for t in tensors if _category(t.dtype) == top and (t.ndim > 0) == tier]
        if dtypes:
            return np.result_type(*dtypes)


def _cast(array, dtype):
    return array if array.dtype == dtype else array.astype(dtype)


def _floating(array):
    """`array` if it holds floats, else as float32 (exp of an int tensor is float32, as PyTorch)."""
    return array if array.dtype.kind == "f" else array.astype(np.float32)


def _broadcast_error(op, a, b):
    return ValueError(
        f"{op}: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be broadcast together. "
        "Broadcasting matches shapes from the right; each pair of dimensions must be equal "
        "or one of them 1. Reshape one operand (for example x.reshape(...)) so they line up."
    )


def _dim_error(dim, ndim):
    low, high = (-1, 0) if ndim == 0 else (-ndim, ndim - 1)
    return IndexError(f"Dimension out of range (expected to be in range of [{low}, {high}], "
                      f"but got {dim})")


def _normalize_dim(dim, ndim: int) -> int:
    """A dimension index made non-negative; a 0-d tensor accepts 0 and -1, as in PyTorch."""
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
        raise TypeError(f"a dimension must be an int, got {dim!r}")
    n = max(ndim, 1)
    if not -n <= dim < n:
        raise _dim_error(dim, ndim)
    return int(dim) % n


def _pick(name: str, torch_name, torch_value, numpy_value, default=None):
    """One argument that has a PyTorch name (dim) and a NumPy alias (axis)."""
    if numpy_value is not None:
        if torch_value is not None:
            raise TypeError(f"{name}() got both {torch_name}= and its NumPy alias; pass one of them")
        return numpy_value
    return default if torch_value is None else torch_value


class _Size(int):
    """The number of elements, which is also callable as PyTorch's `size()`.

    NumPy's `x.size` is the element count; PyTorch's `x.size()` is the shape and
    `x.size(d)` one dimension. This int answers both, so neither spelling is wrong.
    """
    def __new__(cls, count, shape):
        out = super().__new__(cls, count)
        out._shape = shape
        return out

    def __call__(self, dim=None):
        if dim is None:
            return self._shape
        return self._shape[_normalize_dim(dim, len(self._shape))]


def _size_args(args) -> tuple:
    """reshape(2, 3) and reshape((2, 3)) both mean the shape (2, 3)."""
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = args[0]
    return tuple(args)

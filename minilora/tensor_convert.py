"""Conversions: a tensor's values as NumPy or Python numbers, on another device, in another dtype.

`numpy()`, `item()`, `float(x)`, `len(x)` leave the graph: they give plain values.
`to(...)`, `astype(...)`, `float()` and `clone()` stay in it, and their backward
rule is the conversion undone: the gradient goes back to the input's device and
dtype. `detach()` gives the same values cut from the graph.

Part of Tensor (see tensor.py): the methods are written in `ConversionMethods`
below, and the last line of the file adds them to Tensor.
"""
from __future__ import annotations

import numpy as np

from minilora import backend
from minilora.tensor import Tensor, add_methods, op_result  # noqa: F401 (Tensor: annotations)
from minilora.tensor_rules import _check_numeric


class ConversionMethods:
    """x.numpy(), x.item(), x.to("cuda"), x.float(), x.detach(), x.clone(), ...: Tensor's methods."""

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.shape[0]))

    def numpy(self) -> np.ndarray:
        """The values as a NumPy array (copied from the GPU if needed)."""
        return backend.to_numpy(self.data)

    def __array__(self, dtype=None, copy=None):
        """np.asarray(x), as for a PyTorch CPU tensor: refused while x requires grad, since
        NumPy would compute outside the graph and the gradient would silently be lost."""
        if self.requires_grad:
            raise RuntimeError("Can't convert a Tensor that requires grad to a NumPy array "
                               "(NumPy would compute outside the graph). Use x.detach().numpy().")
        array = self.numpy()
        return array if dtype is None else array.astype(dtype)

    def tolist(self):
        return self.numpy().tolist()

    def item(self):
        if self.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.numpy().reshape(()).item()

    def _one_value(self, what: str):
        if self.size != 1:
            raise RuntimeError(f"{what} value of a Tensor with {self.numel()} values is ambiguous: "
                               "reduce it first (x.any(), x.all(), x.sum()) or pick one element.")
        return self.item()

    def __bool__(self) -> bool:
        return bool(self._one_value("Boolean"))

    def __float__(self) -> float:
        return float(self._one_value("float"))

    def __int__(self) -> int:
        return int(self._one_value("int"))

    def detach(self) -> "Tensor":
        """The same values, cut from the graph (shares memory, needs no gradient)."""
        return op_result(self.data, (), None, "detach")

    def to(self, target) -> "Tensor":
        """The values on a device ("cpu", "cuda") or in a dtype; differentiable, as in PyTorch.
        Already there: the tensor itself."""
        if not isinstance(target, str):
            return self if np.dtype(target) == self.dtype else self.astype(target)
        if target == self.device:
            return self
        source = self.device
        out_data = backend.to_device(self.data, target)

        def _backward(out):      # the gradient goes back to where the input lives
            self._add_grad(backend.to_device(out.grad, source))

        return op_result(out_data, (self,), _backward, "to", saves=False)

    def cpu(self) -> "Tensor":
        return self.to("cpu")

    def astype(self, dtype) -> "Tensor":
        dtype = np.dtype(dtype)
        _check_numeric(np.empty(0, dtype), dtype)
        out_data = self.data.astype(dtype)
        if dtype.kind != "f":    # rounding to integers is not differentiable (PyTorch: no grad)
            return op_result(out_data, (), None, "astype")

        def _backward(out):
            self._add_grad(out.grad.astype(self.dtype))

        return op_result(out_data, (self,), _backward, "astype", saves=False)

    def float(self) -> "Tensor":
        return self.astype(np.float32)

    def double(self) -> "Tensor":
        return self.astype(np.float64)

    def half(self) -> "Tensor":
        return self.astype(np.float16)

    def long(self) -> "Tensor":
        return self.astype(np.int64)

    def int(self) -> "Tensor":
        return self.astype(np.int32)

    def bool(self) -> "Tensor":
        return self.astype(np.bool_)

    def clone(self) -> "Tensor":
        """A copy with its own memory that stays in the graph."""
        def _backward(out):
            self._add_grad(out.grad)

        return op_result(self.data.copy(), (self,), _backward, "clone", saves=False)

    def contiguous(self) -> "Tensor":
        return self


add_methods(ConversionMethods)

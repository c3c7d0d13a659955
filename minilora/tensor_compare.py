"""Comparisons, masks and choosing between values.

A comparison (`x > 0`, `a == b`) gives a bool tensor and no gradient: its
result cannot change by a small step. The ops that *choose* with such a mask
do have gradients, and the rule is always the same: each output element's
gradient goes back to the input it was chosen from, and nowhere else.

    where(cond, a, b)      a where cond, else b        grad: to a where cond, to b elsewhere
    x.masked_fill(m, v)    v where m, else x           grad: to x where not m
    maximum(a, b)          the larger                  grad: to the larger (half each on a tie)
    x.clamp(lo, hi)        x limited to [lo, hi]       grad: to x inside, to the bound outside
    tril(x), triu(x)       one triangle, the rest 0    grad: the same triangle

Part of Tensor (see tensor.py): the methods are written in `ComparisonMethods`
below, and the last line of the file adds them to Tensor.
"""
from __future__ import annotations

import numpy as np

from minilora.tensor import Tensor, _operands, _scalar_or_tensor, _unbroadcast, add_methods, op_result
from minilora.tensor_rules import _as_array, _broadcast_error, _cast, _common_dtype


class ComparisonMethods:
    """x == y, x < y, ~m, m & n, x.any(), x.clamp(...), x.masked_fill(...): Tensor's methods."""

    # ------------------------------------------- comparisons: bool tensors, no gradient
    def _compare(self, other, op):
        if not isinstance(other, (Tensor, int, float, np.ndarray, np.generic, list, tuple)):
            return NotImplemented       # x == None is False, as in Python
        other, a, b = _operands(self, other)
        try:
            return op_result(op(a, b), (), None, "compare")
        except ValueError:
            raise _broadcast_error("comparison", self, other) from None

    def __eq__(self, other):
        return self._compare(other, lambda a, b: a == b)

    def __ne__(self, other):
        return self._compare(other, lambda a, b: a != b)

    def __lt__(self, other):
        return self._compare(other, lambda a, b: a < b)

    def __le__(self, other):
        return self._compare(other, lambda a, b: a <= b)

    def __gt__(self, other):
        return self._compare(other, lambda a, b: a > b)

    def __ge__(self, other):
        return self._compare(other, lambda a, b: a >= b)

    def eq(self, other):
        return self == other

    def ne(self, other):
        return self != other

    def __invert__(self):
        if self.dtype.kind != "b":
            raise TypeError(f"~ is logical not for bool tensors; this one is {self.dtype}")
        return op_result(~self.data, (), None, "not")

    def __and__(self, other):
        return op_result(self.data & _operands(self, other)[2], (), None, "and")

    def __or__(self, other):
        return op_result(self.data | _operands(self, other)[2], (), None, "or")

    def any(self, dim=None, keepdim: bool = False):
        axis = self._dims(dim, None)
        return op_result(self.data.astype(bool).any(axis=axis, keepdims=keepdim), (), None, "any")

    def all(self, dim=None, keepdim: bool = False):
        axis = self._dims(dim, None)
        return op_result(self.data.astype(bool).all(axis=axis, keepdims=keepdim), (), None, "all")

    def isnan(self):
        return op_result(self.xp.isnan(self.data), (), None, "isnan")

    def isfinite(self):
        return op_result(self.xp.isfinite(self.data), (), None, "isfinite")

    # ------------------------------------------------------ choosing between values
    def clamp(self, min=None, max=None):
        """Limit values to [min, max]; either bound may be a number or a tensor (broadcast)."""
        if min is None and max is None:
            raise RuntimeError("clamp: at least one of min and max must not be None")
        xp = self.xp
        parts = [self] + [b if isinstance(b, Tensor) else _scalar_or_tensor(b, self)
                          for b in (min, max) if b is not None]
        dtype = _common_dtype(parts)
        x = _cast(self.data, dtype)
        lo = None if min is None else _cast(parts[1].data, dtype)
        hi = None if max is None else _cast(parts[-1].data, dtype)
        lo_t = None if min is None else parts[1]
        hi_t = None if max is None else parts[-1]
        try:   # as PyTorch: min first, then max, so min > max gives max everywhere
            out_data = x if lo is None else xp.maximum(x, lo)
            out_data = out_data if hi is None else xp.minimum(out_data, hi)
        except ValueError:
            raise _broadcast_error("clamp", self, parts[1]) from None

        def _backward(out):
            g, zero = out.grad, xp.zeros((), dtype=out.grad.dtype)
            inside = True
            if lo is not None:
                inside = inside & (x >= lo)
            if hi is not None:
                inside = inside & (x <= hi)
            if self.requires_grad:     # passes where min <= x <= max
                self._add_grad(_unbroadcast(xp.where(inside, g, zero), self.shape))
            # PyTorch's rule for the bounds: min gets the gradient where x < min < max,
            # max where x > max or max < min (then the output is max everywhere).
            if lo_t is not None and lo_t.requires_grad:
                took_lo = (x < lo) if hi is None else (x < lo) & (lo < hi)
                lo_t._add_grad(_unbroadcast(xp.where(took_lo, g, zero), lo_t.shape))
            if hi_t is not None and hi_t.requires_grad:
                took_hi = (x > hi) if lo is None else (x > hi) | (hi < lo)
                hi_t._add_grad(_unbroadcast(xp.where(took_hi, g, zero), hi_t.shape))

        return op_result(out_data, tuple(parts), _backward, "clamp")

    clip = clamp

    def maximum(self, other):
        return maximum(self, other)

    def minimum(self, other):
        return minimum(self, other)

    def tril(self, diagonal: int = 0):
        return _triangle(self, diagonal, "tril")

    def triu(self, diagonal: int = 0):
        return _triangle(self, diagonal, "triu")

    def masked_fill(self, mask, value):
        """A copy with `value` wherever the bool `mask` is True (mask broadcasts to self)."""
        mask = mask.data if isinstance(mask, Tensor) else _as_array(mask, device=self.device)
        if mask.dtype.kind != "b":
            raise RuntimeError(f"masked_fill only supports boolean masks, but got a mask of dtype "
                               f"{mask.dtype}; use mask.bool() or (mask != 0).")
        if isinstance(value, Tensor):
            if value.ndim != 0:
                raise RuntimeError(f"masked_fill only supports a 0-d tensor value, got shape {value.shape}")
            if value.requires_grad:      # the value is differentiable too: it is where() then
                out = where(op_result(mask, (), None, "mask"), value, self)
                return out if out.dtype == self.dtype else out.astype(self.dtype)
            value = value.item()
        xp = self.xp
        out_data = xp.where(mask, xp.asarray(value, dtype=self.dtype), self.data)

        def _backward(out):      # filled positions did not depend on self
            # A mask larger than self broadcasts self, so sum over the copies.
            self._add_grad(_unbroadcast(xp.where(mask, 0, out.grad).astype(self.dtype), self.shape))

        return op_result(out_data, (self,), _backward, "masked_fill")


def maximum(a, b) -> Tensor:
    """Elementwise larger value; where a == b each side gets half the gradient (as PyTorch)."""
    return _pairwise_extreme(a, b, "maximum")


def minimum(a, b) -> Tensor:
    """Elementwise smaller value; ties split the gradient in half."""
    return _pairwise_extreme(a, b, "minimum")


def _pairwise_extreme(a, b, name):
    a = a if isinstance(a, Tensor) else _scalar_or_tensor(a, b)
    b, x, y = _operands(a, b)
    xp = a.xp
    try:
        out_data = (xp.maximum if name == "maximum" else xp.minimum)(x, y)
    except ValueError:
        raise _broadcast_error(name, a, b) from None

    def _backward(out):
        g, zero = out.grad, xp.zeros((), dtype=out.grad.dtype)
        half = xp.where(x == y, g / 2, g)               # a tie: half to each side
        a_lost, b_lost = (x < y, x > y) if name == "maximum" else (x > y, x < y)
        if a.requires_grad:
            a._add_grad(_unbroadcast(xp.where(a_lost, zero, half), a.shape))
        if b.requires_grad:
            b._add_grad(_unbroadcast(xp.where(b_lost, zero, half), b.shape))

    return op_result(out_data, (a, b), _backward, name)


def clamp(input: Tensor, min=None, max=None) -> Tensor:
    return input.clamp(min, max)


clip = clamp


def _triangle(x: Tensor, diagonal: int, name: str) -> Tensor:
    if x.ndim < 2:
        raise RuntimeError(f"{name}: input tensor must have at least 2 dimensions, got shape {x.shape}")
    xp = x.xp
    keep = xp.tril if name == "tril" else xp.triu

    def _backward(out):      # the kept triangle passes its gradient, the rest was zeroed
        x._add_grad(keep(out.grad, diagonal))

    return op_result(keep(x.data, diagonal), (x,), _backward, name, saves=False)


def tril(x: Tensor, diagonal: int = 0) -> Tensor:
    return _triangle(x, diagonal, "tril")


def triu(x: Tensor, diagonal: int = 0) -> Tensor:
    return _triangle(x, diagonal, "triu")


def where(condition, input, other) -> Tensor:
    """Elementwise choice: input where condition is True, else other (all broadcast together)."""
    a = input if isinstance(input, Tensor) else (
        _scalar_or_tensor(input, other) if isinstance(other, Tensor) else Tensor(input))
    condition = condition.data if isinstance(condition, Tensor) else _as_array(condition, device=a.device)
    if condition.dtype.kind != "b":
        raise RuntimeError(f"where expected condition to be a boolean tensor, but got a tensor "
                           f"with dtype {condition.dtype}; use (c != 0) or c.bool()")
    b, x, y = _operands(a, other)
    xp = a.xp
    try:
        out_data = xp.where(condition, x, y)
    except ValueError:
        raise _broadcast_error("where", a, b) from None

    def _backward(out):
        zero = xp.zeros((), dtype=out.grad.dtype)
        if a.requires_grad:
            a._add_grad(_unbroadcast(xp.where(condition, out.grad, zero), a.shape))
        if b.requires_grad:
            b._add_grad(_unbroadcast(xp.where(condition, zero, out.grad), b.shape))

    return op_result(out_data, (a, b), _backward, "where")


add_methods(ComparisonMethods)

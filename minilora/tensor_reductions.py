"""Reductions: many numbers in, fewer out (sum, mean, var, max, logsumexp, ...).

The backward rule of a reduction has one recurring step: the reduced axes are
put back as size-1 axes (`_restore_axes`), so the output's gradient broadcasts
against the input again. Then each rule says how much each input element
contributed to its output:

    sum        every element once                      grad: g
    mean       every element 1/N                       grad: g / N
    var        2 (x - mean) / (N - correction)         grad: g * that
    amax       the largest (ties share equally)        grad: g to the winners
    max(dim)   the largest, with its index             grad: g to that index
    logsumexp  softmax(x)                              grad: g * softmax(x)
    cumsum     x[j] is in every out[i], i >= j         grad: a reversed running sum of g
    prod       the product of all the others           grad: g * that (exact at zeros)
    einsum     a sum of products                       grad: another einsum

Part of Tensor (see tensor.py): the methods are written in `ReductionMethods`
below, and the last line of the file adds them to Tensor.
"""
from __future__ import annotations

import math
from collections import namedtuple

import numpy as np

from minilora.tensor import Tensor, _refuse_bool, _unbroadcast, add_methods, op_result
from minilora.tensor_compare import maximum, minimum
from minilora.tensor_rules import _cast, _common_dtype, _floating, _normalize_dim, _pick

# What max(dim)/min(dim) return, as torch.return_types.max: `out.values`, `out.indices`.
values_indices = namedtuple("values_indices", ["values", "indices"])


class ReductionMethods:
    """x.sum(), x.mean(), x.var(), x.max(dim), x.argmax(), ...: Tensor's methods."""

    def _dims(self, dim, axis, name: str = "reduction"):
        """The dims to reduce as a sorted tuple of non-negative ints, or None for all.
        A 0-d tensor accepts dim 0 or -1 and reduces nothing (as PyTorch)."""
        dim = _pick(name, "dim", dim, axis)
        if dim is None:
            return None
        dims = (dim,) if isinstance(dim, (int, np.integer)) else tuple(dim)
        if not dims:                   # dim=() or [] reduces everything, as PyTorch
            return None
        out = []
        for d in dims:
            d = _normalize_dim(d, self.ndim)
            if d in out:
                raise RuntimeError(f"{name}: dim {d} appears multiple times in the list of dims")
            out.append(d)
        return () if self.ndim == 0 else tuple(sorted(out))

    def _count(self, axes) -> int:
        if axes is None:
            return int(self.data.size)
        return int(np.prod([self.shape[a] for a in axes]))

    def sum(self, dim=None, keepdim=None, *, axis=None, keepdims=None):
        axes = self._dims(dim, axis, "sum")
        keep = bool(_pick("sum", "keepdim", keepdim, keepdims, False))
        # bool and int sums are int64, as PyTorch
        dtype = np.int64 if self.dtype.kind in "biu" else None
        out_data = self.data.sum(axis=axes, keepdims=keep, dtype=dtype)

        def _backward(out):      # every input element contributed once
            g = out.grad if keep else _restore_axes(out.grad, axes, self.ndim)
            self._add_grad(self.xp.broadcast_to(g, self.shape).copy())

        return op_result(out_data, (self,), _backward, "sum", saves=False)

    def mean(self, dim=None, keepdim=None, *, axis=None, keepdims=None):
        if self.dtype.kind != "f":
            raise RuntimeError(f"mean(): could not infer output dtype: the input is {self.dtype}, "
                               "mean needs a floating point tensor (x.float().mean()).")
        axes = self._dims(dim, axis, "mean")
        keep = bool(_pick("mean", "keepdim", keepdim, keepdims, False))
        count = self._count(axes)
        scale = 1.0 / count if count else math.nan      # mean of nothing is NaN, as PyTorch
        out_data = self.data.sum(axis=axes, keepdims=keep) * scale

        def _backward(out):      # every input element contributed 1/count
            g = out.grad if keep else _restore_axes(out.grad, axes, self.ndim)
            self._add_grad(self.xp.broadcast_to(g * scale, self.shape).copy())

        return op_result(out_data, (self,), _backward, "mean", saves=False)

    def var(self, dim=None, unbiased=None, keepdim=None, *, correction=None, axis=None,
            keepdims=None):
        """Variance: sum((x - mean)^2) / (N - correction); correction=1 (unbiased) by default."""
        return _variance(self, dim, unbiased, keepdim, correction, axis, keepdims, "var")

    def std(self, dim=None, unbiased=None, keepdim=None, *, correction=None, axis=None,
            keepdims=None):
        """Standard deviation, sqrt(var) with the same arguments."""
        return _variance(self, dim, unbiased, keepdim, correction, axis, keepdims, "std")

    def amax(self, dim=None, keepdim=None, *, axis=None, keepdims=None):
        """Largest value over dims; tied maxima share the gradient equally (PyTorch's amax)."""
        return _extreme(self, dim, axis, _pick("amax", "keepdim", keepdim, keepdims, False), "amax")

    def amin(self, dim=None, keepdim=None, *, axis=None, keepdims=None):
        return _extreme(self, dim, axis, _pick("amin", "keepdim", keepdim, keepdims, False), "amin")

    def max(self, dim=None, keepdim=None, *, axis=None, keepdims=None):
        """As PyTorch: x.max() is the largest value (a 0-d tensor; ties share the gradient);
        x.max(dim) is a pair (values, indices) and the gradient goes to those indices;
        x.max(other_tensor) is maximum(x, other)."""
        if isinstance(dim, Tensor):
            return maximum(self, dim)
        return _max_or_min(self, dim, keepdim, axis, keepdims, "max")

    def min(self, dim=None, keepdim=None, *, axis=None, keepdims=None):
        if isinstance(dim, Tensor):
            return minimum(self, dim)
        return _max_or_min(self, dim, keepdim, axis, keepdims, "min")

    def argmax(self, dim=None, keepdim=None, *, axis=None, keepdims=None):
        """Index of the largest value (the first, if tied); over the flattened tensor without dim."""
        return _arg_extreme(self, dim, keepdim, axis, keepdims, "argmax")

    def argmin(self, dim=None, keepdim=None, *, axis=None, keepdims=None):
        return _arg_extreme(self, dim, keepdim, axis, keepdims, "argmin")

    def logsumexp(self, dim, keepdim: bool = False):
        """log(sum(exp(x))) over dim, computed without overflow."""
        return logsumexp(self, dim, keepdim)

    def cumsum(self, dim):
        return cumsum(self, dim)

    def prod(self, dim=None, keepdim: bool = False):
        """Product over one dim (or all); the gradient is exact even where x has zeros."""
        return _prod(self, dim, keepdim)


def _restore_axes(array, axis, ndim):
    """Re-insert reduced axes (size 1) so a reduced array broadcasts against the input."""
    if axis is None:
        return array.reshape((1,) * ndim)
    axes = (axis,) if isinstance(axis, int) else axis
    shape = list(array.shape)
    for a in sorted(a % ndim for a in axes):
        shape.insert(a, 1)
    return array.reshape(shape)


# ------------------------------------------------------------ reductions
def _extreme(x: Tensor, dim, axis, keep, name, nan_wins: bool = False) -> Tensor:
    """amax/amin: the extreme over dims; tied winners share the gradient equally.
    `nan_wins`: a NaN result came from the NaN inputs, which share its gradient
    (PyTorch's max() and min() without dim; amax and amin give NaN everywhere)."""
    axes = x._dims(dim, axis, name)
    count = x._count(axes)
    if count == 0:
        raise IndexError(f"{name}(): cannot reduce over a dimension of size 0 (the tensor has "
                         f"shape {x.shape}): an empty set has no {name[1:]}imum")
    xp = x.xp
    out_data = (x.data.max if name == "amax" else x.data.min)(axis=axes, keepdims=keep)

    def _backward(out):
        kept = out_data if keep else _restore_axes(out_data, axes, x.ndim)
        g = out.grad if keep else _restore_axes(out.grad, axes, x.ndim)
        winners = (x.data == kept)
        if nan_wins:
            winners = winners | (xp.isnan(x.data) & xp.isnan(kept))
        share = winners / winners.sum(axis=axes, keepdims=True)
        x._add_grad(xp.asarray(share * g, dtype=x.dtype))

    return op_result(out_data, (x,), _backward, name)


def _max_or_min(x: Tensor, dim, keepdim, axis, keepdims, name):
    dim = _pick(name, "dim", dim, axis)
    keep = bool(_pick(name, "keepdim", keepdim, keepdims, False))
    if dim is None:
        if x.numel() == 0:
            raise RuntimeError(f"{name}(): the tensor is empty, and an empty tensor has no "
                               f"{name}imum; pass dim= to reduce along one dimension")
        if keep:
            raise TypeError(f"{name}(keepdim=True) needs a dim")
        return _extreme(x, None, None, False, "a" + name, nan_wins=True)
    if not isinstance(dim, (int, np.integer)):
        raise TypeError(f"{name}(dim) takes one dim, got {dim!r}; for several use a{name}(dim=...)")
    d = _normalize_dim(dim, x.ndim)
    if x.ndim == 0:
        return values_indices(x.reshape(()), op_result(x.xp.zeros((), np.int64), (), None, "indices"))
    if x.shape[d] == 0:
        raise IndexError(f"{name}(): expected reduction dim {d} to have non-zero size")
    xp = x.xp
    idx = (xp.argmax if name == "max" else xp.argmin)(x.data, axis=d, keepdims=True)
    out_data = xp.take_along_axis(x.data, idx, axis=d)
    if not keep:
        out_data = out_data.squeeze(d)

    def _backward(out):      # the gradient goes to the chosen index only
        g = out.grad if keep else xp.expand_dims(out.grad, d)
        positions = xp.arange(x.shape[d]).reshape([-1 if i == d else 1 for i in range(x.ndim)])
        x._add_grad(xp.where(positions == idx, g, xp.zeros((), dtype=g.dtype)))

    values = op_result(out_data, (x,), _backward, name)
    indices = idx.astype(np.int64) if keep else idx.squeeze(d).astype(np.int64)
    return values_indices(values, op_result(indices, (), None, "indices"))


def _arg_extreme(x: Tensor, dim, keepdim, axis, keepdims, name):
    dim = _pick(name, "dim", dim, axis)
    keep = bool(_pick(name, "keepdim", keepdim, keepdims, False))
    _refuse_bool(x, name)
    xp = x.xp
    pick = xp.argmax if name == "argmax" else xp.argmin
    if dim is None:
        if x.numel() == 0:
            raise RuntimeError(f"{name}(): the tensor is empty; there is no index to return")
        out = pick(x.data.reshape(-1))
        out = xp.asarray(out, dtype=np.int64).reshape((1,) * x.ndim if keep else ())
        return op_result(out, (), None, name)
    d = _normalize_dim(dim, x.ndim)
    if x.ndim == 0:
        return op_result(xp.zeros((), np.int64), (), None, name)
    if x.shape[d] == 0:
        raise IndexError(f"{name}(): expected reduction dim {d} to have non-zero size")
    return op_result(pick(x.data, axis=d, keepdims=keep).astype(np.int64), (), None, name)


def _variance(x, dim, unbiased, keepdim, correction, axis, keepdims, name):
    if unbiased is not None and correction is not None:
        raise TypeError(f"{name}(): pass unbiased= or correction=, not both")
    if isinstance(dim, bool):      # var(True): the old positional `unbiased`
        dim, unbiased = None, dim
    correction = (1 if unbiased in (None, True) else 0) if correction is None else correction
    if x.dtype.kind != "f":
        raise RuntimeError(f"{name}(): needs a floating point tensor, got {x.dtype}")
    axes = x._dims(dim, axis, name)
    keep = bool(_pick(name, "keepdim", keepdim, keepdims, False))
    xp = x.xp
    n = x._count(axes)
    denom = max(n - correction, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = x.data.mean(axis=axes, keepdims=True) if n else xp.full_like(
            x.data.sum(axis=axes, keepdims=True), np.nan)
        dev = x.data - mean
        var = (dev * dev).sum(axis=axes, keepdims=keep) / x.dtype.type(denom)
        out_data = var if name == "var" else xp.sqrt(var)

    def _backward(out):
        g = out.grad if keep else _restore_axes(out.grad, axes, x.ndim)
        with np.errstate(divide="ignore", invalid="ignore"):
            if name == "var":    # d var / dx_i = 2 (x_i - mean) / (N - correction)
                x._add_grad(g * dev * (2 / x.dtype.type(denom)))
            else:                # d std / dx_i = (x_i - mean) / ((N - correction) std), 0 where std = 0
                s = out_data if keep else _restore_axes(out_data, axes, x.ndim)
                grad = g * dev / (x.dtype.type(denom) * s)
                x._add_grad(xp.where(s == 0, xp.zeros((), dtype=grad.dtype), grad))

    return op_result(out_data, (x,), _backward, name)


def logsumexp(x: Tensor, dim, keepdim: bool = False) -> Tensor:
    """log(sum(exp(x))) over dim: the max is taken out first so exp cannot overflow."""
    axes = x._dims(dim, None, "logsumexp")
    xp = x.xp
    data = _floating(x.data)
    if x._count(axes) == 0 or data.size == 0:
        m = xp.zeros(data.sum(axis=axes, keepdims=True).shape, dtype=data.dtype)
    else:
        m = data.max(axis=axes, keepdims=True)
        m = xp.where(xp.isinf(m), xp.zeros((), dtype=m.dtype), m)   # all -inf (or +inf) rows
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lse = xp.log(xp.exp(data - m).sum(axis=axes, keepdims=True)) + m     # kept dims
    out_data = lse if keepdim else lse.reshape(data.sum(axis=axes).shape)

    def _backward(out):      # d lse / dx_i = exp(x_i - lse) = softmax(x)_i
        g = out.grad if keepdim else _restore_axes(out.grad, axes, x.ndim)
        with np.errstate(invalid="ignore", over="ignore"):
            x._add_grad(g * xp.exp(data - lse))

    return op_result(out_data, (x,), _backward, "logsumexp")


def cumsum(x: Tensor, dim: int) -> Tensor:
    """Running sums along dim: out[i] = x[0] + ... + x[i]."""
    d = _normalize_dim(dim, x.ndim)
    xp = x.xp
    dtype = np.int64 if x.dtype.kind in "biu" else x.dtype
    if x.ndim == 0:
        out_data = x.data.astype(dtype)
    else:
        out_data = xp.cumsum(x.data, axis=d, dtype=dtype)

    def _backward(out):      # x[j] appears in every out[i] with i >= j: a reversed running sum
        g = out.grad
        if x.ndim:
            g = xp.flip(xp.cumsum(xp.flip(g, d), axis=d), d)
        x._add_grad(g)

    return op_result(out_data, (x,), _backward, "cumsum", saves=False)


def _prod(x: Tensor, dim, keepdim: bool, whole: bool = False) -> Tensor:
    xp = x.xp
    if dim is None:
        flat = x.reshape(-1)
        out = _prod(flat, 0, False, whole=True)
        return out.reshape((1,) * x.ndim) if keepdim else out
    d = _normalize_dim(dim, x.ndim)
    if x.ndim == 0:
        return x.clone()
    dtype = np.int64 if x.dtype.kind in "biu" else x.dtype
    out_data = x.data.prod(axis=d, keepdims=keepdim, dtype=dtype)

    def _backward(out):
        # d prod / dx_i = product of all the others = (product before i) * (product after i),
        # from running products, so a zero in x gives the exact answer (not 0/0).
        data, n = x.data, x.shape[d]

        def part(start, stop):               # data[..., start:stop, ...] along dim d
            return data[(slice(None),) * d + (slice(start, stop),)]

        ones = xp.ones_like(part(0, 1)) if n else part(0, 0)
        before = xp.cumprod(xp.concatenate([ones, part(0, n - 1)], axis=d), axis=d)
        after = xp.flip(xp.cumprod(xp.concatenate([ones, xp.flip(part(1, n), d)], axis=d),
                                   axis=d), d)
        g = out.grad if keepdim else xp.expand_dims(out.grad, d)
        zeros = int((data == 0).sum())
        if zeros == 0:               # no zero anywhere: out / x, as PyTorch (inf/inf is NaN there too)
            kept = out_data if keepdim else xp.expand_dims(out_data, d)
            x._add_grad(g * kept / data)
            return
        if whole and zeros > 1:      # the product of all: two zeros make every gradient 0
            x._add_grad(xp.zeros_like(data))
            return
        x._add_grad((g * before * after)[(slice(None),) * d + (slice(0, n),)])

    return op_result(out_data, (x,), _backward, "prod")


def prod(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    return x.prod(dim, keepdim)


# ------------------------------------------------------------ sums of products
def einsum(equation: str, *operands) -> Tensor:
    """Einstein summation, e.g. einsum("bij,bjk->bik", a, b); the gradient of each operand
    is another einsum: the output's gradient contracted with the other operands."""
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = operands[0]
    tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in operands]
    eq = equation.replace(" ", "")
    if "." in eq:
        raise NotImplementedError("einsum: '...' (ellipsis) is not supported by minilora; "
                                  "write every index out, e.g. 'bij,bjk->bik'")
    lhs, arrow, rhs = eq.partition("->")
    inputs = lhs.split(",")
    letters = lhs.replace(",", "")
    if not arrow:   # implicit output: the indices used once, in alphabetical order
        rhs = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    if len(inputs) != len(tensors):
        raise ValueError(f"einsum: the equation {equation!r} names {len(inputs)} operands, "
                         f"got {len(tensors)}")
    for s, t in zip(inputs, tensors):
        if len(s) != t.ndim:
            raise ValueError(f"einsum: subscripts {s!r} have {len(s)} indices for an operand of "
                             f"shape {t.shape}")
        if len(set(s)) != len(s):
            raise NotImplementedError(f"einsum: the repeated index in {s!r} (a diagonal or trace) "
                                      "is not supported by minilora; give each index once per operand")
    if len(set(rhs)) != len(rhs) or any(c not in letters for c in rhs):
        raise ValueError(f"einsum: output subscripts {rhs!r} must be distinct input indices")
    xp = tensors[0].xp
    dtype = _common_dtype(tensors)
    arrays = [_cast(t.data, dtype) for t in tensors]
    out_data = xp.einsum(f"{lhs}->{rhs}", *arrays)

    def _backward(out):
        for i, t in enumerate(tensors):
            if not t.requires_grad:
                continue
            others = [s for j, s in enumerate(inputs) if j != i]
            available = set(rhs).union(*others)
            kept = "".join(c for c in inputs[i] if c in available)
            g = xp.einsum(",".join([rhs] + others) + "->" + kept, out.grad,
                          *[a for j, a in enumerate(arrays) if j != i])
            if kept != inputs[i]:   # an index summed away in the forward: every copy gets it
                g = g.reshape([t.shape[k] if c in available else 1 for k, c in enumerate(inputs[i])])
                g = xp.broadcast_to(g, t.shape).copy()
            # a size-1 dim that met a longer one: sum its copies; a longer one that met a size 1:
            # the same gradient for each of its elements
            g = _unbroadcast(g, t.shape)
            if g.shape != t.shape:
                g = xp.broadcast_to(g, t.shape).copy()
            t._add_grad(g)

    return op_result(out_data, tuple(tensors), _backward, "einsum")


add_methods(ReductionMethods)

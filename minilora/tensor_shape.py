"""Shape ops: the same numbers, arranged differently, picked or joined.

None of them does arithmetic, so each backward rule only moves the gradient
back to where its numbers came from:

    reshape / view / flatten   grad.reshape(input shape)
    permute / transpose / T    the inverse permutation
    expand                     sum over the copies (_unbroadcast)
    x[index]                   zeros, with grad written (or, for repeats, added) at index
    cat / split / stack        the gradient cut back into pieces (or joined)
    gather                     scattered back, adding where an index repeats

Part of Tensor (see tensor.py): the methods are written in `ShapeMethods`
below, and the last line of the file adds them to Tensor.
"""
from __future__ import annotations

import numpy as np

from minilora import backend
from minilora.tensor import Tensor, _unbroadcast, add_methods, op_result
from minilora.tensor_rules import _as_array, _cast, _common_dtype, _normalize_dim, _pick, _size_args


class ShapeMethods:
    """x.reshape(...), x.permute(...), x.T, x[index], x.split(...), ...: Tensor's methods."""

    def reshape(self, *shape):
        shape = _size_args(shape)
        try:
            out_data = self.data.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape a tensor of shape {self.shape} "
                             f"({self.numel()} elements) into {tuple(shape)}; the number of "
                             "elements must stay the same (use -1 for one inferred size).") from None

        def _backward(out):
            self._add_grad(out.grad.reshape(self.shape))

        return op_result(out_data, (self,), _backward, "reshape", saves=False)

    def view(self, *shape):
        """reshape (minilora does not track memory layout, so view never refuses)."""
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer, tuple, list)):
            raise TypeError(f"view(dtype) reinterprets bytes and is not supported; got {shape[0]!r}")
        return self.reshape(*shape)

    def view_as(self, other: "Tensor"):
        return self.reshape(other.shape)

    def reshape_as(self, other: "Tensor"):
        return self.reshape(other.shape)

    def flatten(self, start_dim: int = 0, end_dim: int = -1):
        start, end = _normalize_dim(start_dim, self.ndim), _normalize_dim(end_dim, self.ndim)
        if self.ndim == 0:
            return self.reshape(1)
        if start > end:
            raise RuntimeError("flatten() has invalid args: start_dim cannot come after end_dim")
        shape = self.shape
        return self.reshape(shape[:start] + (int(np.prod(shape[start:end + 1])),) + shape[end + 1:])

    def squeeze(self, dim=None):
        """Drop dims of size 1 (all of them, or those listed; a listed dim not of size 1 stays)."""
        if dim is None:
            dims = range(self.ndim)
        else:
            dims = [_normalize_dim(d, self.ndim) for d in
                    ((dim,) if isinstance(dim, (int, np.integer)) else dim)]
        shape = tuple(n for i, n in enumerate(self.shape) if not (i in dims and n == 1))
        return self.reshape(shape)

    def unsqueeze(self, dim: int):
        d = _normalize_dim(dim, self.ndim + 1)
        return self.reshape(self.shape[:d] + (1,) + self.shape[d:])

    def expand(self, *sizes):
        """A broadcast view to `sizes` (-1 keeps a dim); only dims of size 1 can grow."""
        sizes = _size_args(sizes)
        if len(sizes) < self.ndim:
            raise RuntimeError(f"expand: the number of sizes provided ({len(sizes)}) must be greater "
                               f"or equal to the number of dimensions in the tensor ({self.ndim})")
        lead = len(sizes) - self.ndim
        target = []
        for i, n in enumerate(sizes):
            have = self.shape[i - lead] if i >= lead else None
            if n == -1 and have is None:
                raise RuntimeError(f"expand: the size -1 is not allowed in a new leading dim {i}")
            n = have if n == -1 else n
            if have not in (None, 1, n):
                raise RuntimeError(f"expand: the expanded size ({n}) must match the existing size "
                                   f"({have}) at non-singleton dimension {i}. Target sizes: "
                                   f"{list(sizes)}. Tensor sizes: {list(self.shape)}")
            target.append(n)
        out_data = self.xp.broadcast_to(self.data, tuple(target))

        def _backward(out):      # every copy's gradient is summed back
            self._add_grad(_unbroadcast(out.grad, self.shape))

        return op_result(out_data, (self,), _backward, "expand", saves=False)

    def expand_as(self, other: "Tensor"):
        return self.expand(other.shape)

    def permute(self, *dims):
        """Reorder the dims: out.shape[i] = self.shape[dims[i]] (NumPy's transpose(axes))."""
        if not dims:
            raise TypeError("permute() needs the new order of the dims, e.g. x.permute(1, 0)")
        dims = _size_args(dims)
        problem = f"permute{tuple(dims)} is not a permutation of the dims of a tensor of shape {self.shape}"
        if len(dims) != self.ndim:
            raise RuntimeError(f"{problem}: it needs {self.ndim} dims, one per dimension")
        try:
            dims = tuple(_normalize_dim(d, self.ndim) for d in dims)
        except IndexError as err:
            raise IndexError(f"{err}: {problem}") from None
        if len(set(dims)) != len(dims):
            raise RuntimeError(f"{problem}: a dim is repeated")
        return self._permuted(dims)

    def _permuted(self, dims: tuple):
        """permute without checking `dims` (a valid permutation of non-negative dims)."""
        out_data = self.data.transpose(dims)
        inverse = tuple(int(i) for i in np.argsort(dims))

        def _backward(out):      # undo the permutation
            self._add_grad(out.grad.transpose(inverse))

        return op_result(out_data, (self,), _backward, "permute", saves=False)

    def transpose(self, *dims):
        """Swap two dims, as torch.transpose(x, dim0, dim1). (NumPy's transpose(axes) is permute.)"""
        if len(dims) != 2 or not all(isinstance(d, (int, np.integer)) for d in dims):
            raise TypeError(
                f"transpose(dim0, dim1) swaps two dims, as in PyTorch; got transpose{tuple(dims)}. "
                "To reorder all the dims (NumPy's transpose(axes)) use permute(...), and for a "
                "matrix transpose use .T or .mT.")
        d0, d1 = (_normalize_dim(d, self.ndim) for d in dims)
        if self.ndim == 0:
            return self.reshape(())
        xp = self.xp

        def _backward(out):      # swapping back undoes it
            self._add_grad(xp.swapaxes(out.grad, d0, d1))

        return op_result(xp.swapaxes(self.data, d0, d1), (self,), _backward, "transpose",
                         saves=False)

    @property
    def T(self):
        """All dims reversed; for a matrix, its transpose (as PyTorch and NumPy)."""
        return self._permuted(tuple(range(self.ndim - 1, -1, -1))) if self.ndim else self.reshape(())

    @property
    def mT(self):
        """The last two dims swapped: a batch of matrices, each transposed."""
        if self.ndim == 0:       # PyTorch: the identity on a 0-d tensor
            return self.reshape(())
        if self.ndim < 2:
            raise RuntimeError(f"tensor.mT is only supported on matrices or batches of matrices; "
                               f"got a {self.ndim}-D tensor")
        return self.transpose(-2, -1)

    def split(self, split_size_or_sections, dim: int = 0):
        return split(self, split_size_or_sections, dim)

    def chunk(self, chunks: int, dim: int = 0):
        return chunk(self, chunks, dim)

    def gather(self, dim: int, index):
        return gather(self, dim, index)

    # ------------------------------------------------------------- indexing
    def __getitem__(self, index):
        if isinstance(index, tuple):
            index = tuple(_index_part(i, self) for i in index)
        else:
            index = _index_part(index, self)
        out_data = self.data[index]
        fancy = _has_array_index(index)

        def _backward(out):
            g = self.xp.zeros_like(self.data)
            if fancy:            # an index may repeat: add every occurrence
                backend.scatter_add(g, index, out.grad)
            else:                # slices and ints pick each element at most once
                g[index] = out.grad
            self._add_grad(g)

        return op_result(out_data, (self,), _backward, "getitem", saves=fancy)

    def __setitem__(self, index, value):
        raise TypeError("minilora tensors are not changed in place (autograd would lose track); "
                        "build a new tensor, e.g. with where(mask, value, x) or masked_fill.")


def _index_part(part, x: Tensor):
    """One part of an index, ready for x's array: a Tensor's array; on a GPU, index
    arrays and lists copied there too (the scatter-add of backward needs them there)."""
    if isinstance(part, Tensor):
        part = part.data
    if x.device == "cpu" or not isinstance(part, (list, tuple, np.ndarray)) or backend.device_of(part) != "cpu":
        return part
    part = np.asarray(part)
    if part.size == 0 and part.dtype.kind == "f":    # [] picks nothing: ints, not NumPy's float
        part = part.astype(np.intp)
    return x.xp.asarray(part)


def _has_array_index(index) -> bool:
    """Whether an index picks elements by arrays (lists, tuples, masks), so it may repeat."""
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, (list, tuple)) or getattr(p, "ndim", 0) > 0 or
               getattr(p, "dtype", None) == np.bool_ for p in parts)


# ------------------------------------------------------- joining and splitting
def concatenate(tensors, dim=None, *, axis=None) -> Tensor:
    """Join tensors along an existing dim; the gradient is split back into the pieces."""
    dim = _pick("cat", "dim", dim, axis, 0)
    if isinstance(tensors, Tensor) or not len(tensors):
        raise TypeError("cat expects a non-empty list or tuple of tensors")
    first = next((t for t in tensors if isinstance(t, Tensor)), None)
    tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
    first = tensors[0] if first is None else first
    # As PyTorch, a 1-D empty tensor (shape (0,)) may join tensors of any shape: it is skipped.
    if any(t.shape != (0,) for t in tensors):
        tensors = [t for t in tensors if t.shape != (0,)]
        first = tensors[0]
    elif len(tensors) > 1 or first.ndim == 1:
        dim = 0
    if any(t.ndim != first.ndim for t in tensors):
        raise RuntimeError(f"cat: tensors must have the same number of dimensions, got shapes "
                           f"{[t.shape for t in tensors]}")
    if first.ndim == 0:
        raise RuntimeError("cat: zero-dimensional tensors cannot be concatenated; use stack")
    d = _normalize_dim(dim, first.ndim)
    xp = first.xp
    dtype = _common_dtype(tensors)
    try:
        out_data = xp.concatenate([_cast(t.data, dtype) for t in tensors], axis=d)
    except ValueError:
        shapes = [t.shape for t in tensors]
        raise ValueError(f"cat along dim {dim}: shapes {shapes} must agree on every "
                         "other dim") from None
    bounds = np.cumsum([t.shape[d] for t in tensors])[:-1].tolist()   # split points, host ints

    def _backward(out):
        for t, g in zip(tensors, xp.split(out.grad, bounds, axis=d)):
            if t.requires_grad:
                t._add_grad(g)

    return op_result(out_data, tuple(tensors), _backward, "cat", saves=False)


cat = concatenate


def stack(tensors, dim=None, *, axis=None) -> Tensor:
    """Join tensors of the same shape along a new dim."""
    dim = _pick("stack", "dim", dim, axis, 0)
    tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
    if not tensors:
        raise TypeError("stack expects a non-empty list of tensors")
    for i, t in enumerate(tensors):
        if t.shape != tensors[0].shape:
            raise RuntimeError(f"stack expects each tensor to be equal size, but got "
                               f"{list(tensors[0].shape)} at entry 0 and {list(t.shape)} at entry {i}")
    d = _normalize_dim(dim, tensors[0].ndim + 1)
    return concatenate([t.unsqueeze(d) for t in tensors], dim=d)


def split(x: Tensor, split_size_or_sections, dim=None, *, axis=None) -> tuple:
    """Cut x along dim, as torch.split: an int is the size of each piece (the last may be
    smaller); a list gives every piece's size, and the sizes must add up to the length."""
    dim = _pick("split", "dim", dim, axis, 0)
    d = _normalize_dim(dim, x.ndim)
    length = x.shape[d]
    if isinstance(split_size_or_sections, (int, np.integer)) and not isinstance(
            split_size_or_sections, bool):
        step = int(split_size_or_sections)
        if step < 0 or (step == 0 and length):
            raise RuntimeError(f"split expects split_size be non-negative (and not 0 unless the "
                               f"dim is empty), but got split_size={step}")
        sizes = [step] * (length // step) + ([length % step] if length % step else []) if step else []
        sizes = sizes or [0]          # an empty dim still gives one (empty) piece
    else:
        sizes = [int(s) for s in split_size_or_sections]
        if any(s < 0 for s in sizes) or sum(sizes) != length:
            raise RuntimeError(
                f"split_with_sizes expects split_sizes to sum exactly to {length} (the size of "
                f"dim {d} of a tensor of shape {x.shape}), but got split_sizes={sizes}. "
                "A list gives the size of each piece (not cut points as in NumPy).")
    index = [slice(None)] * x.ndim
    pieces, start = [], 0
    for n in sizes:
        index[d] = slice(start, start + n)
        pieces.append(x[tuple(index)])
        start += n
    return tuple(pieces)


def chunk(x: Tensor, chunks: int, dim: int = 0) -> tuple:
    """Cut x into `chunks` pieces of equal size ceil(length / chunks) (fewer if it runs out)."""
    if chunks <= 0:
        raise RuntimeError(f"chunk expects chunks to be greater than 0, got {chunks}")
    length = x.shape[_normalize_dim(dim, x.ndim)]
    if length == 0:              # PyTorch: `chunks` empty pieces
        return tuple(x[(slice(None),) * _normalize_dim(dim, x.ndim)] for _ in range(chunks))
    return split(x, -(-length // chunks), dim)


def gather(x: Tensor, dim: int, index) -> Tensor:
    """out[i][j] = x[index[i][j]][j] for dim 0 (and likewise for any dim), as torch.gather."""
    idx = index.data if isinstance(index, Tensor) else _as_array(index, device=x.device)
    d = _normalize_dim(dim, x.ndim)
    if idx.dtype.kind not in "iu":
        raise RuntimeError(f"gather(): expected an integer index, got dtype {idx.dtype}")
    if idx.ndim != x.ndim:
        raise RuntimeError(f"gather(): index {tuple(idx.shape)} must have the same number of "
                           f"dimensions as the input {x.shape}")
    for k in range(x.ndim):
        if k != d and idx.shape[k] > x.shape[k]:
            raise RuntimeError(f"gather(): size does not match at dimension {k}: index "
                               f"{tuple(idx.shape)} must not be larger than the input {x.shape} "
                               f"apart from dimension {d}")
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= (x.shape[d] if x.ndim else 1)):
        bad = int(idx.min()) if int(idx.min()) < 0 else int(idx.max())
        raise RuntimeError(f"gather(): index {bad} is out of bounds for dimension {d} with size "
                           f"{x.shape[d] if x.ndim else 1}")
    xp = x.xp
    if x.ndim == 0:
        return x.clone()
    grids = [xp.arange(n).reshape([n if k == j else 1 for k in range(x.ndim)])
             for j, n in enumerate(idx.shape)]
    grids[d] = idx
    where_ = tuple(grids)
    out_data = x.data[where_]

    def _backward(out):      # scatter back, adding where an index repeats
        g = xp.zeros_like(x.data)
        backend.scatter_add(g, where_, out.grad)
        x._add_grad(g)

    return op_result(out_data, (x,), _backward, "gather")


add_methods(ShapeMethods)

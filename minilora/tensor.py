"""Tensor: an array that remembers how it was made, so it can be differentiated.

Each operation below computes its result and, right beside it, a `_backward`
closure: given the gradient of the loss with respect to the result (`out.grad`),
it adds the gradient with respect to each input (the chain rule). `backward()`
then walks the graph from the loss to the leaves in reverse topological order.

Frozen means free. An operation whose inputs need no gradient records nothing:
no closure, no parents, so backward never visits it. Inside a closure each input
is checked again, so `x @ W.T` with a frozen W computes dx but never dW. That is
where LoRA's training-time saving comes from.
"""
from __future__ import annotations

import contextlib
from collections import Counter

import numpy as np

from minilora import backend

_grad_enabled = True

# How much backward work ran: `rules` counts closures executed, `grads` counts
# gradients computed for inputs. Tests read it through `count_backward_work()`.
_work = Counter()
_running_op = ""   # the op whose backward rule is running, so gradients are counted per op


@contextlib.contextmanager
def no_grad():
    """Run operations without building a graph (evaluation, optimizer updates)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled() -> bool:
    return _grad_enabled


@contextlib.contextmanager
def count_backward_work():
    """Count, by op name, the backward rules that run and the gradients they compute.

        with count_backward_work() as work:
            loss.backward()
        work["rules"], work["grads"], work["grads:matmul"]
    """
    _work.clear()
    counts = Counter()
    try:
        yield counts
    finally:
        counts.update(_work)
        _work.clear()


def manual_seed(seed: int) -> None:
    """Seed initialisation, dropout and sampling, so a run can be reproduced."""
    backend.manual_seed(seed)


def _as_array(data, dtype=None):
    """Turn data into an array on the active device; Python floats become float32.

    Host data (lists, numbers, NumPy arrays) goes to the active device; a CuPy
    array stays on the GPU. NumPy arrays keep their dtype, so float64 stays float64.
    """
    if isinstance(data, Tensor):
        data = data.data
    if backend.get_array_module(data) is not np:     # already a GPU array
        return data if dtype is None else data.astype(dtype)
    if not hasattr(data, "dtype"):
        array = np.asarray(data)
        if dtype is None and array.dtype == np.float64:
            array = array.astype(np.float32)
        data = array
    return backend.xp.asarray(data, dtype=dtype)


def _unbroadcast(grad, shape):
    """Sum `grad` down to `shape`, undoing NumPy broadcasting.

    If x of shape (3, 1) was broadcast against (2, 3, 4), each of x's numbers was
    used 2 * 4 times, so its gradient is the sum over those copies.
    """
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad


def _broadcast_error(op, a, b):
    return ValueError(
        f"{op}: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be broadcast together. "
        "Broadcasting matches shapes from the right; each pair of dimensions must be equal "
        "or one of them 1. Reshape one operand (for example x.reshape(...)) so they line up."
    )


class Tensor:
    """An n-dimensional array with reverse-mode automatic differentiation."""

    __array_priority__ = 100  # numpy_array * tensor calls Tensor.__rmul__, not NumPy's

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        self.data = _as_array(data, dtype)
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._parents: tuple[Tensor, ...] = ()
        self._backward = None
        self._op = ""

    # ----------------------------------------------------------- bookkeeping
    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return int(self.data.size)

    @property
    def device(self) -> str:
        return "cpu" if backend.get_array_module(self.data) is np else "cuda"

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({backend.to_numpy(self.data)!r}{grad})"

    def numpy(self) -> np.ndarray:
        """The values as a NumPy array (copied from the GPU if needed)."""
        return backend.to_numpy(self.data)

    def item(self) -> float:
        if self.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.numpy().reshape(()).item()

    def detach(self) -> "Tensor":
        """The same values, cut from the graph (shares memory, needs no gradient)."""
        return _leaf(self.data, requires_grad=False)

    def to(self, device: str) -> "Tensor":
        """The values on `device` ("cpu" or "cuda"), as a new leaf (no copy if already there)."""
        return _leaf(backend.to_device(self.data, device), self.requires_grad)

    def astype(self, dtype) -> "Tensor":
        out_data = self.data.astype(dtype)

        def _backward(out):
            self._add_grad(out.grad.astype(self.dtype))

        return op_result(out_data, (self,), _backward, "astype")

    def _add_grad(self, g) -> None:
        """Accumulate a gradient. Never in place: `g` may be shared with another input."""
        _work["grads"] += 1
        _work["grads:" + _running_op] += 1
        self.grad = g if self.grad is None else self.grad + g

    # ---------------------------------------------------------- backward pass
    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Fill `.grad` of every leaf that requires grad with d(self)/d(leaf).

        Leaf gradients accumulate across calls (call `zero_grad` between steps);
        intermediate gradients and the graph are freed once used, unless
        `retain_graph=True`.
        """
        global _running_op
        if not self.requires_grad:
            raise RuntimeError(
                "backward(): this tensor does not require grad. None of the tensors it was "
                "computed from has requires_grad=True, or it was computed inside no_grad(). "
                "Create the parameters with requires_grad=True."
            )
        if grad is None:
            if self.size != 1:
                raise RuntimeError(
                    f"backward() on a tensor of shape {self.shape} needs a gradient argument: "
                    "only a scalar has an implicit gradient of 1. Reduce it first "
                    "(loss = out.sum() or out.mean()), or pass grad= an array of the same shape."
                )
            grad = backend.get_array_module(self.data).ones_like(self.data)
        else:
            grad = _as_array(grad.data if isinstance(grad, Tensor) else grad, self.dtype)
            if grad.shape != self.data.shape:
                raise ValueError(f"backward(): grad has shape {tuple(grad.shape)}, "
                                 f"but the tensor has shape {self.shape}; they must match.")

        # Topological order: every node comes after all the nodes it was made from.
        # A node is marked when it is expanded, not when it is pushed: a node pushed
        # early (as a parent of the loss, say) may also be reached later through a
        # longer path, and it must be placed after everything on that path too, or
        # backward would run its rule before all of its gradient had arrived.
        order, expanded, stack = [], set(), [(self, False)]
        while stack:
            node, parents_done = stack.pop()
            if parents_done:
                order.append(node)
                continue
            if id(node) in expanded:
                continue
            expanded.add(id(node))
            stack.append((node, True))
            for parent in node._parents:
                if id(parent) not in expanded:
                    stack.append((parent, False))

        self.grad = grad if self.grad is None else self.grad + grad
        for node in reversed(order):
            if node._backward is None:      # a leaf: its gradient stays for the optimizer
                continue
            if node.grad is not None:
                _work["rules"] += 1
                _work["rules:" + node._op] += 1
                _running_op = node._op
                node._backward(node)
            # Intermediate gradients are never kept, even with retain_graph: a second
            # backward through the same graph must start from zero at every inner node,
            # or the first pass's gradient would be propagated again.
            node.grad = None
            if not retain_graph:
                node._backward, node._parents = None, ()

    # ------------------------------------------------------------- arithmetic
    def __add__(self, other):
        other = _tensor(other, self)
        try:
            out_data = self.data + other.data
        except ValueError:
            raise _broadcast_error("add", self, other) from None

        def _backward(out):
            if self.requires_grad:
                self._add_grad(_unbroadcast(out.grad, self.shape))
            if other.requires_grad:
                other._add_grad(_unbroadcast(out.grad, other.shape))

        return op_result(out_data, (self, other), _backward, "add")

    def __mul__(self, other):
        other = _tensor(other, self)
        try:
            out_data = self.data * other.data
        except ValueError:
            raise _broadcast_error("mul", self, other) from None

        def _backward(out):
            if self.requires_grad:   # d(ab)/da = b
                self._add_grad(_unbroadcast(out.grad * other.data, self.shape))
            if other.requires_grad:
                other._add_grad(_unbroadcast(out.grad * self.data, other.shape))

        return op_result(out_data, (self, other), _backward, "mul")

    def __truediv__(self, other):
        other = _tensor(other, self)
        try:
            out_data = self.data / other.data
        except ValueError:
            raise _broadcast_error("div", self, other) from None

        def _backward(out):
            if self.requires_grad:   # d(a/b)/da = 1/b
                self._add_grad(_unbroadcast(out.grad / other.data, self.shape))
            if other.requires_grad:  # d(a/b)/db = -a/b^2 = -out/b
                other._add_grad(_unbroadcast(-out.grad * out_data / other.data, other.shape))

        return op_result(out_data, (self, other), _backward, "div")

    def __pow__(self, exponent):
        if isinstance(exponent, Tensor):
            # a^b = exp(b log a), differentiable in both (a > 0)
            return (exponent * self.log()).exp()
        out_data = self.data ** exponent

        def _backward(out):      # d(a^n)/da = n a^(n-1)
            self._add_grad(out.grad * exponent * self.data ** (exponent - 1))

        return op_result(out_data, (self,), _backward, "pow")

    def __neg__(self):
        def _backward(out):
            self._add_grad(-out.grad)

        return op_result(-self.data, (self,), _backward, "neg")

    def __sub__(self, other):
        return self + (-_tensor(other, self))

    def __radd__(self, other):
        return self + other

    def __rsub__(self, other):
        return _tensor(other, self) - self

    def __rmul__(self, other):
        return self * other

    def __rtruediv__(self, other):
        return _tensor(other, self) / self

    def __matmul__(self, other):
        other = _tensor(other, self)
        a, b = self.data, other.data
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"matmul needs arrays with at least one dimension, got shapes "
                             f"{self.shape} and {other.shape}; use * to multiply by a scalar.")
        inner_a, inner_b = a.shape[-1], b.shape[-2] if b.ndim > 1 else b.shape[0]
        if inner_a != inner_b:
            raise ValueError(
                f"matmul: cannot multiply shapes {self.shape} and {other.shape}: the last "
                f"dimension of the left ({inner_a}) must equal the "
                f"{'second-to-last' if b.ndim > 1 else 'only'} dimension of the right ({inner_b}). "
                "Check the layer sizes, or transpose an operand (e.g. w.T)."
            )
        try:
            out_data = a @ b
        except ValueError:
            raise _broadcast_error("matmul (batch dimensions)", self, other) from None

        def _backward(out):
            # Treat vectors as matrices: a (n,) is a row (1, n); b (n,) a column (n, 1).
            # Re-insert the dropped axes into g: vector @ matrix dropped the row axis
            # (second to last), matrix @ vector the column axis (last); vector @ vector both.
            g = out.grad
            a2 = a[None, :] if a.ndim == 1 else a
            b2 = b[:, None] if b.ndim == 1 else b
            if a.ndim == 1:
                g = g.reshape(g.shape[:-1] + (1, g.shape[-1])) if b.ndim > 1 else g.reshape(1)
            if b.ndim == 1:
                g = g[..., None]
            xp = backend.get_array_module(g)
            if self.requires_grad:   # dL/dA = dL/dC @ B^T
                ga = _unbroadcast(g @ xp.swapaxes(b2, -1, -2), a2.shape)
                self._add_grad(ga.reshape(a.shape))
            if other.requires_grad:  # dL/dB = A^T @ dL/dC
                gb = _unbroadcast(xp.swapaxes(a2, -1, -2) @ g, b2.shape)
                other._add_grad(gb.reshape(b.shape))

        return op_result(out_data, (self, other), _backward, "matmul")

    def __rmatmul__(self, other):
        return _tensor(other, self) @ self

    # ------------------------------------------------------ elementwise maths
    def exp(self):
        out_data = backend.get_array_module(self.data).exp(self.data)

        def _backward(out):      # d(e^x)/dx = e^x
            self._add_grad(out.grad * out_data)

        return op_result(out_data, (self,), _backward, "exp")

    def log(self):
        out_data = backend.get_array_module(self.data).log(self.data)

        def _backward(out):      # d(log x)/dx = 1/x
            self._add_grad(out.grad / self.data)

        return op_result(out_data, (self,), _backward, "log")

    def tanh(self):
        out_data = backend.get_array_module(self.data).tanh(self.data)

        def _backward(out):      # d(tanh x)/dx = 1 - tanh^2 x
            self._add_grad(out.grad * (1 - out_data * out_data))

        return op_result(out_data, (self,), _backward, "tanh")

    def relu(self):
        out_data = backend.get_array_module(self.data).maximum(self.data, 0)

        def _backward(out):      # passes the gradient where x > 0
            self._add_grad(out.grad * (self.data > 0))

        return op_result(out_data, (self,), _backward, "relu")

    def sqrt(self):
        out_data = backend.get_array_module(self.data).sqrt(self.data)

        def _backward(out):      # d(sqrt x)/dx = 1 / (2 sqrt x)
            self._add_grad(out.grad / (2 * out_data))

        return op_result(out_data, (self,), _backward, "sqrt")

    def sigmoid(self):
        xp = backend.get_array_module(self.data)
        out_data = 1 / (1 + xp.exp(-self.data))

        def _backward(out):      # d(sigma)/dx = sigma (1 - sigma)
            self._add_grad(out.grad * out_data * (1 - out_data))

        return op_result(out_data, (self,), _backward, "sigmoid")

    # -------------------------------------------------------------- reductions
    def sum(self, axis=None, keepdims: bool = False):
        out_data = self.data.sum(axis=axis, keepdims=keepdims)

        def _backward(out):      # every input element contributed once
            g = out.grad if keepdims else _restore_axes(out.grad, axis, self.ndim)
            self._add_grad(backend.get_array_module(g).broadcast_to(g, self.shape).copy())

        return op_result(out_data, (self,), _backward, "sum")

    def mean(self, axis=None, keepdims: bool = False):
        axes = range(self.ndim) if axis is None else ((axis,) if isinstance(axis, int) else axis)
        count = int(np.prod([self.shape[a] for a in axes]))
        return self.sum(axis=axis, keepdims=keepdims) * (1.0 / count)

    def max(self, axis=None, keepdims: bool = False):
        xp = backend.get_array_module(self.data)
        out_data = self.data.max(axis=axis, keepdims=keepdims)

        def _backward(out):
            # The gradient goes to the maximum; ties share it equally, as in PyTorch's amax.
            kept = out_data if keepdims else _restore_axes(out_data, axis, self.ndim)
            g = out.grad if keepdims else _restore_axes(out.grad, axis, self.ndim)
            winners = (self.data == kept)
            share = winners / winners.sum(axis=axis, keepdims=True)
            self._add_grad(xp.asarray(share * g, dtype=self.dtype))

        return op_result(out_data, (self,), _backward, "max")

    # ------------------------------------------------------------- reshaping
    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        try:
            out_data = self.data.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape a tensor of shape {self.shape} "
                             f"({self.size} elements) into {tuple(shape)}; the number of "
                             "elements must stay the same (use -1 for one inferred size).") from None

        def _backward(out):
            self._add_grad(out.grad.reshape(self.shape))

        return op_result(out_data, (self,), _backward, "reshape")

    def transpose(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        axes = tuple(axes) if axes else tuple(reversed(range(self.ndim)))
        if sorted(a + self.ndim if a < 0 else a for a in axes) != list(range(self.ndim)):
            raise ValueError(f"transpose: axes {axes} are not a permutation of the "
                             f"{self.ndim} axes of a tensor of shape {self.shape}")
        out_data = self.data.transpose(axes)
        inverse = tuple(int(i) for i in np.argsort([a % self.ndim for a in axes]))

        def _backward(out):      # undo the permutation
            self._add_grad(out.grad.transpose(inverse))

        return op_result(out_data, (self,), _backward, "transpose")

    @property
    def T(self):
        """All axes reversed (for a matrix: the transpose), as NumPy's .T."""
        return self.transpose()

    def __getitem__(self, index):
        if isinstance(index, tuple):
            index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
        elif isinstance(index, Tensor):
            index = index.data
        out_data = self.data[index]
        fancy = _has_array_index(index)

        def _backward(out):
            xp = backend.get_array_module(out.grad)
            g = xp.zeros_like(self.data)
            if fancy:            # an index may repeat: add every occurrence
                backend.scatter_add(g, index, out.grad)
            else:                # slices and ints pick each element at most once
                g[index] = out.grad
            self._add_grad(g)

        return op_result(out_data, (self,), _backward, "getitem")

    def masked_fill(self, mask, value: float):
        """A copy with `value` wherever `mask` is True (mask broadcasts to self)."""
        mask = mask.data if isinstance(mask, Tensor) else _as_array(mask)
        xp = backend.get_array_module(self.data)
        out_data = xp.where(mask, xp.asarray(value, dtype=self.dtype), self.data)

        def _backward(out):      # filled positions did not depend on self
            # A mask larger than self broadcasts self, so sum over the copies.
            self._add_grad(_unbroadcast(xp.where(mask, 0, out.grad).astype(self.dtype), self.shape))

        return op_result(out_data, (self,), _backward, "masked_fill")


# ----------------------------------------------------------------- helpers
def _tensor(value, like: Tensor) -> Tensor:
    """Wrap a Python number or array so it can meet `like` in an operation."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (int, float)):
        dtype = like.dtype if like.dtype.kind == "f" or isinstance(value, int) else np.float32
        return Tensor(backend.get_array_module(like.data).asarray(value, dtype=dtype))
    return Tensor(value)


def _leaf(array, requires_grad: bool) -> Tensor:
    """A leaf around `array` exactly as it is. Not Tensor(array): the constructor sends
    host arrays to the *active* device, so t.to("cpu") on a GPU run would land back
    on the GPU, and detach() of a CPU tensor would copy it there."""
    out = Tensor.__new__(Tensor)
    out.data, out.grad, out.requires_grad = array, None, requires_grad
    out._parents, out._backward, out._op = (), None, ""
    return out


def op_result(data, parents, backward, op: str) -> Tensor:
    """Wrap an op's output; record how to differentiate it only if anyone needs that."""
    out = Tensor.__new__(Tensor)
    out.data, out.grad, out._op = data, None, op
    out.requires_grad = _grad_enabled and any(p.requires_grad for p in parents)
    if out.requires_grad:
        out._parents, out._backward = parents, backward
    else:
        out._parents, out._backward = (), None
    return out


def _restore_axes(array, axis, ndim):
    """Re-insert reduced axes (size 1) so a reduced array broadcasts against the input."""
    if axis is None:
        return array.reshape((1,) * ndim)
    axes = (axis,) if isinstance(axis, int) else axis
    shape = list(array.shape)
    for a in sorted(a % ndim for a in axes):
        shape.insert(a, 1)
    return array.reshape(shape)


def _has_array_index(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(hasattr(p, "shape") and getattr(p, "ndim", 0) > 0 or isinstance(p, list) for p in parts)


def tensor(data, requires_grad: bool = False, dtype=None) -> Tensor:
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


def concatenate(tensors, axis: int = 0) -> Tensor:
    """Join tensors along an existing axis; the gradient is split back into the pieces."""
    tensors = [_tensor(t, tensors[0]) if not isinstance(t, Tensor) else t for t in tensors]
    xp = backend.get_array_module(tensors[0].data)
    try:
        out_data = xp.concatenate([t.data for t in tensors], axis=axis)
    except ValueError:
        shapes = [t.shape for t in tensors]
        raise ValueError(f"concatenate along axis {axis}: shapes {shapes} must agree on every "
                         "other axis") from None
    bounds = np.cumsum([t.shape[axis] for t in tensors])[:-1]

    def _backward(out):
        for t, g in zip(tensors, xp.split(out.grad, bounds, axis=axis)):
            if t.requires_grad:
                t._add_grad(g)

    return op_result(out_data, tuple(tensors), _backward, "concatenate")


def stack(tensors, axis: int = 0) -> Tensor:
    """Join tensors along a new axis."""
    return concatenate([t.reshape(t.shape[:axis % (t.ndim + 1)] + (1,) + t.shape[axis % (t.ndim + 1):])
                        for t in tensors], axis=axis)


def split(x: Tensor, sections, axis: int = 0) -> list[Tensor]:
    """Cut x along `axis` into equal `sections` (an int) or at the given indices (a list)."""
    size = x.shape[axis]
    if isinstance(sections, int):
        if size % sections:
            raise ValueError(f"split: axis {axis} has size {size}, which does not divide "
                             f"into {sections} equal parts; pass a list of split indices instead")
        step = size // sections
        sections = list(range(step, size, step))
    bounds = [0, *sections, size]
    index = [slice(None)] * x.ndim
    pieces = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        index[axis % x.ndim] = slice(start, stop)
        pieces.append(x[tuple(index)])
    return pieces


def where(condition, a, b) -> Tensor:
    """Elementwise choice: a where condition is True, else b (all broadcast together)."""
    condition = condition.data if isinstance(condition, Tensor) else _as_array(condition)
    a = a if isinstance(a, Tensor) else Tensor(a)
    b = _tensor(b, a)
    xp = backend.get_array_module(a.data)
    try:
        out_data = xp.where(condition, a.data, b.data)
    except ValueError:
        raise _broadcast_error("where", a, b) from None

    def _backward(out):
        zero = xp.zeros((), dtype=out.grad.dtype)
        if a.requires_grad:
            a._add_grad(_unbroadcast(xp.where(condition, out.grad, zero), a.shape))
        if b.requires_grad:
            b._add_grad(_unbroadcast(xp.where(condition, zero, out.grad), b.shape))

    return op_result(out_data, (a, b), _backward, "where")

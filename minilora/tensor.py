"""Tensor: an array that remembers how it was made, so it can be differentiated.

Each operation below computes its result and, right beside it, a `_backward`
closure: given the gradient of the loss with respect to the result (`out.grad`),
it adds the gradient with respect to each input (the chain rule). `backward()`
then walks the graph from the loss to the leaves in reverse topological order.

Frozen means free. An operation whose inputs need no gradient records nothing:
no closure, no parents, so backward never visits it. Inside a closure each input
is checked again, so `x @ W.T` with a frozen W computes dx but never dW. That is
where LoRA's training-time saving comes from.

Names and meanings follow PyTorch (`dim=`, `keepdim=`, `transpose(dim0, dim1)`,
`max(dim)` giving values and indices, comparisons giving bool tensors, dtype
promotion), so what you learn here carries over. NumPy's spellings `axis=` and
`keepdims=` are accepted as aliases. docs/differences_from_pytorch.md lists the
few places where minilora differs, each of which raises instead of guessing.

The file reads top to bottom: bookkeeping, backward, arithmetic, elementwise
maths, reductions, shape ops, indexing, then module-level functions (joining,
splitting, where, einsum) and creation functions (zeros, randn, arange, ...).
"""
from __future__ import annotations

import contextlib
import math
from collections import Counter, namedtuple

import numpy as np

from minilora import backend

_grad_enabled = True

# How much backward work ran: `rules` counts closures executed, `grads` counts
# gradients computed for inputs. Tests read it through `count_backward_work()`.
_work = Counter()
_running_op = ""   # the op whose backward rule is running, so gradients are counted per op

# What max(dim)/min(dim) return, as torch.return_types.max: `out.values`, `out.indices`.
values_indices = namedtuple("values_indices", ["values", "indices"])


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


def _as_array(data, dtype=None):
    """Turn data into an array on the active device; Python floats become float32.

    Host data (lists, numbers, NumPy arrays) goes to the active device; a CuPy
    array stays on the GPU. NumPy arrays keep their dtype, so float64 stays float64.
    """
    if isinstance(data, Tensor):
        data = data.data
    if dtype is not None:
        dtype = np.dtype(dtype)
        _check_numeric(np.empty(0, dtype), dtype)
    if backend.get_array_module(data) is not np:     # already a GPU array
        return data if dtype is None else data.astype(dtype)
    if not hasattr(data, "dtype"):
        array = np.asarray(data)
        _check_numeric(array, data)
        if dtype is None and array.dtype == np.float64:
            array = array.astype(np.float32)
        data = array
    else:
        _check_numeric(data, data)
    return backend.xp.asarray(data, dtype=dtype)


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


class Tensor:
    """An n-dimensional array with reverse-mode automatic differentiation."""

    __array_priority__ = 100  # numpy_array * tensor calls Tensor.__rmul__, not NumPy's
    __hash__ = object.__hash__  # == compares elementwise, so hash by identity (dict keys, sets)

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        self.data = _as_array(data, dtype)
        self.grad = None
        self._requires_grad = False
        self._parents: tuple[Tensor, ...] = ()
        self._backward = None
        self._op = ""
        self._saves = False
        self.requires_grad = requires_grad

    # ----------------------------------------------------------- bookkeeping
    @property
    def requires_grad(self) -> bool:
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value) -> None:
        value = bool(value)
        if value and self.data.dtype.kind != "f":
            raise RuntimeError(
                f"only floating point tensors can require gradients, and this one is "
                f"{self.data.dtype}: a gradient of an integer or bool is always zero (it cannot "
                "change by a small step). Convert first, e.g. x.float() or x.astype(np.float32)."
            )
        if not value and self._backward is not None:
            raise RuntimeError("requires_grad can only be changed on a leaf tensor; to cut this "
                               "result from the graph use y = y.detach().")
        self._requires_grad = value

    def requires_grad_(self, requires_grad: bool = True) -> "Tensor":
        """Set requires_grad in place and return self (PyTorch's spelling)."""
        self.requires_grad = requires_grad
        return self

    @property
    def is_leaf(self) -> bool:
        return self._backward is None       # made by the user, not by an op (as PyTorch)

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
        return _Size(self.data.size, tuple(self.data.shape))

    def numel(self) -> int:
        return int(self.data.size)

    def dim(self) -> int:
        return self.data.ndim

    @property
    def device(self) -> str:
        return "cpu" if backend.get_array_module(self.data) is np else "cuda"

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.shape[0]))

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({backend.to_numpy(self.data)!r}{grad})"

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
        return _leaf(self.data, requires_grad=False)

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
            return _leaf(out_data, requires_grad=False)

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

    def _add_grad(self, g) -> None:
        """Accumulate a gradient. Never in place: `g` may be shared with another input."""
        _work["grads"] += 1
        _work["grads:" + _running_op] += 1
        if g.dtype != self.data.dtype:          # a float32 input of a float64 op gets float32
            g = g.astype(self.data.dtype)
        if g.shape != self.data.shape:
            raise RuntimeError(f"internal error in the backward rule of {_running_op!r}: a gradient "
                               f"of shape {tuple(g.shape)} for a tensor of shape {self.shape}")
        if self.grad is not None:
            self.grad = self.grad + g
        elif self._backward is None:
            # A leaf keeps its gradient; copy it so two leaves never share one array
            # (x + y hands both the same out.grad) and in-place edits stay local.
            self.grad = g.copy()
        else:
            self.grad = g

    # ---------------------------------------------------------- backward pass
    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Fill `.grad` of every leaf that requires grad with d(self)/d(leaf).

        Leaf gradients accumulate across calls (call `zero_grad` between steps).
        As in PyTorch, the arrays an op kept for its backward rule are freed once
        used, so a second backward through such an op raises, unless the first
        used `retain_graph=True`. Ops that keep nothing (add, sum, reshape, ...)
        stay differentiable.
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
            if node._backward is _freed:    # checked before any gradient is touched
                raise RuntimeError(
                    f"Trying to backward through the graph a second time: the arrays that "
                    f"'{node._op}' kept for its backward rule were freed by the first backward(). "
                    "Pass retain_graph=True to the first backward() if you need a second one, "
                    "or recompute the forward pass."
                )
            expanded.add(id(node))
            stack.append((node, True))
            for parent in node._parents:
                if id(parent) not in expanded:
                    stack.append((parent, False))

        self._add_root_grad(grad)
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
            if not retain_graph and node._saves:
                node._backward, node._parents = _freed, ()

    def _add_root_grad(self, grad) -> None:
        if self.grad is not None:
            self.grad = self.grad + grad
        else:
            self.grad = grad.copy() if self._backward is None else grad

    # ------------------------------------------------------------- arithmetic
    # Binary ops first bring both operands to PyTorch's result dtype (_operands).
    def __add__(self, other):
        other, a, b = _operands(self, other)
        try:
            out_data = a + b
        except ValueError:
            raise _broadcast_error("add", self, other) from None

        def _backward(out):      # d(a+b)/da = d(a+b)/db = 1
            if self.requires_grad:
                self._add_grad(_unbroadcast(out.grad, self.shape))
            if other.requires_grad:
                other._add_grad(_unbroadcast(out.grad, other.shape))

        return op_result(out_data, (self, other), _backward, "add", saves=False)

    def __sub__(self, other):
        python_bool = isinstance(other, (bool, np.bool_))
        other, a, b = _operands(self, other)
        if python_bool or self.dtype.kind == "b" or other.dtype.kind == "b":
            raise RuntimeError("subtraction with a bool tensor is not supported (as in PyTorch); "
                               "to invert a mask use ~mask, or convert first with .long()/.float()")
        try:
            out_data = a - b
        except ValueError:
            raise _broadcast_error("sub", self, other) from None

        def _backward(out):      # d(a-b)/da = 1, d(a-b)/db = -1
            if self.requires_grad:
                self._add_grad(_unbroadcast(out.grad, self.shape))
            if other.requires_grad:
                other._add_grad(_unbroadcast(-out.grad, other.shape))

        return op_result(out_data, (self, other), _backward, "sub", saves=False)

    def __mul__(self, other):
        other, a, b = _operands(self, other)
        try:
            out_data = a * b
        except ValueError:
            raise _broadcast_error("mul", self, other) from None

        def _backward(out):
            if self.requires_grad:   # d(ab)/da = b
                self._add_grad(_unbroadcast(out.grad * b, self.shape))
            if other.requires_grad:
                other._add_grad(_unbroadcast(out.grad * a, other.shape))

        return op_result(out_data, (self, other), _backward, "mul")

    def __truediv__(self, other):
        other, a, b = _operands(self, other)
        if a.dtype.kind != "f":      # true division: int / int is float32, as PyTorch
            a, b = a.astype(np.float32), b.astype(np.float32)
        try:
            out_data = a / b
        except ValueError:
            raise _broadcast_error("div", self, other) from None

        def _backward(out):
            if self.requires_grad:   # d(a/b)/da = 1/b
                self._add_grad(_unbroadcast(out.grad / b, self.shape))
            if other.requires_grad:  # d(a/b)/db = -a/b^2
                other._add_grad(_unbroadcast(-out.grad * a / (b * b), other.shape))

        return op_result(out_data, (self, other), _backward, "div")

    def __pow__(self, exponent):
        if not isinstance(exponent, (int, float)) or isinstance(exponent, bool):
            return _power(self, exponent)
        # in PyTorch's common dtype: int ** float is float32, bool ** int is int64
        x = _operands(self, exponent)[1]
        out_data = x ** exponent

        def _backward(out):
            if exponent == 0:    # x^0 = 1 is constant: zero gradient, even at x = 0 or NaN
                self._add_grad(backend.get_array_module(x).zeros_like(x))
            else:                # d(x^n)/dx = n x^(n-1); x^-0.5 as 1/sqrt(x), as PyTorch computes it
                xp = backend.get_array_module(x)
                power = 1 / xp.sqrt(x) if exponent == 0.5 else x ** (exponent - 1)
                self._add_grad(out.grad * exponent * power)

        return op_result(out_data, (self,), _backward, "pow")

    def __rpow__(self, base):
        return _power(base, self)

    def pow(self, exponent):
        return self ** exponent

    def add(self, other):
        return self + other

    def sub(self, other):
        return self - other

    def mul(self, other):
        return self * other

    def div(self, other):
        return self / other

    def matmul(self, other):
        return self @ other

    def __neg__(self):
        if self.dtype.kind == "b":
            raise RuntimeError("negation of a bool tensor is not supported (as in PyTorch); "
                               "to invert a mask use ~mask")

        def _backward(out):
            self._add_grad(-out.grad)

        return op_result(-self.data, (self,), _backward, "neg", saves=False)

    def __radd__(self, other):
        return self + other

    def __rsub__(self, other):
        return _scalar_or_tensor(other, self) - self

    def __rmul__(self, other):
        return self * other

    def __rtruediv__(self, other):
        return _scalar_or_tensor(other, self) / self

    def __matmul__(self, other):
        other = _scalar_or_tensor(other, self)
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
        if a.dtype != b.dtype:
            dtype = _common_dtype((self, other))
            a, b = _cast(a, dtype), _cast(b, dtype)
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
        return _scalar_or_tensor(other, self) @ self

    # ------------------------------------------- comparisons: bool tensors, no gradient
    def _compare(self, other, op):
        if not isinstance(other, (Tensor, int, float, np.ndarray, np.generic, list, tuple)):
            return NotImplemented       # x == None is False, as in Python
        other, a, b = _operands(self, other)
        try:
            return _leaf(op(a, b), requires_grad=False)
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
        return _leaf(~self.data, requires_grad=False)

    def __and__(self, other):
        return _leaf(self.data & _operands(self, other)[2], requires_grad=False)

    def __or__(self, other):
        return _leaf(self.data | _operands(self, other)[2], requires_grad=False)

    def any(self, dim=None, keepdim: bool = False):
        axis = self._dims(dim, None)
        return _leaf(self.data.astype(bool).any(axis=axis, keepdims=keepdim), requires_grad=False)

    def all(self, dim=None, keepdim: bool = False):
        axis = self._dims(dim, None)
        return _leaf(self.data.astype(bool).all(axis=axis, keepdims=keepdim), requires_grad=False)

    def isnan(self):
        return _leaf(backend.get_array_module(self.data).isnan(self.data), requires_grad=False)

    def isfinite(self):
        return _leaf(backend.get_array_module(self.data).isfinite(self.data), requires_grad=False)

    # ------------------------------------------------------ elementwise maths
    def exp(self):
        out_data = backend.get_array_module(self.data).exp(_floating(self.data))

        def _backward(out):      # d(e^x)/dx = e^x
            self._add_grad(out.grad * out_data)

        return op_result(out_data, (self,), _backward, "exp")

    def log(self):
        x = _floating(self.data)
        with np.errstate(divide="ignore", invalid="ignore"):
            out_data = backend.get_array_module(x).log(x)

        def _backward(out):      # d(log x)/dx = 1/x
            with np.errstate(divide="ignore"):
                self._add_grad(out.grad / x)

        return op_result(out_data, (self,), _backward, "log")

    def tanh(self):
        out_data = backend.get_array_module(self.data).tanh(_floating(self.data))

        def _backward(out):      # d(tanh x)/dx = 1 - tanh^2 x
            self._add_grad(out.grad * (1 - out_data * out_data))

        return op_result(out_data, (self,), _backward, "tanh")

    def relu(self):
        _refuse_bool(self, "relu")
        out_data = backend.get_array_module(self.data).maximum(self.data, 0)

        def _backward(out):      # passes the gradient where x > 0 (0 at x = 0; NaN passes, as PyTorch)
            xp = backend.get_array_module(out.grad)
            self._add_grad(xp.where(out_data <= 0, xp.zeros((), dtype=out.grad.dtype), out.grad))

        return op_result(out_data, (self,), _backward, "relu")

    def sqrt(self):
        x = _floating(self.data)
        with np.errstate(invalid="ignore"):
            out_data = backend.get_array_module(x).sqrt(x)

        def _backward(out):      # d(sqrt x)/dx = 1 / (2 sqrt x)
            with np.errstate(divide="ignore"):
                self._add_grad(out.grad / (2 * out_data))

        return op_result(out_data, (self,), _backward, "sqrt")

    def sigmoid(self):
        x = _floating(self.data)
        xp = backend.get_array_module(x)
        e = xp.exp(-xp.abs(x))               # never overflows: e in (0, 1]
        out_data = xp.where(x >= 0, 1 / (1 + e), e / (1 + e))

        def _backward(out):      # d(sigma)/dx = sigma (1 - sigma)
            self._add_grad(out.grad * out_data * (1 - out_data))

        return op_result(out_data, (self,), _backward, "sigmoid")

    def abs(self):
        _refuse_bool(self, "abs")
        xp = backend.get_array_module(self.data)

        def _backward(out):      # d|x|/dx = sign(x): 0 at x = 0, and 0 at NaN as PyTorch's sgn
            sign = (self.data > 0).astype(out.grad.dtype) - (self.data < 0)
            self._add_grad(out.grad * sign)

        return op_result(xp.abs(self.data), (self,), _backward, "abs")

    def __abs__(self):
        return self.abs()

    def clamp(self, min=None, max=None):
        """Limit values to [min, max]; either bound may be a number or a tensor (broadcast)."""
        if min is None and max is None:
            raise RuntimeError("clamp: at least one of min and max must not be None")
        xp = backend.get_array_module(self.data)
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

    # -------------------------------------------------------------- reductions
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
            self._add_grad(backend.get_array_module(g).broadcast_to(g, self.shape).copy())

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
            xp = backend.get_array_module(g)
            self._add_grad(xp.broadcast_to(g * scale, self.shape).copy())

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

    # ------------------------------------------------------------- reshaping
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
        out_data = backend.get_array_module(self.data).broadcast_to(self.data, tuple(target))

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
        xp = backend.get_array_module(self.data)

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

        return op_result(out_data, (self,), _backward, "getitem", saves=fancy)

    def __setitem__(self, index, value):
        raise TypeError("minilora tensors are not changed in place (autograd would lose track); "
                        "build a new tensor, e.g. with where(mask, value, x) or masked_fill.")

    def masked_fill(self, mask, value):
        """A copy with `value` wherever the bool `mask` is True (mask broadcasts to self)."""
        mask = mask.data if isinstance(mask, Tensor) else _as_array(mask)
        if mask.dtype.kind != "b":
            raise RuntimeError(f"masked_fill only supports boolean masks, but got a mask of dtype "
                               f"{mask.dtype}; use mask.bool() or (mask != 0).")
        if isinstance(value, Tensor):
            if value.ndim != 0:
                raise RuntimeError(f"masked_fill only supports a 0-d tensor value, got shape {value.shape}")
            if value.requires_grad:      # the value is differentiable too: it is where() then
                out = where(_leaf(mask, False), value, self)
                return out if out.dtype == self.dtype else out.astype(self.dtype)
            value = value.item()
        xp = backend.get_array_module(self.data)
        out_data = xp.where(mask, xp.asarray(value, dtype=self.dtype), self.data)

        def _backward(out):      # filled positions did not depend on self
            # A mask larger than self broadcasts self, so sum over the copies.
            self._add_grad(_unbroadcast(xp.where(mask, 0, out.grad).astype(self.dtype), self.shape))

        return op_result(out_data, (self,), _backward, "masked_fill")


# ----------------------------------------------------------------- helpers
def _freed(out):
    """Stands in for a backward rule whose saved arrays were freed (see backward())."""
    raise RuntimeError("Trying to backward through the graph a second time")


def _refuse_bool(x: Tensor, op: str) -> None:
    if x.dtype.kind == "b":
        raise RuntimeError(f"{op} is not defined for bool tensors (as in PyTorch); convert first "
                           "with .long() or .float()")


def _scalar_or_tensor(value, like: Tensor) -> Tensor:
    """Wrap a Python number or array so it can meet `like` in an operation.

    A Python number takes `like`'s dtype when it is of the same kind or lower
    (x_float32 * 2 stays float32); otherwise PyTorch's default for its kind:
    a float with an int tensor is float32, an int with a bool tensor is int64.
    """
    if isinstance(value, Tensor):
        return value
    if type(value) is float and like.data.dtype.kind == "f":     # the common case: x * 0.5
        return _leaf(backend.get_array_module(like.data).asarray(value, dtype=like.dtype), False)
    if isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating)):
        kind = "b" if isinstance(value, (bool, np.bool_)) else (
            "i" if isinstance(value, (int, np.integer)) else "f")
        if {"b": 0, "i": 1, "f": 2}[kind] <= _category(like.dtype):
            dtype = like.dtype
        else:
            dtype = {"i": np.int64, "f": np.float32}[kind]
        return _leaf(backend.get_array_module(like.data).asarray(value, dtype=dtype), False)
    return Tensor(value)


def _operands(x: Tensor, other):
    """`other` as a Tensor, and both arrays in PyTorch's common dtype."""
    if not isinstance(other, Tensor):
        other = _scalar_or_tensor(other, x)
    a, b = x.data, other.data
    if a.dtype == b.dtype:     # the common case: nothing to convert
        return other, a, b
    dtype = _common_dtype((x, other))
    return other, _cast(a, dtype), _cast(b, dtype)


def _leaf(array, requires_grad: bool) -> Tensor:
    """A leaf around `array` exactly as it is. Not Tensor(array): the constructor sends
    host arrays to the *active* device, so t.to("cpu") on a GPU run would land back
    on the GPU, and detach() of a CPU tensor would copy it there."""
    out = Tensor.__new__(Tensor)
    out.data, out.grad, out._requires_grad = array, None, requires_grad
    out._parents, out._backward, out._op, out._saves = (), None, "", False
    return out


def op_result(data, parents, backward, op: str, saves: bool = True) -> Tensor:
    """Wrap an op's output; record how to differentiate it only if anyone needs that.

    `saves`: whether the backward rule reads arrays kept from the forward pass.
    Those are freed by backward() (unless retain_graph=True), as PyTorch frees
    saved tensors; an op that keeps none (add, sum, reshape) stays usable.
    """
    out = Tensor.__new__(Tensor)
    out.data, out.grad, out._op, out._saves = data, None, op, saves
    # Only floats carry gradients: an integer result (argmax, a cast) ends the graph.
    out._requires_grad = (_grad_enabled and any(p._requires_grad for p in parents)
                          and data.dtype.kind == "f")
    if out._requires_grad:
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
    """Whether an index picks elements by arrays (lists, tuples, masks), so it may repeat."""
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, (list, tuple)) or getattr(p, "ndim", 0) > 0 or
               getattr(p, "dtype", None) == np.bool_ for p in parts)


def _size_args(args) -> tuple:
    """reshape(2, 3) and reshape((2, 3)) both mean the shape (2, 3)."""
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = args[0]
    return tuple(args)


def tensor(data, requires_grad: bool = False, dtype=None) -> Tensor:
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


def _power(base, exponent) -> Tensor:
    """base ** exponent where either may be a tensor (the other may be a number)."""
    if isinstance(base, Tensor):
        exp_t, a, b = _operands(base, exponent)
        base_t = base
    else:
        base_t, b, a = _operands(exponent, base)
        exp_t = exponent
    xp = backend.get_array_module(a)
    with np.errstate(divide="ignore", invalid="ignore"):
        out_data = xp.power(a, b)

    def _backward(out):
        g, zero = out.grad, xp.zeros((), dtype=out.grad.dtype)
        with np.errstate(divide="ignore", invalid="ignore"):
            if base_t.requires_grad:    # d(a^b)/da = b a^(b-1), and 0 where b = 0
                ga = xp.where(b == 0, zero, g * b * xp.power(a, b - 1))
                base_t._add_grad(_unbroadcast(ga, base_t.shape))
            if exp_t.requires_grad:     # d(a^b)/db = a^b log a, and 0 where a = 0 and b >= 0
                gb = xp.where((a == 0) & (b >= 0), zero, g * out_data * xp.log(a))
                exp_t._add_grad(_unbroadcast(gb, exp_t.shape))

    return op_result(out_data, (base_t, exp_t), _backward, "pow")


def maximum(a, b) -> Tensor:
    """Elementwise larger value; where a == b each side gets half the gradient (as PyTorch)."""
    return _pairwise_extreme(a, b, "maximum")


def minimum(a, b) -> Tensor:
    """Elementwise smaller value; ties split the gradient in half."""
    return _pairwise_extreme(a, b, "minimum")


def _pairwise_extreme(a, b, name):
    a = a if isinstance(a, Tensor) else _scalar_or_tensor(a, b)
    b, x, y = _operands(a, b)
    xp = backend.get_array_module(x)
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
    xp = backend.get_array_module(x.data)
    keep = xp.tril if name == "tril" else xp.triu

    def _backward(out):      # the kept triangle passes its gradient, the rest was zeroed
        x._add_grad(keep(out.grad, diagonal))

    return op_result(keep(x.data, diagonal), (x,), _backward, name, saves=False)


def tril(x: Tensor, diagonal: int = 0) -> Tensor:
    return _triangle(x, diagonal, "tril")


def triu(x: Tensor, diagonal: int = 0) -> Tensor:
    return _triangle(x, diagonal, "triu")


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
    xp = backend.get_array_module(x.data)
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
        return values_indices(x.reshape(()), _leaf(backend.xp.zeros((), np.int64), False))
    if x.shape[d] == 0:
        raise IndexError(f"{name}(): expected reduction dim {d} to have non-zero size")
    xp = backend.get_array_module(x.data)
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
    return values_indices(values, _leaf(indices, False))


def _arg_extreme(x: Tensor, dim, keepdim, axis, keepdims, name):
    dim = _pick(name, "dim", dim, axis)
    keep = bool(_pick(name, "keepdim", keepdim, keepdims, False))
    _refuse_bool(x, name)
    xp = backend.get_array_module(x.data)
    pick = xp.argmax if name == "argmax" else xp.argmin
    if dim is None:
        if x.numel() == 0:
            raise RuntimeError(f"{name}(): the tensor is empty; there is no index to return")
        out = pick(x.data.reshape(-1))
        return _leaf(xp.asarray(out, dtype=np.int64).reshape((1,) * x.ndim if keep else ()), False)
    d = _normalize_dim(dim, x.ndim)
    if x.ndim == 0:
        return _leaf(xp.zeros((), np.int64), False)
    if x.shape[d] == 0:
        raise IndexError(f"{name}(): expected reduction dim {d} to have non-zero size")
    return _leaf(pick(x.data, axis=d, keepdims=keep).astype(np.int64), False)


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
    xp = backend.get_array_module(x.data)
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
    xp = backend.get_array_module(x.data)
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
    xp = backend.get_array_module(x.data)
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
    xp = backend.get_array_module(x.data)
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
    xp = backend.get_array_module(first.data)
    dtype = _common_dtype(tensors)
    try:
        out_data = xp.concatenate([_cast(t.data, dtype) for t in tensors], axis=d)
    except ValueError:
        shapes = [t.shape for t in tensors]
        raise ValueError(f"cat along dim {dim}: shapes {shapes} must agree on every "
                         "other dim") from None
    bounds = np.cumsum([t.shape[d] for t in tensors])[:-1]

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


def where(condition, input, other) -> Tensor:
    """Elementwise choice: input where condition is True, else other (all broadcast together)."""
    condition = condition.data if isinstance(condition, Tensor) else _as_array(condition)
    if condition.dtype.kind != "b":
        raise RuntimeError(f"where expected condition to be a boolean tensor, but got a tensor "
                           f"with dtype {condition.dtype}; use (c != 0) or c.bool()")
    a = input if isinstance(input, Tensor) else (
        _scalar_or_tensor(input, other) if isinstance(other, Tensor) else Tensor(input))
    b, x, y = _operands(a, other)
    xp = backend.get_array_module(x)
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


def gather(x: Tensor, dim: int, index) -> Tensor:
    """out[i][j] = x[index[i][j]][j] for dim 0 (and likewise for any dim), as torch.gather."""
    idx = index.data if isinstance(index, Tensor) else _as_array(index)
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
    xp = backend.get_array_module(x.data)
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
    xp = backend.get_array_module(tensors[0].data)
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


# ------------------------------------------------------------ creation functions
# PyTorch's defaults: float32 for random and float-filled tensors, int64 for integer ranges.

def _make(array, dtype, requires_grad) -> Tensor:
    return Tensor(array if dtype is None else array.astype(np.dtype(dtype)),
                  requires_grad=requires_grad)


def zeros(*size, dtype=None, requires_grad: bool = False) -> Tensor:
    return _make(np.zeros(_size_args(size), np.float32), dtype, requires_grad)


def ones(*size, dtype=None, requires_grad: bool = False) -> Tensor:
    return _make(np.ones(_size_args(size), np.float32), dtype, requires_grad)


def full(size, fill_value, dtype=None, requires_grad: bool = False) -> Tensor:
    """A tensor of `size` filled with `fill_value` (its dtype follows the value, as PyTorch)."""
    kind = np.bool_ if isinstance(fill_value, bool) else (
        np.int64 if isinstance(fill_value, int) else np.float32)
    return _make(np.full(_size_args((size,)), fill_value, dtype=kind), dtype, requires_grad)


def eye(n: int, m: int | None = None, dtype=None, requires_grad: bool = False) -> Tensor:
    return _make(np.eye(n, m, dtype=np.float32), dtype, requires_grad)


def rand(*size, dtype=None, requires_grad: bool = False) -> Tensor:
    """Uniform numbers in [0, 1), drawn from the generator `manual_seed` resets."""
    return _make(backend.rng().random(_size_args(size), dtype=np.float32), dtype, requires_grad)


def randn(*size, dtype=None, requires_grad: bool = False) -> Tensor:
    """Standard normal numbers, drawn from the generator `manual_seed` resets."""
    return _make(backend.rng().standard_normal(_size_args(size), dtype=np.float32), dtype,
                 requires_grad)


def arange(start, end=None, step=1, dtype=None, requires_grad: bool = False) -> Tensor:
    """start, start + step, ... up to end (excluded); int64 when all three are ints."""
    if end is None:
        start, end = 0, start
    if step == 0:
        raise RuntimeError("arange: step must be nonzero")
    ints = all(isinstance(v, int) for v in (start, end, step))
    count = max(math.ceil((end - start) / step), 0)
    values = start + step * np.arange(count, dtype=np.int64 if ints else np.float64)
    return _make(values.astype(np.int64 if ints else np.float32), dtype, requires_grad)


def zeros_like(x: Tensor, dtype=None, requires_grad: bool = False) -> Tensor:
    return zeros(x.shape, dtype=x.dtype if dtype is None else dtype, requires_grad=requires_grad)


def ones_like(x: Tensor, dtype=None, requires_grad: bool = False) -> Tensor:
    return ones(x.shape, dtype=x.dtype if dtype is None else dtype, requires_grad=requires_grad)


def full_like(x: Tensor, fill_value, dtype=None, requires_grad: bool = False) -> Tensor:
    return full(x.shape, fill_value, dtype=x.dtype if dtype is None else dtype,
                requires_grad=requires_grad)


def rand_like(x: Tensor, dtype=None, requires_grad: bool = False) -> Tensor:
    dtype = np.dtype(x.dtype if dtype is None else dtype)
    if dtype.kind != "f":
        raise RuntimeError(f"rand_like: random numbers need a floating point dtype, got {dtype}")
    return rand(x.shape, dtype=dtype, requires_grad=requires_grad)


def randn_like(x: Tensor, dtype=None, requires_grad: bool = False) -> Tensor:
    dtype = np.dtype(x.dtype if dtype is None else dtype)
    if dtype.kind != "f":
        raise RuntimeError(f"randn_like: random numbers need a floating point dtype, got {dtype}")
    return randn(x.shape, dtype=dtype, requires_grad=requires_grad)


# PyTorch spells many methods also as functions: torch.sum(x, 0) is x.sum(0).
_METHODS_AS_FUNCTIONS = (
    "sum", "mean", "max", "min", "amax", "amin", "argmax", "argmin", "var", "std", "exp", "log",
    "sqrt", "tanh", "sigmoid", "relu", "abs", "pow", "add", "sub", "mul", "div", "matmul",
    "transpose", "permute", "reshape", "flatten", "squeeze", "unsqueeze", "masked_fill", "clone",
    "isnan", "isfinite", "any", "all", "numel",
)


def functions_from_methods() -> dict:
    """{name: function} with function(x, *args) = x.name(*args), for the names above."""
    def make(name):
        def function(input, *args, **kwargs):
            return getattr(input, name)(*args, **kwargs)
        function.__name__ = function.__qualname__ = name
        function.__doc__ = f"{name}(x, ...) is x.{name}(...), as torch.{name}."
        return function

    return {name: make(name) for name in _METHODS_AS_FUNCTIONS}

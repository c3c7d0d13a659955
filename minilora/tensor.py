"""Tensor: an array that remembers how it was made, so it can be differentiated.

Each operation computes its result and, right beside it, a `_backward`
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

This file is the core, as in micrograd: the Tensor class (data, grad, the
graph), `op_result`, `backward()` and its topological sort, arithmetic, matmul
and the elementwise maths (exp, log, tanh, relu, ...). Tensor's other methods
are written beside their maths in files of their own, read in this order:

    tensor_rules.py        dtype promotion, dim arguments, shape errors (no autograd)
    tensor_convert.py      to NumPy and Python numbers, .to(device), .float(), detach, clone
    tensor_compare.py      ==, <, ~, &, any/all, where, masked_fill, clamp, maximum, tril
    tensor_reductions.py   sum, mean, var/std, max/min/argmax, logsumexp, cumsum, prod, einsum
    tensor_shape.py        reshape/view, permute/transpose, indexing, cat/stack/split, gather
    tensor_creation.py     tensor, zeros, ones, full, eye, rand, randn, arange, *_like

Each of those files writes its methods in one class (`ReductionMethods`, ...)
and ends with `add_methods(...)`, which copies them onto Tensor: Tensor stays
one class, and `x.sum(dim)` is found exactly as if it were written here. Every
public function is importable from here too (`from minilora.tensor import cat`).
"""
from __future__ import annotations

import contextlib
import types
from collections import Counter

import numpy as np

from minilora import backend
from minilora.tensor_rules import (
    _as_array,
    _broadcast_error,
    _cast,
    _category,
    _common_dtype,
    _floating,
    _Size,
)

_grad_enabled = True

# Called with each node whose backward rule is about to run, but only while
# count_backward_work() counts; None otherwise, so backward() pays nothing.
_on_rule = None


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

    While counting, backward() calls a hook before each rule and Tensor._add_grad
    is wrapped to count each gradient; outside, neither exists, so training pays
    nothing for the bookkeeping.
    """
    global _on_rule
    counts, running = Counter(), [""]      # running: the op whose rule is running now
    outer_rule, plain_add_grad = _on_rule, Tensor._add_grad

    def on_rule(node):
        counts["rules"] += 1
        counts["rules:" + node._op] += 1
        running[0] = node._op
        if outer_rule is not None:         # an enclosing count_backward_work() counts too
            outer_rule(node)

    def counting_add_grad(self, g):
        counts["grads"] += 1
        counts["grads:" + running[0]] += 1
        plain_add_grad(self, g)

    _on_rule, Tensor._add_grad = on_rule, counting_add_grad
    try:
        yield counts
    finally:
        _on_rule, Tensor._add_grad = outer_rule, plain_add_grad


def manual_seed(seed: int) -> None:
    """Seed initialisation, dropout and sampling, so a run can be reproduced."""
    backend.manual_seed(seed)


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


class Tensor:
    """An n-dimensional array with reverse-mode automatic differentiation.

    The class body holds the core; the op families in tensor_*.py add the rest
    of its methods (x.sum, x.reshape, x == y, ...) when the package is imported.
    """

    __array_priority__ = 100  # numpy_array * tensor calls Tensor.__rmul__, not NumPy's
    __hash__ = object.__hash__  # == compares elementwise, so hash by identity (dict keys, sets)

    def __init__(self, data, requires_grad: bool = False, dtype=None, device=None):
        # device None: where set_device says new tensors go (a GPU array stays on the GPU)
        self.data = _as_array(data.data if isinstance(data, Tensor) else data, dtype, device)
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
        return backend.device_of(self.data)

    @property
    def xp(self):
        """The array library holding this tensor's data: numpy, or cupy on a GPU. Ops compute
        with it, so their results stay on their inputs' device (see backend.py)."""
        return backend.array_namespace(self.data)

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({backend.to_numpy(self.data)!r}{grad})"

    def _add_grad(self, g) -> None:
        """Accumulate a gradient. Never in place: `g` may be shared with another input."""
        if g.dtype != self.data.dtype:          # a float32 input of a float64 op gets float32
            g = g.astype(self.data.dtype)
        if g.shape != self.data.shape:
            raise RuntimeError(f"internal error in a backward rule (the traceback names it): a "
                               f"gradient of shape {tuple(g.shape)} for a tensor of shape {self.shape}")
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
            grad = self.xp.ones_like(self.data)
        else:
            grad = _as_array(grad.data if isinstance(grad, Tensor) else grad, self.dtype, self.device)
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
        on_rule = _on_rule                  # None unless count_backward_work() is counting
        for node in reversed(order):
            if node._backward is None:      # a leaf: its gradient stays for the optimizer
                continue
            if node.grad is not None:
                if on_rule is not None:
                    on_rule(node)
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
                self._add_grad(self.xp.zeros_like(x))
            else:                # d(x^n)/dx = n x^(n-1); x^-0.5 as 1/sqrt(x), as PyTorch computes it
                power = 1 / self.xp.sqrt(x) if exponent == 0.5 else x ** (exponent - 1)
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
            if self.requires_grad:   # dL/dA = dL/dC @ B^T
                ga = _unbroadcast(g @ b2.swapaxes(-1, -2), a2.shape)
                self._add_grad(ga.reshape(a.shape))
            if other.requires_grad:  # dL/dB = A^T @ dL/dC
                gb = _unbroadcast(a2.swapaxes(-1, -2) @ g, b2.shape)
                other._add_grad(gb.reshape(b.shape))

        return op_result(out_data, (self, other), _backward, "matmul")

    def __rmatmul__(self, other):
        return _scalar_or_tensor(other, self) @ self

    # ------------------------------------------------------ elementwise maths
    def exp(self):
        out_data = self.xp.exp(_floating(self.data))

        def _backward(out):      # d(e^x)/dx = e^x
            self._add_grad(out.grad * out_data)

        return op_result(out_data, (self,), _backward, "exp")

    def log(self):
        x = _floating(self.data)
        with np.errstate(divide="ignore", invalid="ignore"):
            out_data = self.xp.log(x)

        def _backward(out):      # d(log x)/dx = 1/x
            with np.errstate(divide="ignore"):
                self._add_grad(out.grad / x)

        return op_result(out_data, (self,), _backward, "log")

    def tanh(self):
        out_data = self.xp.tanh(_floating(self.data))

        def _backward(out):      # d(tanh x)/dx = 1 - tanh^2 x
            self._add_grad(out.grad * (1 - out_data * out_data))

        return op_result(out_data, (self,), _backward, "tanh")

    def relu(self):
        _refuse_bool(self, "relu")
        xp = self.xp
        out_data = xp.maximum(self.data, 0)

        def _backward(out):      # passes the gradient where x > 0 (0 at x = 0; NaN passes, as PyTorch)
            self._add_grad(xp.where(out_data <= 0, xp.zeros((), dtype=out.grad.dtype), out.grad))

        return op_result(out_data, (self,), _backward, "relu")

    def sqrt(self):
        x = _floating(self.data)
        with np.errstate(invalid="ignore"):
            out_data = self.xp.sqrt(x)

        def _backward(out):      # d(sqrt x)/dx = 1 / (2 sqrt x)
            with np.errstate(divide="ignore"):
                self._add_grad(out.grad / (2 * out_data))

        return op_result(out_data, (self,), _backward, "sqrt")

    def sigmoid(self):
        x = _floating(self.data)
        xp = self.xp
        e = xp.exp(-xp.abs(x))               # never overflows: e in (0, 1]
        out_data = xp.where(x >= 0, 1 / (1 + e), e / (1 + e))

        def _backward(out):      # d(sigma)/dx = sigma (1 - sigma)
            self._add_grad(out.grad * out_data * (1 - out_data))

        return op_result(out_data, (self,), _backward, "sigmoid")

    def abs(self):
        _refuse_bool(self, "abs")
        xp = self.xp

        def _backward(out):      # d|x|/dx = sign(x): 0 at x = 0, and 0 at NaN as PyTorch's sgn
            sign = (self.data > 0).astype(out.grad.dtype) - (self.data < 0)
            self._add_grad(out.grad * sign)

        return op_result(xp.abs(self.data), (self,), _backward, "abs")

    def __abs__(self):
        return self.abs()


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
        return op_result(like.xp.asarray(value, dtype=like.dtype), (), None, "scalar")
    if isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating)):
        kind = "b" if isinstance(value, (bool, np.bool_)) else (
            "i" if isinstance(value, (int, np.integer)) else "f")
        if {"b": 0, "i": 1, "f": 2}[kind] <= _category(like.dtype):
            dtype = like.dtype
        else:
            dtype = {"i": np.int64, "f": np.float32}[kind]
        return op_result(like.xp.asarray(value, dtype=dtype), (), None, "scalar")
    return Tensor(value, device=like.device)      # an array or list meets `like` on its device


def _operands(x: Tensor, other):
    """`other` as a Tensor, and both arrays in PyTorch's common dtype."""
    if not isinstance(other, Tensor):
        other = _scalar_or_tensor(other, x)
    a, b = x.data, other.data
    if a.dtype == b.dtype:     # the common case: nothing to convert
        return other, a, b
    dtype = _common_dtype((x, other))
    return other, _cast(a, dtype), _cast(b, dtype)


def op_result(data, parents, backward, op: str, saves: bool = True) -> Tensor:
    """Wrap an op's output, on the device it was computed on; record how to
    differentiate it only if anyone needs that.

    An op no gradient flows through (a comparison, argmax, detach) passes no
    parents and no backward rule: `op_result(a == b, (), None, "eq")`.
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


def _power(base, exponent) -> Tensor:
    """base ** exponent where either may be a tensor (the other may be a number)."""
    if isinstance(base, Tensor):
        exp_t, a, b = _operands(base, exponent)
        base_t = base
    else:
        base_t, b, a = _operands(exponent, base)
        exp_t = exponent
    xp = base_t.xp
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


def add_methods(methods: type) -> None:
    """Give Tensor the functions (and properties) written in class `methods`.

    The families beside this file (tensor_convert.py, tensor_compare.py,
    tensor_reductions.py, tensor_shape.py) write their methods in a class of their own, next to the
    functions they call, and end with add_methods(...). The methods land on
    Tensor itself, so calling one costs exactly what it would if written above.
    """
    for name, value in vars(methods).items():
        if isinstance(value, (types.FunctionType, property)):
            if name in vars(Tensor):         # two files defining one method: say so, never overwrite
                raise RuntimeError(f"Tensor.{name} is defined twice (again in {methods.__name__})")
            setattr(Tensor, name, value)


# The op families, each adding its methods to Tensor as it is imported. They are
# imported here, at the end, because they build on everything above.
# Their public functions are imported here too, so `from minilora.tensor import cat` works.
from minilora import tensor_convert  # noqa: E402, F401
from minilora.tensor_compare import (  # noqa: E402, F401
    clamp, clip, maximum, minimum, tril, triu, where,
)
from minilora.tensor_reductions import (  # noqa: E402, F401
    cumsum, einsum, logsumexp, prod, values_indices,
)
from minilora.tensor_shape import (  # noqa: E402, F401
    cat, chunk, concatenate, gather, split, stack,
)
from minilora.tensor_creation import (  # noqa: E402, F401
    arange, eye, full, full_like, ones, ones_like, rand, rand_like, randn, randn_like, tensor,
    zeros, zeros_like,
)


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

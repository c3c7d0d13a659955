"""Neural-network functions with hand-written (fused) backward rules.

Each of these could be built from the primitives in tensor.py, and the tests
check that they equal that composition. Writing the forward and backward maths
out in one place is faster and uses less memory: one closure instead of a chain
of ten small ones, each holding its own temporary arrays.
"""
from __future__ import annotations

import math

import numpy as np

from minilora import backend
from minilora.tensor import Tensor, op_result


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = x @ W^T + b, with W of shape (out, in) as in PyTorch.

    x may have any leading dimensions (batch, time, ...). They are folded into
    one, so both the forward product and the weight gradient are a single
    large matrix product rather than a loop of small ones.
    """
    in_features = weight.shape[1]
    if x.shape[-1] != in_features:
        raise ValueError(
            f"linear: input has {x.shape[-1]} features (shape {x.shape}) but the weight "
            f"{weight.shape} expects {in_features}; the last dimension of the input must "
            "equal the layer's in_features."
        )
    lead = x.shape[:-1]
    x2 = x.data.reshape(-1, in_features)                 # [N, in]
    y2 = x2 @ weight.data.T                              # [N, in] @ [in, out] -> [N, out]
    if bias is not None:
        y2 += bias.data                                  # in place: y2 is a fresh array
    parents = (x, weight) if bias is None else (x, weight, bias)

    def _backward(out):
        g2 = out.grad.reshape(-1, weight.shape[0])       # [N, out]
        if x.requires_grad:                              # dx = g W      [N, out] @ [out, in]
            x._add_grad((g2 @ weight.data).reshape(x.shape))
        if weight.requires_grad:                         # dW = g^T x    [out, N] @ [N, in]
            weight._add_grad(g2.T @ x2)
        if bias is not None and bias.requires_grad:      # db = sum of g over all rows, as 1^T g
            xp = backend.get_array_module(g2)
            bias._add_grad(xp.ones(g2.shape[0], dtype=g2.dtype) @ g2)

    return op_result(y2.reshape(*lead, weight.shape[0]), parents, _backward, "linear")


def embedding(weight: Tensor, ids) -> Tensor:
    """Rows of `weight` picked by integer `ids`: (...,) ints -> (..., dim).

    The gradient adds each output row back into the row it came from; a token
    that appears twice gets both contributions (scatter-add).
    """
    ids = ids.data if isinstance(ids, Tensor) else backend.xp.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"embedding: ids must be integers, got dtype {ids.dtype}")
    num = weight.shape[0]
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= num):
        bad = int(ids.max()) if int(ids.max()) >= num else int(ids.min())
        raise IndexError(f"embedding: id {bad} is outside the table of {num} rows "
                         f"(valid ids are 0..{num - 1}); check the tokenizer's vocab_size.")
    out_data = weight.data[ids]                          # [...] -> [..., dim]

    def _backward(out):
        xp = backend.get_array_module(out.grad)
        g = xp.zeros_like(weight.data)
        backend.scatter_add(g, ids.reshape(-1), out.grad.reshape(-1, weight.shape[1]))
        weight._add_grad(g)

    return op_result(out_data, (weight,), _backward, "embedding")


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)) along `axis`, shifted by the max so exp cannot overflow."""
    xp = backend.get_array_module(x.data)
    e = xp.exp(x.data - x.data.max(axis=axis, keepdims=True))
    y = e / e.sum(axis=axis, keepdims=True)

    def _backward(out):
        # Jacobian-vector product of softmax: dx = y * (g - sum(g * y))
        g = out.grad
        x._add_grad(y * (g - (g * y).sum(axis=axis, keepdims=True)))

    return op_result(y, (x,), _backward, "softmax")


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """x - log(sum(exp(x))) along `axis`, computed stably."""
    xp = backend.get_array_module(x.data)
    shifted = x.data - x.data.max(axis=axis, keepdims=True)
    y = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))

    def _backward(out):
        # dx = g - softmax(x) * sum(g)
        g = out.grad
        x._add_grad(g - xp.exp(y) * g.sum(axis=axis, keepdims=True))

    return op_result(y, (x,), _backward, "log_softmax")


def cross_entropy(logits: Tensor, targets, ignore_index: int = -100) -> Tensor:
    """Mean negative log-likelihood of integer `targets` under softmax(`logits`).

    logits (..., C) float, targets (...) int; positions whose target equals
    `ignore_index` do not count (PyTorch's convention, default -100).
    The gradient is the classic (softmax - one_hot) / N.
    """
    xp = backend.get_array_module(logits.data)
    # Targets are checked where they are: host data (a batch from data.make_batch)
    # is checked before it is copied over, so a GPU run does not stop to wait here.
    targets = targets.data if isinstance(targets, Tensor) else targets
    targets = targets if hasattr(targets, "dtype") else np.asarray(targets)
    num_classes = logits.shape[-1]
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"cross_entropy: targets have shape {tuple(targets.shape)} but logits "
                         f"{logits.shape} need targets of shape {logits.shape[:-1]} "
                         "(one class index per row of logits).")
    if targets.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: targets must be integer class indices, got {targets.dtype}")
    t = targets.reshape(-1)                              # [N]
    valid = t != ignore_index
    bad = valid & ((t < 0) | (t >= num_classes))
    if bool(bad.any()):
        value = int(t[bad][0])
        raise IndexError(f"cross_entropy: target {value} is outside the {num_classes} classes "
                         f"(valid targets are 0..{num_classes - 1}, or ignore_index={ignore_index}).")
    count = int(valid.sum())
    if count == 0:
        raise ValueError(f"cross_entropy: every target equals ignore_index={ignore_index}, "
                         "so there is nothing to average; check the batch's targets.")
    t, valid = xp.asarray(t), xp.asarray(valid)         # onto the logits' device
    x = logits.data.reshape(-1, num_classes)             # [N, C]
    t_safe = xp.where(valid, t, 0)
    rows = xp.arange(x.shape[0])
    shifted = x - x.max(axis=1, keepdims=True)           # stable for large logits
    log_z = xp.log(xp.exp(shifted).sum(axis=1))          # [N]
    nll = log_z - shifted[rows, t_safe]                  # -log p(target)
    loss = (nll * valid).sum() / count

    def _backward(out):
        probs = xp.exp(shifted - log_z[:, None])         # softmax, [N, C]
        probs[rows, t_safe] -= 1                          # softmax - one_hot
        probs *= (valid * (out.grad / count))[:, None].astype(probs.dtype)
        logits._add_grad(probs.reshape(logits.shape))

    return op_result(xp.asarray(loss, dtype=x.dtype), (logits,), _backward, "cross_entropy")


def causal_attention(q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0,
                     training: bool = False) -> Tensor:
    """softmax(q k^T / sqrt(D), future masked) v, for q, k, v of shape (B, H, T, D).

    The composition (matmul, scale, masked_fill, softmax, matmul) would keep five
    (B, H, T, T) arrays alive for backward; this keeps one, the attention
    weights P, and writes the chain rule for the whole block out below.
    """
    xp = backend.get_array_module(q.data)
    B, H, T, D = q.shape
    scale = 1.0 / math.sqrt(D)
    qs = q.data * scale                                 # scale q, not the (larger when T > D) scores
    s = qs @ xp.swapaxes(k.data, -1, -2)                # [B, H, T, D] @ [B, H, D, T] -> [B, H, T, T]
    s += _future_bias(T, s.dtype, xp)                   # -inf above the diagonal: no peeking ahead
    s -= s.max(axis=-1, keepdims=True)
    p = xp.exp(s, out=s)
    ones_t = xp.ones(T, dtype=p.dtype)                  # row sums as p @ 1: BLAS beats sum(axis=-1)
    p /= (p @ ones_t)[..., None]                        # P: each row sums to 1
    if training and dropout_p > 0.0:
        keep = (backend.random_uniform(p.shape) >= dropout_p).astype(p.dtype) / (1.0 - dropout_p)
    else:
        keep = None
    p_used = p if keep is None else p * keep
    y = p_used @ v.data                                 # [B, H, T, T] @ [B, H, T, D] -> [B, H, T, D]

    def _backward(out):
        g = out.grad                                    # [B, H, T, D]
        if v.requires_grad:                             # dV = P^T g
            v._add_grad(xp.swapaxes(p_used, -1, -2) @ g)
        if not (q.requires_grad or k.requires_grad):
            return
        ds = g @ xp.swapaxes(v.data, -1, -2)            # dP = g V^T, [B, H, T, T]
        if keep is not None:
            ds *= keep
        ds -= ((ds * p) @ ones_t)[..., None]            # softmax backward, in place:
        ds *= p                                         # dS = P * (dP - sum(dP * P))
        if q.requires_grad:                             # dQ = dS K * scale
            dq = ds @ k.data
            dq *= scale
            q._add_grad(dq)
        if k.requires_grad:                             # dK = dS^T (Q * scale)
            k._add_grad(xp.swapaxes(ds, -1, -2) @ qs)

    return op_result(y, (q, k, v), _backward, "causal_attention")


_bias_cache: dict = {}


def _future_bias(T: int, dtype, xp):
    """(T, T): 0 on and below the diagonal, -inf above it (the future)."""
    key = (T, xp.dtype(dtype).str, xp.__name__)
    if key not in _bias_cache:
        mask = xp.triu(xp.ones((T, T), dtype=bool), k=1)
        _bias_cache[key] = xp.where(mask, -xp.inf, 0.0).astype(dtype)
    return _bias_cache[key]


_GELU_C = math.sqrt(2.0 / math.pi)


def gelu(x: Tensor) -> Tensor:
    """GELU with GPT-2's tanh approximation: 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3).

    Computed as x * sigmoid(2u), the same function (1 + tanh(u) = 2 sigmoid(2u)),
    because exp is about twice as fast as tanh in NumPy.
    """
    xp = backend.get_array_module(x.data)
    a = x.data
    a2 = a * a
    # s = sigmoid(2u) = 1 / (1 + exp(-2u)), built in place to avoid temporary arrays.
    # asarray: for a 0-d input NumPy returns a scalar, which has no memory to write into.
    s = xp.asarray(a2 * (-2 * _GELU_C * 0.044715))
    s -= 2 * _GELU_C
    s *= a                                              # -2u
    with np.errstate(over="ignore"):                    # x < -10.5: exp -> inf, so s -> 0, the right limit
        xp.exp(s, out=s)
    s += 1.0
    xp.reciprocal(s, out=s)                             # s = sigmoid(2u)
    y = a * s

    def _backward(out):
        # d/dx [x s] = s + x s' with s' = 2 s (1 - s) du/dx and du/dx = c (1 + 3 * 0.044715 x^2)
        d = a2 * (2 * 3 * 0.044715 * _GELU_C)
        d += 2 * _GELU_C
        d *= a
        d *= 1.0 - s
        d += 1.0
        d *= s
        d *= out.grad
        x._add_grad(d)

    return op_result(y, (x,), _backward, "gelu")


def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5) -> Tensor:
    """Normalise the last axis to mean 0, variance 1 (biased variance), then scale and shift.

    Sums over rows and columns are written as products with a vector of ones:
    BLAS does those several times faster than NumPy's sum along a short axis.
    """
    xp = backend.get_array_module(x.data)
    D = x.shape[-1]
    inv_d = 1.0 / D
    x2 = x.data.reshape(-1, D)                          # [N, D], one row per position
    ones_d = xp.ones(D, dtype=x2.dtype)
    xc = x2 - (x2 @ ones_d * inv_d)[:, None]            # subtract each row's mean
    var = xp.einsum("ij,ij->i", xc, xc) * inv_d         # [N], biased variance of each row
    rstd = (1.0 / xp.sqrt(var + eps))[:, None]          # [N, 1]
    xhat = xc
    xhat *= rstd                                        # [N, D], mean 0, variance 1
    y = xhat if weight is None else xhat * weight.data
    if bias is not None:
        y = y + bias.data
    parents = tuple(p for p in (x, weight, bias) if p is not None)

    def _backward(out):
        g = out.grad.reshape(-1, D)                     # [N, D]
        ones_n = xp.ones(g.shape[0], dtype=g.dtype)
        if weight is not None and weight.requires_grad:
            weight._add_grad(ones_n @ (g * xhat))      # sum over rows of g * xhat
        if bias is not None and bias.requires_grad:
            bias._add_grad(ones_n @ g)
        if x.requires_grad:
            # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), means along each row
            dxhat = g if weight is None else g * weight.data
            dx = xhat * (xp.einsum("ij,ij->i", dxhat, xhat) * inv_d)[:, None]
            xp.subtract(dxhat, dx, out=dx)
            dx -= (dxhat @ ones_d * inv_d)[:, None]
            dx *= rstd
            x._add_grad(dx.reshape(x.shape))

    y = y.reshape(x.shape)
    return op_result(y, parents, _backward, "layer_norm")


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p) (inverted dropout).

    At evaluation time (training=False) or with p=0 it is the identity.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p={p} must be in [0, 1)")
    if not training or p == 0.0:
        return x
    keep = backend.random_uniform(x.shape) >= p
    return x * (keep.astype(x.dtype) / (1.0 - p))

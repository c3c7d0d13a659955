"""Shared test utilities: a finite-difference gradient checker, comparisons, markers.

Everything here is device-agnostic: inputs are built as NumPy arrays on the host
and handed to `Tensor`, which moves them to the active device (CuPy when the
suite runs with MINILORA_DEVICE=cuda); results come back through `.numpy()`.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import minilora as ml
from minilora import backend

try:  # torch is a dev dependency; the parity tests skip without it
    import torch
except ImportError:  # pragma: no cover - exercised only where torch is missing
    torch = None

requires_torch = pytest.mark.skipif(
    torch is None, reason="PyTorch is not installed: pip install 'minilora[dev]' to run parity tests"
)


def _gpu_missing_reason() -> str | None:
    """Why the GPU tests cannot run here, or None when CuPy and a GPU are present."""
    if importlib.util.find_spec("cupy") is None:
        return "CuPy is not installed (pip install 'minilora[gpu]' on a machine with an NVIDIA GPU)"
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # noqa: BLE001 - any CUDA failure means "no usable GPU"
        return f"CuPy is installed but no usable NVIDIA GPU was found ({type(err).__name__}: {err})"
    if count < 1:
        return "CuPy is installed but this machine has no NVIDIA GPU"
    return None


GPU_MISSING = _gpu_missing_reason()
requires_gpu = pytest.mark.skipif(GPU_MISSING is not None, reason=f"GPU test skipped: {GPU_MISSING}")

# Tolerances.
#
# FD_RTOL: a central difference (f(x+h) - f(x-h)) / 2h has truncation error
# h^2 f'''/6 ~ 1e-12 and rounding error ~ eps64 |f| / h ~ 1e-16 * |f| / 1e-6
# = 1e-10 |f| in float64. Our losses are O(1..100), so the numerical gradient
# is accurate to ~1e-8 relative; 1e-6 leaves two orders of margin for that,
# while a wrong rule (a missing factor, a dropped broadcast copy, a sign)
# gives an error of order 1.
FD_STEP = 1e-6
FD_RTOL = 1e-6
# PARITY_RTOL: PyTorch and minilora compute the same float64 formulas, possibly
# summing in another order, so they agree to ~1e-15 relative; the contract is 1e-6.
PARITY_RTOL = 1e-6


def rel_err(actual, expected, tiny: float = 1e-12) -> float:
    """Norm-wise relative error ||actual - expected||_2 / max(||expected||_2, tiny).

    The 2-norm is taken over all elements (the Frobenius norm of the flattened
    array). It is robust where an elementwise relative error is not: an element
    that happens to be 1e-17 instead of 0 does not blow it up.
    """
    actual = np.asarray(to_np(actual), dtype=np.float64)
    expected = np.asarray(to_np(expected), dtype=np.float64)
    assert actual.shape == expected.shape, f"shape {actual.shape} != expected {expected.shape}"
    assert np.all(np.isfinite(actual)), f"non-finite values in {actual}"
    return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), tiny))


def assert_close(actual, expected, rtol: float = PARITY_RTOL, what: str = "") -> None:
    err = rel_err(actual, expected)
    assert err <= rtol, f"{what}: norm-wise relative error {err:.3e} > {rtol:.0e}"


def to_np(x):
    """Host NumPy copy of a Tensor, a NumPy/CuPy array, a torch tensor or a number."""
    if isinstance(x, ml.Tensor):
        return x.numpy()
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return backend.to_numpy(x)


def values(rng: np.random.Generator, shape, kind: str = "any", dtype=np.float64) -> np.ndarray:
    """Host test data of a given kind, chosen to keep away from non-differentiable points.

    any      standard normal
    pos      uniform [0.5, 2]            (log, sqrt, powers, bases of a ** b)
    away0    +-uniform [0.5, 2]          (divisors, relu: no kink within a step)
    distinct a shuffled grid 0.1 apart   (max: no ties within a step)
    """
    shape = tuple(shape)
    if kind == "any":
        out = rng.standard_normal(shape)
    elif kind == "pos":
        out = rng.uniform(0.5, 2.0, shape)
    elif kind == "away0":
        out = rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
    elif kind == "distinct":
        n = int(np.prod(shape, dtype=np.int64))
        out = (rng.permutation(n) * 0.1 - 0.05 * n + rng.uniform(0, 0.01)).reshape(shape)
    else:
        raise ValueError(kind)
    return np.asarray(out, dtype=dtype)


def numerical_grads(fn, inputs, weights, wrt, step: float = FD_STEP):
    """Central differences of L = sum(fn(*inputs) * weights) for each input index in `wrt`."""
    def loss(arrays):
        with ml.no_grad():
            out = fn(*[ml.Tensor(a) for a in arrays])
        return float(np.sum(out.numpy() * weights))

    arrays = [np.array(a, dtype=np.float64, copy=True) for a in inputs]
    grads = []
    for i in wrt:
        g = np.zeros_like(arrays[i])
        flat, gflat = arrays[i].reshape(-1), g.reshape(-1)   # views
        for j in range(flat.size):
            old = flat[j]
            flat[j] = old + step
            up = loss(arrays)
            flat[j] = old - step
            down = loss(arrays)
            flat[j] = old
            gflat[j] = (up - down) / (2 * step)
        grads.append(g)
    return grads


def check_grads(fn, *inputs, wrt=None, seed: int = 0, rtol: float = FD_RTOL) -> None:
    """Assert autograd gradients of fn equal central finite differences (float64).

    fn takes Tensors and returns a Tensor of any shape; the scalar checked is
    L = sum(fn(...) * W) with a fixed random W, so that every output element
    carries a different weight (an all-ones W would hide errors that cancel).
    W is drawn from [0.5, 1.5], not signed: the gradient of an input broadcast
    over n outputs is a sum of n weights, and signed ones can cancel to 1e-4,
    below the finite differences' own noise (eps |L| / step ~ 1e-10 |L|).
    `wrt` lists the indices of the inputs to differentiate (default: all).
    """
    inputs = [np.asarray(a, dtype=np.float64) for a in inputs]
    wrt = list(range(len(inputs))) if wrt is None else list(wrt)
    tensors = [ml.Tensor(a, requires_grad=(i in wrt)) for i, a in enumerate(inputs)]
    out = fn(*tensors)
    assert out.dtype == np.float64, f"float64 inputs gave a {out.dtype} output"
    weights = np.random.default_rng([seed, 0x5EED]).uniform(0.5, 1.5, out.shape)
    out.backward(weights)
    expected = numerical_grads(fn, inputs, weights, wrt)
    for i, g_num in zip(wrt, expected):
        g = tensors[i].grad
        assert g is not None, f"input {i} got no gradient"
        assert tuple(g.shape) == inputs[i].shape, f"input {i}: grad shape {g.shape} != {inputs[i].shape}"
        assert g.dtype == np.float64, f"input {i}: grad dtype {g.dtype}"
        err = rel_err(g, g_num)
        assert err <= rtol, f"input {i} {inputs[i].shape}: relative error {err:.3e} > {rtol:.0e}"
    for i, t in enumerate(tensors):
        if i not in wrt:
            assert t.grad is None, f"input {i} needs no gradient but got one"


def autograd(fn, *inputs, weights=None, seed: int = 0):
    """(output, [gradient of sum(output * weights) w.r.t. each input]) as host arrays."""
    tensors = [ml.Tensor(np.asarray(a, dtype=np.float64), requires_grad=True) for a in inputs]
    out = fn(*tensors)
    if weights is None:
        weights = np.random.default_rng([seed, 0x5EED]).standard_normal(out.shape)
    out.backward(weights)
    return out.numpy(), [None if t.grad is None else to_np(t.grad) for t in tensors]

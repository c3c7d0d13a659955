"""The device seam: the one place that knows whether arrays live in NumPy or CuPy.

Arrays follow their data. An operation computes with the library that owns its
inputs, so its result lands where its inputs are; no code asks "which device
are we on?". Inside an op that reads

    xp = x.xp                  # numpy or cupy: whichever holds x's array (Tensor.xp)
    out = xp.exp(x.data)       # so the result is on x's device

`set_device` only says where *new* tensors and models are created (the
constructor and tensor(), zeros(), randn(), ...); existing ones stay where they
are until `.to(device)` moves them. MINILORA_DEVICE is read once, at the end of
this file.

CuPy mirrors NumPy's API, so the only operation that needs a branch on the
device is scatter-add (embedding gradients), which the two libraries spell
differently. This is the only module in minilora that imports CuPy.
"""
from __future__ import annotations

import os

import numpy as np

_default_device = "cpu"   # where new tensors are created: "cpu" or "cuda"
_cupy = None       # the cupy module, once imported
_rng = np.random.default_rng(0)   # host generator for initialisation and dropout


def _import_cupy():
    """Import CuPy and check that a GPU is present, or explain what is missing."""
    global _cupy
    if _cupy is not None:
        return _cupy
    try:
        import cupy
    except ImportError as err:
        raise RuntimeError(
            "set_device('cuda') needs CuPy, which is not installed "
            f"({err}). Install it with `pip install 'minilora[gpu]'` "
            "(CuPy for CUDA 12), or stay on the CPU with set_device('cpu')."
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # CUDA driver missing or broken
        raise RuntimeError(
            f"set_device('cuda'): CuPy is installed but found no usable NVIDIA GPU ({err}). "
            "Check `nvidia-smi`, or stay on the CPU with set_device('cpu')."
        ) from None
    if count < 1:
        raise RuntimeError(
            "set_device('cuda'): CuPy is installed but this machine has no NVIDIA GPU. "
            "Stay on the CPU with set_device('cpu')."
        )
    _cupy = cupy
    return cupy


def set_device(name: str) -> None:
    """Choose where new tensors and models are created: "cpu" (NumPy) or "cuda" (CuPy).

    Existing tensors stay where they are; move a model with `model.to(name)`.
    """
    global _default_device
    _check_device(name)
    if name == "cuda":
        _import_cupy()
    _default_device = name


def default_device() -> str:
    """Where new tensors are created: "cpu" unless set_device or MINILORA_DEVICE said otherwise."""
    return _default_device


def _check_device(name) -> None:
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}: use 'cpu' or 'cuda'")


def array_namespace(array):
    """NumPy or CuPy, whichever owns `array` (NumPy for anything that is not a CuPy array).
    Tensor.xp is this function applied to the tensor's data."""
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return _cupy
    return np


def device_of(array) -> str:
    """"cuda" for a CuPy array, "cpu" for anything else."""
    return "cpu" if array_namespace(array) is np else "cuda"


def to_numpy(array) -> np.ndarray:
    """A NumPy copy (or view) of a NumPy or CuPy array, for printing, plots and files."""
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return _cupy.asnumpy(array)
    return np.asarray(array)


def to_device(array, name: str):
    """`array` moved to device `name` ("cpu" or "cuda"); no copy when it is already there."""
    _check_device(name)
    if name == "cpu":
        return to_numpy(array)
    return _import_cupy().asarray(array)


def scatter_add(target, indices, values) -> None:
    """target[indices] += values, adding repeated indices once per occurrence (in place).

    Plain `target[indices] += values` keeps only one of the repeated updates,
    which is wrong for an embedding row used twice in a batch.
    """
    if array_namespace(target) is np:
        if _is_row_index(indices, target, values):
            _add_rows(target, indices, values)
        else:
            np.add.at(target, indices, values)
    else:
        _cupy.add.at(target, indices, values)   # atomic adds: order, so rounding, varies per run


def _is_row_index(indices, target, values) -> bool:
    return (isinstance(indices, np.ndarray) and indices.ndim == 1 and indices.dtype.kind in "iu"
            and target.ndim == 2 and values.shape == (indices.size, target.shape[1]))


def _add_rows(target, rows, values) -> None:
    """target[rows[i]] += values[i], by sorting: equal rows become neighbours, and each
    run of neighbours is summed at once (much faster than np.add.at for embeddings)."""
    if rows.size == 0:
        return
    # Negative ids count from the end (-1 is the last row). Make them positive first,
    # or -1 and n-1 would be two "different" runs that write the same row, and a
    # fancy-indexed += keeps only one of two writes to a row.
    rows = np.where(rows < 0, rows + target.shape[0], rows)
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    starts = np.flatnonzero(np.r_[True, sorted_rows[1:] != sorted_rows[:-1]])
    target[sorted_rows[starts]] += np.add.reduceat(values[order], starts, axis=0)


def erf(array):
    """The error function erf(x) = 2/sqrt(pi) * integral_0^x exp(-t^2) dt, elementwise.

    NumPy has no erf; SciPy's (and CuPy's copy of it on the GPU) is accurate to
    float64 rounding. Imported here, on first use, so `import minilora` stays fast.
    """
    if array_namespace(array) is np:
        from scipy.special import erf as _erf
    else:
        from cupyx.scipy.special import erf as _erf
    return _erf(array)


def synchronize() -> None:
    """Wait for the GPU to finish queued work (GPU calls return early); a no-op without one.
    Timing GPU code without it measures only how fast work is queued."""
    if _cupy is not None:
        _cupy.cuda.Device().synchronize()


def manual_seed(seed: int) -> None:
    """Seed every random number minilora draws (initialisation, dropout, sampling)."""
    global _rng
    _rng = np.random.default_rng(seed)
    if _cupy is not None:
        _cupy.random.seed(seed)


def random_uniform(shape, device: str):
    """Uniform [0, 1) float32 numbers on `device` (dropout masks), seeded by manual_seed."""
    _check_device(device)
    if device == "cpu":
        return _rng.random(shape, dtype=np.float32)
    return _import_cupy().random.random(shape, dtype=np.float32)


def rng() -> np.random.Generator:
    """The host random generator that `manual_seed` resets."""
    return _rng


# Honour MINILORA_DEVICE=cuda at import time, so a whole test suite or notebook
# can move to the GPU without changing a line of code.
_env_device = os.environ.get("MINILORA_DEVICE", "cpu").strip().lower() or "cpu"
if _env_device != "cpu":
    set_device(_env_device)

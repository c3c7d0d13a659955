"""The device seam: the one place that knows whether arrays live in NumPy or CuPy.

Every compute module asks this file for its array namespace instead of
importing NumPy or CuPy itself, so the same code runs on a CPU and a GPU:

    from minilora import backend
    xp = backend.xp                          # numpy, or cupy after set_device("cuda")
    xp = backend.get_array_module(array)     # the namespace an existing array lives in

CuPy mirrors NumPy's API, so the only operation that needs a branch on the
device is scatter-add (embedding gradients), which the two libraries spell
differently. This is the only module in minilora that imports CuPy.
"""
from __future__ import annotations

import os

import numpy as np

xp = np            # the active array namespace; replaced by set_device()
device = "cpu"     # "cpu" or "cuda"
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
    """Choose where new tensors live: "cpu" (NumPy) or "cuda" (CuPy).

    Existing tensors stay where they are; move a model with `model.to(name)`.
    """
    global xp, device
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}: use 'cpu' or 'cuda'")
    xp = _import_cupy() if name == "cuda" else np
    device = name


def get_array_module(array):
    """NumPy or CuPy, whichever owns `array` (NumPy for anything that is not a CuPy array)."""
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return _cupy
    return np


def to_numpy(array) -> np.ndarray:
    """A NumPy copy (or view) of a NumPy or CuPy array, for printing, plots and files."""
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return _cupy.asnumpy(array)
    return np.asarray(array)


def to_device(array, name: str):
    """`array` moved to device `name` ("cpu" or "cuda"); no copy when it is already there."""
    if name == "cpu":
        return to_numpy(array)
    if name == "cuda":
        return _import_cupy().asarray(array)
    raise ValueError(f"unknown device {name!r}: use 'cpu' or 'cuda'")


def scatter_add(target, indices, values) -> None:
    """target[indices] += values, adding repeated indices once per occurrence (in place).

    Plain `target[indices] += values` keeps only one of the repeated updates,
    which is wrong for an embedding row used twice in a batch.
    """
    if get_array_module(target) is np:
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
    if get_array_module(array) is np:
        from scipy.special import erf as _erf
    else:
        from cupyx.scipy.special import erf as _erf
    return _erf(array)


def synchronize() -> None:
    """Wait for the GPU to finish queued work (GPU calls return early); a no-op on the CPU.
    Timing GPU code without it measures only how fast work is queued."""
    if xp is not np:
        xp.cuda.Device().synchronize()


def manual_seed(seed: int) -> None:
    """Seed every random number minilora draws (initialisation, dropout, sampling)."""
    global _rng
    _rng = np.random.default_rng(seed)
    if _cupy is not None:
        _cupy.random.seed(seed)


def random_uniform(shape):
    """Uniform [0, 1) numbers on the active device (dropout masks), seeded by manual_seed."""
    if xp is np:
        return _rng.random(shape, dtype=np.float32)
    return xp.random.random(shape, dtype=np.float32)


def rng() -> np.random.Generator:
    """The host random generator that `manual_seed` resets."""
    return _rng


# Honour MINILORA_DEVICE=cuda at import time, so a whole test suite or notebook
# can move to the GPU without changing a line of code.
_env_device = os.environ.get("MINILORA_DEVICE", "cpu").strip().lower() or "cpu"
if _env_device != "cpu":
    set_device(_env_device)

"""A stand-in for CuPy, so the device rules can be tested on a machine without a GPU.

"Device" arrays are NumPy arrays of a subclass, `DeviceArray`. Like CuPy's,
they refuse to meet a host (NumPy) array in any operation, which is the bug a
GPU run shows as "TypeError: Unsupported type <class 'numpy.ndarray'>". So a
test that runs minilora on this fake device checks two things a CPU-only suite
cannot: every result lands on its inputs' device, and no op mixes the two.

    with fake_gpu():            # backend sees a "cupy" whose arrays are DeviceArray
        ml.set_device("cuda")
        ...

What it does not catch: a silent np.asarray(device_array) (NumPy reads the
subclass as a plain array, where CuPy would refuse). The real GPU suite
(MINILORA_DEVICE=cuda python -m pytest) covers that.
"""
from __future__ import annotations

import contextlib
import importlib.machinery
import sys
import types

import numpy as np


class DeviceArray(np.ndarray):
    """A NumPy array that claims to live on the GPU."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = tuple(_to_host_view(o, ufunc.__name__) for o in out)
        result = getattr(ufunc, method)(*(_to_host_view(x, ufunc.__name__) for x in inputs), **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _on_device(result)

    def __getitem__(self, index):          # x[0] of a vector: a 0-d device array, as in CuPy
        return _on_device(super().__getitem__(index))

    def __array_function__(self, func, types, args, kwargs):
        name = func.__name__
        return _on_device(func(*_host_views(args, name), **_host_views(kwargs, name)))


def _to_host_view(x, what: str):
    """A plain view of a device array; a host array here is a device mix, which CuPy refuses."""
    if isinstance(x, DeviceArray):
        return x.view(np.ndarray)
    if isinstance(x, np.ndarray):
        raise TypeError(f"{what}: a host (NumPy) array of shape {x.shape} met a device array; "
                        "CuPy would refuse this mix")
    return x


def _host_views(value, what: str):
    if isinstance(value, np.ndarray):
        return _to_host_view(value, what)
    if isinstance(value, (list, tuple)):
        return type(value)(_host_views(v, what) for v in value)
    if isinstance(value, dict):
        return {k: _host_views(v, what) for k, v in value.items()}
    return value


def _on_device(result):
    if isinstance(result, np.ndarray) and not isinstance(result, DeviceArray):
        return result.view(DeviceArray)
    if isinstance(result, np.generic):   # NumPy reduces to a scalar; CuPy to a 0-d device array
        return np.asarray(result).view(DeviceArray)
    if isinstance(result, tuple):
        return tuple(_on_device(r) for r in result)
    if isinstance(result, list):
        return [_on_device(r) for r in result]
    return result


def _device_function(name: str):
    """cupy.<name>: numpy.<name> on device arrays, refusing host arrays."""
    numpy_function = getattr(np, name)

    def function(*args, **kwargs):
        return _on_device(numpy_function(*_host_views(args, name), **_host_views(kwargs, name)))

    function.__name__ = name
    return function


def _asarray(a, dtype=None, copy=None):
    """Host or device data onto the device (the one place a host array may enter)."""
    if isinstance(a, DeviceArray):
        a = a.view(np.ndarray)
    host = np.array(a, dtype=dtype) if copy else np.asarray(a, dtype=dtype)
    return host.view(DeviceArray)


def _array(a, dtype=None, copy=True):
    return _asarray(a, dtype=dtype, copy=copy)


def _asnumpy(a):
    return np.array(a.view(np.ndarray) if isinstance(a, DeviceArray) else a)


class _UfuncOnDevice:
    """cupy.add and friends: their .at (scatter) must work on device arrays."""

    def __init__(self, ufunc):
        self._ufunc = ufunc

    def __call__(self, *args, **kwargs):
        name = self._ufunc.__name__
        return _on_device(self._ufunc(*_host_views(args, name), **_host_views(kwargs, name)))

    def at(self, target, indices, values):
        self._ufunc.at(_to_host_view(target, "add.at"), _host_views(indices, "add.at"),
                       _host_views(values, "add.at"))


def _make_module():
    cupy = types.ModuleType("cupy")
    cupy.ndarray = DeviceArray
    cupy.asarray, cupy.array, cupy.asnumpy = _asarray, _array, _asnumpy
    cupy.add = _UfuncOnDevice(np.add)
    rng = [np.random.default_rng(0)]
    cupy.random = types.SimpleNamespace(
        seed=lambda s: rng.__setitem__(0, np.random.default_rng(s)),
        random=lambda shape, dtype=np.float32: rng[0].random(shape, dtype=dtype).view(DeviceArray))
    device = types.SimpleNamespace(synchronize=lambda: None)
    cupy.cuda = types.SimpleNamespace(Device=lambda *a: device,
                                      runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))

    def __getattr__(name):
        value = getattr(np, name)
        if callable(value) and not isinstance(value, type):
            return _device_function(name)
        return value                     # dtypes (cupy.float32), constants (cupy.inf)

    cupy.__getattr__ = __getattr__
    return cupy


def _make_cupyx():
    from scipy.special import erf

    def device_erf(x):
        return _on_device(erf(_to_host_view(x, "erf")))

    special = types.ModuleType("cupyx.scipy.special")
    special.erf = device_erf
    scipy = types.ModuleType("cupyx.scipy")
    scipy.special = special
    cupyx = types.ModuleType("cupyx")
    cupyx.scipy = scipy
    return {"cupyx": cupyx, "cupyx.scipy": scipy, "cupyx.scipy.special": special}


def install() -> None:
    """Make `import cupy` find the fake, before minilora is imported (MINILORA_FAKE_GPU=1)."""
    cupy = _make_module()
    cupy.__spec__ = importlib.machinery.ModuleSpec("cupy", None)   # found by find_spec
    sys.modules.update({"cupy": cupy, **_make_cupyx()})


@contextlib.contextmanager
def fake_gpu():
    """Within: minilora's backend finds this fake CuPy; after: the real state is back."""
    from minilora import backend

    saved_modules = {name: sys.modules.get(name) for name in ("cupy", "cupyx", "cupyx.scipy",
                                                              "cupyx.scipy.special")}
    saved_cupy, saved_device = backend._cupy, backend.default_device()
    sys.modules.update({"cupy": _make_module(), **_make_cupyx()})
    backend._cupy = None                  # so set_device("cuda") imports the fake
    backend.set_device("cpu")             # the tests start from the CPU default
    try:
        yield
    finally:
        backend.set_device("cpu")
        backend._cupy = saved_cupy
        for name, module in saved_modules.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        backend.set_device(saved_device)

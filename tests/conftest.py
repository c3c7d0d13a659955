"""Test-wide settings: lean on shared CPUs, patient with slow machines, device-aware."""
from __future__ import annotations

import os
import sys

import pytest
from hypothesis import HealthCheck, settings

# tests/helpers.py is imported as `helpers` by the test modules.
sys.path.insert(0, os.path.dirname(__file__))

# MINILORA_FAKE_GPU=1: run the suite on tests/fake_cupy.py's stand-in GPU, whose arrays
# refuse to meet NumPy's as CuPy's do. A rehearsal, on any machine, of the GPU run
# (MINILORA_DEVICE=cuda) for every host/device mix; not a substitute for it.
if os.environ.get("MINILORA_FAKE_GPU") == "1":
    import fake_cupy

    fake_cupy.install()
    from minilora import backend as _backend

    _backend.set_device("cuda")   # in this process only: subprocesses (the CLI tests) run on the CPU

try:
    import torch

    torch.set_num_threads(1)   # the machines running this are shared; one thread is plenty
except ImportError:  # pragma: no cover
    pass

# Notebook kernels started by the tests inherit this environment. BLAS threads spin while
# they wait, so on a busy shared machine they fight every other process: 08_train_lora took
# 281 s with the default threads and 29 s with one, at the same load.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

# No per-example deadline: a busy machine (or a GPU's first kernel launch) can make a
# single example slow without anything being wrong. Tests choose their own max_examples.
# In CI (CI=true) the examples are derandomized, so a run is repeatable from the commit.
settings.register_profile("minilora", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", parent=settings.get_profile("minilora"), derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "minilora"))


@pytest.fixture
def device_guard():
    """Restore the active device after a test that switches it."""
    from minilora import backend

    saved = backend.default_device()
    yield
    backend.set_device(saved)


def pytest_report_header(config):
    from minilora import backend

    return f"minilora device: {backend.default_device()} (set MINILORA_DEVICE=cuda to run on a GPU)"

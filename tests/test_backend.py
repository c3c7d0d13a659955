"""minilora.backend: the device seam. CPU tests always run; GPU tests run where
CuPy and an NVIDIA GPU are present and are skipped, with the reason printed
(pytest -ra), elsewhere."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from helpers import check_grads, requires_gpu, values

import minilora as ml
from minilora import backend, nn, optim
from minilora import functional as F


def test_set_device_cpu_selects_numpy(device_guard):
    ml.set_device("cpu")
    assert backend.default_device() == "cpu" == ml.default_device()
    t = ml.Tensor([1.0, 2.0])
    assert isinstance(t.data, np.ndarray) and t.device == "cpu" and t.xp is np


def test_array_namespace_and_to_numpy_on_host_data():
    a = np.arange(6.0).reshape(2, 3)
    assert backend.array_namespace(a) is np and backend.device_of(a) == "cpu"
    assert backend.array_namespace([1, 2]) is np
    out = ml.to_numpy(a)
    assert isinstance(out, np.ndarray) and np.array_equal(out, a)
    assert isinstance(ml.to_numpy([1.0, 2.0]), np.ndarray)
    assert backend.to_device(a, "cpu") is not None and np.array_equal(backend.to_device(a, "cpu"), a)


def test_scatter_add_counts_repeated_indices_on_host():
    target = np.zeros(5)
    backend.scatter_add(target, np.array([0, 0, 3, 0]), np.array([1.0, 2.0, 3.0, 4.0]))
    assert np.array_equal(target, [7.0, 0.0, 0.0, 3.0, 0.0])
    # rows of a table, as in an embedding gradient: the fast row path
    table = np.zeros((4, 2))
    backend.scatter_add(table, np.array([2, 1, 2, 2]), np.arange(8.0).reshape(4, 2))
    assert np.array_equal(table, [[0, 0], [2, 3], [10, 13], [0, 0]])
    # negative row ids name the same row as their positive twin
    table = np.zeros((5, 2))
    backend.scatter_add(table, np.array([-1, 4, 0, -5]), np.ones((4, 2)))
    assert np.array_equal(table, [[2, 2], [0, 0], [0, 0], [0, 0], [2, 2]])
    # tuple indices (row, column pairs), repeated
    grid = np.zeros((2, 3))
    backend.scatter_add(grid, (np.array([0, 0, 1]), np.array([2, 2, 0])), np.array([1.0, 1.0, 5.0]))
    assert np.array_equal(grid, [[0, 0, 2], [5, 0, 0]])
    # nothing to add
    table = np.ones((3, 2))
    backend.scatter_add(table, np.array([], dtype=np.int64), np.zeros((0, 2)))
    assert np.array_equal(table, np.ones((3, 2)))


def test_scatter_add_on_the_default_device():
    xp = ml.zeros(1).xp
    target = xp.zeros((3, 2))
    backend.scatter_add(target, xp.asarray([1, 1, 1]), xp.ones((3, 2)))
    assert np.array_equal(backend.to_numpy(target), [[0, 0], [3, 3], [0, 0]])


def test_random_uniform_is_seeded_float32_in_unit_interval():
    ml.manual_seed(7)
    a = backend.to_numpy(backend.random_uniform((1000,), ml.default_device()))
    ml.manual_seed(7)
    b = backend.to_numpy(backend.random_uniform((1000,), ml.default_device()))
    assert a.dtype == np.float32 and np.array_equal(a, b)
    assert a.min() >= 0.0 and a.max() < 1.0 and 0.4 < a.mean() < 0.6


def _run_python(code, **env):
    environment = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment,
                          timeout=120)


def test_environment_variable_chooses_the_device_at_import():
    ok = _run_python("import minilora.backend as b; print(b.default_device())", MINILORA_DEVICE="cpu")
    assert ok.returncode == 0 and ok.stdout.strip() == "cpu"
    bad = _run_python("import minilora.backend", MINILORA_DEVICE="banana")
    assert bad.returncode != 0 and "unknown device 'banana'" in bad.stderr


# ----------------------------------------------------------------------------
# GPU: skipped with the reason where CuPy or a GPU is missing


@requires_gpu
def test_set_device_cuda_selects_cupy(device_guard):
    import cupy

    ml.set_device("cuda")
    assert backend.default_device() == "cuda"
    t = ml.Tensor(np.arange(3.0))
    assert isinstance(t.data, cupy.ndarray) and t.device == "cuda" and t.xp is cupy
    host = ml.to_numpy(t.data)
    assert isinstance(host, np.ndarray) and np.array_equal(host, [0.0, 1.0, 2.0])
    assert t.to("cpu").device == "cpu" and ml.Tensor(np.ones(2)).to("cuda").device == "cuda"
    assert t.to("cpu").detach().device == "cpu"      # a CPU leaf is not pulled onto the GPU


@requires_gpu
def test_scatter_add_counts_repeated_indices_on_gpu():
    import cupy

    target = cupy.zeros((4, 2))
    backend.scatter_add(target, cupy.asarray([3, 0, 3, 3]), cupy.ones((4, 2)))
    assert np.array_equal(backend.to_numpy(target), [[1, 1], [0, 0], [0, 0], [3, 3]])


@requires_gpu
def test_gpu_and_cpu_agree_on_a_forward_and_backward(device_guard):
    def run(device):
        ml.set_device(device)
        ml.manual_seed(0)
        model = nn.Sequential(nn.Embedding(11, 8), nn.LayerNorm(8), nn.Linear(8, 11)).to(np.float64)
        ids = np.array([[1, 2, 2, 10], [0, 3, 3, 3]])
        loss = F.cross_entropy(model(ids), np.array([[2, 2, 10, 0], [3, 3, 3, -100]]))
        loss.backward()
        opt = optim.AdamW(model.parameters(), lr=0.1)
        opt.step()
        return loss.item(), {n: p.numpy() for n, p in model.named_parameters()}

    loss_cpu, params_cpu = run("cpu")
    loss_gpu, params_gpu = run("cuda")
    assert abs(loss_cpu - loss_gpu) < 1e-12
    for n in params_cpu:
        assert np.allclose(params_cpu[n], params_gpu[n], rtol=1e-10, atol=1e-12), n


@requires_gpu
def test_module_to_cuda_and_back(device_guard):
    ml.set_device("cpu")
    lin = nn.Linear(3, 2)
    lin.to("cuda")
    assert lin.weight.device == "cuda" and lin.bias.device == "cuda"
    sd = lin.state_dict()
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    lin.to("cpu")
    assert lin.weight.device == "cpu"


@requires_gpu
def test_gradients_on_gpu_against_finite_differences(device_guard):
    ml.set_device("cuda")
    rng = np.random.default_rng(0)
    check_grads(lambda x, w: F.layer_norm(x @ w.T, None, None).tanh(), values(rng, (2, 3, 4)), values(rng, (5, 4)))
    check_grads(lambda x: x[np.array([0, 0, 2])].amax(dim=1), values(rng, (3, 4), "distinct"))


def test_tensor_to_cpu_stays_in_the_graph():
    # As PyTorch: .to() is differentiable, and a tensor already there is returned as it is.
    x = ml.Tensor(np.arange(3.0), requires_grad=True)
    y = (x * 2).to("cpu")
    assert y.device == "cpu" and isinstance(y.data, np.ndarray) and y.requires_grad
    assert np.array_equal(y.numpy(), [0.0, 2.0, 4.0])
    y.sum().backward()
    assert np.array_equal(backend.to_numpy(x.grad), [2.0, 2.0, 2.0])


def test_detach_shares_memory_and_stays_on_its_device():
    x = ml.Tensor(np.arange(3.0), requires_grad=True)
    d = x.detach()
    assert d.data is x.data and not d.requires_grad and d.device == x.device

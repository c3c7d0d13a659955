"""minilora.parallel: big NumPy jobs split into row blocks, one thread each.

The split must change nothing but speed: every row done exactly once, errors
raised as without threads, products equal to a @ b up to float rounding, and
the fused ops that use it still equal their reference forms (float64, 1e-10, as
tests/test_functional.py) when the split really happens. The size thresholds
are lowered here so that it does happen on these small inputs.
"""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from helpers import rel_err
from test_functional import COMPOSE_RTOL, assert_same_function

from minilora import functional as F
from minilora import parallel


@pytest.fixture
def split_always(monkeypatch):
    """Two blocks for any job, however small; the thread count is restored afterwards."""
    before = parallel.threads()
    monkeypatch.setattr(parallel, "MIN_ELEMENTS", 1)
    monkeypatch.setattr(parallel, "MIN_FLOPS", 1)
    if parallel.set_threads(2) != 2:
        parallel.set_threads(before)
        pytest.skip("NumPy's BLAS is not one threadpoolctl can pin to one thread")
    yield
    parallel.set_threads(before)


def test_for_rows_covers_every_row_once_in_blocks(split_always):
    seen = np.zeros(7, dtype=int)
    calls = []

    def fn(lo, hi):
        calls.append((lo, hi))
        seen[lo:hi] += 1

    parallel.for_rows(fn, 7, 10**6)
    assert seen.tolist() == [1] * 7
    assert sorted(calls) == [(0, 3), (3, 7)]


def test_for_rows_small_work_or_foreign_arrays_run_in_one_call(split_always, monkeypatch):
    calls = []
    parallel.for_rows(lambda lo, hi: calls.append((lo, hi)), 8, 10**6, like=[1, 2])   # not NumPy
    monkeypatch.setattr(parallel, "MIN_ELEMENTS", 100)
    parallel.for_rows(lambda lo, hi: calls.append((lo, hi)), 8, 150)                  # < 100 per block
    assert calls == [(0, 8), (0, 8)]


@pytest.mark.parametrize("failing_block", [0, 1])
def test_for_rows_raises_a_blocks_error_after_all_blocks_finish(split_always, failing_block):
    done = []

    def fn(lo, hi):
        if (lo == 0) == (failing_block == 0):
            raise ValueError(f"block at {lo}")
        done.append(lo)

    with pytest.raises(ValueError, match="block at"):
        parallel.for_rows(fn, 10, 10**6)
    assert len(done) == 1                    # the other block ran to its end


@pytest.mark.parametrize("shapes", [((9, 5), (5, 4)), ((6, 3, 7, 5), (6, 3, 5, 2)), ((4, 5), (5, 1))])
def test_matmul_equals_numpy(split_always, shapes):
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal(s).astype(np.float32) for s in shapes)
    out = parallel.matmul(a, b)
    assert out.shape == (a @ b).shape and out.dtype == np.float32
    assert rel_err(out.astype(np.float64), a.astype(np.float64) @ b.astype(np.float64)) < 1e-6
    at = np.ascontiguousarray(a.swapaxes(-1, -2)).swapaxes(-1, -2)      # a transposed view (dW = g^T x)
    assert rel_err(parallel.matmul(at, b).astype(np.float64), out.astype(np.float64)) < 1e-6


def test_matmul_leaves_other_cases_to_numpy(split_always):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 4))
    b = rng.standard_normal((2, 4, 5))                   # 2-D @ stack: broadcast, not split
    assert np.array_equal(parallel.matmul(a, b), a @ b)
    assert np.array_equal(parallel.matmul(a, b[0, :, 0]), a @ b[0, :, 0])     # a vector
    ints = np.arange(12).reshape(3, 4)
    assert np.array_equal(parallel.matmul(ints, ints.T), ints @ ints.T)
    with pytest.raises(ValueError):
        parallel.matmul(a, a)                            # (3, 4) @ (3, 4): NumPy's own error


def test_set_threads_rejects_bad_counts_and_one_restores_blas():
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="set_threads"):
            parallel.set_threads(bad)
    before = parallel.threads()
    try:
        assert parallel.set_threads(1) == 1
        if parallel._blas is not None:
            assert parallel._blas.num_threads == parallel._blas_threads
    finally:
        parallel.set_threads(before)


def test_fused_ops_equal_their_references_when_split(split_always):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 5, 8))
    assert_same_function(lambda t: F.gelu(t, approximate="tanh"),
                         lambda t: F.gelu_reference(t, approximate="tanh"), x)
    w, b = rng.standard_normal(8), rng.standard_normal(8)
    assert_same_function(lambda t, w, b: F.layer_norm(t, (8,), w, b),
                         F.layer_norm_reference, x, w, b)
    assert_same_function(lambda t: F.layer_norm(t, (8,)), F.layer_norm_reference, x)
    weight = rng.standard_normal((3, 8))
    assert_same_function(F.linear, F.linear_reference, x, weight)
    q, k, v = (rng.standard_normal((4, 2, 6, 3)) for _ in range(3))
    assert_same_function(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                         lambda q, k, v: F.attention_reference(q, k, v, is_causal=True), q, k, v)


def test_split_results_are_the_unsplit_ones(split_always):
    """float32, as training runs: elementwise blocks are bit for bit the whole-array result."""
    import minilora as ml
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 48)).astype(np.float32)
    got = F.gelu(ml.Tensor(x), approximate="tanh").numpy()
    parallel.set_threads(1)
    want = F.gelu(ml.Tensor(x), approximate="tanh").numpy()
    assert np.array_equal(got, want)
    assert rel_err(got.astype(np.float64), want.astype(np.float64)) <= COMPOSE_RTOL


@pytest.mark.parametrize("split", [True, False])
def test_matmul_adds_a_bias_to_every_row(split_always, monkeypatch, split):
    if not split:
        monkeypatch.setattr(parallel, "MIN_FLOPS", 10**9)
    rng = np.random.default_rng(4)
    a, b, bias = rng.standard_normal((7, 5)), rng.standard_normal((5, 3)), rng.standard_normal(3)
    assert rel_err(parallel.matmul(a, b, add=bias), a @ b + bias) < 1e-12
    stack = rng.standard_normal((2, 5, 3))                     # not split: still adds
    assert rel_err(parallel.matmul(a, stack, add=bias), a @ stack + bias) < 1e-12


def test_a_block_that_splits_again_runs_its_job_whole(split_always):
    inner = []

    def outer(lo, hi):
        parallel.for_rows(lambda a, b: inner.append((lo, a, b)), 4, 10**6)

    parallel.for_rows(outer, 6, 10**6)           # would deadlock if the inner jobs waited for a worker
    assert sorted(inner) == [(0, 0, 4), (3, 0, 4)]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX only")
def test_a_forked_child_starts_its_own_workers(split_always):
    """After fork() the parent's worker threads do not exist in the child; splitting there
    must not wait for them forever."""
    pid = os.fork()
    if pid == 0:                                  # the child: exit 0 only if the split job completes
        try:
            seen = np.zeros(8, dtype=int)
            parallel.for_rows(lambda lo, hi: seen.__setitem__(slice(lo, hi), seen[lo:hi] + 1), 8, 10**6)
            os._exit(0 if seen.tolist() == [1] * 8 else 1)
        finally:
            os._exit(2)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung in for_rows")

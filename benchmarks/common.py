"""Helpers shared by the benchmarks."""
from __future__ import annotations

import time

import numpy as np

from minilora.timing import alternate  # noqa: F401  (re-exported for the benchmark scripts)


def matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    """This machine's NumPy float32 matrix-product rate, the ceiling for everything else."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = a.copy()
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9

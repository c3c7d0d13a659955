"""Timing helpers shared by the benchmarks: alternate the contenders, report medians and ratios."""
from __future__ import annotations

import statistics
import time


def alternate(contenders: dict, repeats: int = 15, warmup: int = 3) -> dict[str, float]:
    """Median seconds of each callable, timed in turns (A, B, A, B, ...).

    Taking turns means a burst of load from elsewhere on the machine hits every
    contender alike, which keeps their ratio honest even when the absolute
    times wander.
    """
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    """This machine's NumPy float32 matrix-product rate, the ceiling for everything else."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = a.copy()
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start

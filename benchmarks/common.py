"""Helpers shared by the benchmarks: fair timing with a progress bar, and how to print it."""
from __future__ import annotations

import sys
import time

import numpy as np
from tqdm import tqdm

from minilora import parallel
from minilora.timing import BlockTimes, Ratio, in_blocks


def timed(contenders: dict, runs: int, block: int, label: str, settle: int = 1) -> BlockTimes:
    """`minilora.timing.in_blocks` with a progress bar (on stderr, so stdout keeps only results)."""
    with tqdm(total=runs * len(contenders), desc=label, unit="block", leave=False, file=sys.stderr) as bar:
        return in_blocks(contenders, runs=runs, block=block, settle=settle, progress=lambda name: bar.update())


def ms(t: BlockTimes, name: str) -> str:
    """'12.3 ms (11.9-13.0)': the median over runs and the fastest and slowest run."""
    low, high = t.spread(name)
    return f"{t.median(name) * 1e3:.1f} ms ({low * 1e3:.1f}-{high * 1e3:.1f})"


def ratio_line(label: str, r: Ratio, target: str = "") -> str:
    """One printed ratio: median over runs, its range, and the target if there is one."""
    tail = f"  (target {target})" if target else ""
    return f"ratio {label}: {r}{tail}"


def matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    """This machine's NumPy float32 matrix-product rate, the ceiling for everything else
    (as minilora multiplies: rows split over parallel.threads() cores, BLAS on one thread each)."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = a.copy()
    parallel.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        parallel.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9

"""Fair timing: run the contenders in turns and compare medians.

On a shared laptop the speed of everything wanders from second to second.
Timing A a hundred times and then B a hundred times would let that drift
decide the comparison; taking turns (A, B, A, B, ...) exposes both to the same
conditions, so their ratio stays meaningful even when the absolute times do not.
"""
from __future__ import annotations

import statistics
import time


def alternate(contenders: dict, repeats: int = 15, warmup: int = 3) -> dict[str, float]:
    """Median seconds of each callable in `contenders` (name -> fn), timed in turns."""
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

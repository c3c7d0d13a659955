"""Fair timing: run the contenders in turns, in blocks, and compare medians.

On a shared laptop the speed of everything wanders from second to second.
Timing A a hundred times and then B a hundred times would let that drift
decide the comparison, so the contenders take turns. But strict A, B, A, B
has a bias of its own: right after one library's step, the BLAS threads it
woke are still spinning on the cores, and the other library's next step pays
for them. So the turns are blocks: after each switch one untimed call lets
the machine settle, then a few calls are timed; and which contender goes
first alternates from round to round, so neither always follows the other.
"""
from __future__ import annotations

import statistics
import time


def measure(contenders: dict, repeats: int = 15, warmup: int = 3, block: int = 3) -> dict[str, dict]:
    """Time each callable in `contenders` (name -> fn) `repeats` times, in blocks of `block`.

    Returns, per name: "median" seconds, "spread" (the interquartile range as a
    fraction of the median: 0.05 means the middle half of the runs lies within
    5%) and all "times".
    """
    for name, value in (("repeats", repeats), ("warmup", warmup), ("block", block)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "warmup" else 1):
            raise ValueError(f"measure: {name}={value!r} must be a whole number >= "
                             f"{0 if name == 'warmup' else 1}")
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    round_ = 0
    while any(len(ts) < repeats for ts in times.values()):
        for name in (names if round_ % 2 == 0 else names[::-1]):
            fn = contenders[name]
            fn()                                   # untimed: let the machine settle after the switch
            for _ in range(min(block, repeats - len(times[name]))):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        round_ += 1
    result = {}
    for name, ts in times.items():
        median = statistics.median(ts)
        q1, _, q3 = statistics.quantiles(ts, n=4) if len(ts) > 1 else (ts[0], ts[0], ts[0])
        result[name] = {"median": median, "spread": (q3 - q1) / median if median else 0.0, "times": ts}
    return result


def alternate(contenders: dict, repeats: int = 15, warmup: int = 3) -> dict[str, float]:
    """Median seconds of each callable in `contenders` (name -> fn), timed fairly (see measure)."""
    return {name: m["median"] for name, m in measure(contenders, repeats, warmup).items()}

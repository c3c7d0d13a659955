"""Fair timing: run the contenders in turns, in blocks, and compare medians.

On a shared laptop the speed of everything wanders from second to second.
Timing A a hundred times and then B a hundred times would let that drift
decide the comparison, so the contenders take turns. But strict A, B, A, B
has a bias of its own: right after one library's step, the BLAS threads it
woke are still spinning on the cores, and the other library's next step pays
for them (about 55% slower on two cores). So the turns are blocks:

    settle   untimed calls right after each switch, so the machine calms down
    block    timed calls; their median is this run's figure

and run k starts with contender k (mod their number), so each goes first
equally often. A *ratio* is taken run by run, from two blocks timed back to
back on the same machine, then summarised by its median and its lowest and
highest run. `measure` and `alternate` are the short forms the demo and the
notebooks use: each contender's median over all its timed calls.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field


@dataclass
class Ratio:
    """A ratio a / b: its median over runs, its lowest and highest run, and every run's value."""
    median: float
    low: float
    high: float
    per_run: list[float]

    def __str__(self) -> str:
        return f"{self.median:.2f} (runs {self.low:.2f}-{self.high:.2f}, n={len(self.per_run)})"


@dataclass
class BlockTimes:
    """Seconds per call: for each contender, one number per run (the median of its block in that run)."""
    runs: dict[str, list[float]]
    order: list[list[str]] = field(default_factory=list)    # who went when, run by run
    calls: dict[str, list[float]] = field(default_factory=dict)   # every timed call, in order

    def median(self, name: str) -> float:
        return statistics.median(self.runs[name])

    def spread(self, name: str) -> tuple[float, float]:
        """(fastest run, slowest run) of one contender, in seconds per call."""
        return min(self.runs[name]), max(self.runs[name])

    def ratio(self, a: str, b: str) -> Ratio:
        """a's time over b's, run by run (both timed back to back), then summarised."""
        per_run = [ta / tb for ta, tb in zip(self.runs[a], self.runs[b])]
        return Ratio(statistics.median(per_run), min(per_run), max(per_run), per_run)


def in_blocks(contenders: dict, runs: int = 5, block: int = 5, settle: int = 1,
              clock=time.perf_counter, progress=None) -> BlockTimes:
    """Time each callable in `contenders` (name -> fn) in blocks, `runs` times over.

    `clock` is the timer (a fake one in tests); `progress(name)`, if given, is
    called after each block, e.g. to move a progress bar.
    """
    for what, value, least in (("runs", runs, 1), ("block", block, 1), ("settle", settle, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"in_blocks: {what}={value!r} must be a whole number >= {least}")
    names = list(contenders)
    if not names:
        raise ValueError("in_blocks: give at least one contender, e.g. {'minilora': step}")
    result = BlockTimes({name: [] for name in names}, calls={name: [] for name in names})
    for run in range(runs):
        first = run % len(names)
        order = names[first:] + names[:first]
        result.order.append(order)
        for name in order:
            fn = contenders[name]
            for _ in range(settle):
                fn()
            seconds = []
            for _ in range(block):
                start = clock()
                fn()
                seconds.append(clock() - start)
            result.runs[name].append(statistics.median(seconds))
            result.calls[name].extend(seconds)
            if progress is not None:
                progress(name)
    return result


def measure(contenders: dict, repeats: int = 15, warmup: int = 3, block: int = 3) -> dict[str, dict]:
    """Time each callable in `contenders` (name -> fn) about `repeats` times, in blocks of `block`.

    Returns, per name: "median" seconds over all timed calls, "spread" (the
    interquartile range as a fraction of the median: 0.05 means the middle
    half of the calls lies within 5%) and all "times".
    """
    for what, value, least in (("repeats", repeats, 1), ("warmup", warmup, 0), ("block", block, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"measure: {what}={value!r} must be a whole number >= {least}")
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    block = min(block, repeats)
    timed = in_blocks(contenders, runs=math.ceil(repeats / block), block=block, settle=1)
    result = {}
    for name, ts in timed.calls.items():
        median = statistics.median(ts)
        q1, _, q3 = statistics.quantiles(ts, n=4) if len(ts) > 1 else (ts[0], ts[0], ts[0])
        result[name] = {"median": median, "spread": (q3 - q1) / median if median else 0.0, "times": ts}
    return result


def alternate(contenders: dict, repeats: int = 15, warmup: int = 3) -> dict[str, float]:
    """Median seconds of each callable in `contenders` (name -> fn), timed fairly (see measure)."""
    return {name: m["median"] for name, m in measure(contenders, repeats, warmup).items()}

"""Ratios of step times, each measured within one run, summarised over several runs.

`minilora.timing.measure` gives each contender's median over many calls. A
benchmark that reports a *ratio* wants more: the two halves of a ratio should
be timed back to back (so they saw the same machine), and the report should
say how much the ratio moved from one run to the next. Here one run times
every contender once, in a block:

    settle   untimed calls: right after another library's step, its BLAS threads
             are still spinning on the cores and would slow this one down
    block    timed calls; their median is this run's figure

and run k starts with contender k (mod their number), so each goes first
equally often. A ratio is taken run by run, then summarised by its median and
its lowest and highest run.
"""
from __future__ import annotations

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
    result = BlockTimes({name: [] for name in names})
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
            if progress is not None:
                progress(name)
    return result

"""Timing in blocks (minilora.timing) and the benchmark scripts.

The timing logic is tested with a fake clock: each fake contender moves the
clock forward by a cost the test chose, so every median, range and ratio
below is worked out by hand from those costs, not read off a real run. The
benchmark scripts themselves are only smoke-run in their --quick mode.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minilora.timing import in_blocks

ROOT = Path(__file__).resolve().parents[1]


class FakeClock:
    """A clock that moves only when a fake contender 'runs'."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def contender(clock: FakeClock, name: str, costs, log: list):
    """A callable that logs its name and advances the clock by the next cost."""
    costs = iter(costs)

    def fn():
        log.append(name)
        clock.now += next(costs)
    return fn


def test_order_rotates_so_each_contender_goes_first_equally_often():
    clock, log = FakeClock(), []
    fns = {n: contender(clock, n, iter(lambda: 1.0, None), log) for n in "abc"}
    t = in_blocks(fns, runs=6, block=2, settle=1, clock=clock)
    assert t.order == [list("abc"), list("bca"), list("cab")] * 2
    # each block: one settle call then two timed calls, all by the same contender, in the run's order
    expected = [n for order in t.order for n in order for _ in range(3)]
    assert log == expected


def test_two_contenders_swap_who_goes_first_every_run():
    clock, log = FakeClock(), []
    fns = {n: contender(clock, n, iter(lambda: 1.0, None), log) for n in ("numpy", "torch")}
    t = in_blocks(fns, runs=4, block=1, settle=0, clock=clock)
    assert log == ["numpy", "torch", "torch", "numpy", "numpy", "torch", "torch", "numpy"]
    assert t.order[1] == ["torch", "numpy"]


def test_the_settle_calls_after_each_switch_are_not_timed():
    # every block's first call (the settle call) costs 100 s, the timed ones 1, 2, 3 s:
    # if a settle call leaked into the timing the median would be 2.5 or more, not 2
    clock, log = FakeClock(), []
    fns = {"a": contender(clock, "a", [100, 1, 2, 3] * 3, log),
           "b": contender(clock, "b", [100, 2, 4, 6] * 3, log)}
    t = in_blocks(fns, runs=3, block=3, settle=1, clock=clock)
    assert t.runs == {"a": [2.0, 2.0, 2.0], "b": [4.0, 4.0, 4.0]}
    assert len(log) == 3 * 2 * 4


def test_median_spread_and_ratio_are_taken_run_by_run():
    # a's block in run r (r = 1..5) takes r, 2r, 9r seconds: its median is 2r, so the runs
    # read 2, 4, 6, 8, 10 (median 6, range 2-10); b takes 2 s every time, so a / b per run
    # is 1, 2, 3, 4, 5: median 3, lowest 1, highest 5.
    clock, log = FakeClock(), []
    a_costs = [c * r for r in range(1, 6) for c in (9, 1, 2)]    # block order shuffled on purpose
    fns = {"a": contender(clock, "a", a_costs, log), "b": contender(clock, "b", [2.0] * 15, log)}
    t = in_blocks(fns, runs=5, block=3, settle=0, clock=clock)
    assert t.runs["a"] == [2.0, 4.0, 6.0, 8.0, 10.0]
    assert t.median("a") == 6.0 and t.spread("a") == (2.0, 10.0)
    r = t.ratio("a", "b")
    assert (r.median, r.low, r.high) == (3.0, 1.0, 5.0)
    assert r.per_run == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert str(r) == "3.00 (runs 1.00-5.00, n=5)"


def test_ratio_pairs_the_two_contenders_of_the_same_run():
    # a is slow in run 1 and fast in run 2; b follows the same drift. Paired per run the
    # ratio is exactly 2 both times; pairing a's run 1 with b's run 2 would give 20.
    clock, log = FakeClock(), []
    fns = {"a": contender(clock, "a", [20.0, 2.0], log), "b": contender(clock, "b", [10.0, 1.0], log)}
    r = in_blocks(fns, runs=2, block=1, settle=0, clock=clock).ratio("a", "b")
    assert r.per_run == [2.0, 2.0]


def test_progress_is_called_once_per_block_with_the_contender_name():
    clock, log, seen = FakeClock(), [], []
    fns = {n: contender(clock, n, iter(lambda: 1.0, None), log) for n in ("x", "y")}
    in_blocks(fns, runs=3, block=2, clock=clock, progress=seen.append)
    assert seen == ["x", "y", "y", "x", "x", "y"]


@pytest.mark.parametrize("kwargs, words", [
    ({"runs": 0}, "runs=0"), ({"block": 0}, "block=0"), ({"settle": -1}, "settle=-1"),
    ({"runs": 2.5}, "runs=2.5"), ({"block": True}, "block=True"),
])
def test_bad_counts_are_refused_with_their_value(kwargs, words):
    with pytest.raises(ValueError, match=words.replace(".", r"\.")):
        in_blocks({"a": lambda: None}, **kwargs)


def test_no_contenders_is_refused():
    with pytest.raises(ValueError, match="at least one contender"):
        in_blocks({})


# ---------------------------------------------------------------- the scripts, quickest mode

def _run(script: str, *args: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MINILORA_DEVICE="cpu")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_bench_train_step_quick_prints_both_ratios_with_their_range():
    pytest.importorskip("torch")
    out = _run("bench_train_step.py")
    for label in ("minilora / torch eager", "minilora / torch sdpa"):
        assert f"ratio {label}" in out and "(runs " in out.split(label)[1].splitlines()[0], out


@pytest.mark.slow
def test_bench_lora_quick_prints_its_three_ratios():
    pytest.importorskip("peft")
    out = _run("bench_lora.py")
    for label in ("ratio LoRA / full: ", "ratio merged / base: ", "ratio LoRA / full peak"):
        assert label in out, out


@pytest.mark.slow
def test_bench_scaling_quick_saves_a_plot_and_consistent_numbers(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    _run("bench_scaling.py", "--out-dir", str(tmp_path))
    assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((tmp_path / "scaling.json").read_text())
    assert [p["n_embd"] for p in results["width"]] == results["plan"]["n_embd"]
    assert [p["seq"] for p in results["length"]] == results["plan"]["seq"]
    for p in results["width"] + results["length"]:
        for name in ("minilora", "torch", "torch_sdpa"):
            low, high = p[name]["range_s"]
            assert 0 < low <= p[name]["median_s"] <= high
        low, high = p["ratio_torch"]["range"]
        assert low <= p["ratio_torch"]["median"] <= high
    assert not list(tmp_path.glob("*.tmp*")), "temporary files were left behind"


def test_growth_exponent_reads_the_power_off_the_largest_sizes():
    pytest.importorskip("torch")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_scaling import growth_exponent

    xs = [64, 128, 256, 512, 1024]
    # a fixed cost that dominates the two small sizes, then pure x^2: only the last three count
    times = [50.0, 50.0, 256.0 ** 2, 512.0 ** 2, 1024.0 ** 2]
    assert growth_exponent(xs, times) == pytest.approx(2.0, rel=1e-9)
    assert growth_exponent([1, 2, 4], [3.0, 6.0, 12.0]) == pytest.approx(1.0, rel=1e-9)

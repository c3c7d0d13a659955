"""How a training step's cost grows with width and with sequence length, minilora beside PyTorch.

Two sweeps of the same GPT (2 layers, 4 heads, batch 8, vocab 64, AdamW):
n_embd from 64 to 1024 at sequence length 64, and sequence length from 64 to
512 at n_embd 128. At each point minilora, PyTorch eager (attention written
out, the same arithmetic) and PyTorch with scaled_dot_product_attention are
timed in blocks (minilora.timing.in_blocks). Saves a plot of step time and of
the minilora / PyTorch ratio, and the numbers beside it as JSON.

    python benchmarks/bench_scaling.py                 # docs/figures/scaling.{png,json}
    python benchmarks/bench_scaling.py --quick --out-dir /tmp/scaling   # tiny sweep, a smoke test
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_train_step import training_steps  # noqa: E402
from common import timed  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("minilora", "torch", "torch_sdpa")
LABELS = {"minilora": "minilora (NumPy)", "torch": "PyTorch eager", "torch_sdpa": "PyTorch + SDPA"}
COLORS = {"minilora": "tab:blue", "torch": "tab:orange", "torch_sdpa": "tab:green"}   # a ratio takes its denominator's
FULL = dict(n_embd=[64, 128, 256, 512, 1024], seq=[64, 128, 256, 512], base_embd=128, base_seq=64,
            n_layer=2, n_head=4, batch=8, vocab=64, runs=5, block=5)
QUICK = dict(n_embd=[32, 64], seq=[16, 32], base_embd=32, base_seq=16,
             n_layer=1, n_head=4, batch=2, vocab=64, runs=1, block=1)


def measure_point(plan: dict, n_embd: int, seq: int) -> dict:
    """Step times (median and range over runs) and ratios at one (n_embd, seq)."""
    steps, model = training_steps(n_embd, plan["n_layer"], plan["n_head"], plan["batch"], seq, plan["vocab"])
    t = timed(steps, plan["runs"], plan["block"], f"n_embd {n_embd}, seq {seq}")
    point = {"n_embd": n_embd, "seq": seq, "params": model.num_parameters()}
    for name in LIBRARIES:
        point[name] = {"median_s": t.median(name), "range_s": list(t.spread(name))}
    for name in ("torch", "torch_sdpa"):
        r = t.ratio("minilora", name)
        point[f"ratio_{name}"] = {"median": r.median, "range": [r.low, r.high]}
    return point


def growth_exponent(xs: list[float], ts: list[float]) -> float:
    """k in t ~ x^k, the least-squares slope of log t against log x over the last three points
    (the small sizes are dominated by fixed per-operation costs, not by arithmetic)."""
    x, y = np.log(xs[-3:]), np.log(ts[-3:])
    return float(np.polyfit(x, y, 1)[0])


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex="col")
    for col, (sweep, key, xlabel) in enumerate((("width", "n_embd", "n_embd (sequence length "
                                                 f"{results['plan']['base_seq']})"),
                                                ("length", "seq", "sequence length (n_embd "
                                                 f"{results['plan']['base_embd']})"))):
        points = results[sweep]
        xs = [p[key] for p in points]
        top, bottom = axes[0, col], axes[1, col]
        for name in LIBRARIES:
            med = np.array([p[name]["median_s"] for p in points]) * 1e3
            lo = med - np.array([p[name]["range_s"][0] for p in points]) * 1e3
            hi = np.array([p[name]["range_s"][1] for p in points]) * 1e3 - med
            top.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, color=COLORS[name], label=LABELS[name])
        for name in ("torch", "torch_sdpa"):
            med = np.array([p[f"ratio_{name}"]["median"] for p in points])
            lo = med - np.array([p[f"ratio_{name}"]["range"][0] for p in points])
            hi = np.array([p[f"ratio_{name}"]["range"][1] for p in points]) - med
            bottom.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, color=COLORS[name],
                            label=f"minilora / {LABELS[name]}")
        bottom.axhline(1.0, color="grey", lw=1, ls="--")
        top.set(xscale="log", yscale="log", ylabel="ms per training step")
        bottom.set(xscale="log", xlabel=xlabel, ylabel="time ratio")
        bottom.set_xticks(xs, [str(x) for x in xs])
        bottom.minorticks_off()
        top.legend(fontsize=8)
        bottom.legend(fontsize=8)
        top.grid(alpha=0.3, which="both")
        bottom.grid(alpha=0.3)
    plan = results["plan"]
    fig.suptitle(f"GPT training step ({plan['n_layer']} layers, batch {plan['batch']}, AdamW), "
                 f"{results['machine']['cpus']} CPU cores, load average {results['machine']['load_before']:.1f}; "
                 "bars: fastest-slowest run", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tiny sweep (seconds): checks the tool works")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "figures",
                    help="where scaling.png and scaling.json go")
    args = ap.parse_args(argv)
    plan = dict(QUICK if args.quick else FULL)
    load_before = os.getloadavg()[0]
    results = {
        "plan": plan,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_before": load_before, "numpy": np.__version__, "torch": torch.__version__},
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "width": [measure_point(plan, c, plan["base_seq"]) for c in plan["n_embd"]],
        "length": [measure_point(plan, plan["base_embd"], T) for T in plan["seq"]],
    }
    results["machine"]["load_after"] = os.getloadavg()[0]
    for sweep, key in (("width", "n_embd"), ("length", "seq")):
        points = results[sweep]
        print(f"{key:>7s}  " + "  ".join(f"{LABELS[n]:>18s}" for n in LIBRARIES)
              + "   minilora/eager   minilora/sdpa")
        for p in points:
            times = "  ".join(f"{p[n]['median_s'] * 1e3:15.1f} ms" for n in LIBRARIES)
            ratios = "   ".join(f"{p[f'ratio_{n}']['median']:5.2f} ({p[f'ratio_{n}']['range'][0]:.2f}-"
                                f"{p[f'ratio_{n}']['range'][1]:.2f})" for n in ("torch", "torch_sdpa"))
            print(f"{p[key]:7d}  {times}   {ratios}")
        if len(points) >= 3:
            xs = [p[key] for p in points]
            grows = {n: growth_exponent(xs, [p[n]["median_s"] for p in points]) for n in LIBRARIES}
            results[f"growth_{key}"] = grows
            print(f"  step time ~ {key}^k over the largest three sizes: "
                  + ", ".join(f"{LABELS[n]} k = {k:.2f}" for n, k in grows.items()))
    print(f"load average before {load_before:.1f}, after {results['machine']['load_after']:.1f} "
          f"on {os.cpu_count()} cores" + ("  (a busy machine: treat these numbers as rough)"
                                          if max(load_before, results['machine']['load_after']) > 1.5 else ""))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    # written beside the final names, then renamed: an interrupted run leaves the old pair intact
    tmp_json, tmp_png = args.out_dir / "scaling.json.tmp", args.out_dir / "scaling.tmp.png"
    tmp_json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    plot(results, tmp_png)
    os.replace(tmp_json, args.out_dir / "scaling.json")
    os.replace(tmp_png, args.out_dir / "scaling.png")
    print(f"saved {args.out_dir / 'scaling.png'} and {args.out_dir / 'scaling.json'}")
    return results


if __name__ == "__main__":
    main()

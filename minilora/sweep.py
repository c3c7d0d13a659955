"""The rank sweep behind notebook 08's rank explorer: real adapters, trained by one fair recipe.

A rank comparison is only fair when everything but the rank is held still:

* the same task, base model, batch size and number of steps for every run;
* one learning rate for every rank, chosen once (at a middle rank) and then fixed;
* an alpha that does not secretly change the step size with r: alpha = r, so the
  scaling alpha / r is 1 for every rank (with alpha fixed, a larger r is scaled
  down and, at the same learning rate, learns more slowly);
* enough steps that a rank able to learn the task does so on every seed (at 300
  steps, runs that later reach 100% were still at a coin-flip 25%);
* several seeds per setting, reporting the mean and the spread, because one run
  of a small model can land anywhere (a single-seed sweep once made r = 4 look
  far better than r = 8, and another seed reversed it).

Run it (30 runs of about 16 s each on an idle core; `--jobs 2` uses two):

    python -m minilora.sweep --out minilora/assets/rank_sweep/inc.json

The result is a small JSON file: the recipe, then one record per run (rank,
targets, seed, held-out accuracy, trainable parameters, seconds).
`load_sweep` reads it back and `summarize` groups it by (targets, rank).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

SWEEP_DIR = Path(__file__).parent / "assets" / "rank_sweep"
DEFAULT_FILE = SWEEP_DIR / "inc.json"

# Target sets the explorer offers, by name: attention's query and value (the
# paper's choice) and every Linear of every block.
TARGET_SETS = {
    "q,v": ["q_proj", "v_proj"],
    "all linear": ["q_proj", "k_proj", "v_proj", "o_proj", "fc", "proj"],
}


@dataclass
class Recipe:
    """Everything a run depends on except rank, targets and seed."""

    task: str = "inc"
    steps: int = 600
    lr: float = 1e-2
    warmup: int = 30
    min_lr_ratio: float = 0.1
    alpha: str = "r"                      # "r": lora_alpha = r, scaling 1 at every rank
    batch_size: int = 32
    eval_prompts: int = 200
    ranks: list = field(default_factory=lambda: [1, 2, 4, 8, 16])
    targets: list = field(default_factory=lambda: list(TARGET_SETS))
    seeds: list = field(default_factory=lambda: [0, 1, 2])


def run_one(recipe: Recipe, rank: int, targets: str, seed: int) -> dict:
    """Train one adapter on the shipped tiny GPT and measure it on held-out prompts."""
    from minilora.lora import LoraConfig, apply_lora
    from minilora.pretrained import load_pretrained, task_accuracy, task_batches
    from minilora.tensor import manual_seed
    from minilora.train import TrainConfig, train

    if targets not in TARGET_SETS:
        raise ValueError(f"targets={targets!r} must be one of {list(TARGET_SETS)}")
    if recipe.alpha == "r":                              # scaling alpha / r = 1
        lora = LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGET_SETS[targets])
    elif recipe.alpha == "rslora":                       # scaling 2 / sqrt(r): 1 at r = 4
        lora = LoraConfig(r=rank, lora_alpha=2.0, use_rslora=True, target_modules=TARGET_SETS[targets])
    else:
        raise ValueError(f"recipe.alpha={recipe.alpha!r} must be 'r' or 'rslora'")
    manual_seed(seed)                                    # A's random start
    model = apply_lora(load_pretrained(), lora)
    config = TrainConfig(steps=recipe.steps, lr=recipe.lr, warmup=recipe.warmup,
                         min_lr_ratio=recipe.min_lr_ratio)
    batches = task_batches([recipe.task], recipe.batch_size, model.config.block_size, seed)
    result = train(model, batches, config, progress=False)
    accuracy = task_accuracy(model, [recipe.task], n=recipe.eval_prompts)[recipe.task]
    return {"rank": rank, "targets": targets, "seed": seed, "accuracy": accuracy,
            "trainable": model.num_parameters(trainable_only=True),
            "final_loss": round(float(np.mean(result.losses[-20:])), 5),
            "seconds": round(result.seconds, 2)}


def _run_star(args):
    return run_one(*args)


def run_sweep(recipe: Recipe, out=None, jobs: int = 1, progress: bool = True) -> dict:
    """Every (targets, rank, seed) of the recipe. With `out`, the JSON file is rewritten
    (atomically) after every finished run, so an interrupted sweep keeps what it did."""
    plan = [(recipe, r, t, s) for t in recipe.targets for r in recipe.ranks for s in recipe.seeds]
    start = time.perf_counter()
    result = {"format": "minilora-rank-sweep", "version": 1, "recipe": asdict(recipe), "runs": [],
              "complete": False, "seconds": 0.0}

    def record(run: dict) -> None:
        result["runs"].append(run)
        result["seconds"] = round(time.perf_counter() - start, 1)
        result["complete"] = len(result["runs"]) == len(plan)
        if progress:
            print(_line(run), flush=True)
        if out is not None:
            from minilora.files import json_bytes, write_file_atomically
            write_file_atomically(Path(out), json_bytes(result))

    if jobs > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(jobs) as pool:
            for run in pool.imap(_run_star, plan):
                record(run)
    else:
        for args in plan:
            record(run_one(*args))
    return result


def _line(rec: dict) -> str:
    return (f"{rec['targets']:>10s}  r={rec['rank']:<2d} seed {rec['seed']}: accuracy {rec['accuracy']:6.1%}"
            f"  ({rec['trainable']:,} trainable, {rec['seconds']:.1f} s)")


def load_sweep(path=None) -> dict:
    """Read a sweep file (default: the shipped one) and check its shape."""
    path = Path(path) if path is not None else DEFAULT_FILE
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != "minilora-rank-sweep" or "runs" not in data:
        raise ValueError(f"{path} is not a rank-sweep file (written by `python -m minilora.sweep`)")
    return data


def summarize(sweep: dict) -> dict:
    """{(targets, rank): {"mean", "min", "max", "std", "accuracies", "trainable", "seeds"}}."""
    groups: dict[tuple, list] = {}
    for rec in sweep["runs"]:
        groups.setdefault((rec["targets"], int(rec["rank"])), []).append(rec)
    out = {}
    for key, recs in sorted(groups.items()):
        acc = np.array([r["accuracy"] for r in recs], dtype=np.float64)
        out[key] = {"mean": float(acc.mean()), "min": float(acc.min()), "max": float(acc.max()),
                    "std": float(acc.std(ddof=1)) if acc.size > 1 else 0.0,
                    "accuracies": acc.tolist(), "seeds": [r["seed"] for r in recs],
                    "trainable": int(recs[0]["trainable"])}
    return out


def main(argv=None) -> int:
    defaults = Recipe()
    p = argparse.ArgumentParser(prog="python -m minilora.sweep",
                                description="Train LoRA adapters at several ranks and seeds; write the results as JSON.")
    p.add_argument("--out", default=str(DEFAULT_FILE), help=f"JSON file to write (default: {DEFAULT_FILE})")
    p.add_argument("--task", default=defaults.task, help="downstream task (dsc, rot or inc)")
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--ranks", default=",".join(map(str, defaults.ranks)))
    p.add_argument("--targets", default=";".join(defaults.targets),
                   help=f"target sets separated by ';' (from {list(TARGET_SETS)})")
    p.add_argument("--seeds", default=",".join(map(str, defaults.seeds)))
    p.add_argument("--jobs", type=int, default=1, help="processes in parallel (each uses one core)")
    a = p.parse_args(argv)
    recipe = Recipe(task=a.task, steps=a.steps, lr=a.lr, ranks=[int(x) for x in a.ranks.split(",")],
                    targets=[t.strip() for t in a.targets.split(";")], seeds=[int(x) for x in a.seeds.split(",")])
    for name in recipe.targets:
        if name not in TARGET_SETS:
            p.error(f"unknown target set {name!r}; choose from {list(TARGET_SETS)}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result = run_sweep(recipe, out=a.out, jobs=a.jobs)
    print(f"\n{len(result['runs'])} runs in {result['seconds']:.0f} s; wrote {a.out}")
    for (targets, rank), s in summarize(result).items():
        print(f"{targets:>10s} r={rank:<2d}: mean {s['mean']:6.1%}  range {s['min']:.1%}-{s['max']:.1%}"
              f"  ({s['trainable']:,} trainable)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

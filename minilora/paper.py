"""`minilora paper`: the LoRA paper's claims, each measured on minilora's own models.

Every experiment below is one claim of Hu et al. 2021 (or of the intrinsic-
dimension papers it builds on), run on the shipped tiny GPT and its tasks:

1. intrinsic rank: full fine-tuning's Delta W has a low stable rank while W0
   does not; truncating every Delta W to rank r <= 4 keeps the accuracy, and a
   Delta W with the same singular values but random directions does not;
2. rank sweep (Table 6): a very small r already reaches full fine-tuning;
3. budget table (Table 5): with a fixed number of trainable parameters,
   adapting several matrices at a small r beats one matrix at a larger r;
4. subspace similarity (section 7.2): the top direction of A for r = 8 lies
   in the span of the r = 64 adapter's top directions;
5. amplification (section 7.3): ||Delta W||_F / ||U^T W0 V||_F falls as r grows;
6. rsLoRA: with scaling alpha / r the gradient shrinks as r grows; with alpha / sqrt(r) it does not;
7. intrinsic dimension (Li et al. 2018): d_int90 of a small MLP barely moves
   when the network gets much wider;
8. earlier methods: adapter layers add latency at batch size 1, merged LoRA
   does not; prompt tuning spends context and is harder to optimise.

The recipe is fixed in advance (below) and the verdicts are printed whatever
they are: a claim our small model does not reproduce is a finding to report,
not a setting to tune. `--quick` runs fewer seeds, ranks and steps.

Writes DIR/paper_results.json and one PNG per experiment.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from minilora import analysis as A
from minilora import data
from minilora import functional as F
from minilora.lora import LoraConfig, apply_lora, lora_layers, merge
from minilora.methods import PromptTuning, apply_adapter_layers
from minilora.optim import AdamW
from minilora.pretrained import BATCH_SIZE, load_pretrained, task_accuracy, task_batches
from minilora.tensor import Tensor, manual_seed, no_grad
from minilora.timing import alternate
from minilora.train import TrainConfig, train

ASSET_DIR = Path(__file__).parent / "assets" / "paper"

# The tasks and learning rates (fixed before any result was seen; the demo's recipe).
RANK_TASK = "dsc"        # intrinsic rank: full fine-tuning on sort-descending
LORA_TASK = "inc"        # rank sweep, budget table, similarity, earlier methods
FULL_LR, LORA_LR, PROMPT_LR, ADAPTER_LR = 1e-3, 1e-2, 3e-2, 1e-2
ALPHA_PER_R = 2          # lora_alpha = 2 r: the scaling alpha / r is 2 at every rank


@dataclass
class Plan:
    """How much of each experiment to run."""

    mode: str
    steps: int                       # fine-tuning steps of every GPT run
    eval_n: int                      # held-out prompts per accuracy
    seeds: int                       # seeds of the rank sweep
    ranks: list                      # rank sweep (also amplification)
    budget_rows: list                # [(targets, r), ...], all with the same r * len(targets)
    budget_seeds: int
    truncation_ranks: list
    prompt_lengths: list
    id_widths: list                  # MLP hidden widths for intrinsic dimension
    id_dims: list                    # subspace dimensions d tried
    id_steps: int
    id_seeds: int
    latency_repeats: int


ALL_BUDGET_ROWS = [(["q_proj"], 8), (["k_proj"], 8), (["v_proj"], 8), (["o_proj"], 8),
                   (["q_proj", "k_proj"], 4), (["q_proj", "v_proj"], 4),
                   (["q_proj", "k_proj", "v_proj", "o_proj"], 2)]

QUICK = Plan(mode="quick", steps=300, eval_n=100, seeds=2, ranks=[1, 2, 4, 8],
             budget_rows=[ALL_BUDGET_ROWS[i] for i in (0, 2, 5, 6)], budget_seeds=1,
             truncation_ranks=[1, 2, 4, 8, 16], prompt_lengths=[2, 8],
             id_widths=[16, 160], id_dims=[4, 8, 16, 32, 64, 128, 256], id_steps=300, id_seeds=1,
             latency_repeats=15)
FULL = Plan(mode="full", steps=400, eval_n=200, seeds=3, ranks=[1, 2, 4, 8, 16, 32],
            budget_rows=ALL_BUDGET_ROWS, budget_seeds=2,
            truncation_ranks=[1, 2, 4, 8, 16, 32], prompt_lengths=[1, 2, 4, 8, 12],
            id_widths=[16, 64, 256], id_dims=[4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256],
            id_steps=500, id_seeds=2, latency_repeats=40)


# ----------------------------------------------------------------------------
# Shared runs
# ----------------------------------------------------------------------------

class Runs:
    """Trains each (method, targets, r, seed) once and remembers the result."""

    def __init__(self, plan: Plan, progress: bool):
        self.plan, self.progress = plan, progress
        self.lora: dict = {}
        self.full: dict = {}

    def train_config(self, lr: float) -> TrainConfig:
        steps = self.plan.steps
        return TrainConfig(steps=steps, lr=lr, warmup=min(30, steps // 10), min_lr_ratio=0.1)

    def accuracy(self, model, task: str) -> float:
        return task_accuracy(model, [task], n=self.plan.eval_n)[task]

    def full_finetune(self, task: str, seed: int):
        key = (task, seed)
        if key not in self.full:
            manual_seed(seed)
            model = load_pretrained()
            train(model, task_batches([task], BATCH_SIZE, model.config.block_size, seed),
                  self.train_config(FULL_LR), progress=False)
            self.full[key] = (model, self.accuracy(model, task))
        return self.full[key]

    def lora_run(self, targets, r: int, seed: int, task: str = LORA_TASK):
        key = (task, tuple(targets), r, seed)
        if key not in self.lora:
            manual_seed(seed)
            model = apply_lora(load_pretrained(),
                               LoraConfig(r=r, lora_alpha=ALPHA_PER_R * r, target_modules=list(targets)))
            train(model, task_batches([task], BATCH_SIZE, model.config.block_size, seed),
                  self.train_config(LORA_LR), progress=False)
            self.lora[key] = {"model": model, "accuracy": self.accuracy(model, task),
                              "trainable": model.num_parameters(trainable_only=True)}
        return self.lora[key]


# ----------------------------------------------------------------------------
# The experiments
# ----------------------------------------------------------------------------

def exp_intrinsic_rank(runs: Runs, bar) -> dict:
    plan = runs.plan
    base = load_pretrained()
    tuned, full_acc = runs.full_finetune(RANK_TASK, 0)
    bar.update()
    updates = A.weight_updates(base, tuned)
    w0 = {n: A.as_float64(p.data) for n, p in base.named_parameters() if n in updates}
    truncation = A.truncation_curve(base, updates, plan.truncation_ranks,
                                    lambda model: runs.accuracy(model, RANK_TASK))
    rng = np.random.default_rng(0)
    control = {n: A.random_directions_like(dw, rng) for n, dw in updates.items()}
    bar.update()
    return {
        "task": RANK_TASK,
        "matrices": list(updates),
        "w0_stable_rank": float(np.mean([A.stable_rank(w) for w in w0.values()])),
        "delta_w_stable_rank": float(np.mean([A.stable_rank(dw) for dw in updates.values()])),
        "w0_stable_ranks": [A.stable_rank(w) for w in w0.values()],
        "delta_w_stable_ranks": [A.stable_rank(dw) for dw in updates.values()],
        "energy_kept_r4": float(np.mean([A.energy_kept(dw, 4) for dw in updates.values()])),
        "spectra": {n: (A.update_spectrum(dw) / A.update_spectrum(dw)[0]).round(5).tolist()
                    for n, dw in updates.items()},
        "w0_spectra": {n: (A.update_spectrum(w) / A.update_spectrum(w)[0]).round(5).tolist()
                       for n, w in w0.items()},
        "truncation": {"ranks": plan.truncation_ranks, "accuracy": truncation},
        "full_accuracy": full_acc,
        "base_accuracy": runs.accuracy(base, RANK_TASK),
        "random_control_accuracy": runs.accuracy(A.with_updates(base, control), RANK_TASK),
    }


def exp_rank_sweep(runs: Runs, bar) -> dict:
    plan = runs.plan
    per_seed = {r: [] for r in plan.ranks}
    full = []
    for seed in range(plan.seeds):
        full.append(runs.full_finetune(LORA_TASK, seed)[1])
        bar.update()
        for r in plan.ranks:
            per_seed[r].append(runs.lora_run(["q_proj", "v_proj"], r, seed)["accuracy"])
            bar.update()
    mean = [float(np.mean(per_seed[r])) for r in plan.ranks]
    full_mean = float(np.mean(full))
    return {"task": LORA_TASK, "targets": ["q_proj", "v_proj"], "ranks": plan.ranks, "accuracy": mean,
            "accuracy_per_seed": [per_seed[r] for r in plan.ranks],
            "spread": [float(np.max(per_seed[r]) - np.min(per_seed[r])) for r in plan.ranks],
            "seeds": plan.seeds, "full_finetune_accuracy": full_mean, "full_finetune_per_seed": full,
            "smallest_r_90": A.smallest_reaching(plan.ranks, mean, 0.9 * full_mean)}


def exp_budget_table(runs: Runs, bar) -> list:
    rows = []
    for targets, r in runs.plan.budget_rows:
        accs, trainable = [], None
        for seed in range(runs.plan.budget_seeds):
            run = runs.lora_run(targets, r, seed)
            accs.append(run["accuracy"])
            trainable = run["trainable"]
            bar.update()
        rows.append({"targets": targets, "r": r, "trainable_params": trainable,
                     "accuracy": float(np.mean(accs)), "accuracy_per_seed": accs})
    return rows


def exp_subspace_similarity(runs: Runs, bar) -> dict:
    small = A.lora_A_matrices(runs.lora_run(["q_proj", "v_proj"], 8, 0)["model"])
    large = A.lora_A_matrices(runs.lora_run(["q_proj", "v_proj"], 64, 0)["model"])
    bar.update()
    names = list(small)
    top1 = [A.subspace_similarity(small[n], large[n], 1, 1) for n in names]
    shown = names[-1]                                     # the last layer's v_proj, as the paper's Figure 3
    dim = small[shown].shape[1]
    return {"matrices": names, "phi_top1_per_matrix": top1, "phi_top1": float(np.mean(top1)),
            "phi_random_baseline": A.random_subspace_baseline(dim, 1, 1),
            "grid_matrix": shown, "grid": A.subspace_similarity_grid(small[shown], large[shown]).round(4).tolist(),
            "random_grid": A.subspace_similarity_grid(*[np.random.default_rng(s).standard_normal((k, dim))
                                                        for s, k in ((1, 8), (2, 64))]).round(4).tolist()}


def exp_amplification(runs: Runs, bar) -> dict:
    ranks = sorted(set(runs.plan.ranks) | {64})
    base = {n: A.as_float64(p.data) for n, p in load_pretrained().named_parameters()}
    factors, per_matrix = [], []
    for r in ranks:
        updates = A.lora_updates(runs.lora_run(["q_proj", "v_proj"], r, 0)["model"])
        values = [A.amplification_factor(base[n], dw, min(r, min(dw.shape))).factor for n, dw in updates.items()]
        per_matrix.append(values)
        factors.append(float(np.mean(values)))
    bar.update()
    return {"ranks": ranks, "factor": factors, "factor_per_matrix": per_matrix}


def exp_rslora(runs: Runs, bar) -> dict:
    """||dL/dB||_F at initialisation (B = 0), summed over layers, for both scalings."""
    ranks = [1, 2, 4, 8, 16, 32, 64]
    x, y = task_batches([LORA_TASK], BATCH_SIZE, 32, 123)(0)
    out = {"ranks": ranks, "lora_alpha": 8, "grad_norm_alpha_over_r": [], "grad_norm_alpha_over_sqrt_r": []}
    for rs in (False, True):
        for r in ranks:
            manual_seed(0)
            model = apply_lora(load_pretrained(), LoraConfig(r=r, lora_alpha=8, use_rslora=rs))
            F.cross_entropy(model(x), y, ignore_index=data.IGNORE).backward()
            sq = sum(float((A.as_float64(layer.lora_B["default"].weight.grad) ** 2).sum())
                     for layer in lora_layers(model).values())
            out["grad_norm_alpha_over_sqrt_r" if rs else "grad_norm_alpha_over_r"].append(math.sqrt(sq))
    bar.update()
    return out


def exp_intrinsic_dimension(runs: Runs, bar) -> dict:
    plan = runs.plan
    xtr, ytr = A.teacher_task(1024, seed=0)
    xte, yte = A.teacher_task(2000, seed=1)

    def loss_fn(model):
        return F.cross_entropy(model(Tensor(xtr)), ytr)

    num_params, d90, full_accs, curves = [], [], [], []
    for width in plan.id_widths:
        seeds_d90, seed_full, seed_curves = [], [], []
        for seed in range(plan.id_seeds):
            model = A.TinyMLP(10, width, 4, seed=seed)
            D = model.num_parameters()
            opt = AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
            for _ in range(plan.id_steps):
                opt.zero_grad()
                loss_fn(model).backward()
                opt.step()
            full = A.mlp_accuracy(model, xte, yte)
            accs = []
            for d in plan.id_dims:
                model = A.TinyMLP(10, width, 4, seed=seed)
                A.train_in_subspace(model, loss_fn, A.random_projection(D, d, seed=1000 + seed), plan.id_steps, lr=3e-2)
                accs.append(A.mlp_accuracy(model, xte, yte))
                bar.update()
            seed_full.append(full)
            seed_curves.append(accs)
            seeds_d90.append(A.d_int90(plan.id_dims, accs, full))
        num_params.append(D)
        full_accs.append(float(np.mean(seed_full)))
        curves.append(np.mean(seed_curves, axis=0).tolist())
        found = [d for d in seeds_d90 if d is not None]
        d90.append(float(np.mean(found)) if len(found) == len(seeds_d90) else None)
    return {"widths": plan.id_widths, "num_params": num_params, "d_int90": d90, "dims": plan.id_dims,
            "accuracy": curves, "full_accuracy": full_accs, "seeds": plan.id_seeds, "steps": plan.id_steps,
            "task": "4-class labels of a fixed random two-layer teacher on 10-D Gaussian inputs"}


def exp_earlier_methods(runs: Runs, bar) -> dict:
    plan = runs.plan
    lora = runs.lora_run(["q_proj", "v_proj"], 4, 0)
    manual_seed(0)
    adapters = apply_adapter_layers(load_pretrained(), bottleneck=8)
    train(adapters, task_batches([LORA_TASK], BATCH_SIZE, 32, 0), runs.train_config(ADAPTER_LR), progress=False)
    adapter_acc = runs.accuracy(adapters, LORA_TASK)
    bar.update()
    prompt_acc, prompt_params = [], []
    for n in plan.prompt_lengths:
        manual_seed(0)
        pt = PromptTuning(load_pretrained(), n, seed=0)
        train(pt, task_batches([LORA_TASK], BATCH_SIZE, pt.config.block_size, 0), runs.train_config(PROMPT_LR),
              progress=False)
        prompt_acc.append(runs.accuracy(pt, LORA_TASK))
        prompt_params.append(pt.num_parameters(trainable_only=True))
        bar.update()

    # Latency at batch size 1: one sequence of 24 tokens, the contenders timed in turns.
    base = load_pretrained()
    merged = apply_lora(load_pretrained(), LoraConfig(r=4, lora_alpha=8))
    unmerged = apply_lora(load_pretrained(), LoraConfig(r=4, lora_alpha=8))
    merge(merged)
    prompt8 = PromptTuning(load_pretrained(), 8)
    ids = np.random.default_rng(0).integers(1, 11, size=(1, 24))

    def forward_of(model):
        def run():
            with no_grad():
                model(ids)
        return run

    t = alternate({"base": forward_of(base), "lora_merged": forward_of(merged),
                   "lora_unmerged": forward_of(unmerged), "adapter_layers": forward_of(adapters),
                   "prompt_tuning_8": forward_of(prompt8)}, repeats=plan.latency_repeats)
    bar.update()
    return {"task": LORA_TASK, "sequence_length": 24, "batch_size": 1,
            "latency_ms": {k: v * 1e3 for k, v in t.items()},
            "lora_merged_latency_ratio": t["lora_merged"] / t["base"],
            "lora_unmerged_latency_ratio": t["lora_unmerged"] / t["base"],
            "adapter_layers_latency_ratio": t["adapter_layers"] / t["base"],
            "prompt_tuning_latency_ratio": t["prompt_tuning_8"] / t["base"],
            "adapter_layers": {"bottleneck": 8, "trainable_params": adapters.num_parameters(trainable_only=True),
                               "accuracy": adapter_acc},
            "lora": {"r": 4, "trainable_params": lora["trainable"], "accuracy": lora["accuracy"]},
            "prompt_tuning": {"prompt_lengths": plan.prompt_lengths, "accuracy": prompt_acc,
                              "trainable_params": prompt_params}}


# ----------------------------------------------------------------------------
# Verdicts: the criteria, fixed before the runs
# ----------------------------------------------------------------------------

def verdicts(res: dict) -> list[dict]:
    """One row per claim: what the paper says, what we measured, and whether it holds here."""
    rows = []

    def row(claim, paper, measured, ok):
        verdict = "not measured" if ok is None else "reproduced" if ok else "not reproduced"
        rows.append({"claim": claim, "paper": paper, "measured": measured, "verdict": verdict})

    ir = res["intrinsic_rank"]
    row("Delta W has a lower stable rank than W0", "Delta W low 'intrinsic rank'; W0 full rank",
        f"mean stable rank Delta W {ir['delta_w_stable_rank']:.2f} vs W0 {ir['w0_stable_rank']:.2f}",
        ir["delta_w_stable_rank"] < ir["w0_stable_rank"])
    ranks, accs = ir["truncation"]["ranks"], ir["truncation"]["accuracy"]
    best_small = max(a for r, a in zip(ranks, accs) if r <= 4)
    row("Truncating Delta W to rank <= 4 keeps accuracy (within 10 points)", "small r suffices",
        f"rank<=4 best {best_small:.1%} vs untruncated {ir['full_accuracy']:.1%}",
        best_small >= ir["full_accuracy"] - 0.10 - 1e-9)
    row("A Delta W with the same spectrum but random directions fails (>= 50 points below)",
        "the directions matter, not the size",
        f"random control {ir['random_control_accuracy']:.1%} vs {ir['full_accuracy']:.1%}",
        ir["random_control_accuracy"] <= ir["full_accuracy"] - 0.5 + 1e-9)
    rs = res["rank_sweep"]
    row("The smallest r reaching 90% of full fine-tuning is <= 4 (mean over seeds)",
        "Table 6: r = 1 already 73.4 vs 73.5 at r = 64 (WikiSQL)",
        f"smallest r: {rs['smallest_r_90']} (full fine-tuning {rs['full_finetune_accuracy']:.1%}, {rs['seeds']} seeds)",
        rs["smallest_r_90"] is not None and rs["smallest_r_90"] <= 4)
    bt = res["budget_table"]
    counts = {b["trainable_params"] for b in bt}
    row("Budget-table rows have equal trainable-parameter counts", "Table 5: fixed 18M budget",
        f"{sorted(counts)}", len(counts) == 1)
    single = max((b["accuracy"] for b in bt if len(b["targets"]) == 1), default=None)
    multi = max((b["accuracy"] for b in bt if len(b["targets"]) > 1), default=None)
    both = single is not None and multi is not None
    row("At equal budget, several matrices at small r beat one matrix at large r", "Table 5: Wq,Wv r=4 73.7 vs Wq r=8 70.4",
        f"best multi-matrix {multi:.1%} vs best single-matrix {single:.1%}" if both else "needs both kinds of row",
        multi > single if both else None)
    ss = res["subspace_similarity"]
    row("phi_top1(A_r=8, A_r=64) >= 0.5 and >= 5x random", "section 7.2: phi > 0.5",
        f"phi_top1 {ss['phi_top1']:.3f} vs random {ss['phi_random_baseline']:.3f}",
        ss["phi_top1"] >= 0.5 and ss["phi_top1"] >= 5 * ss["phi_random_baseline"])
    am = res["amplification"]
    falls = all(b < a for a, b in zip(am["factor"], am["factor"][1:]))
    row("The amplification factor falls as r grows", "section 7.3: about 21.5 at r=4, 2 at r=64",
        ", ".join(f"r={r}: {f:.1f}" for r, f in zip(am["ranks"], am["factor"])), falls)
    rl = res["rslora"]
    g, gs = rl["grad_norm_alpha_over_r"], rl["grad_norm_alpha_over_sqrt_r"]
    row("With alpha/r the gradient shrinks as r grows; alpha/sqrt(r) keeps it steady (within 2x)",
        "rsLoRA: alpha/sqrt(r) stabilises learning across ranks",
        f"r {rl['ranks'][0]} -> {rl['ranks'][-1]}: alpha/r {g[0]:.3g} -> {g[-1]:.3g}; alpha/sqrt(r) {gs[0]:.3g} -> {gs[-1]:.3g}",
        g[-1] < g[0] / 2 and max(gs) / min(gs) <= 2)
    idim = res["intrinsic_dimension"]
    d = idim["d_int90"]
    grow = idim["num_params"][-1] / idim["num_params"][0]
    ok = None not in d and grow >= 8 and d[-1] / d[0] <= 2
    row("When parameters grow >= 8x, d_int90 grows <= 2x", "Li et al.: D 24x, d_int90 1.33x (MNIST)",
        f"D {idim['num_params']} ({grow:.1f}x): d_int90 {d}", ok)
    em = res["earlier_methods"]
    row("Merged LoRA adds no latency at batch 1; adapter layers do",
        "GPT-2 M, batch 1: adapters +20.7% / +30.3%, LoRA +0%",
        f"merged LoRA {em['lora_merged_latency_ratio']:.2f}x, adapter layers {em['adapter_layers_latency_ratio']:.2f}x base",
        em["lora_merged_latency_ratio"] <= 1.05 and em["adapter_layers_latency_ratio"] > em["lora_merged_latency_ratio"])
    pt = em["prompt_tuning"]
    row("Prompt tuning trails LoRA at the same number of steps", "prefix/prompt tuning is harder to optimise",
        f"prompt tuning best {max(pt['accuracy']):.1%} (lengths {pt['prompt_lengths']}) vs LoRA r=4 {em['lora']['accuracy']:.1%}",
        max(pt["accuracy"]) < em["lora"]["accuracy"])
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The verdict rows as a Markdown table (for docs/results.md)."""
    lines = ["| claim | the paper | minilora measured | verdict |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['claim']} | {r['paper']} | {r['measured']} | {r['verdict']} |" for r in rows]
    return "\n".join(lines)


def print_table(rows: list[dict]) -> None:
    print(f"\n{'claim':70s} {'our measurement':70s} verdict")
    for r in rows:
        print(f"{r['claim'][:70]:70s} {r['measured'][:70]:70s} {r['verdict']}")


# ----------------------------------------------------------------------------
# Plots (one PNG per experiment; skipped without matplotlib)
# ----------------------------------------------------------------------------

def save_plots(res: dict, out: Path) -> list[str]:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print("(matplotlib is not installed, so no PNGs: pip install 'minilora[plot]')")
        return []
    written = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=80)
        written.append(name)

    ir = res["intrinsic_rank"]
    fig = Figure(figsize=(9, 3.5))
    ax1, ax2 = fig.subplots(1, 2)
    for name, s in ir["spectra"].items():
        ax1.plot(range(1, len(s) + 1), s, color="C1", alpha=0.6)
    for name, s in ir["w0_spectra"].items():
        ax1.plot(range(1, len(s) + 1), s, color="C0", alpha=0.6)
    ax1.set(xlabel="index i", ylabel="sigma_i / sigma_1", title="spectra: W0 (blue), Delta W (orange)", xlim=(1, 32))
    ax2.plot(ir["truncation"]["ranks"], ir["truncation"]["accuracy"], "o-", label="Delta W truncated to rank r")
    ax2.axhline(ir["full_accuracy"], color="k", ls="--", label="untruncated")
    ax2.axhline(ir["random_control_accuracy"], color="r", ls=":", label="random directions")
    ax2.set(xscale="log", xlabel="rank r", ylabel=f"exact match on {ir['task']}", ylim=(-0.02, 1.02))
    ax2.legend(fontsize=7)
    save(fig, "intrinsic_rank.png")

    rs = res["rank_sweep"]
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    for i, r in enumerate(rs["ranks"]):
        ax.plot([r] * len(rs["accuracy_per_seed"][i]), rs["accuracy_per_seed"][i], "o", color="C0", alpha=0.4)
    ax.plot(rs["ranks"], rs["accuracy"], "o-", color="C0", label="LoRA on q, v (mean over seeds)")
    ax.axhline(rs["full_finetune_accuracy"], color="k", ls="--", label="full fine-tuning")
    ax.set(xscale="log", xlabel="rank r", ylabel=f"exact match on {rs['task']}", ylim=(-0.02, 1.02))
    ax.legend(fontsize=7)
    save(fig, "rank_sweep.png")

    bt = res["budget_table"]
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    labels = ["+".join(t[0] for t in b["targets"]) + f" r={b['r']}" for b in bt]
    ax.barh(labels, [b["accuracy"] for b in bt])
    ax.set(xlabel="exact match", title=f"equal budget: {bt[0]['trainable_params']} trainable parameters", xlim=(0, 1))
    save(fig, "budget_table.png")

    ss = res["subspace_similarity"]
    fig = Figure(figsize=(9, 3.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    parts = ss["grid_matrix"].split(".")        # transformer.h.<layer>.attn.<name>.weight
    for ax, grid, title in ((ax1, ss["grid"], f"A r=8 vs r=64 (layer {parts[2]} {parts[4]})"),
                            (ax2, ss["random_grid"], "random 8 vs 64")):
        im = ax.imshow(np.array(grid), aspect="auto", vmin=0, vmax=1, cmap="viridis",
                       extent=(0.5, len(grid[0]) + 0.5, len(grid) + 0.5, 0.5))
        ax.set(xlabel="j (r=64)", ylabel="i (r=8)", title=title)
    fig.colorbar(im, ax=[ax1, ax2])
    fig.savefig(out / "subspace_similarity.png", dpi=80)
    written.append("subspace_similarity.png")

    am = res["amplification"]
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    ax.plot(am["ranks"], am["factor"], "o-")
    ax.set(xscale="log", xlabel="rank r", ylabel="||dW||_F / ||U^T W0 V||_F", title="amplification factor")
    save(fig, "amplification.png")

    rl = res["rslora"]
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    ax.plot(rl["ranks"], rl["grad_norm_alpha_over_r"], "o-", label="scaling alpha / r")
    ax.plot(rl["ranks"], rl["grad_norm_alpha_over_sqrt_r"], "s-", label="scaling alpha / sqrt(r) (rsLoRA)")
    ax.set(xscale="log", yscale="log", xlabel="rank r", ylabel="||dL/dB||_F at step 0")
    ax.legend(fontsize=7)
    save(fig, "rslora.png")

    idim = res["intrinsic_dimension"]
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    for i, width in enumerate(idim["widths"]):
        line, = ax.plot(idim["dims"], idim["accuracy"][i], "o-", label=f"width {width} (D={idim['num_params'][i]})")
        ax.axhline(0.9 * idim["full_accuracy"][i], color=line.get_color(), ls=":")
    ax.set(xscale="log", xlabel="subspace dimension d", ylabel="test accuracy", title="intrinsic dimension (dotted: 90%)")
    ax.legend(fontsize=7)
    save(fig, "intrinsic_dimension.png")

    em = res["earlier_methods"]
    fig = Figure(figsize=(9, 3.5))
    ax1, ax2 = fig.subplots(1, 2)
    names = list(em["latency_ms"])
    ax1.barh(names, [em["latency_ms"][n] / em["latency_ms"]["base"] for n in names])
    ax1.axvline(1.0, color="k", ls="--")
    ax1.set(xlabel="forward time / base (batch 1)")
    pt = em["prompt_tuning"]
    ax2.plot(pt["prompt_lengths"], pt["accuracy"], "o-", label="prompt tuning")
    ax2.axhline(em["lora"]["accuracy"], color="k", ls="--", label="LoRA r=4 on q, v")
    ax2.set(xlabel="prompt length (virtual tokens)", ylabel=f"exact match on {em['task']}", ylim=(-0.02, 1.02))
    ax2.legend(fontsize=7)
    save(fig, "earlier_methods.png")
    return written


# ----------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------

EXPERIMENTS = [("intrinsic_rank", exp_intrinsic_rank), ("rank_sweep", exp_rank_sweep),
               ("budget_table", exp_budget_table), ("subspace_similarity", exp_subspace_similarity),
               ("amplification", exp_amplification), ("rslora", exp_rslora),
               ("intrinsic_dimension", exp_intrinsic_dimension), ("earlier_methods", exp_earlier_methods)]


def _total_units(plan: Plan) -> int:
    """How many bar.update() calls the run makes, for an honest progress bar."""
    return (2 + plan.seeds * (1 + len(plan.ranks)) + len(plan.budget_rows) * plan.budget_seeds + 1 + 1 + 1
            + len(plan.id_widths) * plan.id_seeds * len(plan.id_dims) + 2 + len(plan.prompt_lengths))


def run_paper(quick: bool = False, out_dir=None, progress: bool = True, plan: Plan | None = None) -> dict:
    """Run every experiment, print the verdicts, write paper_results.json and the PNGs.

    `plan` overrides the quick/full choice (a smaller one makes a smoke test).
    """
    plan = plan or (QUICK if quick else FULL)
    out = Path(out_dir) if out_dir is not None else Path("minilora_paper")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs = Runs(plan, progress)
    results = {"mode": plan.mode, "plan": asdict(plan),
               "recipe": {"rank_task": RANK_TASK, "lora_task": LORA_TASK, "steps": plan.steps,
                          "batch_size": BATCH_SIZE, "full_lr": FULL_LR, "lora_lr": LORA_LR,
                          "lora_alpha": f"{ALPHA_PER_R} * r", "prompt_lr": PROMPT_LR,
                          "adapter_lr": ADAPTER_LR, "eval_prompts": plan.eval_n}}
    seconds = {}
    with tqdm(total=_total_units(plan), desc=f"minilora paper ({plan.mode})", disable=not progress) as bar:
        for name, fn in EXPERIMENTS:
            bar.set_postfix_str(name)
            t0 = time.perf_counter()
            results[name] = fn(runs, bar)
            seconds[name] = round(time.perf_counter() - t0, 1)
    results["seconds_per_experiment"] = seconds
    results["verdicts"] = verdicts(results)
    results["seconds"] = round(time.perf_counter() - start, 1)
    print_table(results["verdicts"])
    (out / "paper_results.json").write_text(json.dumps(results, indent=1) + "\n")
    pngs = save_plots(results, out)
    print(f"\n{plan.mode} run done in {results['seconds']:.0f} s; paper_results.json"
          f"{' and ' + ', '.join(pngs) if pngs else ''} in {out}/")
    return results


def load_results(path=None) -> dict:
    """The shipped results (or those in `path`, a directory or a JSON file)."""
    path = Path(path) if path is not None else ASSET_DIR
    if path.is_dir():
        path = path / "paper_results.json"
    if not path.exists():
        raise FileNotFoundError(f"no paper results at {path}; make them with `minilora paper --out DIR`")
    return json.loads(path.read_text())


def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="fewer seeds, ranks and steps (a few minutes instead of about half an hour)")
    parser.add_argument("--out", default="minilora_paper", help="where to write paper_results.json and the PNGs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    run_paper(quick=args.quick, out_dir=args.out, progress=not getattr(args, "no_progress", False))
    return 0

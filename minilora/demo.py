"""`minilora demo`: LoRA's whole story in one command, on the shipped tiny GPT.

1. Fine-tune the pretrained model on a task it has never seen, twice: all
   weights (full fine-tuning) and a rank-r LoRA on q and v. Compare trainable
   parameters, optimizer memory, step time, file size and accuracy, and show
   a few answers before and after.
2. Merge the adapter into the weights: the outputs stay the same and the
   forward pass costs what the base model costs.
3. Train a second adapter for a second task on the same base, and swap
   between the two: only A and B change.

Writes adapters, a checkpoint, loss curves (PNG, when matplotlib is installed)
and summary.json. They are built in OUT.partial (with resumable training
states) and moved to OUT in one step when all are there: an interrupted demo
leaves the previous OUT as it was, and `--resume` continues the partial run.

The work is split by job: `compute` trains and measures, `print_report`
prints, `write_outputs` saves the summary and the plot, `run_demo` ties them.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from minilora import backend, data
from minilora.adapters import adapter_size_bytes, save_adapter
from minilora.files import json_bytes, replace_dir, write_file_atomically
from minilora.lora import LoraConfig, apply_lora, lora_layers, merge, set_adapter, target_matches, unmerge
from minilora.model import module_shapes
from minilora.pretrained import (BATCH_SIZE, check_out_dir, check_seed, check_steps, load_pretrained,
                                 start_partial, task_accuracy, task_batches)
from minilora.tensor import manual_seed, no_grad
from minilora.timing import alternate
from minilora.train import TrainConfig, logits_fn, save_checkpoint, train

# Fine-tuning recipes. LoRA trains far fewer numbers, each of which has to move
# further, so it takes a larger learning rate than full fine-tuning, and on the
# harder first task (sort descending) more steps. `--steps N` sets all three.
DEFAULT_STEPS = {"full": 400, "lora": 1000, "second": 400}
FULL_LR, LORA_LR = 1e-3, 1e-2
CHECKPOINT_EVERY = 50      # steps between resumable training states
N_EXAMPLES = 3             # held-out prompts shown before and after fine-tuning


# ----------------------------------------------------------------------------
# Checking the request before any work


def check_request(steps, rank, targets, out_dir, seed):
    """Every argument checked (and the LoRA config built) before a single step runs."""
    steps, seed = check_steps(steps), check_seed(seed)
    if isinstance(targets, str):
        targets = targets.split(",")
    targets = [t.strip() for t in targets]
    if not targets or not all(targets):
        raise ValueError(f"targets={targets!r}: give module names separated by commas, e.g. q_proj,v_proj")
    lora_cfg = LoraConfig(r=rank, lora_alpha=2 * rank if isinstance(rank, int) else rank,
                          target_modules=list(targets))
    # Ask LoRA's own matching which layers each name would adapt in the shipped model.
    layers = list(module_shapes(load_pretrained().config))
    names = sorted({name.rsplit(".", 1)[-1] for name in layers})
    unmatched = [t for t in targets if not any(target_matches(name, [t]) for name in layers)]
    if unmatched:
        raise ValueError(f"targets {unmatched} match no layer of the tiny GPT; "
                         f"the layers you can adapt are {names}, e.g. --targets q_proj,v_proj")
    _rehearse_lora(lora_cfg)
    return steps, lora_cfg, check_out_dir(out_dir, own=is_demo_output, example="minilora_demo"), seed


def _rehearse_lora(lora_cfg: LoraConfig) -> None:
    """Apply and merge the LoRA once on the shipped model, untrained, so that what only the
    model can refuse (a rank larger than a layer, a layer whose weight is tied) is refused
    now, not after minutes of fine-tuning."""
    model = apply_lora(load_pretrained(), lora_cfg)
    try:
        merge(model)
    except RuntimeError as err:
        raise ValueError(f"targets {lora_cfg.target_modules}: {err}") from None


def is_demo_output(name: str) -> bool:
    """The names the demo writes in its output folder (an earlier demo's outputs may be replaced)."""
    return name.startswith(("adapter_", "full_")) or name in ("summary.json", "loss_curves.png")


# ----------------------------------------------------------------------------
# Compute: train, measure, save the adapters and the checkpoint


def _finetune(model, task, steps, lr, seed, desc, progress, state_dir: Path, resume: bool):
    config = TrainConfig(steps=steps, lr=lr, warmup=min(30, steps // 10), min_lr_ratio=0.1)
    get_batch = task_batches([task], BATCH_SIZE, model.config.block_size, seed)
    resume_from = state_dir if resume and (state_dir / "trainer_state.json").exists() else None
    return train(model, get_batch, config, progress=progress, desc=desc, checkpoint_dir=state_dir,
                 checkpoint_every=CHECKPOINT_EVERY, resume_from=resume_from)


def _answers(model, prompts) -> list[str]:
    return data.complete(logits_fn(model), prompts, max_new_tokens=data.N_DIGITS + 1,
                         block_size=model.config.block_size)


def compute(plan: dict, lora_cfg: LoraConfig, out: Path, seed: int, progress: bool, resume: bool) -> dict:
    """Run the three parts of the demo; write adapters and the checkpoint into `out`."""
    task_a, task_b = data.DOWNSTREAM_TASKS[:2]
    states = out / "resume"
    r = {"tasks": (task_a, task_b), "plan": plan, "rank": lora_cfg.r, "targets": lora_cfg.target_modules}
    manual_seed(seed)
    base = load_pretrained()
    r["n_params"] = base.num_parameters()
    r["before"] = task_accuracy(base, [task_a, task_b])
    examples = data.heldout_examples(task_a, N_EXAMPLES, seed=seed)
    prompts = [p for p, _ in examples]
    r["examples"] = {"prompt": prompts, "answer": [a for _, a in examples], "base": _answers(base, prompts)}

    # 1. Full fine-tuning against LoRA on task A
    full = load_pretrained()
    r["full_run"] = _finetune(full, task_a, plan["full"], FULL_LR, seed, f"full fine-tuning on {task_a}",
                              progress, states / "full", resume)
    r["full_acc"] = task_accuracy(full, [task_a])[task_a]
    r["examples"]["full"] = _answers(full, prompts)
    save_checkpoint(full, out / f"full_{task_a}")
    r["full_bytes"] = (out / f"full_{task_a}" / "model.safetensors").stat().st_size
    r["trainable_full"] = full.num_parameters(trainable_only=True)

    model = apply_lora(load_pretrained(), lora_cfg, adapter_name=task_a)
    r["lora_run"] = _finetune(model, task_a, plan["lora"], LORA_LR, seed, f"LoRA r={lora_cfg.r} on {task_a}",
                              progress, states / "lora", resume)
    r["lora_acc"] = task_accuracy(model, [task_a])[task_a]
    r["examples"]["lora"] = _answers(model, prompts)
    r["trainable_lora"] = model.num_parameters(trainable_only=True)
    save_adapter(model, out / f"adapter_{task_a}", adapter_name=task_a)
    r["lora_bytes"] = adapter_size_bytes(out / f"adapter_{task_a}")

    # 2. Merge: same outputs, base-model speed
    probe = data.make_batch([task_a], 16, model.config.block_size, np.random.default_rng(seed + 1))[0]
    with no_grad():
        unmerged_logits = model(probe).numpy()
        merge(model)
        merged_logits = model(probe).numpy()
    r["merge_diff"] = float(np.abs(merged_logits - unmerged_logits).max())

    def forward_of(m):
        def run():
            with no_grad():
                m(probe)
        return run
    r["forward"] = alternate({"base": forward_of(base), "merged": forward_of(model)}, repeats=25)
    unmerge(model)

    # 3. A second adapter on the same base, and swapping
    base_weights = {n: backend.to_numpy(p.data).copy() for n, p in model.named_parameters() if "lora_" not in n}
    apply_lora(model, lora_cfg, adapter_name=task_b)
    set_adapter(model, task_b)
    r["second_run"] = _finetune(model, task_b, plan["second"], LORA_LR, seed + 1,
                                f"LoRA r={lora_cfg.r} on {task_b}", progress, states / "second", resume)
    save_adapter(model, out / f"adapter_{task_b}", adapter_name=task_b)
    r["swaps"] = {}
    for adapter in (task_a, task_b):
        set_adapter(model, adapter)
        r["swaps"][adapter] = task_accuracy(model, [task_a, task_b])
    r["untouched"] = all(np.array_equal(backend.to_numpy(p.data), base_weights[n])
                         for n, p in model.named_parameters() if "lora_" not in n)
    r["n_lora_layers"] = len(lora_layers(model))
    return r


# ----------------------------------------------------------------------------
# Print and summarise


def _kib(n_bytes: int) -> str:
    return f"{n_bytes / 1024:,.1f} KiB"


def recovered_fraction(r: dict) -> float:
    task_a = r["tasks"][0]
    gain_full, gain_lora = r["full_acc"] - r["before"][task_a], r["lora_acc"] - r["before"][task_a]
    return gain_lora / gain_full if gain_full > 0 else float("nan")


def print_report(r: dict) -> None:
    task_a, task_b = r["tasks"]
    full_run, lora_run, rank = r["full_run"], r["lora_run"], r["rank"]
    print(f"accuracy before fine-tuning: {task_a} {r['before'][task_a]:.1%}, {task_b} {r['before'][task_b]:.1%}")
    rows = [
        ("recipe: steps, lr", f"{r['plan']['full']} steps, lr {FULL_LR:g}",
         f"{r['plan']['lora']} steps, lr {LORA_LR:g}"),
        ("trainable parameters", f"{r['trainable_full']:,}", f"{r['trainable_lora']:,}"),
        ("AdamW state", _kib(full_run.optimizer.state_bytes()), _kib(lora_run.optimizer.state_bytes())),
        ("time per step (median)", f"{full_run.seconds_per_step * 1e3:.1f} ms",
         f"{lora_run.seconds_per_step * 1e3:.1f} ms"),
        ("file to save", f"{_kib(r['full_bytes'])} (checkpoint)", f"{_kib(r['lora_bytes'])} (adapter)"),
        (f"accuracy on {task_a}", f"{r['before'][task_a]:.1%} -> {r['full_acc']:.1%}",
         f"{r['before'][task_a]:.1%} -> {r['lora_acc']:.1%}"),
    ]
    print(f"\n{'':24s}{'full fine-tuning':>28s}{f'LoRA r={rank} on ' + ','.join(r['targets']):>34s}")
    for name, a, b in rows:
        print(f"{name:24s}{a:>28s}{b:>34s}")
    print(f"LoRA recovers {recovered_fraction(r):.0%} of full fine-tuning's accuracy gain "
          f"with {r['trainable_lora'] / r['n_params']:.2%} of the parameters")
    ex = r["examples"]
    print(f"\nheld-out examples of {task_a}: prompt, correct answer, then each model's answer")
    print(f"  {'prompt':14s}{'correct':>10s}{'base':>10s}{'full':>10s}{'LoRA':>10s}")
    for i, prompt in enumerate(ex["prompt"]):
        print(f"  {prompt:14s}{ex['answer'][i]:>10s}{ex['base'][i]:>10s}{ex['full'][i]:>10s}{ex['lora'][i]:>10s}")

    t = r["forward"]
    print(f"\nmerged: max |logits change| {r['merge_diff']:.1e}; forward {t['merged'] * 1e3:.2f} ms vs "
          f"base {t['base'] * 1e3:.2f} ms (ratio {t['merged'] / t['base']:.2f}): no added latency")
    print(f"\none base, two adapters ({r['n_lora_layers']} LoRA layers each holding both):")
    for adapter, acc in r["swaps"].items():
        print(f"  set_adapter({adapter!r}): {task_a} {acc[task_a]:.1%}, {task_b} {acc[task_b]:.1%}")
    print(f"  base weights untouched by training and swapping: {r['untouched']}")


def summarise(r: dict, seconds: float) -> dict:
    full_run, lora_run, second_run = r["full_run"], r["lora_run"], r["second_run"]
    return {
        "tasks": list(r["tasks"]), "steps": r["plan"], "rank": r["rank"], "targets": list(r["targets"]),
        "learning_rates": {"full": FULL_LR, "lora": LORA_LR, "second": LORA_LR},
        "accuracy_before": r["before"], "accuracy_full": r["full_acc"], "accuracy_lora": r["lora_acc"],
        "lora_recovers": recovered_fraction(r), "accuracy_after_swap": r["swaps"],
        "examples": r["examples"],
        "trainable_full": r["trainable_full"], "trainable_lora": r["trainable_lora"],
        "optimizer_bytes_full": full_run.optimizer.state_bytes(),
        "optimizer_bytes_lora": lora_run.optimizer.state_bytes(),
        "step_seconds_full": full_run.seconds_per_step, "step_seconds_lora": lora_run.seconds_per_step,
        "step_seconds_second": second_run.seconds_per_step,
        "checkpoint_bytes": r["full_bytes"], "adapter_bytes": r["lora_bytes"],
        "merge_max_abs_diff": r["merge_diff"], "merged_forward_ratio": r["forward"]["merged"] / r["forward"]["base"],
        "base_untouched": r["untouched"], "seconds": seconds,
    }


def write_outputs(out: Path, r: dict, summary: dict) -> bool:
    """summary.json and loss_curves.png into `out`; True when the plot was drawn."""
    task_a, task_b = r["tasks"]
    curves = _plot_losses(out / "loss_curves.png", {
        f"full fine-tuning ({task_a})": r["full_run"].losses,
        f"LoRA r={r['rank']} ({task_a})": r["lora_run"].losses,
        f"LoRA r={r['rank']} ({task_b})": r["second_run"].losses})
    write_file_atomically(out / "summary.json", json_bytes(summary))
    return curves


def run_demo(steps: int | None = None, rank: int = 4, targets=("q_proj", "v_proj"),
             out_dir="minilora_demo", seed: int = 0, progress: bool = True, resume: bool = False) -> dict:
    """The whole demo: check the request, compute in OUT.partial, print, then publish to OUT."""
    start = time.perf_counter()
    steps, lora_cfg, out, seed = check_request(steps, rank, targets, out_dir, seed)
    plan = {k: steps or v for k, v in DEFAULT_STEPS.items()}
    task_a, task_b = data.DOWNSTREAM_TASKS[:2]
    command = f"minilora demo --out {out}" + (f" --steps {steps}" if steps else "") + \
        f" --rank {lora_cfg.r} --targets {','.join(lora_cfg.target_modules)} --seed {seed}"
    partial = start_partial(out, resume, command)
    print(f"minilora demo: the shipped tiny GPT, new tasks {task_a!r} ({data.get_task(task_a).description}) "
          f"and {task_b!r} ({data.get_task(task_b).description}); working in {partial}/")
    r = compute(plan, lora_cfg, partial, seed, progress, resume)
    print_report(r)
    summary = summarise(r, time.perf_counter() - start)
    curves = write_outputs(partial, r, summary)
    # All outputs are there: drop the training states and the marker, then publish in one step.
    shutil.rmtree(partial / "resume", ignore_errors=True)
    (partial / "INCOMPLETE.txt").unlink(missing_ok=True)
    replace_dir(partial, out)
    print(f"\ndone in {summary['seconds']:.0f} s; adapters, checkpoint, summary.json"
          f"{', loss_curves.png' if curves else ''} in {out}/")
    return summary


def _plot_losses(path: Path, curves: dict) -> bool:
    """Save the loss curves as a PNG; skip (and say so) when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print("(matplotlib is not installed, so no loss_curves.png: pip install 'minilora[plot]')")
        return False
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    for label, losses in curves.items():
        smooth = np.convolve(losses, np.ones(10) / 10, mode="valid") if len(losses) > 10 else losses
        ax.plot(smooth, label=label)
    ax.set(xlabel="step", ylabel="training loss (10-step mean)", yscale="log",
           title="Fine-tuning the pretrained tiny GPT")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return True

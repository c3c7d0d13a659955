"""`minilora demo`: LoRA's whole story in one command, on the shipped tiny GPT.

1. Fine-tune the pretrained model on a task it has never seen, twice: all
   weights (full fine-tuning) and a rank-r LoRA on q and v. Compare trainable
   parameters, optimizer memory, step time, file size and accuracy.
2. Merge the adapter into the weights: the outputs stay the same and the
   forward pass costs what the base model costs.
3. Train a second adapter for a second task on the same base, and swap
   between the two: only A and B change.

Writes adapters, a checkpoint, loss curves (PNG, when matplotlib is installed)
and summary.json into the output directory.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from minilora import data
from minilora.adapters import adapter_size_bytes, save_adapter
from minilora.lora import LoraConfig, apply_lora, lora_layers, merge, set_adapter, unmerge
from minilora.pretrained import BATCH_SIZE, load_pretrained, task_accuracy, task_batches
from minilora.tensor import manual_seed, no_grad
from minilora.timing import alternate
from minilora.train import TrainConfig, logits_fn, save_checkpoint, train

# Fine-tuning recipes. LoRA trains far fewer numbers, each of which has to move
# further, so it takes a larger learning rate than full fine-tuning, and on the
# harder first task (sort descending) more steps. `--steps N` sets all three.
DEFAULT_STEPS = {"full": 400, "lora": 1000, "second": 400}
FULL_LR, LORA_LR = 1e-3, 1e-2


def _finetune(model, task: str, steps: int, lr: float, seed: int, desc: str, progress: bool):
    config = TrainConfig(steps=steps, lr=lr, warmup=min(30, steps // 10), min_lr_ratio=0.1)
    get_batch = task_batches([task], BATCH_SIZE, model.config.block_size, seed)
    return train(model, get_batch, config, progress=progress, desc=desc)


def _kib(n_bytes: int) -> str:
    return f"{n_bytes / 1024:,.1f} KiB"


def run_demo(steps: int | None = None, rank: int = 4, targets=("q_proj", "v_proj"),
             out_dir="minilora_demo", seed: int = 0, progress: bool = True) -> dict:
    start = time.perf_counter()
    plan = {k: steps or v for k, v in DEFAULT_STEPS.items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    task_a, task_b = data.DOWNSTREAM_TASKS[:2]
    lora_cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets))
    manual_seed(seed)

    base = load_pretrained()
    print(f"minilora demo: the shipped tiny GPT ({base.num_parameters():,} parameters), "
          f"new tasks {task_a!r} ({data.get_task(task_a).description}) and "
          f"{task_b!r} ({data.get_task(task_b).description})")
    before = task_accuracy(base, [task_a, task_b])
    print(f"accuracy before fine-tuning: {task_a} {before[task_a]:.1%}, {task_b} {before[task_b]:.1%}")

    # 1. Full fine-tuning against LoRA on task A ------------------------------------------
    full = load_pretrained()
    full_run = _finetune(full, task_a, plan["full"], FULL_LR, seed, f"full fine-tuning on {task_a}", progress)
    full_acc = task_accuracy(full, [task_a])[task_a]
    save_checkpoint(full, out / f"full_{task_a}")
    full_bytes = (out / f"full_{task_a}" / "model.safetensors").stat().st_size

    model = apply_lora(load_pretrained(), lora_cfg, adapter_name=task_a)
    lora_run = _finetune(model, task_a, plan["lora"], LORA_LR, seed, f"LoRA r={rank} on {task_a}", progress)
    lora_acc = task_accuracy(model, [task_a])[task_a]
    lora_trainable = model.num_parameters(trainable_only=True)
    save_adapter(model, out / f"adapter_{task_a}", adapter_name=task_a)
    lora_bytes = adapter_size_bytes(out / f"adapter_{task_a}")

    gain_full, gain_lora = full_acc - before[task_a], lora_acc - before[task_a]
    recovered = gain_lora / gain_full if gain_full > 0 else float("nan")
    rows = [
        ("trainable parameters", f"{full.num_parameters(trainable_only=True):,}", f"{lora_trainable:,}"),
        ("AdamW state", _kib(full_run.optimizer.state_bytes()), _kib(lora_run.optimizer.state_bytes())),
        ("time per step", f"{full_run.seconds_per_step * 1e3:.1f} ms", f"{lora_run.seconds_per_step * 1e3:.1f} ms"),
        ("file to save", f"{_kib(full_bytes)} (checkpoint)", f"{_kib(lora_bytes)} (adapter)"),
        (f"accuracy on {task_a}", f"{before[task_a]:.1%} -> {full_acc:.1%}", f"{before[task_a]:.1%} -> {lora_acc:.1%}"),
    ]
    print(f"\n{'':24s}{'full fine-tuning':>28s}{f'LoRA r={rank} on ' + ','.join(targets):>34s}")
    for name, a, b in rows:
        print(f"{name:24s}{a:>28s}{b:>34s}")
    print(f"LoRA recovers {recovered:.0%} of full fine-tuning's accuracy gain "
          f"with {lora_trainable / full.num_parameters():.2%} of the parameters")

    # 2. Merge: same outputs, base-model speed ---------------------------------------------
    probe = data.make_batch([task_a], 16, model.config.block_size, np.random.default_rng(seed + 1))[0]
    with no_grad():
        unmerged_logits = model(probe).numpy()
        merge(model)
        merged_logits = model(probe).numpy()
    merge_diff = float(np.abs(merged_logits - unmerged_logits).max())

    def forward_of(m):
        def run():
            with no_grad():
                m(probe)
        return run

    t = alternate({"base": forward_of(base), "merged": forward_of(model)}, repeats=25)
    merged_ratio = t["merged"] / t["base"]
    print(f"\nmerged: max |logits change| {merge_diff:.1e}; forward {t['merged'] * 1e3:.2f} ms vs "
          f"base {t['base'] * 1e3:.2f} ms (ratio {merged_ratio:.2f}): no added latency")
    unmerge(model)

    # 3. A second adapter on the same base, and swapping ------------------------------------
    base_weights = {n: p.data for n, p in model.named_parameters() if "lora_" not in n}
    apply_lora(model, lora_cfg, adapter_name=task_b)
    set_adapter(model, task_b)
    second_run = _finetune(model, task_b, plan["second"], LORA_LR, seed + 1, f"LoRA r={rank} on {task_b}", progress)
    save_adapter(model, out / f"adapter_{task_b}", adapter_name=task_b)
    swaps = {}
    for adapter in (task_a, task_b):
        set_adapter(model, adapter)
        swaps[adapter] = task_accuracy(model, [task_a, task_b])
    untouched = all(p.data is base_weights[n] for n, p in model.named_parameters() if "lora_" not in n)
    print(f"\none base, two adapters ({len(lora_layers(model))} LoRA layers each holding both):")
    for adapter, acc in swaps.items():
        print(f"  set_adapter({adapter!r}): {task_a} {acc[task_a]:.1%}, {task_b} {acc[task_b]:.1%}")
    print(f"  base weights untouched by training and swapping: {untouched}")

    curves = _plot_losses(out / "loss_curves.png", {
        f"full fine-tuning ({task_a})": full_run.losses,
        f"LoRA r={rank} ({task_a})": lora_run.losses,
        f"LoRA r={rank} ({task_b})": second_run.losses})
    seconds = time.perf_counter() - start
    summary = {
        "tasks": [task_a, task_b], "steps": plan, "rank": rank, "targets": list(targets),
        "accuracy_before": before, "accuracy_full": full_acc, "accuracy_lora": lora_acc,
        "lora_recovers": recovered, "accuracy_after_swap": swaps,
        "trainable_full": full.num_parameters(trainable_only=True),
        "trainable_lora": lora_trainable,
        "optimizer_bytes_full": full_run.optimizer.state_bytes(),
        "optimizer_bytes_lora": lora_run.optimizer.state_bytes(),
        "step_seconds_full": full_run.seconds_per_step, "step_seconds_lora": lora_run.seconds_per_step,
        "checkpoint_bytes": full_bytes, "adapter_bytes": lora_bytes,
        "merge_max_abs_diff": merge_diff, "merged_forward_ratio": merged_ratio,
        "base_untouched": untouched, "seconds": seconds,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\ndone in {seconds:.0f} s; adapters, checkpoint, summary.json"
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

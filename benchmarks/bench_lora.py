"""LoRA's three costs, each measured as a ratio within one run.

Times are taken in blocks (minilora.timing.in_blocks): each contender runs a
block of calls after one untimed call, the order rotates from run to run, and
each ratio is printed as its median over runs with the fastest and slowest run.

1. Training step: LoRA (r=8 on q, v) against full fine-tuning, same GPT
   (n_embd 256, 4 layers, batch 16 x 64). Target <= 0.70: frozen weights need
   no weight gradients and no optimizer update. The same ratio for PyTorch
   with PEFT is printed beside it.
2. Inference: a merged LoRA model's forward against the base model's.
   Target 1.00 +/- 0.05: after merging there is nothing extra to compute.
3. Peak training memory (tracemalloc, weights included): LoRA against full
   fine-tuning on a model whose weights dominate (n_embd 512, 4 layers,
   batch 2 x 32). Target <= 0.4, with the breakdown that explains it.

    python benchmarks/bench_lora.py [--runs 5 --block 5]
    python benchmarks/bench_lora.py --quick      # tiny models, seconds (a smoke test)
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import ms, ratio_line, timed  # noqa: E402

import minilora as ml  # noqa: E402
from minilora import backend  # noqa: E402
from minilora import functional as F  # noqa: E402


def make_gpt(n_embd: int, n_layer: int, seq: int, vocab: int = 64, seed: int = 0) -> ml.GPT:
    ml.manual_seed(seed)
    return ml.GPT(ml.GPTConfig(vocab_size=vocab, block_size=seq, n_layer=n_layer, n_head=4, n_embd=n_embd))


def lora_config(r: int = 8) -> ml.LoraConfig:
    return ml.LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"])


def step_fn(model, x, y):
    opt = ml.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(model(x).reshape(y.size, -1), y.reshape(-1))
        loss.backward()
        opt.step()
        backend.synchronize()
    return step


DEVICE = "cpu"     # where the benchmark's models and batches live; set by main()

# (n_embd, n_layer, batch, seq) of the step and forward benchmarks, and of the memory one
SIZES = {"full": ((256, 4, 16, 64), (512, 4, 2, 32)), "quick": ((64, 1, 2, 16), (64, 1, 2, 16))}


def bench_step(size, runs: int, block: int) -> None:
    n_embd, n_layer, batch, seq = size
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 64, (batch, seq)), rng.integers(0, 64, (batch, seq))
    x, y = backend.to_device(x, DEVICE), backend.to_device(y, DEVICE)
    full = make_gpt(n_embd, n_layer, seq)
    lora = ml.apply_lora(make_gpt(n_embd, n_layer, seq), lora_config())
    t = timed({"full": step_fn(full, x, y), "lora": step_fn(lora, x, y)}, runs, block, "[1] minilora steps")
    print(f"[1] training step, n_embd {n_embd}, {n_layer} layers, batch {batch} x {seq}, LoRA r=8 on q, v")
    print(f"    minilora: full {ms(t, 'full')}, LoRA {ms(t, 'lora')}")
    print("    " + ratio_line("LoRA / full", t.ratio("lora", "full"), "<= 0.70"))
    if DEVICE == "cpu":
        _torch_step_ratio(full, x, y, runs, block)


def _torch_step_ratio(model, x, y, runs: int, block: int) -> None:
    try:
        import torch
        from peft import LoraConfig, get_peft_model
        from torch_gpt import twin_of
    except ImportError as err:
        print(f"    PyTorch/PEFT comparison skipped ({err})")
        return
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    full, base = twin_of(model), twin_of(model)
    lora = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))

    def step_of(m):
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4, foreach=False)

        def step():
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(tx).flatten(0, 1), ty.flatten()).backward()
            opt.step()
        return step

    t = timed({"full": step_of(full), "lora": step_of(lora)}, runs, block, "[1] PyTorch steps")
    print(f"    PyTorch + PEFT: full {ms(t, 'full')}, LoRA {ms(t, 'lora')}")
    print("    " + ratio_line("LoRA / full (PyTorch + PEFT)", t.ratio("lora", "full")))


def bench_merged_forward(size, runs: int, block: int) -> None:
    n_embd, n_layer, batch, seq = size
    x = backend.to_device(np.random.default_rng(1).integers(0, 64, (batch, seq)), DEVICE)
    base = make_gpt(n_embd, n_layer, seq)
    merged = ml.apply_lora(make_gpt(n_embd, n_layer, seq), lora_config())
    for layer in ml.lora.lora_layers(merged).values():          # a trained-looking, non-zero B
        B = layer.lora_B["default"].weight
        B.data = B.data + 0.01
    ml.merge(merged)                # that merging keeps the outputs is tested in tests/test_lora.py
    unmerged = ml.apply_lora(make_gpt(n_embd, n_layer, seq), lora_config())

    def fwd(m):
        def run():
            with ml.no_grad():
                m(x)
            backend.synchronize()
        return run

    t = timed({"base": fwd(base), "merged": fwd(merged), "unmerged": fwd(unmerged)}, runs, 3 * block,
              "[2] forwards")
    print(f"[2] inference forward, batch {batch} x {seq}: base {ms(t, 'base')}, "
          f"merged {ms(t, 'merged')}, unmerged LoRA {ms(t, 'unmerged')}")
    print("    " + ratio_line("merged / base", t.ratio("merged", "base"), "1.00 +/- 0.05"))
    print("    " + ratio_line("unmerged / base", t.ratio("unmerged", "base")))


def peak_training_memory(use_lora: bool, size=SIZES["full"][1]) -> dict:
    """Peak bytes traced while building the model and running two training steps."""
    n_embd, n_layer, batch, seq = size
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 64, (batch, seq)), rng.integers(0, 64, (batch, seq))
    gc.collect()
    tracemalloc.start()
    model = make_gpt(n_embd, n_layer, seq)
    if use_lora:
        ml.apply_lora(model, lora_config())
    weights = sum(p.data.nbytes for p in model.parameters())
    opt = ml.optim.AdamW(model.parameters(), lr=1e-4)
    for _ in range(2):
        opt.zero_grad()
        loss = F.cross_entropy(model(x).reshape(y.size, -1), y.reshape(-1))
        loss.backward()
        grads = sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)
        opt.step()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"peak": peak, "weights": weights, "grads": grads, "optimizer": opt.state_bytes()}


def bench_memory(size) -> None:
    full, lora = peak_training_memory(False, size), peak_training_memory(True, size)
    mb = 1 / 2**20
    n_embd, n_layer, batch, seq = size
    print(f"[3] peak training memory, n_embd {n_embd}, {n_layer} layers, batch {batch} x {seq} (tracemalloc, MiB)")
    print(f"    {'':6s} {'peak':>8s} {'weights':>8s} {'grads':>8s} {'AdamW':>8s} {'rest':>8s}")
    for name, m in (("full", full), ("LoRA", lora)):
        rest = m["peak"] - m["weights"] - m["grads"] - m["optimizer"]
        print(f"    {name:6s} {m['peak'] * mb:8.1f} {m['weights'] * mb:8.1f} {m['grads'] * mb:8.1f} "
              f"{m['optimizer'] * mb:8.1f} {rest * mb:8.1f}")
    print(f"    ratio LoRA / full peak = {lora['peak'] / full['peak']:.2f}  (target <= 0.4); the saving is "
          "the gradients and AdamW's two moment buffers that frozen weights do not need")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="LoRA cost ratios")
    ap.add_argument("--runs", type=int, default=5, help="runs; each ratio is summarised over them")
    ap.add_argument("--block", type=int, default=5, help="timed training steps per contender per run")
    ap.add_argument("--quick", action="store_true", help="tiny models, 2 runs of 2 calls: checks it works")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.block = 2, 2
    step_size, memory_size = SIZES["quick" if args.quick else "full"]
    global DEVICE
    DEVICE = args.device
    ml.set_device(args.device)
    print(f"device: {args.device}; load average {os.getloadavg()[0]:.1f} "
          "(timings are only fair on an otherwise idle machine)")
    print(f"timing: {args.runs} runs, each a block of calls per contender after 1 untimed call; "
          "median over runs (fastest-slowest run)")
    bench_step(step_size, args.runs, args.block)
    bench_merged_forward(step_size, args.runs, args.block)
    if args.device == "cpu":          # tracemalloc sees host memory only
        bench_memory(memory_size)


if __name__ == "__main__":
    main()

"""LoRA's three costs, each measured as a ratio within one run.

1. Training step: LoRA (r=8 on q, v) against full fine-tuning, same GPT
   (n_embd 256, 4 layers, batch 16 x 64). Target <= 0.75: frozen weights need
   no weight gradients and no optimizer update. The same ratio for PyTorch
   with PEFT is printed beside it.
2. Inference: a merged LoRA model's forward against the base model's.
   Target 1.00 +/- 0.05: after merging there is nothing extra to compute.
3. Peak training memory (tracemalloc, weights included): LoRA against full
   fine-tuning on a model whose weights dominate (n_embd 512, 4 layers,
   batch 2 x 32). Target <= 0.4, with the breakdown that explains it.

    python benchmarks/bench_lora.py
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import alternate  # noqa: E402

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
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        backend.synchronize()
    return step


def bench_step(repeats: int) -> None:
    n_embd, n_layer, batch, seq = 256, 4, 16, 64
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 64, (batch, seq)), rng.integers(0, 64, (batch, seq))
    x, y = backend.xp.asarray(x), backend.xp.asarray(y)
    full = make_gpt(n_embd, n_layer, seq)
    lora = ml.apply_lora(make_gpt(n_embd, n_layer, seq), lora_config())
    t = alternate({"full": step_fn(full, x, y), "lora": step_fn(lora, x, y)}, repeats=repeats)
    print(f"[1] training step, n_embd {n_embd}, {n_layer} layers, batch {batch} x {seq}, LoRA r=8 on q, v")
    print(f"    minilora: full {t['full'] * 1e3:.1f} ms, LoRA {t['lora'] * 1e3:.1f} ms, "
          f"ratio LoRA / full = {t['lora'] / t['full']:.2f}  (target <= 0.75)")
    if backend.device == "cpu":
        _torch_step_ratio(full, x, y, repeats)


def _torch_step_ratio(model, x, y, repeats: int) -> None:
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

    t = alternate({"full": step_of(full), "lora": step_of(lora)}, repeats=repeats)
    print(f"    PyTorch + PEFT: full {t['full'] * 1e3:.1f} ms, LoRA {t['lora'] * 1e3:.1f} ms, "
          f"ratio LoRA / full = {t['lora'] / t['full']:.2f}")


def bench_merged_forward(repeats: int) -> None:
    n_embd, n_layer, batch, seq = 256, 4, 16, 64
    x = backend.xp.asarray(np.random.default_rng(1).integers(0, 64, (batch, seq)))
    base = make_gpt(n_embd, n_layer, seq)
    merged = ml.apply_lora(make_gpt(n_embd, n_layer, seq), lora_config())
    for layer in ml.lora.lora_layers(merged).values():          # a trained-looking, non-zero B
        B = layer.lora_B["default"].weight
        B.data = B.data + 0.01
    unmerged_out = merged(x).numpy()
    ml.merge(merged)
    err = np.abs(merged(x).numpy() - unmerged_out).max()
    unmerged = ml.apply_lora(make_gpt(n_embd, n_layer, seq), lora_config())

    def fwd(m):
        def run():
            with ml.no_grad():
                m(x)
            backend.synchronize()
        return run

    t = alternate({"base": fwd(base), "merged": fwd(merged), "unmerged": fwd(unmerged)}, repeats=repeats)
    print(f"[2] inference forward, batch {batch} x {seq}: base {t['base'] * 1e3:.2f} ms, "
          f"merged {t['merged'] * 1e3:.2f} ms, unmerged LoRA {t['unmerged'] * 1e3:.2f} ms")
    print(f"    ratio merged / base = {t['merged'] / t['base']:.3f}  (target 1.00 +/- 0.05); "
          f"unmerged / base = {t['unmerged'] / t['base']:.3f}; merged vs unmerged max |diff| {err:.1e}")


def peak_training_memory(use_lora: bool) -> dict:
    """Peak bytes traced while building the model and running two training steps."""
    n_embd, n_layer, batch, seq = 512, 4, 2, 32
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
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        grads = sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)
        opt.step()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"peak": peak, "weights": weights, "grads": grads, "optimizer": opt.state_bytes()}


def bench_memory() -> None:
    full, lora = peak_training_memory(False), peak_training_memory(True)
    mb = 1 / 2**20
    print("[3] peak training memory, n_embd 512, 4 layers, batch 2 x 32 (tracemalloc, MiB)")
    print(f"    {'':6s} {'peak':>8s} {'weights':>8s} {'grads':>8s} {'AdamW':>8s} {'rest':>8s}")
    for name, m in (("full", full), ("LoRA", lora)):
        rest = m["peak"] - m["weights"] - m["grads"] - m["optimizer"]
        print(f"    {name:6s} {m['peak'] * mb:8.1f} {m['weights'] * mb:8.1f} {m['grads'] * mb:8.1f} "
              f"{m['optimizer'] * mb:8.1f} {rest * mb:8.1f}")
    print(f"    ratio LoRA / full peak = {lora['peak'] / full['peak']:.2f}  (target <= 0.4); the saving is "
          "the gradients and AdamW's two moment buffers that frozen weights do not need")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="LoRA cost ratios")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args(argv)
    ml.set_device(args.device)
    print(f"device: {args.device}")
    bench_step(args.repeats)
    bench_merged_forward(args.repeats)
    if args.device == "cpu":          # tracemalloc sees host memory only
        bench_memory()


if __name__ == "__main__":
    main()

"""One AdamW training step of minilora's GPT against the same model in PyTorch.

Same weights, same batch. PyTorch runs twice: eager with attention written
out as minilora writes it (same arithmetic), and with its fused
scaled_dot_product_attention. Timed in blocks (minilora.timing.in_blocks):
each library runs a block of steps after one untimed step, the order rotates
from run to run, and each ratio is the median over runs with its range.
Also prints the achieved GFLOP/s as a share of NumPy's matmul rate.

    python benchmarks/bench_train_step.py [--n-embd 128 --n-layer 4 --batch 32 --seq 64 --runs 5]
    python benchmarks/bench_train_step.py --quick      # a tiny model, seconds (a smoke test)
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import matmul_gflops, ms, ratio_line, timed  # noqa: E402
from torch_gpt import twin_of  # noqa: E402

import minilora as ml  # noqa: E402
from minilora import backend  # noqa: E402
from minilora import functional as F  # noqa: E402


def training_steps(n_embd: int, n_layer: int, n_head: int, batch: int, seq: int, vocab: int,
                   device: str = "cpu") -> tuple[dict, ml.GPT]:
    """{"minilora", "torch", "torch_sdpa"} -> a function running one AdamW step; and the minilora model."""
    ml.manual_seed(0)
    cfg = ml.GPTConfig(vocab_size=vocab, block_size=seq, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    model = ml.GPT(cfg)
    twin = twin_of(model).to(device)
    twin_sdpa = twin_of(model, fused_attention=True).to(device)
    model.to(device)
    rng = np.random.default_rng(0)
    x = rng.integers(0, vocab, size=(batch, seq))
    y = rng.integers(0, vocab, size=(batch, seq))
    tx, ty = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    x, y = backend.to_device(x, device), backend.to_device(y, device)
    sync_torch = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    opt = ml.optim.AdamW(model.parameters(), lr=1e-4)

    def ours():
        opt.zero_grad()
        loss = F.cross_entropy(model(x).reshape(y.size, -1), y.reshape(-1))
        loss.backward()
        opt.step()
        backend.synchronize()

    def theirs(m):
        topt = torch.optim.AdamW(m.parameters(), lr=1e-4, foreach=False)

        def step():
            topt.zero_grad()
            loss = torch.nn.functional.cross_entropy(m(tx).flatten(0, 1), ty.flatten())
            loss.backward()
            topt.step()
            sync_torch()
        return step

    return {"minilora": ours, "torch": theirs(twin), "torch_sdpa": theirs(twin_sdpa)}, model


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5, help="runs; each ratio is summarised over them")
    ap.add_argument("--block", type=int, default=5, help="timed steps per library per run")
    ap.add_argument("--quick", action="store_true", help="tiny model, 2 runs of 2 steps: checks it works")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cuda: minilora on CuPy against PyTorch on the same GPU")
    args = ap.parse_args(argv)
    if args.quick:
        args.n_embd, args.n_layer, args.batch, args.seq, args.runs, args.block = 32, 1, 2, 16, 2, 2
    ml.set_device(args.device)

    steps, model = training_steps(args.n_embd, args.n_layer, args.n_head, args.batch, args.seq, args.vocab,
                                  args.device)
    t = timed(steps, args.runs, args.block, "train step")
    n_params = model.num_parameters()
    flops = 6 * n_params * args.batch * args.seq      # forward + backward, weights only
    peak = matmul_gflops(256 if args.quick else 1024) if args.device == "cpu" else None
    print(f"device: {args.device}; torch threads {torch.get_num_threads()}, minilora threads "
          f"{ml.parallel.threads()}; load average "
          f"{os.getloadavg()[0]:.1f} (timings are only fair on an otherwise idle machine)")
    print(f"config: n_embd {args.n_embd}, {args.n_layer} layers, {args.n_head} heads, "
          f"batch {args.batch} x {args.seq}, vocab {args.vocab}, {n_params:,} parameters")
    print(f"timing: {args.runs} runs, each a block of {args.block} steps per library after 1 untimed step; "
          "median over runs (fastest-slowest run)")
    for name in steps:
        rate = flops / t.median(name) / 1e9
        share = f", {rate / peak:5.1%} of NumPy matmul {peak:.0f} GFLOP/s" if peak else ""
        print(f"  {name:11s} {ms(t, name):28s} {rate:6.1f} GFLOP/s{share}")
    print(ratio_line("minilora / torch eager", t.ratio("minilora", "torch")))
    print(ratio_line("minilora / torch sdpa ", t.ratio("minilora", "torch_sdpa"), "<= 1.1"))


if __name__ == "__main__":
    main()

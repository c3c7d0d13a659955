"""One AdamW training step of minilora's GPT against the same model in PyTorch CPU eager.

Same weights, same batch, steps timed in turns, medians. Prints the ratio
minilora / PyTorch (target <= 1.5, aim <= 1.0) and the achieved GFLOP/s as a
share of NumPy's measured matmul rate.

    python benchmarks/bench_train_step.py [--n-embd 128 --n-layer 4 --batch 32 --seq 64]
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import alternate, matmul_gflops  # noqa: E402
from torch_gpt import twin_of  # noqa: E402

import minilora as ml  # noqa: E402
from minilora import functional as F  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cuda: minilora on CuPy against PyTorch on the same GPU")
    args = ap.parse_args(argv)
    ml.set_device(args.device)
    from minilora import backend

    ml.manual_seed(0)
    cfg = ml.GPTConfig(vocab_size=args.vocab, block_size=args.seq, n_layer=args.n_layer,
                       n_head=args.n_head, n_embd=args.n_embd)
    model = ml.GPT(cfg)
    twin = twin_of(model).to(args.device)
    twin_sdpa = twin_of(model, fused_attention=True).to(args.device)
    rng = np.random.default_rng(0)
    x = rng.integers(0, args.vocab, size=(args.batch, args.seq))
    y = rng.integers(0, args.vocab, size=(args.batch, args.seq))
    tx, ty = torch.from_numpy(x).to(args.device), torch.from_numpy(y).to(args.device)
    x, y = backend.xp.asarray(x), backend.xp.asarray(y)
    sync_torch = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    opt = ml.optim.AdamW(model.parameters(), lr=1e-4)
    topts = {id(m): torch.optim.AdamW(m.parameters(), lr=1e-4, foreach=False) for m in (twin, twin_sdpa)}

    def ours():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        backend.synchronize()

    def theirs(m):
        def step():
            topts[id(m)].zero_grad()
            loss = torch.nn.functional.cross_entropy(m(tx).flatten(0, 1), ty.flatten())
            loss.backward()
            topts[id(m)].step()
            sync_torch()
        return step

    t = alternate({"minilora": ours, "torch": theirs(twin), "torch_sdpa": theirs(twin_sdpa)},
                  repeats=args.repeats)
    n_params = model.num_parameters()
    flops = 6 * n_params * args.batch * args.seq      # forward + backward, weights only
    peak = matmul_gflops()
    print(f"device: {args.device}")
    print(f"config: n_embd {args.n_embd}, {args.n_layer} layers, {args.n_head} heads, "
          f"batch {args.batch} x {args.seq}, vocab {args.vocab}, {n_params:,} parameters, "
          f"torch threads {torch.get_num_threads()}")
    for name, sec in t.items():
        share = f"({flops / sec / 1e9 / peak:5.1%} of NumPy matmul {peak:.0f} GFLOP/s)" if args.device == "cpu" else ""
        print(f"  {name:11s} {sec * 1e3:8.1f} ms/step  {flops / sec / 1e9:6.1f} GFLOP/s {share}")
    print(f"ratio minilora / torch eager: {t['minilora'] / t['torch']:.2f}  (target <= 1.5)")
    print(f"ratio minilora / torch sdpa:  {t['minilora'] / t['torch_sdpa']:.2f}")


if __name__ == "__main__":
    main()

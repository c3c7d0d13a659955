"""The `minilora` command: one entry point, a subcommand per job.

Each subcommand imports its module only when it runs, so `minilora --help`
is instant and a learner without the notebook extras can still run the demo.
"""
from __future__ import annotations

import argparse
import sys


def _cmd_demo(args: argparse.Namespace) -> int:
    from minilora.demo import run_demo

    run_demo(steps=args.steps, rank=args.rank, targets=args.targets.split(","),
             out_dir=args.out, seed=args.seed)
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from minilora.pretrained import pretrain

    pretrain(out_path=args.out, steps=args.steps, seed=args.seed)
    return 0


def _cmd_student(args: argparse.Namespace) -> int:
    from minilora.student import make_student_copies

    written = make_student_copies(args.src, args.dst)
    for path in written:
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minilora", description="Learn LoRA by building it.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="LoRA vs full fine-tuning on the shipped tiny GPT, merge, swap adapters")
    demo.add_argument("--steps", type=int, default=None, help="fine-tuning steps for every run (default: 400 full, 1000 LoRA on the first task, 400 on the second)")
    demo.add_argument("--rank", type=int, default=4, help="LoRA rank r (default 4)")
    demo.add_argument("--targets", default="q_proj,v_proj", help="comma-separated module names to adapt")
    demo.add_argument("--out", default="minilora_demo", help="output directory for adapters, checkpoints and plots")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_cmd_demo)

    pre = sub.add_parser("pretrain", help="reproduce the shipped pretrained tiny GPT from a seed")
    pre.add_argument("--out", default=None, help="where to write the checkpoint directory (default: the package's own)")
    pre.add_argument("--steps", type=int, default=None)
    pre.add_argument("--seed", type=int, default=0)
    pre.set_defaults(func=_cmd_pretrain)

    stu = sub.add_parser("student", help="write student copies of notebooks with the solutions removed")
    stu.add_argument("src", help="folder of notebooks (or one .ipynb)")
    stu.add_argument("dst", help="folder to write the student copies to")
    stu.set_defaults(func=_cmd_student)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

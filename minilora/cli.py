"""The `minilora` command: one entry point, a subcommand per job.

It speaks like a tool: an error is one line, `minilora: error: ...`, with exit
status 2 and no traceback (`--debug` shows it); Ctrl-C prints one line and
exits 130. Every argument is checked before any work starts.

Each subcommand imports its module only when it runs. `paper` and
`classroom` live in modules of their own (minilora/paper.py,
minilora/classroom.py) that provide `add_arguments(parser)` and
`run(args) -> int`; a command whose module is not there is not listed.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

PROG = "minilora"

# Subcommands implemented in modules of their own: name -> (module, one-line help).
PLUGINS = {
    "paper": ("minilora.paper", "reproduce the LoRA paper's claims on the tiny GPT and plot them"),
    "classroom": ("minilora.classroom", "serve the interactive explorers as one page for a projector"),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: `minilora: error: ...`, exit status 2."""

    def error(self, message):
        self.exit(2, f"{PROG}: error: {message} (see `{self.prog} --help`)\n")


# ----------------------------------------------------------------------------
# Argument types: a bad value is refused while parsing, before any work


def _int_at_least(low: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; {what}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is too small; {what}")
        return value
    return parse


STEPS = _int_at_least(1, "give a number of steps >= 1")
RANK = _int_at_least(1, "give a LoRA rank >= 1, e.g. 4")
SEED = _int_at_least(0, "give a seed >= 0")


# ----------------------------------------------------------------------------
# Commands


def _cmd_demo(args: argparse.Namespace) -> int:
    from minilora.demo import run_demo

    run_demo(steps=args.steps, rank=args.rank, targets=args.targets.split(","),
             out_dir=args.out, seed=args.seed, resume=args.resume)
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from minilora.pretrained import pretrain

    pretrain(out_path=args.out, steps=args.steps, seed=args.seed, resume=args.resume)
    return 0


def _cmd_student(args: argparse.Namespace) -> int:
    from minilora.student import make_student_copies

    written = make_student_copies(args.src, args.dst)
    for path in written:
        print(f"wrote {path}")
    return 0


def _add_debug(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: given after the command it sets args.debug; absent, it leaves the top level's value
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="on an error, show the full traceback")


def _chosen_command(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; a plugin's options are added only when `argv` asks for that command."""
    from minilora import __version__

    argv = sys.argv[1:] if argv is None else argv
    parser = _Parser(prog=PROG, description="Learn LoRA by building it.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    demo = sub.add_parser("demo", help="LoRA vs full fine-tuning on the shipped tiny GPT, merge, swap adapters")
    demo.add_argument("--steps", type=STEPS, default=None,
                      help="fine-tuning steps for every run (default: 400 full, 1000 LoRA on the first task, "
                           "400 on the second)")
    demo.add_argument("--rank", type=RANK, default=4, help="LoRA rank r (default 4)")
    demo.add_argument("--targets", default="q_proj,v_proj",
                      help="comma-separated layer names to adapt (default q_proj,v_proj; the tiny GPT has "
                           "q_proj, k_proj, v_proj, o_proj, fc, proj, wte, wpe)")
    demo.add_argument("--out", default="minilora_demo",
                      help="output folder for adapters, checkpoint, plot and summary.json (default "
                           "./minilora_demo); built in OUT.partial, moved to OUT when complete")
    demo.add_argument("--seed", type=SEED, default=0, help="random seed (default 0)")
    demo.add_argument("--resume", action="store_true",
                      help="continue an interrupted demo from OUT.partial (same options as before)")
    demo.set_defaults(func=_cmd_demo, resumable=True)

    pre = sub.add_parser("pretrain", help="reproduce the shipped pretrained tiny GPT from a seed")
    pre.add_argument("--out", default=None,
                     help="checkpoint folder to write (default ./minilora_pretrained; never inside the "
                          "installed package)")
    pre.add_argument("--steps", type=STEPS, default=None, help="training steps (default: the recipe's 2000)")
    pre.add_argument("--seed", type=SEED, default=0, help="random seed (default 0, the shipped model's)")
    pre.add_argument("--resume", action="store_true",
                     help="continue an interrupted run from OUT.partial (same options as before)")
    pre.set_defaults(func=_cmd_pretrain, resumable=True)

    stu = sub.add_parser("student", help="write student copies of notebooks with the solutions removed")
    stu.add_argument("src", help="folder of notebooks (or one .ipynb)")
    stu.add_argument("dst", help="folder to write the student copies to")
    stu.set_defaults(func=_cmd_student)

    for cmd in (demo, pre, stu):
        _add_debug(cmd)
    chosen = _chosen_command(argv)
    for name, (module_name, help_text) in PLUGINS.items():
        if importlib.util.find_spec(module_name) is None:
            continue                                   # not written yet: not listed
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if chosen == name:                             # import it only when it is the one asked for
            module = importlib.import_module(module_name)
            module.add_arguments(cmd)
            cmd.set_defaults(func=module.run)
        _add_debug(cmd)
    return parser


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[1:-1] if isinstance(err, KeyError) and text[:1] == text[-1:] == "'" else text


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        hint = "; run the same command with --resume to continue" if getattr(args, "resumable", False) else ""
        print(f"{PROG}: interrupted{hint}", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

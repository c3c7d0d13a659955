"""`minilora classroom`: the course's explorers on one page, for the projector.

    minilora classroom [--port 8866] [--open]

serves, on this machine only (127.0.0.1), one Voilà page with the interactive
explorers side by side and no code on screen:

- the SVD rank slider on a photograph (notebook 02),
- 2dr against d², a d and r slider (notebook 03),
- the LoRA rank explorer over adapters trained on the tiny GPT (notebook 08),
  when this version of minilora has it.

The page is a small notebook written to a temporary folder and run by Voilà
(`pip install "minilora[classroom]"`) in a child process. Ctrl-C stops it: the
child and its kernel are ended, the temporary folder is removed, and the
command exits with status 0.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["add_arguments", "run", "dashboard_notebook", "voila_command"]

DEFAULT_PORT = 8866
STOP_TIMEOUT_S = 10                     # after Ctrl-C: how long Voilà gets before it is killed


def _markdown(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": text}


def _code(text: str) -> dict:
    return {"cell_type": "code", "metadata": {}, "source": text, "outputs": [], "execution_count": None}


def _numbered(cells: list[dict]) -> list[dict]:
    return [dict(cell, id=f"cell-{k}") for k, cell in enumerate(cells)]


def dashboard_notebook() -> dict:
    """The page as a notebook: a heading and one explorer per section (Voilà hides the code)."""
    cells = [
        _markdown("# minilora in class\n"
                  "Move a slider: each explorer recomputes with minilora and redraws."),
        _code("import matplotlib\nmatplotlib.use('Agg')\n"
              "import minilora.widgets as explorers"),
        _markdown("## 1. Rank and the SVD: a photograph at rank r\n"
                  "The best rank-r approximation keeps the r largest singular values (Eckart–Young)."),
        _code("explorers.svd_explorer()"),
        _markdown("## 2. What a rank-r update costs: 2dr against d²\n"
                  "A d×d weight has d² numbers; LoRA's B and A together have 2dr."),
        _code("explorers.param_count_explorer()"),
        _markdown("## 3. LoRA's rank on a trained model\n"
                  "Accuracy and trainable parameters of adapters trained on the tiny GPT, one per rank."),
        _code("if not hasattr(explorers, 'lora_rank_explorer'):\n"
              "    print('This version of minilora has no LoRA rank explorer.')\n"
              "else:\n"
              "    try:\n"
              "        display(explorers.lora_rank_explorer())\n"
              "    except Exception as exc:   # say why on the page (Voila hides tracebacks)\n"
              "        print(f'The LoRA rank explorer could not start: {type(exc).__name__}: {exc}')"),
    ]
    return {"cells": _numbered(cells), "nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                         "language_info": {"name": "python"}}}


def voila_command(notebook: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "voila", str(notebook), "--no-browser", f"--port={port}",
            "--Voila.ip=127.0.0.1", "--Voila.port_retries=0", "--strip_sources=True",
            "--show_tracebacks=False", "--theme=light", f"--Voila.connection_dir_root={notebook.parent}"]


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number; give one from 1024 to 65535") from None
    if not 1024 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number from 1024 to 65535")
    return port


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT,
                        help=f"port on 127.0.0.1 to serve the page on (default {DEFAULT_PORT})")
    parser.add_argument("--open", action="store_true", help="open the page in the default web browser")


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _stop(proc: subprocess.Popen) -> None:
    """End Voilà (SIGTERM lets it shut its kernel down), then anything left in its process group."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=STOP_TIMEOUT_S)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _kill_leftover_kernels(work: Path) -> None:
    # a kernel is started in a session of its own, so it is not in Voila's process group;
    # ours are the ones whose connection file lies in our private folder
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc_dir / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(work) in cmdline:
            try:
                os.kill(int(proc_dir.name), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def run(args: argparse.Namespace) -> int:
    try:
        import voila  # noqa: F401 - only to say clearly what is missing
    except ImportError:
        print('minilora classroom: error: Voilà is not installed; pip install "minilora[classroom]"',
              file=sys.stderr)
        return 2
    if not _port_is_free(args.port):
        print(f"minilora classroom: error: port {args.port} on 127.0.0.1 is in use; choose another with --port",
              file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="minilora-classroom-"))
    notebook = work / "minilora_classroom.ipynb"
    notebook.write_text(json.dumps(dashboard_notebook(), indent=1), encoding="utf-8")
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(work / "runtime"), MPLBACKEND="Agg")

    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    # its own session: the terminal's Ctrl-C reaches only us, and we stop Voilà in order
    proc = subprocess.Popen(voila_command(notebook, args.port), cwd=work, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{args.port}/"
    announced = False
    try:
        while not stopping and proc.poll() is None:
            if not announced and _listening(args.port):
                announced = True
                print(f"minilora classroom: serving {url}  (Ctrl-C to stop)", flush=True)
                if args.open:
                    import webbrowser

                    webbrowser.open(url)
            time.sleep(0.2)
    finally:
        _stop(proc)
        _kill_leftover_kernels(work)
        shutil.rmtree(work, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopping:
        print("minilora classroom: stopped", flush=True)
        return 0
    print(f"minilora classroom: error: Voilà exited with status {proc.returncode}", file=sys.stderr)
    return 1


def _listening(port: int) -> bool:
    # a bare connection, not a page request (the page itself would start a kernel)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False

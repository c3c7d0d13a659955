"""The `minilora` command speaks like a tool: one-line errors with exit status 2 and no
traceback, checks before work, Ctrl-C exits 130, --version, help for every option."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import pytest

import minilora
from minilora import cli, pretrained
from minilora.cli import main


def run_cli(*args, timeout=120, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "minilora.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, **kwargs)


def one_error_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {lines}"
    assert lines[0].startswith("minilora: error: ") and "Traceback" not in text
    return lines[0]


def test_version_and_a_real_error_from_the_shell(tmp_path):
    done = run_cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"minilora {minilora.__version__}"
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    done = run_cli("pretrain", "--out", str(a_file))
    assert done.returncode == 2
    assert "exists and is a file, not a folder" in one_error_line(done.stderr)
    assert a_file.read_text() == "x" and not (tmp_path / "taken.partial").exists()


@pytest.mark.parametrize("argv, needle", [
    (["demo", "--steps", "0"], "argument --steps: 0 is too small; give a number of steps >= 1"),
    (["demo", "--seed", "-1"], "argument --seed: -1 is too small; give a seed >= 0"),
    (["demo", "--rank", "0"], "argument --rank: 0 is too small; give a LoRA rank >= 1"),
    (["demo", "--rank", "four"], "argument --rank: 'four' is not a whole number"),
    (["pretrain", "--steps", "1e3"], "argument --steps: '1e3' is not a whole number"),
    (["demo", "--bogus"], "unrecognized arguments: --bogus"),
    ([], "the following arguments are required: COMMAND"),
    (["teleport"], "invalid choice: 'teleport'"),
])
def test_bad_arguments_are_one_line_with_status_2(capsys, argv, needle):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert needle in one_error_line(capsys.readouterr().err)


def test_unknown_lora_targets_are_refused_before_any_training(tmp_path, capsys, monkeypatch):
    import minilora.demo as demo

    monkeypatch.setattr(demo, "compute", lambda *a, **k: pytest.fail("training started"))
    start = time.perf_counter()
    assert main(["demo", "--targets", "q,v", "--out", str(tmp_path / "out")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "targets ['q', 'v'] match no layer" in line and "q_proj" in line and "v_proj" in line
    assert time.perf_counter() - start < 10
    assert os.listdir(tmp_path) == []


def test_pretrain_never_writes_into_the_package(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pretrained, "train", lambda *a, **k: pytest.fail("training started"))
    for out in (pretrained.PRETRAINED_DIR, pretrained.PRETRAINED_DIR / "sub", pretrained.PACKAGE_DIR):
        assert main(["pretrain", "--out", str(out), "--steps", "5"]) == 2
        assert "refusing to write" in one_error_line(capsys.readouterr().err)
    link = tmp_path / "sneaky"
    link.symlink_to(pretrained.PRETRAINED_DIR, target_is_directory=True)
    assert main(["pretrain", "--out", str(link), "--steps", "5"]) == 2
    assert "inside the installed package" in one_error_line(capsys.readouterr().err)


def test_pretrain_without_out_writes_into_the_working_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shipped = {p.name: p.read_bytes() for p in pretrained.PRETRAINED_DIR.iterdir()}
    assert main(["pretrain", "--steps", "2"]) == 0
    assert (tmp_path / pretrained.DEFAULT_OUT / "model.safetensors").is_file()
    assert sorted(os.listdir(tmp_path)) == [pretrained.DEFAULT_OUT]          # no .partial left
    assert {p.name: p.read_bytes() for p in pretrained.PRETRAINED_DIR.iterdir()} == shipped


def test_an_error_inside_a_command_is_one_line_and_debug_shows_the_traceback(capsys, monkeypatch):
    def broken(**kwargs):
        raise ValueError("something\nwent wrong")
    monkeypatch.setattr(pretrained, "pretrain", broken)
    assert main(["pretrain"]) == 2
    assert one_error_line(capsys.readouterr().err) == "minilora: error: something went wrong"
    for argv in (["--debug", "pretrain"], ["pretrain", "--debug"]):
        with pytest.raises(ValueError, match="went wrong"):
            main(argv)


def test_ctrl_c_prints_one_line_and_exits_130(capsys, monkeypatch):
    def interrupted(**kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(pretrained, "pretrain", interrupted)
    assert main(["pretrain"]) == 130
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == ["minilora: interrupted; run the same command with --resume to continue"]


def test_every_option_has_help_text():
    parser = cli.build_parser(["demo"])
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help, f"`minilora {name} {'/'.join(action.option_strings) or action.dest}` has no help"
    for action in parser._actions:
        assert action.help or isinstance(action, argparse._SubParsersAction)


def test_plugin_commands_are_listed_only_when_their_module_exists(monkeypatch, capsys):
    monkeypatch.setitem(cli.PLUGINS, "hologram", ("minilora.hologram_not_written_yet", "a future command"))
    with pytest.raises(SystemExit):
        main(["--help"])
    listing = capsys.readouterr().out
    assert "hologram" not in listing and "demo" in listing and "student" in listing
    for name, (module, _) in cli.PLUGINS.items():
        if name != "hologram" and __import__("importlib").util.find_spec(module) is not None:
            assert name in listing


def test_a_run_never_replaces_a_folder_holding_other_files(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pretrained, "train", lambda *a, **k: pytest.fail("training started"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    for argv in (["demo", "--out", str(tmp_path / "mine")], ["pretrain", "--out", str(tmp_path / "mine")]):
        assert main(argv) == 2
        assert "holds files this command did not write (thesis.tex)" in one_error_line(capsys.readouterr().err)
    monkeypatch.chdir(tmp_path / "mine")
    for argv in (["demo", "--out", "."], ["pretrain", "--out", ".."]):
        assert main(argv) == 2
        assert "the working directory or a folder holding it" in one_error_line(capsys.readouterr().err)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "years of work"
    assert sorted(os.listdir(tmp_path)) == ["mine"]

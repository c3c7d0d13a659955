"""minilora.files: atomic folders and files, symbolic links, leftovers of killed saves."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from minilora import files
from minilora.files import (check_output_dir, read_json, read_safetensors, recover, replace_dir,
                            safetensors_bytes, safetensors_shapes, write_dir_atomically,
                            write_file_atomically)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_saving_through_a_symlink_writes_the_target_and_keeps_the_link(tmp_path):
    real = tmp_path / "real"
    write_dir_atomically(real, {"a.txt": b"old"})
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    written = write_dir_atomically(link, {"a.txt": b"new", "b.txt": b"more"})
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert written == real
    assert (real / "a.txt").read_bytes() == b"new" and (real / "b.txt").read_bytes() == b"more"
    assert sorted(os.listdir(tmp_path)) == ["link", "real"]


def test_a_dangling_symlink_is_written_through_to_where_it_points(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "later" / "ckpt")
    write_dir_atomically(link, {"x": b"1"})
    assert link.is_symlink() and (tmp_path / "later" / "ckpt" / "x").read_bytes() == b"1"


def test_the_new_folder_gets_the_usual_permissions_not_a_private_0700(tmp_path):
    directory = write_dir_atomically(tmp_path / "d", {"x": b"1"})
    assert stat.S_IMODE(directory.stat().st_mode) == 0o777 & ~_umask()


def test_an_existing_file_where_a_folder_should_go_is_refused_before_any_work(tmp_path):
    (tmp_path / "ckpt").write_text("I am a file")
    with pytest.raises(NotADirectoryError, match=r"ckpt exists and is a file, not a folder"):
        write_dir_atomically(tmp_path / "ckpt", {"x": b"1"})
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        check_output_dir(tmp_path / "ckpt" / "inside")
    assert (tmp_path / "ckpt").read_text() == "I am a file"


def test_recover_puts_back_the_old_version_left_aside_by_a_killed_save(tmp_path):
    # a save killed between its two renames: no "ckpt", only ".ckpt.old.<dead pid>.<token>"
    dead_pid = 2 ** 22 + 12345                      # above Linux's pid_max default: never running
    aside = tmp_path / f".ckpt.old.{dead_pid}.abcd"
    write_dir_atomically(aside, {"config.json": b"{}"})
    half = tmp_path / f".ckpt.tmp.{dead_pid}.ef01"
    half.mkdir()
    (half / "config.json").write_bytes(b"{")
    assert read_json(tmp_path / "ckpt" / "config.json") == {}       # a load recovers it
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_leftovers_of_a_writer_that_is_still_running_are_left_alone(tmp_path):
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        theirs = tmp_path / f".ckpt.tmp.{writer.pid}.abcd"     # a live process: it may still be writing
        theirs.mkdir()
        write_dir_atomically(tmp_path / "ckpt", {"x": b"1"})
        recover(tmp_path / "ckpt")
        assert theirs.is_dir()
    finally:
        writer.kill()
        writer.wait()


def test_write_file_atomically_keeps_permissions_and_follows_links(tmp_path):
    path = tmp_path / "notebook.ipynb"
    write_file_atomically(path, "first")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()   # readable by classmates, not 0600
    os.chmod(path, 0o640)
    write_file_atomically(path, "second é")
    assert path.read_text(encoding="utf-8") == "second é" and stat.S_IMODE(path.stat().st_mode) == 0o640
    link = tmp_path / "link.ipynb"
    link.symlink_to(path)
    write_file_atomically(link, b"third")
    assert link.is_symlink() and path.read_bytes() == b"third"
    assert sorted(os.listdir(tmp_path)) == ["link.ipynb", "notebook.ipynb"]


def test_a_failed_file_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    write_file_atomically(path, "old")

    def broken(*args):
        raise OSError("disk full")
    monkeypatch.setattr(files.os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        write_file_atomically(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


def test_replace_dir_publishes_a_finished_folder_in_one_step(tmp_path):
    out = write_dir_atomically(tmp_path / "out", {"summary.json": b"old"})
    work = tmp_path / "out.partial"
    work.mkdir()
    (work / "summary.json").write_bytes(b"new")
    replace_dir(work, out)
    assert (out / "summary.json").read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_safetensors_shapes_reads_only_the_header(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(safetensors_bytes({"a": np.zeros((2, 3), np.float32), "b": np.ones(4, np.float64)}))
    assert safetensors_shapes(path) == {"a": ((2, 3), "F32"), "b": ((4,), "F64")}
    assert read_safetensors(path)["a"].shape == (2, 3)
    path.write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(ValueError, match="bad header length"):
        safetensors_shapes(path)


def test_json_takes_numpy_scalars_but_refuses_other_objects():
    assert files.json_bytes({"acc": np.float32(0.5), "n": np.int64(3)}) == b'{\n  "acc": 0.5,\n  "n": 3\n}\n'
    with pytest.raises(TypeError, match="cannot be written as JSON"):
        files.json_bytes({"x": object()})


def test_a_relative_path_and_dot_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    monkeypatch.chdir(tmp_path / "ckpt")
    written = write_dir_atomically(".", {"x": b"1"})
    assert written == tmp_path / "ckpt" and (tmp_path / "ckpt" / "x").read_bytes() == b"1"
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]

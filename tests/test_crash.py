"""A save killed at any moment leaves the checkpoint loadable, old or new, and the
next save or load clears what the killed one left behind.

Each trial forks a child that saves and dies: either at a chosen step of the
write protocol (just before or just after every fsync, rename, exchange and
delete, in turn, with os._exit, as a power cut would), or at a random moment
(SIGKILL from the parent). Forking keeps each trial to a few milliseconds.
"""
from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import time

import numpy as np
import pytest

import minilora as ml
from minilora import files
from minilora.files import read_safetensors
from minilora.model import GPT, GPTConfig
from minilora.train import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the crash tests fork a child process")

KILLED = 77   # exit status of a child that was made to die


def tiny(seed: int) -> GPT:
    ml.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16))


OLD, NEW, NEXT = tiny(1), tiny(2), tiny(3)


def weights_of(directory) -> dict:
    return {k: np.asarray(v) for k, v in read_safetensors(directory / "model.safetensors").items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _no_exchange(a, b):
    raise OSError(errno.ENOSYS, "no exchange on this platform")


def _run_child(body) -> int:
    """Fork; the child runs body() and always leaves through os._exit. Return its exit status."""
    pid = os.fork()
    if pid == 0:                                   # the child
        try:
            body()
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _save_dying_at(step: int, when: str, directory, exchange: bool):
    """A child body: save NEW, but die just `when` ("before"/"after") the step-th file-system step."""
    def body():
        count = [0]

        def dying(real):
            def call(*args, **kwargs):
                count[0] += 1
                if count[0] == step and when == "before":
                    os._exit(KILLED)
                try:
                    return real(*args, **kwargs)
                finally:                           # also after a call that raised (no exchange here)
                    if count[0] == step and when == "after":
                        os._exit(KILLED)
            return call
        os.fsync = dying(os.fsync)
        os.replace = dying(os.replace)
        shutil.rmtree = dying(shutil.rmtree)
        files._exchange = dying(files._exchange if exchange else _no_exchange)
        save_checkpoint(NEW, directory)
    return body


def _check_after_kill(directory, had_old: bool, first_reader: str):
    """The checkpoint loads, complete, as OLD or NEW; then the next save leaves no leftovers."""
    parent = directory.parent
    if first_reader == "load":
        if had_old or directory.exists() or any(p.name.startswith(".ckpt.old.") for p in parent.iterdir()):
            got = {k: v for k, v in load_checkpoint(directory).state_dict().items()}
            assert same(got, OLD.state_dict()) or same(got, NEW.state_dict())
            assert sorted(os.listdir(parent)) == ["ckpt"], "loading did not clear the leftovers"
        else:                                      # a first save that died before its rename
            with pytest.raises(FileNotFoundError):
                load_checkpoint(directory)
    save_checkpoint(NEXT, directory)
    assert sorted(os.listdir(parent)) == ["ckpt"], f"leftovers after the next save: {os.listdir(parent)}"
    assert same(weights_of(directory), NEXT.state_dict())


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
@pytest.mark.parametrize("had_old", [True, False], ids=["over-old", "first-save"])
def test_a_save_killed_at_every_step_leaves_old_or_new_and_no_leftovers(tmp_path, exchange, had_old):
    trials = 0
    for step in range(1, 50):
        for when in ("before", "after"):
            directory = tmp_path / f"trial{trials}" / "ckpt"
            directory.parent.mkdir()
            if had_old:
                save_checkpoint(OLD, directory)
            status = _run_child(_save_dying_at(step, when, directory, exchange))
            assert status in (0, KILLED), f"the saving child failed (exit {status}) at step {step}"
            # straight after the kill, before any recovery: never neither (except inside the
            # two-rename gap, where the old version waits beside it to be renamed back)
            if had_old and exchange:
                assert same(weights_of(directory), OLD.state_dict()) or same(weights_of(directory), NEW.state_dict())
            _check_after_kill(directory, had_old, first_reader="load" if trials % 2 == 0 else "save")
            trials += 1
            if status == 0:                        # the save ran to the end: every step was tried
                # fsyncs of the files, the rename or exchange, the deletes: all tried, before and after
                # 3 fsyncs (2 files, the folder), the swap (1 exchange, or 1 refused exchange and 2
                # renames), the delete of the old version, 1 fsync of the parent: each before and after
                assert trials == 1 + 2 * ((6 if exchange else 8) if had_old else 5), trials
                return
    pytest.fail("the save never finished")


def test_a_save_killed_at_random_moments_always_leaves_a_loadable_checkpoint(tmp_path):
    rng = random.Random(0)
    directory = tmp_path / "ckpt"
    save_checkpoint(OLD, directory)
    versions = [OLD.state_dict(), NEW.state_dict()]
    for trial in range(24):
        pid = os.fork()
        if pid == 0:                               # the child saves NEW and OLD in turn until killed
            try:
                while True:
                    save_checkpoint(NEW, directory)
                    save_checkpoint(OLD, directory)
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.0, 0.03))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        got = load_checkpoint(directory).state_dict()
        assert any(same(got, v) for v in versions), f"trial {trial}: the checkpoint is neither version"
    save_checkpoint(NEXT, directory)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_a_reader_never_finds_the_checkpoint_missing_while_another_process_saves(tmp_path):
    directory = tmp_path / "ckpt"
    save_checkpoint(OLD, directory)
    pid = os.fork()
    if pid == 0:
        try:
            while True:
                save_checkpoint(NEW, directory)
                save_checkpoint(OLD, directory)
        finally:
            os._exit(1)
    try:
        seen = set()
        for _ in range(300):
            got = weights_of(directory)
            seen.add(0 if same(got, OLD.state_dict()) else 1 if same(got, NEW.state_dict()) else -1)
        assert -1 not in seen
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

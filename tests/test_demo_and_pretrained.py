"""The shipped pretrained model, `minilora pretrain`, `minilora demo` and the CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import minilora as ml
from minilora import data, pretrained
from minilora.cli import main as cli_main


# ----------------------------------------------------------------- the shipped model
def test_shipped_model_is_small_and_loads_instantly():
    files = {f.name: f.stat().st_size for f in pretrained.PRETRAINED_DIR.iterdir()}
    assert set(files) == {"model.safetensors", "config.json"}
    assert files["model.safetensors"] < 3 * 2**20, "the shipped model must stay a few MB at most"
    model = pretrained.load_pretrained()
    assert model.config == pretrained.MODEL_CONFIG
    assert model.training is False


def test_shipped_model_has_learned_the_pretraining_mixture():
    model = pretrained.load_pretrained()
    accuracy = pretrained.task_accuracy(model, data.PRETRAIN_TASKS, n=100)
    assert min(accuracy.values()) >= 0.9, accuracy
    # ... but not the downstream tasks, which is what fine-tuning is for
    downstream = pretrained.task_accuracy(model, data.DOWNSTREAM_TASKS[:2], n=100)
    assert max(downstream.values()) <= 0.2, downstream


def test_shipped_model_records_its_recipe():
    info = pretrained.pretrained_info()
    recipe = info["pretrain"]
    assert recipe["tasks"] == list(data.PRETRAIN_TASKS)
    assert recipe["steps"] == pretrained.PRETRAIN.steps
    assert recipe["seed"] == 0
    assert info["gpt_config"] == pretrained.MODEL_CONFIG.to_dict()


def test_pretrain_is_reproducible_from_a_seed(tmp_path):
    a = pretrained.pretrain(tmp_path / "a", steps=15, seed=3, progress=False)
    b = pretrained.pretrain(tmp_path / "b", steps=15, seed=3, progress=False)
    c = pretrained.pretrain(tmp_path / "c", steps=15, seed=4, progress=False)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    if ml.backend.default_device() == "cpu":
        assert all(np.array_equal(sa[k], sb[k]) for k in sa)      # bit for bit
    else:
        # CuPy's scatter-add (embedding gradients) uses atomic adds, whose order, and so
        # whose float rounding, varies from run to run: equal up to float32 rounding.
        assert all(np.allclose(sa[k], sb[k], rtol=1e-4, atol=1e-6) for k in sa)
    assert not all(np.allclose(sa[k], sc[k], rtol=1e-2) for k in sa)
    reloaded = ml.load_checkpoint(tmp_path / "a")
    assert all(np.array_equal(sa[k], v) for k, v in reloaded.state_dict().items())


# ----------------------------------------------------------------- the demo
def test_demo_runs_end_to_end_quickly(tmp_path, capsys):
    from minilora.demo import run_demo

    summary = run_demo(steps=30, out_dir=tmp_path, progress=False)
    out = capsys.readouterr().out
    task_a, task_b = data.DOWNSTREAM_TASKS[:2]
    assert "trainable parameters" in out and "LoRA recovers" in out
    assert (tmp_path / f"adapter_{task_a}" / "adapter_model.safetensors").exists()
    assert (tmp_path / f"adapter_{task_b}" / "adapter_config.json").exists()
    assert (tmp_path / f"full_{task_a}" / "model.safetensors").exists()
    assert (tmp_path / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["steps"] == {"full": 30, "lora": 30, "second": 30}
    # LoRA's economics, exactly: r=4 on q and v of 2 layers of width 64 is 2 * 2 * 4 * (64 + 64)
    assert summary["trainable_lora"] == 2 * 2 * 4 * (64 + 64)
    assert summary["optimizer_bytes_lora"] == 2 * 4 * summary["trainable_lora"]
    assert summary["optimizer_bytes_full"] == 2 * 4 * summary["trainable_full"]
    assert summary["adapter_bytes"] * 10 < summary["checkpoint_bytes"]
    # merging changes nothing but rounding, and swapping never touches the base
    assert summary["merge_max_abs_diff"] < 1e-4
    assert summary["base_untouched"] is True


def test_demo_shows_examples_both_recipes_and_median_step_times(tmp_path, capsys):
    from minilora.demo import FULL_LR, LORA_LR, run_demo

    summary = run_demo(steps=3, out_dir=tmp_path / "out", progress=False)
    out = capsys.readouterr().out
    assert f"3 steps, lr {FULL_LR:g}" in out and f"3 steps, lr {LORA_LR:g}" in out
    assert "time per step (median)" in out
    ex = summary["examples"]
    assert len(ex["prompt"]) == 3 and all(p in out for p in ex["prompt"])
    # the correct answers really are the task's answers, and each model's answer is printed
    task = data.get_task(summary["tasks"][0])
    assert ex["answer"] == [task.answer(task.input_of(p)) for p in ex["prompt"]]
    assert all(a in out for key in ("base", "full", "lora") for a in ex[key] if a)
    assert summary["learning_rates"] == {"full": FULL_LR, "lora": LORA_LR, "second": LORA_LR}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]      # no OUT.partial left behind


def _stop_in_lora_phase(monkeypatch, demo, at_step):
    """Make the demo's LoRA phase on task A raise KeyboardInterrupt (a Ctrl-C) at `at_step`."""
    real = demo.task_batches
    calls = {"n": 0}

    def batches(tasks, *args):
        get_batch = real(tasks, *args)
        calls["n"] += 1
        if calls["n"] != 2:                                   # 1: full, 2: LoRA on A, 3: LoRA on B
            return get_batch

        class Stopping:
            def __call__(self, step):
                if step == at_step:
                    raise KeyboardInterrupt
                return get_batch(step)

            def __getattr__(self, name):
                return getattr(get_batch, name)
        return Stopping()
    monkeypatch.setattr(demo, "task_batches", batches)


@pytest.mark.slow
def test_an_interrupted_demo_keeps_the_previous_outputs_and_resumes_bit_for_bit(tmp_path, monkeypatch):
    import minilora.demo as demo

    monkeypatch.setattr(demo, "CHECKPOINT_EVERY", 4)
    out, straight = tmp_path / "out", tmp_path / "straight"
    demo.run_demo(steps=10, out_dir=out, seed=0, progress=False)          # the previous complete run
    previous = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    _stop_in_lora_phase(monkeypatch, demo, at_step=6)
    with pytest.raises(KeyboardInterrupt):
        demo.run_demo(steps=10, out_dir=out, seed=1, progress=False)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == previous
    partial = tmp_path / "out.partial"
    assert "--resume" in (partial / "INCOMPLETE.txt").read_text()
    assert json.loads((partial / "resume" / "lora" / "trainer_state.json").read_text())["next_step"] == 4
    monkeypatch.undo()
    monkeypatch.setattr(demo, "CHECKPOINT_EVERY", 4)

    resumed = demo.run_demo(steps=10, out_dir=out, seed=1, progress=False, resume=True)
    whole = demo.run_demo(steps=10, out_dir=straight, seed=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "straight"]
    assert not (out / "INCOMPLETE.txt").exists() and not (out / "resume").exists()
    for f in (f"full_{whole['tasks'][0]}/model.safetensors", f"adapter_{whole['tasks'][0]}/adapter_model.safetensors",
              f"adapter_{whole['tasks'][1]}/adapter_model.safetensors"):
        if ml.backend.default_device() == "cpu":
            assert (out / f).read_bytes() == (straight / f).read_bytes(), f
    assert resumed["accuracy_after_swap"] == whole["accuracy_after_swap"]


def test_resume_without_an_interrupted_run_is_a_clear_error(tmp_path):
    from minilora.demo import run_demo

    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        run_demo(steps=3, out_dir=tmp_path / "out", resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        pretrained.pretrain(tmp_path / "p", steps=3, resume=True, progress=False)


def test_an_interrupted_pretrain_resumes_bit_for_bit(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "CHECKPOINT_EVERY", 3)
    whole = pretrained.pretrain(tmp_path / "whole", steps=8, seed=2, progress=False)

    real = pretrained.TaskBatches.__call__

    def stop_at_5(self, step):
        if step == 5:
            raise KeyboardInterrupt
        return real(self, step)
    monkeypatch.setattr(pretrained.TaskBatches, "__call__", stop_at_5)
    with pytest.raises(KeyboardInterrupt):
        pretrained.pretrain(tmp_path / "cut", steps=8, seed=2, progress=False)
    assert not (tmp_path / "cut").exists() and (tmp_path / "cut.partial" / "INCOMPLETE.txt").exists()
    monkeypatch.setattr(pretrained.TaskBatches, "__call__", real)
    resumed = pretrained.pretrain(tmp_path / "cut", steps=8, seed=2, progress=False, resume=True)
    assert not (tmp_path / "cut.partial").exists()
    if ml.backend.default_device() == "cpu":
        a, b = whole.state_dict(), resumed.state_dict()
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_ctrl_c_during_pretrain_exits_130_and_leaves_a_marked_partial_folder(tmp_path):
    import os
    import signal
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "minilora.cli", "pretrain", "--out", str(tmp_path / "m")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    state = tmp_path / "m.partial" / "resume" / "trainer_state.json"
    try:
        deadline = time.time() + 120
        while not state.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert state.exists(), "no resumable state appeared"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("pretrain")]
    assert lines[-1] == "minilora: interrupted; run the same command with --resume to continue"
    assert "Traceback" not in err
    assert not (tmp_path / "m").exists() and (tmp_path / "m.partial" / "INCOMPLETE.txt").exists()


@pytest.mark.slow
def test_demo_defaults_meet_the_lora_quality_target(tmp_path):
    """With its default settings LoRA (r=4 on q, v) recovers >= 90% of full fine-tuning's gain."""
    from minilora.demo import run_demo

    summary = run_demo(out_dir=tmp_path, progress=False)
    task_a, task_b = summary["tasks"]
    assert summary["accuracy_full"] >= 0.9
    assert summary["lora_recovers"] >= 0.9, summary
    # each adapter is good at its own task once swapped in
    assert summary["accuracy_after_swap"][task_a][task_a] >= 0.9 * summary["accuracy_full"]
    assert summary["accuracy_after_swap"][task_b][task_b] >= 0.9


# ----------------------------------------------------------------- the CLI
def test_cli_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "minilora.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("demo", "pretrain", "student"):
        assert command in out.stdout


def test_cli_student_writes_copies(tmp_path, capsys):
    from pathlib import Path

    notebooks = Path(__file__).parent.parent / "notebooks"
    assert cli_main(["student", str(notebooks), str(tmp_path)]) == 0
    written = sorted(p.name for p in tmp_path.glob("*.ipynb"))
    assert written == sorted(p.name for p in notebooks.glob("*.ipynb"))
    assert "BEGIN SOLUTION" not in "".join(p.read_text() for p in tmp_path.glob("*.ipynb"))


def test_cli_rejects_an_unknown_command():
    out = subprocess.run([sys.executable, "-m", "minilora.cli", "banana"], capture_output=True, text=True)
    assert out.returncode != 0
    assert "invalid choice" in out.stderr


def test_a_fresh_run_never_discards_an_interrupted_one(tmp_path):
    (tmp_path / "p.partial" / "resume").mkdir(parents=True)
    (tmp_path / "p.partial" / "resume" / "trainer_state.json").write_text("{}")
    with pytest.raises(FileExistsError, match=r"p.partial holds an interrupted run: add --resume"):
        pretrained.pretrain(tmp_path / "p", steps=3, progress=False)
    assert (tmp_path / "p.partial" / "resume" / "trainer_state.json").read_text() == "{}"


# ----------------------------------------------------------------- fair timing
def test_timing_runs_in_blocks_with_a_settling_call_and_alternates_who_goes_first():
    from minilora.timing import alternate, measure

    log = []
    contenders = {"a": lambda: log.append("a"), "b": lambda: log.append("b")}
    result = measure(contenders, repeats=4, warmup=1, block=2)
    #        warm-up  round 0: a settles, 2 timed; b too   round 1: b first this time
    assert log == ["a", "b"] + ["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3
    assert all(len(m["times"]) == 4 and m["spread"] >= 0 for m in result.values())
    assert alternate(contenders, repeats=3, warmup=0).keys() == {"a", "b"}
    with pytest.raises(ValueError, match="repeats=0 must be a whole number >= 1"):
        measure(contenders, repeats=0)

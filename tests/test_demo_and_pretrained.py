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
    if ml.backend.device == "cpu":
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

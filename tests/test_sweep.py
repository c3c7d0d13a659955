"""The rank sweep: its summary arithmetic, a real (tiny) run, the command, and the shipped results."""
from __future__ import annotations

import json

import numpy as np
import pytest

from minilora import sweep
from minilora.sweep import DEFAULT_FILE, TARGET_SETS, Recipe, load_sweep, run_one, summarize

SHAPES = {"q_proj": (64, 64), "k_proj": (64, 64), "v_proj": (64, 64), "o_proj": (64, 64),
          "fc": (64, 256), "proj": (256, 64)}


def lora_count(r, targets):
    return 2 * sum(r * (a + b) for n, (a, b) in SHAPES.items() if n in TARGET_SETS[targets])


def test_summarize_groups_by_targets_and_rank():
    runs = [{"rank": 2, "targets": "q,v", "seed": s, "accuracy": a, "trainable": 7} for s, a in enumerate([0.2, 0.4, 0.9])]
    runs.append({"rank": 4, "targets": "q,v", "seed": 0, "accuracy": 1.0, "trainable": 9})
    s = summarize({"runs": runs})
    assert set(s) == {("q,v", 2), ("q,v", 4)}
    two = s[("q,v", 2)]
    assert two["mean"] == pytest.approx(0.5) and two["min"] == 0.2 and two["max"] == 0.9
    assert two["std"] == pytest.approx(np.std([0.2, 0.4, 0.9], ddof=1))
    assert two["seeds"] == [0, 1, 2] and two["trainable"] == 7
    assert s[("q,v", 4)]["std"] == 0.0


def test_run_one_trains_a_real_adapter():
    rec = run_one(Recipe(steps=3, warmup=1, eval_prompts=4), rank=2, targets="q,v", seed=0)
    assert rec["trainable"] == lora_count(2, "q,v")
    assert 0.0 <= rec["accuracy"] <= 1.0 and np.isfinite(rec["final_loss"])
    with pytest.raises(ValueError, match="must be one of"):
        run_one(Recipe(steps=2), rank=1, targets="everything", seed=0)


def test_command_writes_a_file_the_explorer_reads(tmp_path, capsys):
    out = tmp_path / "sweep.json"
    assert sweep.main(["--out", str(out), "--steps", "2", "--ranks", "1,2", "--targets", "q,v",
                       "--seeds", "0"]) == 0
    data = load_sweep(out)
    assert data["recipe"]["steps"] == 2 and [r["rank"] for r in data["runs"]] == [1, 2]
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        sweep.main(["--out", str(out), "--targets", "nope"])


def test_load_sweep_refuses_other_json(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a rank-sweep file"):
        load_sweep(path)


def test_shipped_sweep_is_complete_and_consistent():
    data = load_sweep()
    assert DEFAULT_FILE.stat().st_size < 64 * 1024                     # small enough to ship
    recipe = data["recipe"]
    s = summarize(data)
    assert {r for _, r in s} == set(recipe["ranks"]) and min(recipe["ranks"]) == 1 and max(recipe["ranks"]) == 16
    for (targets, r), stats in s.items():
        assert len(stats["seeds"]) == len(recipe["seeds"]) >= 3
        assert stats["trainable"] == lora_count(r, targets)
        assert all(0.0 <= a <= 1.0 for a in stats["accuracies"])

"""The rank explorer, driven as a learner would: move the slider, switch targets, read the text."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("matplotlib")

import ipywidgets  # noqa: E402

from minilora.sweep import DEFAULT_FILE, TARGET_SETS  # noqa: E402
from minilora.widgets import lora_rank_explorer  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# (d_in, d_out) of each Linear of a block of the tiny GPT (n_embd = 64), from the model's definition
SHAPES = {"q_proj": (64, 64), "k_proj": (64, 64), "v_proj": (64, 64), "o_proj": (64, 64),
          "fc": (64, 256), "proj": (256, 64)}
N_LAYER = 2


def lora_count(r: int, targets: str) -> int:
    """r (d_in + d_out) per adapted Linear, in each of the 2 blocks."""
    return N_LAYER * sum(r * (a + b) for name, (a, b) in SHAPES.items() if name in TARGET_SETS[targets])


def shipped_accuracies(r: int, targets: str) -> list[float]:
    runs = json.loads(DEFAULT_FILE.read_text())["runs"]
    return [run["accuracy"] for run in runs if run["rank"] == r and run["targets"] == targets]


def shown_percentage(text: str) -> float:
    match = re.search(r"accuracy: ([0-9.]+)%", text)
    assert match, f"no accuracy percentage in {text!r}"
    return float(match.group(1))


def shown_count(text: str) -> int:
    match = re.search(r"trainable parameters: ([0-9,]+)", text)
    assert match, f"no parameter count in {text!r}"
    return int(match.group(1).replace(",", ""))


def test_slider_spans_ranks_1_to_16():
    w = lora_rank_explorer()
    assert isinstance(w, ipywidgets.Box)
    ranks = list(w.slider.options)
    assert ranks[0] == 1 and ranks[-1] == 16 and ranks == sorted(ranks)
    assert set(w.targets.options) == set(TARGET_SETS)


@pytest.mark.parametrize("targets", list(TARGET_SETS))
def test_moving_the_slider_updates_accuracy_and_count(targets):
    w = lora_rank_explorer(rank=1, targets=targets)
    seen = set()
    for r in w.slider.options:
        before_img, before_text = bytes(w.image.value), w.text.value
        w.slider.value = r
        text = w.text.value
        if r != 1:
            assert text != before_text and bytes(w.image.value) != before_img
        assert bytes(w.image.value).startswith(PNG_MAGIC)
        assert f"r = {r}," in text
        assert shown_count(text) == lora_count(r, targets)
        accs = shipped_accuracies(r, targets)
        assert len(accs) >= 3, "each setting is trained with several seeds"
        assert shown_percentage(text) == pytest.approx(100 * np.mean(accs), abs=0.05)
        assert f"{100 * min(accs):.1f}% to {100 * max(accs):.1f}%" in text     # the spread is shown
        seen.add(text)
    assert len(seen) == len(w.slider.options)


def test_switching_targets_changes_the_count():
    w = lora_rank_explorer(rank=4, targets="q,v")
    w.targets.value = "all linear"
    assert shown_count(w.text.value) == lora_count(4, "all linear")
    w.targets.value = "q,v"
    assert shown_count(w.text.value) == lora_count(4, "q,v")


def test_explorer_reads_any_sweep_file(tmp_path):
    runs = [{"rank": r, "targets": "q,v", "seed": s, "accuracy": a, "trainable": lora_count(r, "q,v"), "seconds": 1}
            for r, accs in {1: [0.25, 0.75], 3: [1.0, 1.0]}.items() for s, a in enumerate(accs)]
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"format": "minilora-rank-sweep", "version": 1,
                                "recipe": {"task": "inc", "steps": 5, "lr": 0.01, "batch_size": 4}, "runs": runs}))
    w = lora_rank_explorer(path, rank=2)
    assert list(w.slider.options) == [1, 3] and w.slider.value in (1, 3)
    w.slider.value = 1
    assert shown_percentage(w.text.value) == 50.0 and "25.0% to 75.0%" in w.text.value


def test_not_a_sweep_file_is_refused(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a rank-sweep file"):
        lora_rank_explorer(path)

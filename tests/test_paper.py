"""`minilora paper`: the verdict logic on constructed results, the shipped asset, and the quick run end to end."""
import copy
import json

import pytest

from minilora import paper

# Every key the results must hold (section name -> keys inside it).
REQUIRED = {
    "intrinsic_rank": ["w0_stable_rank", "delta_w_stable_rank", "truncation", "full_accuracy",
                       "random_control_accuracy"],
    "rank_sweep": ["ranks", "accuracy", "seeds"],
    "subspace_similarity": ["phi_top1", "phi_random_baseline", "grid"],
    "amplification": ["ranks", "factor"],
    "intrinsic_dimension": ["num_params", "d_int90"],
    "earlier_methods": ["lora_merged_latency_ratio", "adapter_layers_latency_ratio", "prompt_tuning"],
}


def check_keys(res: dict) -> None:
    for section, keys in REQUIRED.items():
        assert section in res, section
        for key in keys:
            assert key in res[section], f"{section}.{key}"
    assert set(res["intrinsic_rank"]["truncation"]) >= {"ranks", "accuracy"}
    assert set(res["earlier_methods"]["prompt_tuning"]) >= {"prompt_lengths", "accuracy"}
    for row in res["budget_table"]:
        assert set(row) >= {"targets", "r", "trainable_params", "accuracy"}
    assert res["mode"] in ("quick", "full")
    assert len(res["intrinsic_dimension"]["num_params"]) >= 2


def good_results() -> dict:
    """Results in which every claim holds, built by hand."""
    return {
        "intrinsic_rank": {"delta_w_stable_rank": 2.0, "w0_stable_rank": 8.0,
                           "truncation": {"ranks": [1, 2, 4, 8], "accuracy": [0.5, 0.8, 0.95, 1.0]},
                           "full_accuracy": 1.0, "random_control_accuracy": 0.0},
        "rank_sweep": {"smallest_r_90": 2, "full_finetune_accuracy": 1.0, "seeds": 3},
        "budget_table": [{"targets": ["q_proj"], "r": 8, "trainable_params": 2048, "accuracy": 0.7},
                         {"targets": ["q_proj", "v_proj"], "r": 4, "trainable_params": 2048, "accuracy": 0.9}],
        "subspace_similarity": {"phi_top1": 0.6, "phi_random_baseline": 0.016},
        "amplification": {"ranks": [1, 4, 64], "factor": [20.0, 10.0, 2.0]},
        "rslora": {"ranks": [1, 64], "grad_norm_alpha_over_r": [1.0, 0.125],
                   "grad_norm_alpha_over_sqrt_r": [1.0, 1.0]},
        "intrinsic_dimension": {"num_params": [244, 3844], "d_int90": [32, 48]},
        "earlier_methods": {"lora_merged_latency_ratio": 1.0, "adapter_layers_latency_ratio": 1.3,
                            "lora": {"accuracy": 0.95},
                            "prompt_tuning": {"prompt_lengths": [2, 8], "accuracy": [0.1, 0.5]}},
    }


def verdict_of(res, fragment):
    rows = [r for r in paper.verdicts(res) if fragment in r["claim"]]
    assert len(rows) == 1, fragment
    return rows[0]["verdict"]


def test_every_claim_holds_on_good_results():
    rows = paper.verdicts(good_results())
    assert [r["verdict"] for r in rows] == ["reproduced"] * len(rows)
    assert all(r["paper"] and r["measured"] for r in rows)


@pytest.mark.parametrize("fragment, path, value", [
    ("lower stable rank", ("intrinsic_rank", "delta_w_stable_rank"), 9.0),
    ("rank <= 4", ("intrinsic_rank", "truncation"), {"ranks": [1, 4, 8], "accuracy": [0.2, 0.89, 1.0]}),
    ("random directions", ("intrinsic_rank", "random_control_accuracy"), 0.51),
    ("smallest r", ("rank_sweep", "smallest_r_90"), 8),
    ("smallest r", ("rank_sweep", "smallest_r_90"), None),
    ("phi_top1", ("subspace_similarity", "phi_top1"), 0.45),
    ("phi_top1", ("subspace_similarity", "phi_random_baseline"), 0.2),     # 0.6 is < 5 x 0.2
    ("amplification", ("amplification", "factor"), [20.0, 25.0, 2.0]),     # not falling throughout
    ("gradient shrinks", ("rslora", "grad_norm_alpha_over_sqrt_r"), [1.0, 3.0]),
    ("d_int90 grows", ("intrinsic_dimension", "d_int90"), [32, 65]),       # 2.03x > 2x
    ("d_int90 grows", ("intrinsic_dimension", "d_int90"), [32, None]),
    ("d_int90 grows", ("intrinsic_dimension", "num_params"), [244, 1900]), # D grew < 8x
    ("no latency", ("earlier_methods", "lora_merged_latency_ratio"), 1.08),
    ("Prompt tuning", ("earlier_methods", "prompt_tuning"), {"prompt_lengths": [2], "accuracy": [0.96]}),
])
def test_each_criterion_can_fail(fragment, path, value):
    res = copy.deepcopy(good_results())
    res[path[0]][path[1]] = value
    assert verdict_of(res, fragment) == "not reproduced"


def test_unequal_budgets_fail_the_budget_row():
    res = good_results()
    res["budget_table"][1]["trainable_params"] = 2050
    assert verdict_of(res, "equal trainable") == "not reproduced"


def test_truncation_ties_at_ten_points_pass():
    res = good_results()
    res["intrinsic_rank"]["truncation"]["accuracy"] = [0.5, 0.8, 0.9, 1.0]     # exactly 10 points below
    assert verdict_of(res, "rank <= 4") == "reproduced"


def test_shipped_results_have_every_key_and_their_pngs():
    res = paper.load_results()
    check_keys(res)
    for name in ("intrinsic_rank", "rank_sweep", "budget_table", "subspace_similarity", "amplification",
                 "intrinsic_dimension", "earlier_methods"):
        assert (paper.ASSET_DIR / f"{name}.png").stat().st_size > 1000
    # the verdicts stored are the verdicts the current criteria give
    assert res["verdicts"] == paper.verdicts(res)


def test_load_results_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="minilora paper"):
        paper.load_results(tmp_path)


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path, capsys):
    """The CLI's quick path: every key in the JSON, one PNG per experiment, a printed verdict table."""
    from minilora.cli import main

    assert main(["paper", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    res = json.loads((tmp_path / "paper_results.json").read_text())
    check_keys(res)
    assert res["mode"] == "quick"
    assert len({row["trainable_params"] for row in res["budget_table"]}) == 1
    assert len(res["verdicts"]) == len(paper.verdicts(res))
    assert len(list(tmp_path.glob("*.png"))) == 8
    out = capsys.readouterr().out
    assert "verdict" in out and "quick run done" in out


def test_delta_w_rank_slider_reads_the_results():
    widgets = pytest.importorskip("minilora.widgets")
    res = good_results()
    # two matrices: spectra (3, 4) and (1, 0): rank 1 keeps 9/25 and 1/1 of the energy
    res["intrinsic_rank"].update(spectra={"a": [3.0, 4.0], "b": [1.0, 0.0]}, task="dsc")
    w = widgets.delta_w_rank_explorer(res, rank=4)
    assert w.info["rank"] == 4 and w.info["accuracy"] == 0.95
    w.slider.value = 1
    assert w.info["accuracy"] == 0.5
    assert w.info["energy_kept"] == pytest.approx((9 / 25 + 1) / 2)
    assert w.info["random_control"] == 0.0 and w.image.value[:4] == b"\x89PNG"


def test_prompt_length_slider_reads_the_results():
    widgets = pytest.importorskip("minilora.widgets")
    res = good_results()
    res["earlier_methods"].update(task="inc", lora={"r": 4, "trainable_params": 2048, "accuracy": 0.95})
    res["earlier_methods"]["prompt_tuning"]["trainable_params"] = [128, 512]
    w = widgets.prompt_length_explorer(res)
    w.slider.value = 8
    assert w.info == {"prompt_length": 8, "accuracy": 0.5, "trainable_params": 512, "context_left": 24,
                      "lora_accuracy": 0.95}

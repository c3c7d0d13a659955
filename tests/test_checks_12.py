"""Checks of notebook 12_gpu: the recorded GPU figures, the prediction reveal, the FLOP exercise."""
from __future__ import annotations

import json

import pytest

from minilora import checks
from minilora.checks.feedback import ExerciseError
from minilora.checks.gpu import RECORDED_PATH, recorded_gpu_figures


def test_the_shipped_record_loads_and_says_where_it_comes_from():
    record = recorded_gpu_figures()
    assert "H100" in record["device"] and record["software"]["cupy"]
    assert "not re-measured" in record["provenance"]
    for key in ("lora_over_full_step", "merged_over_base_forward", "minilora_over_torch_cuda_step"):
        assert 0 < record["figures"][key]["value"] < 10


def test_a_record_missing_a_figure_is_refused_by_name(tmp_path):
    record = json.loads(RECORDED_PATH.read_text())
    del record["figures"]["merged_over_base_forward"]
    path = tmp_path / "recorded.json"
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="figures.merged_over_base_forward"):
        recorded_gpu_figures(path)


def test_reveal_explains_a_wrong_guess_without_failing(capsys):
    checks.reveal_lora_step_ratio(0.05, 0.69, "recorded somewhere")
    out = capsys.readouterr().out
    assert "0.05" in out and "0.69" in out and "recorded somewhere" in out


@pytest.mark.parametrize("guess", [None, ..., "a lot", float("nan")])
def test_reveal_refuses_a_missing_or_garbled_guess(guess):
    with pytest.raises(ExerciseError, match="12.1"):
        checks.reveal_lora_step_ratio(guess, 0.69, "recorded")


def products(d_in, d_out, tokens, trainable):
    """Written apart from the check: forward + input gradient, plus the weight gradient if trained."""
    one = 2 * tokens * d_in * d_out
    return one + one + (one if trainable else 0)


def test_a_right_answer_passes(capsys):
    checks.check_linear_step_flops(products)
    assert "Correct!" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, words", [
    (lambda d_in, d_out, tokens, trainable: 6 * tokens * d_in * d_out, "frozen layer does 2 products"),
    (lambda d_in, d_out, tokens, trainable: 6 * tokens * d_in * d_out if trainable else 2 * tokens * d_in * d_out,
     "frozen layer does 2 products"),
    (lambda d_in, d_out, tokens, trainable: 3 * tokens * d_in * d_out if trainable else 0, "trained layer does 3"),
])
def test_wrong_counts_are_explained(wrong, words):
    with pytest.raises(ExerciseError, match=words):
        checks.check_linear_step_flops(wrong)


@pytest.mark.parametrize("answer", [None, "6 T d_in d_out", float("nan")])
def test_a_function_returning_nonsense_gets_a_sentence(answer):
    with pytest.raises(ExerciseError, match="12.2"):
        checks.check_linear_step_flops(lambda *args: answer)


def test_not_a_function_and_a_raising_function_get_a_sentence():
    with pytest.raises(ExerciseError, match="expected your function"):
        checks.check_linear_step_flops(42)

    def broken(d_in, d_out, tokens, trainable):
        raise KeyError("oops")
    with pytest.raises(ExerciseError, match="12.2"):
        checks.check_linear_step_flops(broken)

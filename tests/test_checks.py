"""minilora.checks: right answers are praised, wrong ones explained (never a bare traceback)."""
from __future__ import annotations

import numpy as np
import pytest

from minilora import checks
from minilora.checks import ExerciseError


def rejects(fn, *args, match: str, exercise: str):
    """The check raises ExerciseError (only), for the given exercise, with a message matching `match`."""
    with pytest.raises(ExerciseError, match=match) as info:
        fn(*args)
    assert info.value.exercise == exercise
    assert str(info.value).startswith(f"Exercise {exercise}: ")
    return info.value


def accepts(fn, *args, capsys, exercise: str):
    assert fn(*args) is None
    out = capsys.readouterr().out
    assert out.startswith(f"Correct! (Exercise {exercise})")


def test_exercise_error_is_one_plain_class():
    err = ExerciseError("9.9", "wrong", "try again")
    assert isinstance(err, Exception) and not isinstance(err, AssertionError)
    assert str(err) == "Exercise 9.9: wrong\nHint: try again"


# ---------------------------------------------------------------- 1.1

def test_outer_factors(capsys):
    accepts(checks.check_outer_factors, [2, 1, 3], [1, 2, 3], capsys=capsys, exercise="1.1")
    accepts(checks.check_outer_factors, np.array([[4.0], [2.0], [6.0]]), np.array([[0.5, 1.0, 1.5]]),
            capsys=capsys, exercise="1.1")
    err = rejects(checks.check_outer_factors, [1, 2, 3], [2, 1, 3], match="first difference at row 0",
                  exercise="1.1")
    assert "u[i] * v[j]" in err.hint
    rejects(checks.check_outer_factors, [1, 2], [1, 2, 3], match=r"u has shape \(2,\)", exercise="1.1")
    rejects(checks.check_outer_factors, np.ones((3, 3)), [1, 2, 3], match=r"u has shape \(3, 3\)", exercise="1.1")
    rejects(checks.check_outer_factors, "abc", [1, 2, 3], match="array of numbers", exercise="1.1")
    rejects(checks.check_outer_factors, [1, np.nan, 3], [1, 2, 3], match="NaN", exercise="1.1")
    rejects(checks.check_outer_factors, len, [1, 2, 3], match="gave a function", exercise="1.1")


# ---------------------------------------------------------------- 1.2

def test_rank_two_matrix(capsys):
    rng = np.random.default_rng(0)
    accepts(checks.check_rank_two_matrix, rng.standard_normal((4, 2)) @ rng.standard_normal((2, 5)),
            capsys=capsys, exercise="1.2")
    rejects(checks.check_rank_two_matrix, np.zeros((4, 5)), match="rank 0.*all zeros", exercise="1.2")
    rejects(checks.check_rank_two_matrix, np.ones((4, 5)), match="rank 1, one too few", exercise="1.2")
    rejects(checks.check_rank_two_matrix, rng.standard_normal((4, 5)), match="rank 4, more than 2", exercise="1.2")
    rejects(checks.check_rank_two_matrix, np.ones((5, 4)), match=r"shape \(5, 4\).*\(4, 5\)", exercise="1.2")
    rejects(checks.check_rank_two_matrix, None, match=r"shape \(\)", exercise="1.2")


# ---------------------------------------------------------------- 1.3

def test_lora_update_rank(capsys):
    accepts(checks.check_lora_update_rank, 4, capsys=capsys, exercise="1.3")
    accepts(checks.check_lora_update_rank, np.int64(4), capsys=capsys, exercise="1.3")
    accepts(checks.check_lora_update_rank, 4.0, capsys=capsys, exercise="1.3")
    rejects(checks.check_lora_update_rank, 768, match="size of B @ A", exercise="1.3")
    rejects(checks.check_lora_update_rank, 8, match="8 is not the largest", exercise="1.3")
    rejects(checks.check_lora_update_rank, 4.5, match="whole number", exercise="1.3")
    rejects(checks.check_lora_update_rank, True, match="boolean", exercise="1.3")
    rejects(checks.check_lora_update_rank, "4", match="should be a number", exercise="1.3")


# ---------------------------------------------------------------- 2.1

def good_truncate(M, r):
    U, s, Vt = np.linalg.svd(M, full_matrices=False)
    return (U[:, :r] * s[:r]) @ Vt[:r]


def test_truncate(capsys):
    accepts(checks.check_truncate, good_truncate, capsys=capsys, exercise="2.1")
    # keeping the smallest singular values instead of the largest: right rank, larger error
    def smallest(M, r):
        U, s, Vt = np.linalg.svd(M, full_matrices=False)
        return (U[:, -r:] * s[-r:]) @ Vt[-r:]
    rejects(checks.check_truncate, smallest, match=r"error .* best possible is", exercise="2.1")
    rejects(checks.check_truncate, lambda M, r: good_truncate(M, r + 1), match="its rank is 2, not 1",
            exercise="2.1")
    rejects(checks.check_truncate, lambda M, r: good_truncate(M, r)[:, :2], match=r"shape \(6, 2\)", exercise="2.1")
    rejects(checks.check_truncate, lambda M, r: None, match=r"shape \(\)", exercise="2.1")
    rejects(checks.check_truncate, 42, match="expected your function `truncate`", exercise="2.1")


def test_truncate_reports_the_learners_own_exception():
    def buggy(M, r):
        U, s = np.linalg.svd(M)                 # svd returns three arrays, not two
        return U[:, :r] * s[:r]
    err = rejects(checks.check_truncate, buggy, match=r"truncate\(<array of shape \(6, 4\)>, 1\)` raised ValueError",
                  exercise="2.1")
    assert isinstance(err.__cause__, ValueError)          # their traceback stays attached


def test_placeholder_not_implemented_passes_through():
    def placeholder(M, r):
        raise NotImplementedError("Exercise 2.1: write your answer here")
    with pytest.raises(NotImplementedError, match="Exercise 2.1: write your answer here"):
        checks.check_truncate(placeholder)


# ---------------------------------------------------------------- 2.2

def test_eckart_young(capsys):
    accepts(checks.check_eckart_young, 2, np.sqrt(5), capsys=capsys, exercise="2.2")
    rejects(checks.check_eckart_young, 2, 5, match="squared error; take the square root", exercise="2.2")
    rejects(checks.check_eckart_young, 3, np.sqrt(5), match="spectral_error = 3 is not right", exercise="2.2")
    err = rejects(checks.check_eckart_young, 1, 1, match="spectral_error.*; frobenius_error", exercise="2.2")
    assert "sigma_1 = 5" in err.hint
    rejects(checks.check_eckart_young, [2], 1, match="should be a number", exercise="2.2")


# ---------------------------------------------------------------- 2.3

def test_rank_for_energy(capsys):
    M = np.diag([3.0, 2.0, 1.0, 0.5])          # energies 9, 4, 1, 0.25 of 14.25
    accepts(checks.check_rank_for_energy, 2, M, capsys=capsys, exercise="2.3")  # 13/14.25 = 0.912
    accepts(checks.check_rank_for_energy, 3, M, 0.95, capsys=capsys, exercise="2.3")
    rejects(checks.check_rank_for_energy, 1, M, match="keeps only 63.16%", exercise="2.3")
    rejects(checks.check_rank_for_energy, 3, M, match="smaller rank already", exercise="2.3")
    rejects(checks.check_rank_for_energy, 0, M, match="outside 1..4", exercise="2.3")
    rejects(checks.check_rank_for_energy, 9, M, match="outside 1..4", exercise="2.3")


# ---------------------------------------------------------------- 3.1 - 3.3

def test_lora_param_formula(capsys):
    accepts(checks.check_lora_param_formula, lambda i, o, r: r * (i + o), capsys=capsys, exercise="3.1")
    rejects(checks.check_lora_param_formula, lambda i, o, r: i * o, match="returned 589,824, expected 12,288",
            exercise="3.1")
    err = rejects(checks.check_lora_param_formula, lambda i, o, r: 2 * i * r, match=r"lora_params\(768, 3072, 4\)",
                  exercise="3.1")
    assert "square" in err.hint
    rejects(checks.check_lora_param_formula, lambda i, o, r: "many", match="should be a number", exercise="3.1")
    rejects(checks.check_lora_param_formula, lambda i, o: 1, match="raised TypeError", exercise="3.1")


def test_gpt2_small_count(capsys):
    accepts(checks.check_gpt2_small_count, 294_912, capsys=capsys, exercise="3.2")
    err = rejects(checks.check_gpt2_small_count, 147_456, match="147,456 is not", exercise="3.2")
    assert "both Wq and Wv" in err.hint
    assert "12" in rejects(checks.check_gpt2_small_count, 24_576, match="not", exercise="3.2").hint


def test_adam_state_bytes(capsys):
    accepts(checks.check_adam_state_bytes, 175e9 * 8, 18_874_368 * 8, capsys=capsys, exercise="3.3")
    rejects(checks.check_adam_state_bytes, 175e9 * 4, 18_874_368 * 8, match=r"full_bytes = .*half", exercise="3.3")
    rejects(checks.check_adam_state_bytes, 175e9 * 8, 18_874_368 * 2, match=r"lora_bytes = .*count of numbers",
            exercise="3.3")
    rejects(checks.check_adam_state_bytes, 175e9, 18_874_368, match="parameter count itself", exercise="3.3")
    rejects(checks.check_adam_state_bytes, None, 1, match="full_bytes should be a number", exercise="3.3")


def test_jupyter_shows_the_message_not_a_traceback():
    """IPython renders an exception through _render_traceback_ when it has one."""
    with pytest.raises(checks.ExerciseError) as caught:
        checks.check_outer_factors([1, 2], [3])
    lines = caught.value._render_traceback_()
    assert lines == [f"Not yet. {caught.value}"]
    assert "Exercise 1.1" in lines[0] and "Hint:" in lines[0]
    assert "Traceback" not in "".join(lines)

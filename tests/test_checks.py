"""minilora.checks for notebooks 01-03: right answers pass, wrong ones are explained (never a traceback).

For every exercise: a correct answer passes; at least two plausible wrong answers
fail with a message naming the problem; an answer that calls minilora's own
function is caught; a wrong type, None, NaN or a string gets a sentence.
"""
from __future__ import annotations

import numpy as np
import pytest

from minilora import checks, linalg, lora_count
from minilora.checks import ExerciseError


def rejects(fn, *args, match: str, exercise: str):
    """The check raises ExerciseError (only), for the given exercise, with a message matching `match`."""
    with pytest.raises(ExerciseError, match=match) as info:
        fn(*args)
    assert info.value.exercise == exercise
    assert str(info.value).startswith(f"Exercise {exercise}: ")
    assert info.value.hint, "every rejection carries a first hint"
    return info.value


def accepts(fn, *args, capsys, exercise: str):
    assert fn(*args) is None
    out = capsys.readouterr().out
    assert out.startswith(f"Correct! (Exercise {exercise})")


def test_exercise_error_is_one_plain_class():
    err = ExerciseError("9.9", "wrong", "try again")
    assert isinstance(err, Exception) and not isinstance(err, AssertionError)
    assert str(err) == "Exercise 9.9: wrong\nHint: try again"


@pytest.mark.parametrize("ex", ["1.1", "1.2", "2.1", "2.2", "2.3", "3.1", "3.2"])
def test_two_levels_of_hint(ex, capsys):
    checks.hint(ex, 1)
    nudge = capsys.readouterr().out
    checks.hint(ex, 2)
    method = capsys.readouterr().out
    assert nudge.startswith(f"Exercise {ex}, nudge:") and method.startswith(f"Exercise {ex}, method:")
    assert nudge != method


# ---------------------------------------------------------------- 1.1

def good_factor(M):
    i, j = np.unravel_index(np.argmax(np.abs(M)), M.shape)
    return M[:, j] / M[i, j], M[i]


def test_factor_rank_one(capsys):
    accepts(checks.check_factor_rank_one, good_factor, capsys=capsys, exercise="1.1")
    # a Tensor answer is read as an array
    from minilora import Tensor
    accepts(checks.check_factor_rank_one, lambda M: tuple(Tensor(a) for a in good_factor(M)),
            capsys=capsys, exercise="1.1")
    # plausible wrong answers: u and v swapped; dividing by the first row (zero in a hidden case)
    rejects(checks.check_factor_rank_one, lambda M: good_factor(M)[::-1], match="shape|differs", exercise="1.1")
    def first_row(M):                              # divides by zero on the hidden matrix with a zero first row
        with np.errstate(all="ignore"):
            return M[:, 0] / M[0, 0], M[0]
    rejects(checks.check_factor_rank_one, first_row, match="NaN|zero first", exercise="1.1")
    # the library's own SVD is off limits
    def via_library(M):
        U, s, Vt = linalg.thin_svd(M)
        return U[:, 0] * s[0], Vt[0]
    rejects(checks.check_factor_rank_one, via_library, match="minilora's own `linalg.thin_svd`", exercise="1.1")
    # wrong types
    rejects(checks.check_factor_rank_one, lambda M: None, match="two vectors", exercise="1.1")
    rejects(checks.check_factor_rank_one, lambda M: ("ab", "cd"), match="array of numbers", exercise="1.1")
    rejects(checks.check_factor_rank_one, 42, match="expected your function", exercise="1.1")


# ---------------------------------------------------------------- 1.2

def test_matrix_of_rank(capsys):
    g = np.random.default_rng(0)
    accepts(checks.check_matrix_of_rank, lambda m, n, k: g.standard_normal((m, k)) @ g.standard_normal((k, n)),
            capsys=capsys, exercise="1.2")
    rejects(checks.check_matrix_of_rank, lambda m, n, k: g.standard_normal((m, n)), match="not 2", exercise="1.2")
    rejects(checks.check_matrix_of_rank, lambda m, n, k: np.ones((m, n)) * k, match="rank 1, not 2",
            exercise="1.2")
    rejects(checks.check_matrix_of_rank, lambda m, n, k: np.zeros((m, n)), match="all zeros", exercise="1.2")
    rejects(checks.check_matrix_of_rank, lambda m, n, k: g.standard_normal((n, m)), match=r"shape \(5, 4\)",
            exercise="1.2")
    # using the library to count (and so to search) is caught
    def searching(m, n, k):
        M = g.standard_normal((m, n))
        while linalg.numerical_rank(M) > k:
            M[:, -1] = 0
        return M
    rejects(checks.check_matrix_of_rank, searching, match="numerical_rank", exercise="1.2")
    rejects(checks.check_matrix_of_rank, lambda m, n, k: np.full((m, n), np.nan), match="NaN", exercise="1.2")
    rejects(checks.check_matrix_of_rank, lambda m, n, k: "matrix", match="array of numbers", exercise="1.2")


# ---------------------------------------------------------------- 1.3 (predict first)

def test_reveal_lora_update_rank(capsys):
    assert checks.reveal_lora_update_rank(4) is None
    assert "Spot on" in capsys.readouterr().out
    checks.reveal_lora_update_rank(768)                           # wrong guesses are explained, not failed
    out = capsys.readouterr().out
    assert "Not quite" in out and "at most 4 directions" in out
    rejects(checks.reveal_lora_update_rank, None, match="still empty", exercise="1.3")
    rejects(checks.reveal_lora_update_rank, "four", match="should be a number", exercise="1.3")
    rejects(checks.reveal_lora_update_rank, float("nan"), match="not a finite number", exercise="1.3")


# ---------------------------------------------------------------- 2.1

def good_truncate(M, r):
    U, s, Vt = np.linalg.svd(M, full_matrices=False)
    return (U[:, :r] * s[:r]) @ Vt[:r]


def test_truncate(capsys):
    accepts(checks.check_truncate, good_truncate, capsys=capsys, exercise="2.1")
    def smallest(M, r):                          # the smallest singular values: right rank, larger error
        U, s, Vt = np.linalg.svd(M, full_matrices=False)
        return (U[:, -r:] * s[-r:]) @ Vt[-r:]
    rejects(checks.check_truncate, smallest, match=r"error .* best possible is", exercise="2.1")
    rejects(checks.check_truncate, lambda M, r: good_truncate(M, r + 1), match=r"its rank is \d+, not", exercise="2.1")
    rejects(checks.check_truncate, lambda M, r: linalg.low_rank_approx(M, r)[0],
            match="minilora's own `linalg.low_rank_approx`", exercise="2.1")
    rejects(checks.check_truncate, lambda M, r: good_truncate(M, r)[:, :1], match=r"shape", exercise="2.1")
    rejects(checks.check_truncate, lambda M, r: None, match=r"shape \(\)", exercise="2.1")
    rejects(checks.check_truncate, 42, match="expected your function `truncate`", exercise="2.1")


def test_truncate_from_import_is_caught_too():
    """`from minilora.linalg import low_rank_approx` binds a name the tripwire must also replace."""
    namespace = {"low_rank_approx": linalg.low_rank_approx}
    exec("def truncate(M, r):\n    return low_rank_approx(M, r)[0]\n", namespace)
    rejects(checks.check_truncate, namespace["truncate"], match="low_rank_approx", exercise="2.1")
    assert namespace["low_rank_approx"] is linalg.low_rank_approx      # restored afterwards


def test_truncate_reports_the_learners_own_exception():
    def buggy(M, r):
        U, s = np.linalg.svd(M)                 # svd returns three arrays, not two
        return U[:, :r] * s[:r]
    err = rejects(checks.check_truncate, buggy, match=r"truncate\(<array of shape .*raised ValueError",
                  exercise="2.1")
    assert isinstance(err.__cause__, ValueError)          # their traceback stays attached


def test_placeholder_not_implemented_passes_through():
    def placeholder(M, r):
        raise NotImplementedError("Exercise 2.1: write your answer here")
    with pytest.raises(NotImplementedError, match="Exercise 2.1: write your answer here"):
        checks.check_truncate(placeholder)


# ---------------------------------------------------------------- 2.2

def good_ey(s, r):
    dropped = np.asarray(s, dtype=float)[r:]
    return (dropped[0] if dropped.size else 0.0), np.sqrt(np.sum(dropped ** 2))


def test_eckart_young(capsys):
    accepts(checks.check_eckart_young, good_ey, capsys=capsys, exercise="2.2")
    rejects(checks.check_eckart_young, lambda s, r: (good_ey(s, r)[0], good_ey(s, r)[1] ** 2),
            match="squared error; take the square root", exercise="2.2")
    rejects(checks.check_eckart_young, lambda s, r: (s[r - 1], good_ey(s, r)[1]),
            match="last value you keep", exercise="2.2")
    # the lookup table of the notebook's own example fails on hidden spectra
    rejects(checks.check_eckart_young, lambda s, r: (2.0, np.sqrt(5.0)), match="expected", exercise="2.2")
    def via_library(s, r):
        M = np.diag(s)
        info = linalg.low_rank_approx(M, r)[1]
        return info.spectral_error, info.frobenius_error
    rejects(checks.check_eckart_young, via_library, match="low_rank_approx", exercise="2.2")
    rejects(checks.check_eckart_young, lambda s, r: 3.0, match="two numbers", exercise="2.2")
    rejects(checks.check_eckart_young, lambda s, r: ("2", 1.0), match="should be a number", exercise="2.2")
    rejects(checks.check_eckart_young, lambda s, r: (np.nan, 1.0), match="not a finite", exercise="2.2")


# ---------------------------------------------------------------- 2.3

def good_rank_for_energy(M, energy):
    sv = np.linalg.svd(M, compute_uv=False)
    share = np.cumsum(sv ** 2) / np.sum(sv ** 2)
    return int(np.argmax(share >= energy)) + 1


def test_rank_for_energy(capsys):
    accepts(checks.check_rank_for_energy, good_rank_for_energy, capsys=capsys, exercise="2.3")
    rejects(checks.check_rank_for_energy, lambda M, e: good_rank_for_energy(M, e) - 1, match="keeps only|outside",
            exercise="2.3")
    rejects(checks.check_rank_for_energy, lambda M, e: good_rank_for_energy(M, e) + 1, match="smallest one",
            exercise="2.3")
    def sigma_not_squared(M, e):
        sv = np.linalg.svd(M, compute_uv=False)
        return int(np.argmax(np.cumsum(sv) / sv.sum() >= e)) + 1
    rejects(checks.check_rank_for_energy, sigma_not_squared, match="sigma instead of sigma squared|smallest",
            exercise="2.3")
    def via_library(M, e):
        r = 1
        while linalg.low_rank_approx(M, r)[1].energy_kept < e:
            r += 1
        return r
    rejects(checks.check_rank_for_energy, via_library, match="low_rank_approx", exercise="2.3")
    rejects(checks.check_rank_for_energy, lambda M, e: 2.5, match="whole number", exercise="2.3")
    rejects(checks.check_rank_for_energy, lambda M, e: None, match="should be a number", exercise="2.3")


# ---------------------------------------------------------------- 2.4 (predict first)

def test_reveal_sum_rank(capsys):
    checks.reveal_sum_rank(64)
    assert "Spot on" in capsys.readouterr().out
    checks.reveal_sum_rank(3)
    out = capsys.readouterr().out
    assert "Not quite" in out and "rank drop" in out
    rejects(checks.reveal_sum_rank, ..., match="still empty", exercise="2.4")
    rejects(checks.reveal_sum_rank, [64], match="should be a number", exercise="2.4")


# ---------------------------------------------------------------- 3.1

def test_lora_param_formula(capsys):
    accepts(checks.check_lora_param_formula, lambda i, o, r: r * (i + o), capsys=capsys, exercise="3.1")
    rejects(checks.check_lora_param_formula, lambda i, o, r: i * o, match="size of the full matrix", exercise="3.1")
    rejects(checks.check_lora_param_formula, lambda i, o, r: 2 * i * r, match="square matrices only",
            exercise="3.1")
    rejects(checks.check_lora_param_formula, lambda i, o, r: r * i * o, match="sizes add", exercise="3.1")
    # a lookup table of the old fixed test points no longer passes
    table = {(768, 768, 8): 12288, (768, 3072, 4): 15360, (12288, 12288, 1): 24576, (5, 7, 3): 36}
    rejects(checks.check_lora_param_formula, lambda i, o, r: table.get((i, o, r), 0), match="expected",
            exercise="3.1")
    rejects(checks.check_lora_param_formula, lambda i, o, r: linalg.factorization_storage(i, o, r).factored,
            match="factorization_storage", exercise="3.1")
    rejects(checks.check_lora_param_formula, lambda i, o, r: "many", match="should be a number", exercise="3.1")
    rejects(checks.check_lora_param_formula, lambda i, o: 1, match="raised TypeError", exercise="3.1")


# ---------------------------------------------------------------- 3.2

def test_paper_formula(capsys):
    accepts(checks.check_paper_formula, lambda L, d, r, n: 2 * L * n * d * r, capsys=capsys, exercise="3.2")
    rejects(checks.check_paper_formula, lambda L, d, r, n: L * n * d * r, match="two factors", exercise="3.2")
    rejects(checks.check_paper_formula, lambda L, d, r, n: 2 * L * d * r, match="expected", exercise="3.2")
    rejects(checks.check_paper_formula, lambda L, d, r, n: L * n * d * d, match="full fine-tuning", exercise="3.2")
    def via_library(L, d, r, n):
        from minilora.lora import LoraConfig
        from minilora.model import GPTConfig
        cfg = GPTConfig(vocab_size=10, block_size=8, n_layer=L, n_head=1, n_embd=d)
        return lora_count.count_lora_params(cfg, LoraConfig(r=r, lora_alpha=r, target_modules=["q_proj", "v_proj"][:n]))
    rejects(checks.check_paper_formula, via_library, match="count_lora_params", exercise="3.2")
    rejects(checks.check_paper_formula, lambda L, d, r, n: float("inf"), match="not a finite", exercise="3.2")


# ---------------------------------------------------------------- 3.3 (predict first)

def test_reveal_adam_ratio(capsys):
    checks.reveal_adam_ratio(9000)                  # within 20% of 175e9 / 18,874,368 = 9,272
    assert "Spot on" in capsys.readouterr().out
    checks.reveal_adam_ratio(2)
    out = capsys.readouterr().out
    assert "Not quite" in out and "18,874,368" in out and "nothing for a frozen one" in out
    rejects(checks.reveal_adam_ratio, None, match="still empty", exercise="3.3")


def test_jupyter_shows_the_message_not_a_traceback():
    """IPython renders an exception through _render_traceback_ when it has one."""
    with pytest.raises(checks.ExerciseError) as caught:
        checks.check_matrix_of_rank(lambda m, n, k: np.zeros((m, n)))
    lines = caught.value._render_traceback_()
    assert lines == [f"Not yet. {caught.value}"]
    assert "Exercise 1.2" in lines[0] and "Hint:" in lines[0]
    assert "Traceback" not in "".join(lines)

"""Tests for minilora.data: tokenizer, tasks, batches, held-out sets, exact match."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minilora import data
from minilora.data import TOKENIZER

# ----------------------------------------------------------------------------
# tokenizer


def test_vocabulary_is_small_and_pad_is_zero():
    assert TOKENIZER.vocab_size <= 64
    assert TOKENIZER.pad_id == 0
    assert TOKENIZER.decode([TOKENIZER.end_id]) == data.END


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=data.ALPHABET, max_size=40))
def test_tokenizer_round_trip(text):
    ids = TOKENIZER.encode(text)
    assert all(0 <= i < TOKENIZER.vocab_size for i in ids)
    assert TOKENIZER.decode(ids) == text
    assert TOKENIZER.decode(np.array(ids, dtype=np.int64)) == text


def test_tokenizer_names_the_unknown_character():
    with pytest.raises(ValueError, match=r"'X' at position 4"):
        TOKENIZER.encode("rev:X12=")
    with pytest.raises(ValueError, match=r"token id 999"):
        TOKENIZER.decode([1, 999])


# ----------------------------------------------------------------------------
# tasks, each checked against an independent computation on digit arrays


def _digits(text):
    return np.array([int(c) for c in text])


def _text(digits):
    return "".join(str(int(d)) for d in digits)


INDEPENDENT = {
    "cpy": lambda s: s,
    "rev": lambda s: _text(_digits(s)[::-1]),
    "srt": lambda s: _text(np.sort(_digits(s))),
    "dsc": lambda s: _text(np.sort(_digits(s))[::-1]),
    "rot": lambda s: _text(np.roll(_digits(s), -1)),
    "inc": lambda s: _text((_digits(s) + 1) % 10),
}


def test_task_groups_are_disjoint_and_registered():
    assert len(data.PRETRAIN_TASKS) >= 2 and len(data.DOWNSTREAM_TASKS) >= 2
    assert set(data.PRETRAIN_TASKS).isdisjoint(data.DOWNSTREAM_TASKS)
    for name in data.PRETRAIN_TASKS + data.DOWNSTREAM_TASKS:
        task = data.get_task(name)
        assert task.name == name and task.description
    # every task in TASKS must have an independent check here
    assert set(data.TASKS) <= set(INDEPENDENT)


@pytest.mark.parametrize("name", sorted(data.TASKS))
def test_task_answers_are_right(name):
    task = data.get_task(name)
    rng = np.random.default_rng(1)
    lengths = set()
    for _ in range(300):
        prompt, answer = task.sample(rng)
        assert prompt.startswith(name + ":") and prompt.endswith("=")
        assert answer.endswith(data.END) and answer.count(data.END) == 1
        assert answer[:-1] == INDEPENDENT[name](task.input_of(prompt))
        TOKENIZER.encode(prompt + answer)  # every character is in the alphabet
        lengths.add((len(prompt), len(answer)))
    assert len(lengths) == 1, "a task's prompts and answers have a fixed length"


def test_unknown_task_is_a_clear_error():
    with pytest.raises(KeyError, match="no task named 'zzz'"):
        data.get_task("zzz")
    with pytest.raises(KeyError, match="no task named"):
        data.make_batch(["cpy", "zzz"], 4, 32, np.random.default_rng(0))


# ----------------------------------------------------------------------------
# batches


def test_make_batch_is_deterministic_from_a_seed():
    names = data.PRETRAIN_TASKS
    x1, y1 = data.make_batch(names, 16, 32, np.random.default_rng(7))
    x2, y2 = data.make_batch(names, 16, 32, np.random.default_rng(7))
    x3, _ = data.make_batch(names, 16, 32, np.random.default_rng(8))
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    assert x1.dtype == np.int64 and y1.dtype == np.int64


def _rows(x, y):
    """Yield (prompt, x row, y row) for each row of a batch."""
    for xr, yr in zip(x, y):
        text = TOKENIZER.decode(xr)
        prompt = text[:text.index("=") + 1]
        yield prompt, xr, yr


def test_batch_masks_line_up_with_answers():
    rng = np.random.default_rng(3)
    x, y = data.make_batch(data.PRETRAIN_TASKS + data.DOWNSTREAM_TASKS, 64, 32, rng)
    assert x.shape == y.shape and x.shape[0] == 64
    for prompt, xr, yr in _rows(x, y):
        task = data.get_task(prompt[:3])
        answer = task.answer(task.input_of(prompt))
        supervised = np.flatnonzero(yr != data.IGNORE)
        # the supervised targets are exactly the answer, in one contiguous run...
        assert TOKENIZER.decode(yr[supervised]) == answer
        assert np.array_equal(supervised, np.arange(supervised[0], supervised[0] + len(answer)))
        # ...starting at the "=" that ends the prompt
        assert supervised[0] == len(prompt) - 1
        assert TOKENIZER.decode([xr[supervised[0]]]) == "="
        # y is x shifted by one wherever both are real tokens
        assert np.array_equal(xr[1:supervised[-1] + 1][len(prompt) - 1:], yr[supervised][:-1])
        # after the example: padding in x, ignored in y
        end = len(prompt) + len(answer) - 1
        assert np.all(xr[end:] == TOKENIZER.pad_id) and np.all(yr[end:] == data.IGNORE)


def test_make_batch_mixes_tasks_uniformly():
    x, _ = data.make_batch(["cpy", "rev"], 2000, 32, np.random.default_rng(0))
    share = np.mean([TOKENIZER.decode(row[:3]) == "cpy" for row in x])
    assert 0.45 < share < 0.55


def test_make_batch_refuses_a_too_small_block():
    with pytest.raises(ValueError, match="block_size"):
        data.make_batch(["cpy"], 4, 8, np.random.default_rng(0))


# ----------------------------------------------------------------------------
# held-out examples


@pytest.mark.parametrize("name", sorted(data.TASKS))
def test_heldout_examples_are_deterministic_distinct_and_held_out(name):
    a = data.heldout_examples(name, 100)
    data._heldout.cache_clear()  # recompute rather than reuse the cache
    b = data.heldout_examples(name, 100)
    assert a == b and len(a) == 100
    assert len({prompt for prompt, _ in a}) == 100
    assert all(data.is_heldout(prompt) for prompt, _ in a)
    assert data.heldout_examples(name, 100, seed=1) != a


def test_heldout_prompts_never_appear_in_training_batches():
    names = data.PRETRAIN_TASKS + data.DOWNSTREAM_TASKS
    heldout = {prompt for name in names for prompt, _ in data.heldout_examples(name, 300)}
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(50):
        x, y = data.make_batch(names, 64, 32, rng)
        seen.update(prompt for prompt, _, _ in _rows(x, y))
    assert len(seen) > 2500
    assert not any(data.is_heldout(prompt) for prompt in seen)
    assert seen.isdisjoint(heldout)


def test_heldout_rule_holds_out_about_one_in_ten():
    rng = np.random.default_rng(0)
    prompts = [data.get_task("cpy").sample(rng)[0] for _ in range(5000)]
    share = np.mean([data.is_heldout(p) for p in prompts])
    assert 0.07 < share < 0.13


# ----------------------------------------------------------------------------
# greedy decoding and exact match


def _oracle(idx, wrong=False, max_len=None):
    """Logits that put all their mass on the correct next token (or on a wrong one)."""
    if max_len is not None:
        assert idx.shape[1] <= max_len
    B, T = idx.shape
    logits = np.zeros((B, T, TOKENIZER.vocab_size), dtype=np.float32)
    for row in range(B):
        text = TOKENIZER.decode(idx[row])
        k = text.index("=") + 1
        task = data.get_task(text[:3])
        answer = task.answer(task.input_of(text[:k]))
        produced = text[k:]
        nxt = answer[len(produced)] if len(produced) < len(answer) else data.END
        if wrong:  # a different digit; the END mark stays right so decoding stops
            nxt = str((int(nxt) + 1) % 10) if nxt.isdigit() else nxt
        logits[row, -1, TOKENIZER.stoi[nxt]] = 1.0
    return logits


@pytest.mark.parametrize("name", sorted(data.TASKS))
def test_exact_match_of_an_oracle_is_one(name):
    assert data.exact_match(lambda idx: _oracle(idx, max_len=32), name, n=50, block_size=32) == 1.0


@pytest.mark.parametrize("name", sorted(data.TASKS))
def test_exact_match_of_a_wrong_model_is_zero(name):
    assert data.exact_match(lambda idx: _oracle(idx, wrong=True), name, n=50) == 0.0


def test_decoding_respects_the_context_length():
    widths = []

    def constant(idx):
        widths.append(idx.shape[1])
        logits = np.zeros(idx.shape + (TOKENIZER.vocab_size,), dtype=np.float32)
        logits[..., TOKENIZER.stoi["7"]] = 1.0  # never says END: decoding runs to max_new_tokens
        return logits

    prompts = [p for p, _ in data.heldout_examples("rev", 10)]
    out = data.complete(constant, prompts, max_new_tokens=12, block_size=len(prompts[0]) + 3, batch_size=4)
    assert out == ["7" * 12] * 10
    assert max(widths) == len(prompts[0]) + 3
    assert data.exact_match(constant, "rev", n=10, block_size=5) == 0.0


def test_complete_groups_prompts_of_different_lengths_and_keeps_order(monkeypatch):
    # The built-in tasks share one prompt length; add a shorter one for this test.
    short = data.Task("two", "copy two digits", lambda rng: data.random_digits(rng, 2), lambda s: s)
    monkeypatch.setitem(data.TASKS, "two", short)
    prompts = [data.heldout_examples("two", 3)[0][0], data.heldout_examples("cpy", 3)[0][0],
               data.heldout_examples("two", 3)[1][0]]
    assert len({len(p) for p in prompts}) == 2
    out = data.complete(lambda idx: _oracle(idx), prompts, max_new_tokens=10, batch_size=1)
    expected = [data.get_task(p[:3]).answer(data.get_task(p[:3]).input_of(p)) for p in prompts]
    assert out == expected


def test_exact_match_rejects_logits_of_the_wrong_shape():
    with pytest.raises(ValueError, match="logits_fn returned shape"):
        data.exact_match(lambda idx: np.zeros((idx.shape[0], TOKENIZER.vocab_size)), "cpy", n=4)


# ----------------------------------------------------------------------------
# conventions and argument checks


def test_unsupervised_positions_use_pytorchs_ignore_index():
    assert data.IGNORE == -100
    _, y = data.make_batch(["rev"], 4, 32, np.random.default_rng(0))
    assert set(np.unique(y[y < 0])) == {-100}


@pytest.mark.parametrize("bad", [-1, 2.5, True, "3"])
def test_complete_refuses_a_bad_max_new_tokens(bad):
    with pytest.raises(ValueError, match=rf"max_new_tokens={bad!r} must be a whole number >= 0"):
        data.complete(lambda idx: np.zeros(idx.shape + (TOKENIZER.vocab_size,)), ["rev:123456="], bad)


def test_complete_refuses_one_string_instead_of_a_list():
    with pytest.raises(ValueError, match=r"write \['rev:123456='\]"):
        data.complete(lambda idx: None, "rev:123456=", 3)


@pytest.mark.parametrize("kwargs", [dict(batch_size=0), dict(batch_size=True), dict(block_size=-3)])
def test_make_batch_refuses_bad_sizes(kwargs):
    args = dict(task_names=["rev"], batch_size=4, block_size=32, rng=np.random.default_rng(0))
    args.update(kwargs)
    with pytest.raises(ValueError, match="must be a whole number >= 1"):
        data.make_batch(**args)


def test_greedy_decode_takes_the_argmax_and_stops_when_every_row_is_done():
    end = TOKENIZER.end_id
    calls = []

    def logits_fn(idx):                       # next token: previous + 1, END after token 5
        calls.append(idx.shape)
        out = np.zeros(idx.shape + (TOKENIZER.vocab_size,))
        nxt = np.where(idx[:, -1] >= 5, end, idx[:, -1] + 1)
        out[np.arange(len(idx)), -1, nxt] = 1.0
        return out
    got = data.greedy_decode(logits_fn, np.array([[1, 2], [3, 4]]), 10, block_size=3, stop_id=end)
    assert got.tolist() == [[1, 2, 3, 4, 5, end], [3, 4, 5, end, end, end]]
    assert all(shape[1] <= 3 for shape in calls)          # never more than block_size fed

"""The built-in tasks: tiny sequence problems, generated on the fly.

LoRA is about *adapting* a model that already knows something. To show that on
a laptop we need a model that can be pretrained in a few minutes, and new tasks
it has never seen that it can then be taught. Everything here is made of digit
strings, so it needs no downloads and every example is exactly reproducible
from a seed.

Every example is a prompt followed by its answer, written as one line of text:

    prompt        answer       the model reads
    rev:048213=   312840.      rev:048213=312840.

* the three letters before ":" name the task (the model reads them to know what
  to do),
* the digits are the input,
* "=" ends the prompt, and "." ends the answer, so generation knows when to stop.

Each task has a fixed input length, so all of its prompts have the same length
and all of its answers have the same length. That keeps batched greedy decoding
simple: every row of a batch is at the same position at the same time.

Tasks come in two groups:

* PRETRAIN_TASKS, the mixture the base model is pretrained on;
* DOWNSTREAM_TASKS, new tasks with prefixes the base model has never seen. Each
  one reuses pretrained skills in a new way: sort *descending* (having learned
  to sort ascending and to reverse), rotate (copy, shifted by one place), add
  one to each digit (copy, through a new digit-to-digit map). So a small,
  low-rank change to the weights is enough to learn each: the situation LoRA
  is made for.

Evaluation uses held-out prompts that training never produces (see
`is_heldout`), so an exact-match score measures generalisation, not memory.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np

# ----------------------------------------------------------------------------
# The tokenizer: one token per character


PAD = "_"  # fills a batch row after its example ends; never supervised
END = "."  # ends every answer, so decoding knows when to stop
IGNORE = -100  # the target of a position that is not trained (PyTorch's ignore_index)

# PAD comes first so that its id is 0. Digits, then the whole lowercase alphabet
# (so any three-letter task prefix can be spelled), then the separators.
ALPHABET = PAD + "0123456789" + "abcdefghijklmnopqrstuvwxyz" + ":=+" + END


class CharTokenizer:
    """Maps each character of a fixed alphabet to an integer id and back.

    Real language models use sub-word tokenizers with tens of thousands of
    tokens; our tasks only need digits, a few letters and separators, so one
    token per character keeps the vocabulary (and the embedding table) tiny.
    """

    def __init__(self, alphabet: str = ALPHABET):
        if len(set(alphabet)) != len(alphabet):
            raise ValueError(f"the alphabet {alphabet!r} repeats a character; each character needs one id")
        self.alphabet = alphabet
        self.stoi = {ch: i for i, ch in enumerate(alphabet)}  # string -> id
        self.itos = dict(enumerate(alphabet))  # id -> string

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet)

    @property
    def pad_id(self) -> int:
        return self.stoi[PAD]

    @property
    def end_id(self) -> int:
        return self.stoi[END]

    def encode(self, text: str) -> list[int]:
        ids = []
        for position, ch in enumerate(text):
            if ch not in self.stoi:
                raise ValueError(
                    f"character {ch!r} at position {position} of {text!r} is not in the tokenizer's "
                    f"alphabet {self.alphabet!r}; use only those characters (digits, lowercase letters, ':=+._')"
                )
            ids.append(self.stoi[ch])
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        chars = []
        for i in ids:
            i = int(i)
            if i not in self.itos:
                raise ValueError(f"token id {i} is outside the vocabulary (ids 0..{self.vocab_size - 1})")
            chars.append(self.itos[i])
        return "".join(chars)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, alphabet={self.alphabet!r})"


TOKENIZER = CharTokenizer()

# ----------------------------------------------------------------------------
# Tasks


@dataclass(frozen=True)
class Task:
    """One sequence task: how to draw an input, and how to solve it.

    `make_input(rng)` returns the input text (e.g. "048213"); `solve(input)`
    returns the answer without the END mark (e.g. "312840"). The task builds
    the full strings itself, so every task has the same shape:
    prompt = "{name}:{input}=", answer = "{solution}.".
    """

    name: str
    description: str
    make_input: Callable[[np.random.Generator], str]
    solve: Callable[[str], str]

    def prompt(self, input_text: str) -> str:
        return f"{self.name}:{input_text}="

    def answer(self, input_text: str) -> str:
        return self.solve(input_text) + END

    def sample(self, rng: np.random.Generator) -> tuple[str, str]:
        """A random (prompt, answer) pair; may be a held-out one (see `sample_train`)."""
        input_text = self.make_input(rng)
        return self.prompt(input_text), self.answer(input_text)

    def input_of(self, prompt: str) -> str:
        """The input inside a prompt: "rev:048213=" -> "048213"."""
        head = f"{self.name}:"
        if not (prompt.startswith(head) and prompt.endswith("=")):
            raise ValueError(f"{prompt!r} is not a prompt of task {self.name!r} (expected '{head}...=')")
        return prompt[len(head):-1]


N_DIGITS = 6  # input length of the digit-string tasks: short enough to learn in minutes


def random_digits(rng: np.random.Generator, n: int = N_DIGITS) -> str:
    return "".join(str(d) for d in rng.integers(0, 10, size=n))


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    if len(task.name) != 3 or not task.name.isalpha() or not task.name.islower():
        raise ValueError(f"task names are three lowercase letters (they are the prompt's prefix); got {task.name!r}")
    if task.name in TASKS:
        raise ValueError(f"a task named {task.name!r} is already registered")
    TASKS[task.name] = task
    return task


# Pretraining: the skills the base model learns.
register(Task("cpy", "copy the digits", random_digits, lambda s: s))
register(Task("rev", "reverse the digits", random_digits, lambda s: s[::-1]))
register(Task("srt", "sort the digits in ascending order", random_digits, lambda s: "".join(sorted(s))))

# Downstream: new prefixes, the skills above used in new ways. The base model
# scores about 0 on these: it has never seen the prefixes.
register(Task("dsc", "sort the digits in descending order", random_digits,
              lambda s: "".join(sorted(s, reverse=True))))
register(Task("rot", "rotate the digits left by one", random_digits, lambda s: s[1:] + s[:1]))
register(Task("inc", "add one to each digit (9 wraps to 0)", random_digits,
              lambda s: "".join(str((int(c) + 1) % 10) for c in s)))

PRETRAIN_TASKS: tuple[str, ...] = ("cpy", "rev", "srt")
DOWNSTREAM_TASKS: tuple[str, ...] = ("dsc", "rot", "inc")


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"no task named {name!r}; the tasks are {sorted(TASKS)}")
    return TASKS[name]


# ----------------------------------------------------------------------------
# Held-out examples
#
# The rule: a prompt is held out when the CRC-32 of its text is divisible by
# HELDOUT_EVERY. That is about one prompt in ten, it depends on nothing but the
# prompt (not on seeds or on the order of calls), and training simply redraws
# any held-out prompt it happens to sample. So the evaluation prompts can never
# have been seen in training, whatever seeds either side used.

HELDOUT_EVERY = 10
HELDOUT_STREAM = 20240917  # seeds the held-out draws, apart from any training seed


def is_heldout(prompt: str) -> bool:
    return zlib.crc32(prompt.encode("ascii")) % HELDOUT_EVERY == 0


def sample_train(task_name: str, rng: np.random.Generator) -> tuple[str, str]:
    """A (prompt, answer) pair for training: never a held-out prompt."""
    task = get_task(task_name)
    while True:
        prompt, answer = task.sample(rng)
        if not is_heldout(prompt):
            return prompt, answer


@lru_cache(maxsize=64)
def _heldout(task_name: str, n: int, seed: int) -> tuple[tuple[str, str], ...]:
    task = get_task(task_name)
    # A seed stream of its own per task (crc32 rather than hash(): Python
    # randomises hash() of strings between runs).
    rng = np.random.default_rng([HELDOUT_STREAM, zlib.crc32(task_name.encode()), seed])
    examples: dict[str, str] = {}  # prompt -> answer, unique prompts in draw order
    draws = 0
    while len(examples) < n:
        draws += 1
        if draws > 1000 * (n + 10):
            raise ValueError(f"task {task_name!r} has fewer than {n} distinct held-out prompts ({len(examples)} found)")
        prompt, answer = task.sample(rng)
        if is_heldout(prompt):
            examples.setdefault(prompt, answer)
    return tuple(examples.items())


def heldout_examples(task_name: str, n: int = 200, seed: int = 0) -> list[tuple[str, str]]:
    """`n` distinct held-out (prompt, answer) pairs of a task; the same every call."""
    return list(_heldout(task_name, int(n), int(seed)))


# ----------------------------------------------------------------------------
# Training batches


def _positive_int(owner: str, name: str, value, low: int = 1) -> int:
    """`value` if it is a whole number >= low (not a bool), else a clear error."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{owner}: {name}={value!r} must be a whole number >= {low}")
    return int(value)


def make_batch(task_names: Sequence[str], batch_size: int, block_size: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A batch for next-token training on a uniform mixture of tasks.

    Each row holds one example, starting at position 0 (as at evaluation), and
    is padded with PAD after it ends. With the tokens t_0 .. t_{L-1} of
    prompt + answer, x = t_0 .. t_{L-2} and y = t_1 .. t_{L-1}: position i is
    trained to predict token i + 1.

    Only the answer is supervised: y is IGNORE (-100, the ignore_index of
    cross_entropy, as in PyTorch) wherever the
    token to predict is part of the prompt, and on the padding. The prompt's
    digits are random, so predicting them would teach nothing but noise, and
    the answer is what we score.

    The rows are as long as the longest example in the batch (minus one),
    not `block_size`: padding costs compute and teaches nothing. `block_size`
    is the model's context length; an example that does not fit is an error.

    Returns x, y: int64 arrays of shape (batch_size, T).
    """
    if isinstance(task_names, str) or len(task_names) == 0:
        raise ValueError(f"make_batch needs a list of task names, e.g. ['rev'], not {task_names!r}")
    batch_size = _positive_int("make_batch", "batch_size", batch_size)
    block_size = _positive_int("make_batch", "block_size", block_size)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"make_batch: rng={rng!r:.40} must be a NumPy Generator, e.g. "
                        "np.random.default_rng(0), not a seed")
    tasks = [get_task(name).name for name in task_names]  # fail early on a bad name
    rows = []
    for choice in rng.integers(0, len(tasks), size=batch_size):
        prompt, answer = sample_train(tasks[choice], rng)
        rows.append((TOKENIZER.encode(prompt + answer), len(prompt)))

    longest = max(len(tokens) for tokens, _ in rows)
    if longest - 1 > block_size:
        raise ValueError(f"an example needs {longest - 1} positions but block_size is {block_size}; "
                         f"use a block_size of at least {longest - 1}")
    T = longest - 1
    x = np.full((batch_size, T), TOKENIZER.pad_id, dtype=np.int64)
    y = np.full((batch_size, T), IGNORE, dtype=np.int64)
    for row, (tokens, prompt_len) in enumerate(rows):
        L = len(tokens)
        x[row, :L - 1] = tokens[:-1]
        # Position i predicts token i + 1; the answer starts at token prompt_len,
        # so the first supervised position is prompt_len - 1 (the "=").
        y[row, prompt_len - 1:L - 1] = tokens[prompt_len:]
    return x, y


# ----------------------------------------------------------------------------
# Greedy decoding and exact-match accuracy

LogitsFn = Callable[[np.ndarray], np.ndarray]  # idx (B, T) int64 -> logits (B, T, vocab)


def greedy_decode(logits_fn: LogitsFn, idx: np.ndarray, max_new_tokens: int,
                  block_size: int | None = None, stop_id: int | None = None) -> np.ndarray:
    """Extend each row of idx (B, T) by up to max_new_tokens most likely tokens.

    One token per step for the whole batch: feed the sequences so far (only
    the last block_size tokens: a model cannot look further back than its
    context), take the argmax of the last position's logits, append it. Stops
    early once every row holds stop_id among its new tokens. Returns the longer
    array (B, T + n), n <= max_new_tokens.
    """
    max_new_tokens = _positive_int("greedy_decode", "max_new_tokens", max_new_tokens, low=0)
    start = idx.shape[1]
    for _ in range(max_new_tokens):
        context = idx if block_size is None else idx[:, -block_size:]  # (B, <= block_size)
        logits = np.asarray(logits_fn(context))
        if logits.ndim != 3 or logits.shape[:2] != context.shape:
            raise ValueError(f"logits_fn returned shape {logits.shape} for input {context.shape}; "
                             f"expected ({context.shape[0]}, {context.shape[1]}, vocab_size)")
        next_ids = logits[:, -1, :].argmax(axis=-1).astype(np.int64)  # (B,)
        idx = np.concatenate([idx, next_ids[:, None]], axis=1)  # (B, T + 1)
        if stop_id is not None and np.all((idx[:, start:] == stop_id).any(axis=1)):
            break  # every row has finished its answer
    return idx


def complete(logits_fn: LogitsFn, prompts: Sequence[str], max_new_tokens: int,
             block_size: int | None = None, batch_size: int = 256) -> list[str]:
    """Greedy completions of `prompts`, each cut after its first END.

    Prompts of equal length are decoded together by `greedy_decode`.
    """
    if isinstance(prompts, str):
        raise ValueError(f"complete: prompts must be a list of strings, not one string {prompts!r}; "
                         f"write [{prompts!r}]")
    max_new_tokens = _positive_int("complete", "max_new_tokens", max_new_tokens, low=0)
    batch_size = _positive_int("complete", "batch_size", batch_size)
    if block_size is not None:
        block_size = _positive_int("complete", "block_size", block_size)
    results: list[str | None] = [None] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(i)

    for length, indices in by_length.items():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            idx = np.array([TOKENIZER.encode(prompts[i]) for i in chunk], dtype=np.int64)  # (B, P)
            idx = greedy_decode(logits_fn, idx, max_new_tokens, block_size, stop_id=TOKENIZER.end_id)
            for row, i in enumerate(chunk):
                text = TOKENIZER.decode(idx[row, length:])
                cut = text.find(END)
                results[i] = text if cut < 0 else text[:cut + 1]
    return results  # type: ignore[return-value]


def exact_match(logits_fn: LogitsFn, task_name: str, n: int = 200, block_size: int | None = None,
                seed: int = 0, batch_size: int = 256) -> float:
    """Fraction of `n` held-out prompts whose greedy answer is exactly right.

    `logits_fn(idx)` maps token ids (B, T) to logits (B, T, vocab); wrap a model
    in it (e.g. `lambda idx: model(idx).numpy()` under no_grad). Partly right
    answers score zero: for these tasks one wrong digit is a wrong answer.
    """
    examples = heldout_examples(task_name, n, seed)
    prompts = [prompt for prompt, _ in examples]
    answers = [answer for _, answer in examples]
    longest_answer = max(len(answer) for answer in answers)
    predictions = complete(logits_fn, prompts, longest_answer, block_size=block_size, batch_size=batch_size)
    return float(np.mean([p == a for p, a in zip(predictions, answers)]))

"""What every exercise check shares: read an answer safely, explain, hint, catch shortcuts.

A check never shows the learner a stack of internals. Whatever they hand in
(a wrong type, `None`, NaN, a string, a minilora `Tensor`, a function that
raises), they read one sentence saying what is wrong, with the values, and a
first hint. The tools here make that the easy path:

    as_number / as_integer / as_array   read an answer or raise ExerciseError
    call_learner                        run the learner's function, explaining its failure
    forbidding                          while it runs, the library function the exercise
                                        teaches is replaced by a tripwire, so "call minilora's
                                        own answer" is caught rather than rewarded
    register_hints / hint               two levels of hint: a nudge, then the method;
                                        never the line of code
    correct / reveal                    the success message; a prediction's reveal

Checks for each notebook live beside this file, one module per notebook.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable

import numpy as np

__all__ = [
    "ExerciseError", "correct", "reveal", "as_number", "as_integer", "as_array", "call_learner",
    "forbidding", "LibraryUsed", "register_hints", "hint", "short", "returned",
]

# exercise id -> (nudge, method); filled by each notebook's check module.
_HINTS: dict[str, tuple[str, str]] = {}


class ExerciseError(Exception):
    """A wrong answer to an exercise. The message says what is wrong and how to go on."""

    def __init__(self, exercise: str, problem: str, hint: str | None = None):
        self.exercise = exercise
        self.problem = problem
        if hint is None and exercise in _HINTS:
            hint = _HINTS[exercise][0]
        self.hint = hint
        text = f"Exercise {exercise}: {problem}"
        if hint:
            text += f"\nHint: {hint}"
        if exercise in _HINTS:
            text += f"\nStill stuck? checks.hint({exercise!r}, 2) explains the method."
        super().__init__(text)

    def _render_traceback_(self) -> list[str]:
        """What IPython and Jupyter show instead of a traceback: the message alone.

        The cell still fails (so "Run All" stops at the first wrong answer, and
        nbgrader gives the exercise no points), but the learner reads what is
        wrong and a hint, not the internals of this file.
        """
        return [f"Not yet. {self}"]


class LibraryUsed(Exception):
    """Raised by a tripwire: the learner's code called the function it was asked to write."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(name)


# ---------------------------------------------------------------- messages

def correct(exercise: str, why: str) -> None:
    print(f"Correct! (Exercise {exercise}) {why}")


def register_hints(exercise: str, nudge: str, method: str) -> None:
    """Record an exercise's two hints: level 1 says where to look, level 2 how to proceed."""
    _HINTS[exercise] = (nudge, method)


def hint(exercise: str, level: int = 1) -> None:
    """Print the level-1 (nudge) or level-2 (method) hint of an exercise, e.g. hint("4.1", 2)."""
    exercise = str(exercise)
    if exercise not in _HINTS:
        known = ", ".join(sorted(_HINTS)) or "none yet (import minilora.checks first)"
        print(f"There is no exercise {exercise!r}. Exercises with hints: {known}.")
        return
    if level not in (1, 2):
        print(f"Hints come in two levels: hint({exercise!r}, 1) and hint({exercise!r}, 2).")
        return
    label = "Nudge" if level == 1 else "Method"
    print(f"Exercise {exercise}, {label.lower()}: {_HINTS[exercise][level - 1]}")


def reveal(exercise: str, guess: Any, truth: float, explain: str, *, what: str = "your prediction",
           rel_tol: float = 0.1, integer: bool = False) -> bool:
    """Compare a prediction with the measured value, explain either way, never fail for a wrong guess.

    Only a missing or unreadable prediction raises (the point of predicting is
    to commit before seeing). Returns whether the guess was close.
    """
    if guess is None or guess is Ellipsis:
        raise ExerciseError(exercise, f"{what} is still empty: write your guess first, then run this cell.",
                            "Any honest number is fine; the explanation is the point.")
    value = as_integer(guess, exercise, what) if integer else as_number(guess, exercise, what)
    close = value == truth if integer else math.isclose(value, truth, rel_tol=rel_tol, abs_tol=1e-12)
    verdict = "Spot on." if close else "Not quite, and that is what predicting is for."
    print(f"You predicted {value:g}; the measurement says {truth:g}. {verdict}\n{explain}")
    return close


# ---------------------------------------------------------------- reading answers

def short(value: Any) -> str:
    """A one-line description of a value for messages (arrays by shape, not contents)."""
    if isinstance(value, np.ndarray) or hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"<array of shape {tuple(value.shape)}>"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _host(answer: Any) -> Any:
    """A minilora Tensor (or a GPU array) becomes a NumPy array; anything else is unchanged."""
    from minilora.backend import to_numpy

    data = getattr(answer, "data", None)
    if data is not None and hasattr(data, "shape") and hasattr(answer, "backward"):
        answer = data                          # a Tensor: look at its values
    if hasattr(answer, "shape") and hasattr(answer, "dtype") and not isinstance(answer, np.ndarray):
        try:
            answer = to_numpy(answer)
        except Exception:
            pass
    return answer


def as_number(answer: Any, ex: str, what: str) -> float:
    """A finite real number (int, float, NumPy scalar, 0-d array or Tensor), or an ExerciseError."""
    answer = _host(answer)
    if isinstance(answer, (bool, np.bool_)):
        raise ExerciseError(ex, f"{what} should be a number, but you gave the boolean {answer!r}.")
    if isinstance(answer, np.ndarray):
        if answer.size != 1:
            raise ExerciseError(ex, f"{what} should be one number, but you gave an array of shape {answer.shape}.",
                                "Pick out the single value you mean (for example with .item() or a sum).")
        answer = answer.reshape(()).item()
    if not isinstance(answer, (int, float, np.integer, np.floating)):
        raise ExerciseError(ex, f"{what} should be a number, but you gave {type(answer).__name__} {short(answer)}.",
                            "Compute the value and assign the number itself (not a list, string or function).")
    value = float(answer)
    if not math.isfinite(value):
        raise ExerciseError(ex, f"{what} is {value}, which is not a finite number.")
    return value


def as_integer(answer: Any, ex: str, what: str) -> int:
    """A whole number (an integral float such as 4.0 is accepted)."""
    value = as_number(answer, ex, what)
    if value != round(value):
        raise ExerciseError(ex, f"{what} should be a whole number, but you gave {short(answer)}.",
                            "Counts of parameters, bytes and ranks are integers.")
    return int(round(value))


def as_array(answer: Any, ex: str, what: str, shapes: tuple[tuple[int, ...], ...] | None = None) -> np.ndarray:
    """A finite float64 NumPy array (from a list, array or Tensor), of one of `shapes` if given."""
    if callable(answer) and not hasattr(answer, "shape"):
        raise ExerciseError(ex, f"{what} should be an array, but you gave a function.",
                            "Call your function and pass its result.")
    answer = _host(answer)
    try:
        arr = np.asarray(answer, dtype=np.float64)
    except (TypeError, ValueError):
        raise ExerciseError(ex, f"{what} should be an array of numbers; could not read {type(answer).__name__} "
                            f"{short(answer)} as one.", "Use np.array([...]) with numbers only.") from None
    if shapes is not None and arr.shape not in shapes:
        allowed = " or ".join(str(s) for s in shapes)
        raise ExerciseError(ex, f"{what} has shape {arr.shape}, but it should have shape {allowed}.",
                            "Check .shape of your answer before passing it.")
    if not np.all(np.isfinite(arr)):
        raise ExerciseError(ex, f"{what} contains NaN or Inf.")
    return arr


# ---------------------------------------------------------------- running the learner's code

def returned(value: Any, ex: str, name: str) -> Any:
    """The learner's return value, or an ExerciseError if their function returned nothing."""
    if value is None:
        raise ExerciseError(ex, f"your `{name}` returned None: did it reach its `return` line?",
                            "End the function with `return` and the value it computes.")
    return value


def call_learner(fn: Any, ex: str, name: str, *args: Any) -> Any:
    """Call the learner's function, turning its failure (or a tripwire) into an explanation."""
    if not callable(fn):
        raise ExerciseError(ex, f"expected your function `{name}`, but got {type(fn).__name__} {short(fn)}.",
                            f"Pass the function itself, `{name}`, without calling it.")
    try:
        return fn(*args)
    except NotImplementedError:
        raise                                   # a student copy's placeholder: its message says it all
    except LibraryUsed as used:
        raise ExerciseError(ex, f"your `{name}` calls minilora's own `{used.name}`, which is the answer "
                            "this exercise asks you to write.",
                            "Write it with NumPy operations (np.linalg, @, sums): that is the exercise.") from None
    except ExerciseError:
        raise
    except Exception as exc:
        shown = ", ".join(short(a) for a in args)
        raise ExerciseError(ex, f"your function `{name}({shown})` raised {type(exc).__name__}: {exc}",
                            "The traceback above this message points at the line in your function.") from exc


@contextlib.contextmanager
def forbidding(*targets: tuple[Any, str], learner: Callable | None = None):
    """Replace library functions by tripwires while the learner's code runs.

    Each target is `(owner, "attribute")`, e.g. `(minilora.linalg, "low_rank_approx")`
    or `(Tensor, "backward")`. If `learner` is given, names in its module's globals
    that are bound to a forbidden object (`from minilora.linalg import low_rank_approx`)
    are swapped too. Everything is restored on exit, whatever happens.
    """
    saved: list[tuple[Any, str, Any]] = []
    swapped: dict[int, Callable] = {}
    try:
        for owner, attr in targets:
            original = getattr(owner, attr)
            label = f"{getattr(owner, '__name__', type(owner).__name__).replace('minilora.', '')}.{attr}"

            def tripwire(*args, _label=label, **kwargs):
                raise LibraryUsed(_label)

            saved.append((owner, attr, original))
            swapped[id(original)] = tripwire
            setattr(owner, attr, tripwire)
        namespace = getattr(learner, "__globals__", None)
        if namespace is not None:
            for key, value in list(namespace.items()):
                if id(value) in swapped:
                    saved.append((namespace, key, value))
                    namespace[key] = swapped[id(value)]
        yield
    finally:
        for owner, attr, original in reversed(saved):
            if isinstance(owner, dict):
                owner[attr] = original
            else:
                setattr(owner, attr, original)

"""Self-checks for the notebooks' exercises: friendly feedback, never a stack of internals.

Every exercise ends with a cell such as `checks.check_outer_factors(u, v)`.
A right answer prints "Correct! ..." and a line about why it matters. A wrong
one raises `ExerciseError`, whose message names the exercise, says what is
wrong (with the values) and gives a first hint; `checks.hint("4.1", 2)` gives
the method. Checks run the learner's code on hidden random inputs and catch
answers that call the very library function the exercise teaches.

If an answer is a function the learner wrote and *their* function raises, the
error says so and keeps their traceback attached, since that is where the bug
is. A `NotImplementedError` (the placeholder in a student copy) passes through
unchanged so its message, "Exercise 2.1: write your answer here", is what shows.

One module per notebook; `feedback.py` holds what they share.
"""
from minilora.checks.feedback import ExerciseError, hint
from minilora.checks.linalg_exercises import *  # noqa: F401,F403  01-03
from minilora.checks.autograd import *  # noqa: F401,F403  04
from minilora.checks.transformer import *  # noqa: F401,F403  05
from minilora.checks.lora_layer import *  # noqa: F401,F403  06
from minilora.checks.frozen import *  # noqa: F401,F403  07
from minilora.checks.train_lora import *  # noqa: F401,F403  08
from minilora.checks.intrinsic_rank import *  # noqa: F401,F403  09
from minilora.checks.paper import *  # noqa: F401,F403  10
from minilora.checks.earlier_methods import *  # noqa: F401,F403  11
from minilora.checks.gpu import *  # noqa: F401,F403  12

"""nbgrader's round trip on the course notebooks: release a student version, grade three submissions.

A temporary course directory with its own sqlite gradebook, driven through
the real `nbgrader` command line:

- the teacher's notebook (the solutions) scores full marks,
- the student version as released, untouched, scores zero,
- the student version with every answer typed in, one of them wrong, loses exactly
  that exercise's points (so the checks work in the student's copy as released).

Autograding runs each submission, so by default only notebooks 01 and 03 are
graded here; MINILORA_NBGRADER_ALL=1 grades every notebook that carries
nbgrader metadata.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.notebooks, pytest.mark.slow]

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
ASSIGNMENT = "lesson"
GRADED_IN_CI = ("01", "03")

# A plausible wrong answer for some exercises (the cell's solution block is replaced by it):
# a mistake a learner could make, which the check must catch.
WRONG_ANSWERS = {
    "ex-1-2": "return np.ones((m, n)) * k      # rank 1 whatever k is: 'more k' is not 'more rank'",
    "ex-1-1": "return M[:, 0], M[0]            # forgets to divide by the shared entry",
    "ex-3-1": "return 2 * d_in * r             # as if every matrix were square",
}


def _meta(cell: dict) -> dict:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return meta if isinstance(meta, dict) else {}


def _with_nbgrader(path: Path) -> bool:
    return any(_meta(c) for c in json.loads(path.read_text(encoding="utf-8"))["cells"])


GRADED = [p for p in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")) if _with_nbgrader(p)]


def _source(cell: dict) -> str:
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def _points(book: dict) -> dict[str, float]:
    """grade_id of each graded cell -> its points."""
    return {_meta(c)["grade_id"]: float(_meta(c).get("points", 0)) for c in book["cells"] if _meta(c).get("grade")}


def _answered(released: dict, solutions: dict) -> dict:
    """The released student version with every answer typed in: each solution cell gets the teacher's text."""
    book = json.loads(json.dumps(released))
    answers = {_meta(c)["grade_id"]: _source(c) for c in solutions["cells"] if _meta(c).get("solution")}
    for cell in book["cells"]:
        if _meta(cell).get("solution"):
            cell["source"] = answers[_meta(cell)["grade_id"]]
    return book


def _answer_wrongly(book: dict) -> tuple[dict, str]:
    """(a copy of `book` with one graded exercise answered wrongly, the check cell's grade_id)."""
    book = json.loads(json.dumps(book))
    cells = book["cells"]
    graded_after = {}          # solution cell index -> grade_id of the check cell right after it
    for i, cell in enumerate(cells[:-1]):
        nxt = _meta(cells[i + 1])
        if _meta(cell).get("solution") and cell["cell_type"] == "code" and nxt.get("grade"):
            graded_after[i] = nxt["grade_id"]
    assert graded_after, "no solution cell followed by its graded check"
    by_id = {_meta(cells[i])["grade_id"]: i for i in graded_after}
    chosen = next((gid for gid in WRONG_ANSWERS if gid in by_id), None)
    index = by_id[chosen] if chosen else max(graded_after)
    lines = _source(cells[index]).split("\n")
    begin = next(k for k, line in enumerate(lines) if re.match(r"\s*#+\s*BEGIN SOLUTION", line))
    end = next(k for k, line in enumerate(lines) if re.match(r"\s*#+\s*END SOLUTION", line))
    indent = lines[begin][: len(lines[begin]) - len(lines[begin].lstrip())]
    # without a written wrong answer: an answer that does nothing (the function returns None)
    wrong = WRONG_ANSWERS.get(chosen, "pass")
    cells[index]["source"] = "\n".join(lines[:begin] + [indent + wrong] + lines[end + 1:])
    return book, graded_after[index]


def _nbgrader(course: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, JUPYTER_CONFIG_DIR=str(course / ".jupyter"),
                                                JUPYTER_DATA_DIR=str(course / ".jupyter-data")))
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{output[-4000:]}"
    return output


@pytest.mark.parametrize("teacher", GRADED, ids=lambda p: p.name)
def test_nbgrader_round_trip(teacher, tmp_path):
    pytest.importorskip("nbgrader", reason='nbgrader is not installed: pip install -e ".[classroom]"')
    if teacher.name[:2] not in GRADED_IN_CI and os.environ.get("MINILORA_NBGRADER_ALL") != "1":
        pytest.skip("graded only with MINILORA_NBGRADER_ALL=1 (autograding runs the notebook three times)")
    course = tmp_path / "course"
    (course / "source" / ASSIGNMENT).mkdir(parents=True)
    (course / "nbgrader_config.py").write_text(
        "c = get_config()\n"
        "c.CourseDirectory.course_id = 'minilora'\n"
        f"c.CourseDirectory.root = {str(course)!r}\n"
        f"c.CourseDirectory.db_url = 'sqlite:///{course / 'gradebook.db'}'\n"
        "c.ExecutePreprocessor.timeout = 300\n"
        "c.Exchange.root = " + repr(str(tmp_path / "exchange")) + "\n")
    shutil.copy(teacher, course / "source" / ASSIGNMENT / teacher.name)
    solutions = json.loads(teacher.read_text(encoding="utf-8"))
    points = _points(solutions)
    full = sum(points.values())
    assert full > 0, f"{teacher.name}: no graded cell carries points"

    _nbgrader(course, "generate_assignment", ASSIGNMENT, "--force")
    released = course / "release" / ASSIGNMENT / teacher.name
    student_version = json.loads(released.read_text(encoding="utf-8"))
    assert "BEGIN SOLUTION" not in released.read_text(encoding="utf-8")

    # a student who types every answer into the released notebook (its locked cells as released,
    # the instant checks as the student runs them), one of them wrong
    wrong, wrong_id = _answer_wrongly(_answered(student_version, solutions))
    submissions = {"teacher": solutions, "untouched": student_version, "one-wrong": wrong}
    for student, book in submissions.items():
        folder = course / "submitted" / student / ASSIGNMENT
        folder.mkdir(parents=True)
        (folder / teacher.name).write_text(json.dumps(book), encoding="utf-8")
    _nbgrader(course, "autograde", ASSIGNMENT, "--force")

    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        scores = {student: gradebook.find_submission_notebook(teacher.stem, ASSIGNMENT, student).score
                  for student in submissions}
        lost = {grade.name: grade.score for grade in
                gradebook.find_submission_notebook(teacher.stem, ASSIGNMENT, "one-wrong").grades}
    print(f"{teacher.name}: max {full}, scores {scores}, wrong answer in {wrong_id}")
    assert scores["teacher"] == full
    assert scores["untouched"] == 0
    assert scores["one-wrong"] == full - points[wrong_id]
    assert lost[wrong_id] == 0 and all(lost[g] == points[g] for g in points if g != wrong_id)

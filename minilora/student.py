"""Student copies of the notebooks: the same notebooks with the solutions cut out.

In the teacher's notebooks each exercise's answer sits between two marker
lines in a code cell, the markers nbgrader uses:

    # Exercise 1.2: build a 4 x 5 matrix of rank 2
    ### BEGIN SOLUTION
    M = np.outer(a1, b1) + np.outer(a2, b2)
    ### END SOLUTION
    checks.check_rank_two_matrix(M)

(one `#` is accepted too: `# BEGIN SOLUTION`). So a course that runs nbgrader
gets its student versions from `nbgrader generate_assignment`, and a teacher
without nbgrader gets nearly the same copies from this module.

`make_student_copies` replaces everything from BEGIN to END (markers included)
with one line, at the marker's indentation, that raises:

    raise NotImplementedError("Exercise 1.2: write your answer here")

so a student copy runs down to the first exercise and stops there with that
message, and the learner replaces the line with their own code. The exercise's
name is taken from the nearest "Exercise N.M" comment above the marker in the
same cell, else from the cell's nbgrader id ("ex-4-1" is Exercise 4.1), else
from the closest markdown cell before it; without any it is
"Exercise <k> of <notebook>". In a markdown cell the block becomes the line
"_Write your answer here._". Blocks between `### BEGIN HIDDEN TESTS` and
`### END HIDDEN TESTS` are removed, as nbgrader does.

From the command line: `minilora student notebooks/ student_notebooks/`.
Notebooks are read and written as plain JSON (nbformat 4); outputs and
execution counts are cleared, and jupytext pairing metadata is dropped so the
copies stand alone. Each copy gets the file permissions of its source notebook,
so copies made on a shared server stay readable by the class.
"""
from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

from minilora.files import write_file_atomically

__all__ = ["make_student_copies", "strip_solutions", "StudentCopyError", "BEGIN", "END"]

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
# one or more '#', so the older "# BEGIN SOLUTION" form still works
_MARKER = re.compile(r"^#+\s*(BEGIN|END)\s+(SOLUTION|HIDDEN TESTS)\b")
_EXERCISE = re.compile(r"Exercise\s+(\d+(?:\.\d+)*)")
_GRADE_ID = re.compile(r"^ex-(\d+(?:-\d+)*)$")
MARKDOWN_PLACEHOLDER = "_Write your answer here._"


class StudentCopyError(ValueError):
    """A notebook's solution markers do not pair up (the message names notebook and cell)."""


def _source_lines(cell: dict) -> list[str]:
    src = cell.get("source", "")
    text = "".join(src) if isinstance(src, list) else str(src)
    return text.split("\n")


def _set_source(cell: dict, lines: list[str]) -> None:
    # nbformat's on-disk form: a list of lines, each but the last ending in "\n"
    cell["source"] = "\n".join(lines).splitlines(keepends=True)


def _marker(line: str) -> tuple[str, str] | None:
    """("begin" or "end", "solution" or "hidden tests") for a marker line, else None."""
    found = _MARKER.match(line.strip())
    if not found:
        return None
    return found.group(1).lower(), found.group(2).lower()


def _grade_id_label(cell: dict) -> str | None:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    found = _GRADE_ID.match(str(meta.get("grade_id", ""))) if isinstance(meta, dict) else None
    return f"Exercise {found.group(1).replace('-', '.')}" if found else None


def strip_solutions(notebook: dict, name: str = "notebook") -> tuple[dict, int]:
    """Return (a copy of `notebook` with solution blocks replaced, number of blocks replaced).

    Raises StudentCopyError, naming `name` and the cell (counting from 1), for a
    BEGIN without END, an END without BEGIN, or a BEGIN inside a solution.
    """
    nb = json.loads(json.dumps(notebook))              # deep copy; the input is left alone
    cells = nb.get("cells")
    if not isinstance(cells, list):
        raise StudentCopyError(f"{name}: not a Jupyter notebook (no list of cells)")
    replaced = 0
    last_markdown_exercise: str | None = None
    for index, cell in enumerate(cells, start=1):
        lines = _source_lines(cell)
        kind_of_cell = cell.get("cell_type")
        if kind_of_cell not in ("code", "markdown"):
            if any(_marker(line) for line in lines):
                raise StudentCopyError(f"{name}, cell {index}: solution markers in a {kind_of_cell} "
                                       "cell; put them in a code cell")
            continue
        out: list[str] = []
        opened: tuple[int, str] | None = None          # (line number, "solution" / "hidden tests")
        for lineno, line in enumerate(lines, start=1):
            marker = _marker(line)
            if marker and marker[0] == "begin":
                if opened is not None:
                    raise StudentCopyError(f"{name}, cell {index}, line {lineno}: '{line.strip()}' inside the "
                                           f"{opened[1]} block opened on line {opened[0]}; close it first")
                opened = (lineno, marker[1])
                if marker[1] == "solution":
                    replaced += 1
                    indent = line[: len(line) - len(line.lstrip())]
                    if kind_of_cell == "markdown":
                        out.append(indent + MARKDOWN_PLACEHOLDER)
                    else:
                        label = _exercise_label(out, _grade_id_label(cell), last_markdown_exercise,
                                                replaced, name)
                        out.append(f'{indent}raise NotImplementedError("{label}: write your answer here")')
            elif marker:                                 # an END line
                if opened is None or opened[1] != marker[1]:
                    raise StudentCopyError(f"{name}, cell {index}, line {lineno}: '{line.strip()}' without a "
                                           f"matching BEGIN {marker[1].upper()} line before it")
                opened = None
            elif opened is None:
                out.append(line)
        if opened is not None:
            raise StudentCopyError(f"{name}, cell {index}, line {opened[0]}: 'BEGIN {opened[1].upper()}' is "
                                   f"never closed; add an 'END {opened[1].upper()}' line after it")
        if kind_of_cell == "markdown":
            found = _EXERCISE.findall("\n".join(out))
            if found:
                last_markdown_exercise = found[-1]
            _set_source(cell, out)
            continue
        _set_source(cell, out)
        cell["outputs"] = []
        cell["execution_count"] = None
    meta = nb.get("metadata", {})
    if isinstance(meta, dict):
        meta.pop("jupytext", None)
    return nb, replaced


def _exercise_label(lines_above: list[str], grade_id_label: str | None, markdown_exercise: str | None,
                    k: int, name: str) -> str:
    for line in reversed(lines_above):
        found = _EXERCISE.findall(line)
        if found:
            return f"Exercise {found[-1]}"
    if grade_id_label:
        return grade_id_label
    if markdown_exercise:
        return f"Exercise {markdown_exercise}"
    return f"Exercise {k} of {name}"


def make_student_copies(src: str | os.PathLike, dst: str | os.PathLike) -> list[Path]:
    """Write student copies of the notebooks in `src` (a folder, or one .ipynb) into folder `dst`.

    Returns the paths written. Every notebook is checked before any file is
    written, so a bad marker leaves `dst` untouched. Refuses to write over the
    source notebooks themselves.
    """
    src_path, dst_path = Path(src), Path(dst)
    if not src_path.exists():
        raise FileNotFoundError(f"minilora student: source {str(src_path)!r} does not exist; give a folder of "
                                ".ipynb notebooks or one .ipynb file")
    if src_path.is_dir():
        sources = sorted(p for p in src_path.glob("*.ipynb") if p.is_file())
        if not sources:
            raise FileNotFoundError(f"minilora student: no .ipynb notebooks in folder {str(src_path)!r}")
    elif src_path.suffix == ".ipynb":
        sources = [src_path]
    else:
        raise ValueError(f"minilora student: {str(src_path)!r} is not a .ipynb notebook or a folder")
    if dst_path.exists() and not dst_path.is_dir():
        raise NotADirectoryError(f"minilora student: destination {str(dst_path)!r} exists and is not a folder")

    prepared: list[tuple[Path, str, int]] = []
    for path in sources:
        target = dst_path / path.name
        if target.exists() and target.resolve() == path.resolve():
            raise ValueError(f"minilora student: refusing to overwrite the source notebook {path}; "
                             "choose a different destination folder")
        try:
            notebook = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise StudentCopyError(f"{path.name}: not valid notebook JSON ({exc})") from None
        student, _ = strip_solutions(notebook, name=path.name)
        mode = stat.S_IMODE(path.stat().st_mode)
        prepared.append((target, json.dumps(student, indent=1, ensure_ascii=False) + "\n", mode))

    dst_path.mkdir(parents=True, exist_ok=True)
    for target, text, mode in prepared:
        write_file_atomically(target, text, mode)   # the source notebook's permissions, set before the rename
    return [target for target, _, _ in prepared]

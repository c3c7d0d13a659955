"""Student copies of the notebooks: the same notebooks with the solutions cut out.

In the teacher's notebooks each exercise's answer sits between two marker
lines in a code cell:

    # Exercise 1.2: build a 4 x 5 matrix of rank 2
    # BEGIN SOLUTION
    M = np.outer(a1, b1) + np.outer(a2, b2)
    # END SOLUTION
    checks.check_rank_two_matrix(M)

`make_student_copies` replaces everything from BEGIN to END (markers included)
with one line, at the marker's indentation, that raises:

    raise NotImplementedError("Exercise 1.2: write your answer here")

so a student copy runs down to the first exercise and stops there with that
message, and the learner replaces the line with their own code. The exercise's
name is taken from the nearest "Exercise N.M" comment above the marker in the
same cell (or the closest markdown cell before it); without one it is
"Exercise <k> of <notebook>".

From the command line: `minilora student notebooks/ student_notebooks/`.
Notebooks are read and written as plain JSON (nbformat 4); outputs and
execution counts are cleared, and jupytext pairing metadata is dropped so the
copies stand alone.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

__all__ = ["make_student_copies", "strip_solutions", "StudentCopyError", "BEGIN", "END"]

BEGIN = "# BEGIN SOLUTION"
END = "# END SOLUTION"
_EXERCISE = re.compile(r"Exercise\s+(\d+(?:\.\d+)*)")


class StudentCopyError(ValueError):
    """A notebook's solution markers do not pair up (the message names notebook and cell)."""


def _source_lines(cell: dict) -> list[str]:
    src = cell.get("source", "")
    text = "".join(src) if isinstance(src, list) else str(src)
    return text.split("\n")


def _set_source(cell: dict, lines: list[str]) -> None:
    # nbformat's on-disk form: a list of lines, each but the last ending in "\n"
    cell["source"] = "\n".join(lines).splitlines(keepends=True)


def _marker(line: str) -> str | None:
    stripped = line.strip()
    if stripped.startswith(BEGIN):
        return "begin"
    if stripped.startswith(END):
        return "end"
    return None


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
        if cell.get("cell_type") != "code":
            if any(_marker(line) for line in lines):
                raise StudentCopyError(f"{name}, cell {index}: solution markers in a {cell.get('cell_type')} "
                                       "cell; put them in a code cell")
            found = _EXERCISE.findall("\n".join(lines))
            if found:
                last_markdown_exercise = found[-1]
            continue
        out: list[str] = []
        begin_line: int | None = None
        for lineno, line in enumerate(lines, start=1):
            kind = _marker(line)
            if kind == "begin":
                if begin_line is not None:
                    raise StudentCopyError(f"{name}, cell {index}, line {lineno}: '{BEGIN}' inside the solution "
                                           f"opened on line {begin_line}; close it with '{END}' first")
                begin_line = lineno
                replaced += 1
                label = _exercise_label(out, last_markdown_exercise, replaced, name)
                indent = line[: len(line) - len(line.lstrip())]
                out.append(f'{indent}raise NotImplementedError("{label}: write your answer here")')
            elif kind == "end":
                if begin_line is None:
                    raise StudentCopyError(f"{name}, cell {index}, line {lineno}: '{END}' without a "
                                           f"'{BEGIN}' before it")
                begin_line = None
            elif begin_line is None:
                out.append(line)
        if begin_line is not None:
            raise StudentCopyError(f"{name}, cell {index}, line {begin_line}: '{BEGIN}' is never closed; "
                                   f"add a '{END}' line after the solution")
        _set_source(cell, out)
        cell["outputs"] = []
        cell["execution_count"] = None
    meta = nb.get("metadata", {})
    if isinstance(meta, dict):
        meta.pop("jupytext", None)
    return nb, replaced


def _exercise_label(lines_above: list[str], markdown_exercise: str | None, k: int, name: str) -> str:
    for line in reversed(lines_above):
        found = _EXERCISE.findall(line)
        if found:
            return f"Exercise {found[-1]}"
    if markdown_exercise:
        return f"Exercise {markdown_exercise}"
    return f"Exercise {k} of {name}"


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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

    prepared: list[tuple[Path, str]] = []
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
        prepared.append((target, json.dumps(student, indent=1, ensure_ascii=False) + "\n"))

    dst_path.mkdir(parents=True, exist_ok=True)
    for target, text in prepared:
        _write_atomic(target, text)
    return [target for target, _ in prepared]

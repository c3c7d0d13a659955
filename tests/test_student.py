"""minilora.student: solutions cut out, placeholders that raise, clear errors for bad markers."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from minilora.student import BEGIN, END, StudentCopyError, make_student_copies, strip_solutions

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOK_PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))


def nb(*cells, metadata=None):
    return {"cells": [{"cell_type": kind, "metadata": {}, "source": src,
                       **({"outputs": [{"output_type": "stream", "name": "stdout", "text": "old"}],
                           "execution_count": 3} if kind == "code" else {})}
                      for kind, src in cells],
            "metadata": metadata or {}, "nbformat": 4, "nbformat_minor": 5}


def source(cell) -> str:
    return "".join(cell["source"])


# ---------------------------------------------------------------- strip_solutions

def test_block_replaced_by_placeholder_named_after_the_exercise():
    book = nb(("code", ["# Exercise 1.2: rank two\n", f"{BEGIN}\n", "M = 1\n", f"{END}\n", "check(M)"]))
    out, n = strip_solutions(book, "x.ipynb")
    assert n == 1
    assert source(out["cells"][0]) == ('# Exercise 1.2: rank two\n'
                                       'raise NotImplementedError("Exercise 1.2: write your answer here")\n'
                                       'check(M)')
    assert out["cells"][0]["outputs"] == [] and out["cells"][0]["execution_count"] is None
    assert book["cells"][0]["outputs"]                          # the input notebook is untouched


def test_indented_block_inside_a_function_keeps_its_indentation():
    src = "# Exercise 2.1\ndef f(M, r):\n    # BEGIN SOLUTION\n    return M\n    # END SOLUTION\n\ncheck(f)"
    out, _ = strip_solutions(nb(("code", src)))
    lines = source(out["cells"][0]).split("\n")
    assert lines[2] == '    raise NotImplementedError("Exercise 2.1: write your answer here")'
    assert lines[3:] == ["", "check(f)"]
    ns: dict = {}
    exec(source(out["cells"][0]).replace("check(f)", ""), ns)     # still valid Python
    with pytest.raises(NotImplementedError, match="Exercise 2.1"):
        ns["f"](1, 2)


def test_label_from_markdown_or_numbered_fallback():
    book = nb(("markdown", "### Exercise 3.3\nCompute it."), ("code", f"{BEGIN}\nx = 1\n{END}"),
              ("code", f"y = 2\n{BEGIN}\nz = 3\n{END}"))
    out, n = strip_solutions(book, "nb.ipynb")
    assert n == 2
    assert "Exercise 3.3: write your answer here" in source(out["cells"][1])
    assert "Exercise 3.3: write your answer here" in source(out["cells"][2])     # nearest markdown above
    out, _ = strip_solutions(nb(("code", f"{BEGIN}\nx = 1\n{END}")), "nb.ipynb")
    assert "Exercise 1 of nb.ipynb: write your answer here" in source(out["cells"][0])


def test_jupytext_metadata_dropped_other_metadata_kept():
    book = nb(("code", "x = 1"), metadata={"jupytext": {"formats": "ipynb,py:percent"},
                                            "kernelspec": {"name": "python3"}})
    out, n = strip_solutions(book)
    assert n == 0 and "jupytext" not in out["metadata"] and out["metadata"]["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("src,match", [
    (f"{BEGIN}\nx = 1", r"03_x.ipynb, cell 2, line 1: 'BEGIN SOLUTION' is never closed"),
    (f"x = 1\n{END}", r"03_x.ipynb, cell 2, line 2: '### END SOLUTION' without a matching BEGIN SOLUTION"),
    (f"{BEGIN}\n{BEGIN}\n{END}", r"03_x.ipynb, cell 2, line 2: '### BEGIN SOLUTION' inside the solution block "
                                 r"opened on line 1"),
    ("### BEGIN HIDDEN TESTS\nx = 1\n### END SOLUTION", r"cell 2, line 3: '### END SOLUTION' without a matching"),
])
def test_unmatched_markers_name_notebook_cell_and_line(src, match):
    with pytest.raises(StudentCopyError, match=match):
        strip_solutions(nb(("markdown", "intro"), ("code", src)), "03_x.ipynb")


def test_old_single_hash_markers_still_work():
    out, n = strip_solutions(nb(("code", "# Exercise 4.2\n# BEGIN SOLUTION\nx = 1\n# END SOLUTION\ncheck(x)")))
    assert n == 1
    assert source(out["cells"][0]) == ('# Exercise 4.2\nraise NotImplementedError("Exercise 4.2: write your '
                                       'answer here")\ncheck(x)')


def test_nbgrader_grade_id_names_the_exercise_and_metadata_is_kept():
    meta = {"nbgrader": {"grade": False, "grade_id": "ex-6-3", "locked": False, "schema_version": 3,
                         "solution": True}}
    book = nb(("markdown", "### Exercise 9.9"), ("code", f"{BEGIN}\nx = 1\n{END}"))
    book["cells"][1]["metadata"] = meta
    out, n = strip_solutions(book)
    assert n == 1 and 'NotImplementedError("Exercise 6.3: write your answer here")' in source(out["cells"][1])
    assert out["cells"][1]["metadata"] == meta


def test_hidden_tests_removed_and_markdown_answers_replaced():
    book = nb(("markdown", f"Why?\n{BEGIN}\nBecause B = 0.\n{END}"),
              ("code", "check(x)\n### BEGIN HIDDEN TESTS\nassert x == 3\n### END HIDDEN TESTS\ndone()"))
    out, n = strip_solutions(book)
    assert n == 1
    assert source(out["cells"][0]) == "Why?\n_Write your answer here._"
    assert source(out["cells"][1]) == "check(x)\ndone()"


def test_markers_in_raw_cells_are_an_error():
    with pytest.raises(StudentCopyError, match=r"a.ipynb, cell 1: solution markers in a raw cell"):
        strip_solutions(nb(("raw", f"{BEGIN}\n{END}")), "a.ipynb")


# ---------------------------------------------------------------- make_student_copies

def write(path: Path, book: dict) -> Path:
    path.write_text(json.dumps(book))
    return path


def test_missing_or_wrong_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_student_copies(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .ipynb notebooks"):
        make_student_copies(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="not a .ipynb notebook or a folder"):
        make_student_copies(tmp_path / "a.txt", tmp_path / "out")
    write(tmp_path / "bad.ipynb", {}).write_text("{not json")
    with pytest.raises(StudentCopyError, match="bad.ipynb: not valid notebook JSON"):
        make_student_copies(tmp_path / "bad.ipynb", tmp_path / "out")


def test_one_file_and_a_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    a = write(src / "01_a.ipynb", nb(("code", f"# Exercise 1.1\n{BEGIN}\nx = 1\n{END}")))
    write(src / "02_b.ipynb", nb(("code", "y = 2")))
    written = make_student_copies(a, tmp_path / "one")
    assert written == [tmp_path / "one" / "01_a.ipynb"]
    written = make_student_copies(src, tmp_path / "all")
    assert [p.name for p in written] == ["01_a.ipynb", "02_b.ipynb"]
    copy = json.loads(written[0].read_text())
    assert "Exercise 1.1: write your answer here" in source(copy["cells"][0]) and "x = 1" not in source(copy["cells"][0])
    assert not list((tmp_path / "all").glob(".*.tmp"))                   # no temporary files left behind
    with pytest.raises(ValueError, match="refusing to overwrite the source"):
        make_student_copies(src, src)


def test_copies_keep_the_source_notebooks_permissions(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shared = write(src / "01_shared.ipynb", nb(("code", "x = 1")))
    private = write(src / "02_private.ipynb", nb(("code", "y = 1")))
    shared.chmod(0o644)
    private.chmod(0o600)
    written = make_student_copies(src, tmp_path / "out")
    assert [oct(p.stat().st_mode & 0o777) for p in written] == ["0o644", "0o600"]


def test_a_bad_marker_writes_nothing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write(src / "01_ok.ipynb", nb(("code", "x = 1")))
    write(src / "02_bad.ipynb", nb(("code", f"{BEGIN}\nx = 1")))
    with pytest.raises(StudentCopyError, match="02_bad.ipynb, cell 1"):
        make_student_copies(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_student(tmp_path, capsys):
    from minilora.cli import main

    src = tmp_path / "src"
    src.mkdir()
    write(src / "n.ipynb", nb(("code", "x = 1")))
    assert main(["student", str(src), str(tmp_path / "dst")]) == 0
    assert f"wrote {tmp_path / 'dst' / 'n.ipynb'}" in capsys.readouterr().out


# ---------------------------------------------------------------- the real notebooks

def test_every_notebook_has_exercises_and_student_copies_hide_them(tmp_path):
    assert len(NOTEBOOK_PATHS) >= 3
    written = make_student_copies(NOTEBOOKS, tmp_path)
    for teacher, student in zip(NOTEBOOK_PATHS, written):
        book = json.loads(teacher.read_text())
        _, n = strip_solutions(book, teacher.name)
        assert n >= 2, f"{teacher.name} has {n} exercises"
        text = student.read_text()
        assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
        labels = re.findall(r'NotImplementedError\(\\"(Exercise [^:]+): write your answer here', text)
        assert len(labels) == sum(c["cell_type"] == "code" for c in book["cells"]
                                  for line in "".join(c["source"]).split("\n") if re.match(r"\s*#+ ?BEGIN SOLUTION", line))
        prefix = teacher.name[:2].lstrip("0")
        # every placeholder names an exercise of this notebook (N.M), or falls back to "k of NN_name.ipynb"
        for label in labels:
            assert re.fullmatch(rf"Exercise {prefix}\.\d+|Exercise \d+ of {re.escape(teacher.name)}", label), label


def _execute(path: Path, cwd: Path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    book = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(book, timeout=120, kernel_name="python3",
                                      resources={"metadata": {"path": str(cwd)}})
    return book, client


def _first_exercise(book) -> tuple[int, str]:
    for index, cell in enumerate(book.cells):
        if cell.cell_type == "code" and "NotImplementedError" in cell.source:
            return index, re.search(r'"(Exercise [\d.]+): write your answer here"', cell.source).group(1)
    raise AssertionError("no placeholder")


@pytest.mark.notebooks
@pytest.mark.parametrize("teacher", NOTEBOOK_PATHS, ids=lambda p: p.name)
def test_student_copy_runs_to_the_first_exercise_and_stops_there(teacher, tmp_path):
    nbclient = pytest.importorskip("nbclient")
    (student,) = make_student_copies(teacher, tmp_path)
    book, client = _execute(student, tmp_path)
    index, label = _first_exercise(book)
    with pytest.raises(nbclient.exceptions.CellExecutionError) as info:
        client.execute()
    assert info.value.ename == "NotImplementedError"
    assert f"{label}: write your answer here" in info.value.evalue
    # it stops in the exercise's cell, or, where the answer is a function, in the check cell that calls it
    following = [i for i, c in enumerate(book.cells) if i > index and c.cell_type == "code"][:1]
    errors = [i for i, c in enumerate(book.cells) if c.cell_type == "code"
              and any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert len(errors) == 1 and errors[0] in [index] + following, (errors, index)
    ran = [i for i, c in enumerate(book.cells) if c.cell_type == "code" and c.get("execution_count")]
    assert max(ran) == errors[0]                        # everything before ran, nothing after
    assert all(i in ran for i, c in enumerate(book.cells) if c.cell_type == "code" and i <= errors[0]
               and c.source.strip() and not c.source.lstrip().startswith("%"))

"""Each notebook is kept twice: .ipynb (to run) and a jupytext percent .py (to review).

The two must hold the same cells, and the .ipynb must be stored without outputs.
After editing one, sync the other: `jupytext --sync notebooks/NN_name.ipynb`.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
IPYNBS = sorted(NOTEBOOKS.glob("*.ipynb"))
PYS = sorted(NOTEBOOKS.glob("*.py"))


def test_every_notebook_has_its_pair():
    assert IPYNBS, "no notebooks found"
    assert [p.stem for p in IPYNBS] == [p.stem for p in PYS], "each NN_name.ipynb needs NN_name.py and vice versa"


def _cells(book) -> list[tuple[str, str]]:
    return [(c["cell_type"], "".join(c["source"]) if isinstance(c["source"], list) else c["source"])
            for c in book["cells"]]


@pytest.mark.parametrize("ipynb", IPYNBS, ids=lambda p: p.name)
def test_pair_has_the_same_cells(ipynb):
    stored = json.loads(ipynb.read_text(encoding="utf-8"))
    from_py = jupytext.read(ipynb.with_suffix(".py"), fmt="py:percent")
    a, b = _cells(stored), _cells(from_py)
    assert len(a) == len(b), f"{ipynb.name}: {len(a)} cells, its .py has {len(b)}; run jupytext --sync"
    for index, (cell_a, cell_b) in enumerate(zip(a, b), start=1):
        assert cell_a == cell_b, f"{ipynb.name} cell {index} differs from its .py; run jupytext --sync"


@pytest.mark.parametrize("ipynb", IPYNBS, ids=lambda p: p.name)
def test_stored_without_outputs_and_paired(ipynb):
    book = json.loads(ipynb.read_text(encoding="utf-8"))
    for index, cell in enumerate(book["cells"], start=1):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, \
                f"{ipynb.name} cell {index} has outputs; clear them before committing"
    assert book["metadata"]["kernelspec"]["name"] == "python3"
    assert book["metadata"]["jupytext"]["formats"] == "ipynb,py:percent"

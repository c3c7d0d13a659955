"""Run each course notebook once and keep the executed copy, for the tests and the website.

The test suite (tests/test_docs.py) executes every notebook with nbclient and
saves the result here; the website then renders those saved outputs instead
of running the notebooks a second time. A saved copy is reused only while it
is fresh: its metadata records a hash of the notebook and of the minilora
package it ran against, and any change to either makes the website build run
that notebook again (so a fresh clone, with nothing cached, still builds).

Interactive explorers (ipywidgets) need a live kernel. So that the website
still shows them, `static_widgets` replaces each widget output by what it
showed when the notebook ran: its picture (PNG) and its text.

No Sphinx here: the tests import this module without the docs extra.
"""
from __future__ import annotations

import base64
import copy
import hashlib
import html
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
CACHE = ROOT / "docs" / "_build" / "executed"          # git-ignored with the rest of docs/_build
CELL_TIMEOUT_S = 300
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def course_notebooks() -> list[Path]:
    """notebooks/NN_name.ipynb in course order (the two-digit prefix)."""
    return sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb") if p.is_file())


def _package_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted((ROOT / "minilora").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def source_key(notebook: Path) -> str:
    """What the saved outputs depend on: the notebook's bytes and the package's files."""
    return hashlib.sha256(notebook.read_bytes() + _package_hash().encode()).hexdigest()


def cached_path(notebook: Path, cache: Path = CACHE) -> Path:
    return cache / notebook.name


def load_fresh(notebook: Path, cache: Path = CACHE) -> dict | None:
    """The saved executed copy of `notebook` if it ran against these exact files, else None.

    Notebooks are returned as nbformat reads them: dicts whose sources and texts are strings.
    """
    path = cached_path(notebook, cache)
    if not path.is_file():
        return None
    import nbformat

    try:
        book = nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)
    except (OSError, ValueError):
        return None
    meta = book.get("metadata", {}).get("minilora_executed", {})
    return book if meta.get("source_key") == source_key(notebook) else None


def execute(notebook: Path, cache: Path = CACHE) -> tuple[dict, float]:
    """Run `notebook` top to bottom (cwd: its folder) and save the executed copy; (notebook, seconds).

    Raises nbclient's CellExecutionError if a cell fails: then nothing is saved.
    """
    import nbclient
    import nbformat

    key = source_key(notebook)                 # before running: a notebook may write files
    book = nbformat.read(notebook, as_version=4)
    client = nbclient.NotebookClient(book, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     store_widget_state=True,
                                     resources={"metadata": {"path": str(notebook.parent)}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    book.metadata["minilora_executed"] = {"source_key": key, "seconds": round(seconds, 1)}
    cache.mkdir(parents=True, exist_ok=True)
    text = nbformat.writes(book)
    fd, tmp = tempfile.mkstemp(prefix=f".{notebook.name}.", suffix=".tmp", dir=cache)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)                   # mkstemp's 0600 would hide it from other users
        os.replace(tmp, cached_path(notebook, cache))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return nbformat.reads(text, as_version=4), seconds


RUNNING = "running {name}: no fresh saved run"       # the website build says so when it runs one


def executed(notebook: Path, cache: Path = CACHE, log=print) -> dict:
    """The fresh saved copy, or run the notebook now (saying so through `log`)."""
    book = load_fresh(notebook, cache)
    if book is None:
        log(RUNNING.format(name=notebook.name))
        book = execute(notebook, cache)[0]
    return book


# ---------------------------------------------------------------- widgets as pictures and text

def _widget_outputs(model_id: str, state: dict, depth: int = 0) -> list[dict]:
    """Outputs that show what widget `model_id` (and its children, in order) displayed."""
    entry = state.get(model_id)
    if entry is None or depth > 20:
        return []
    model = entry.get("state", {})
    name = model.get("_model_name", "")
    if name == "ImageModel":
        for buffer in entry.get("buffers", []):
            if buffer.get("path") == ["value"] and model.get("format", "png") == "png":
                data = buffer["data"] if buffer.get("encoding") == "base64" else \
                    base64.b64encode(buffer["data"].encode("latin-1")).decode()
                return [{"output_type": "display_data", "metadata": {}, "data": {"image/png": data}}]
        return []
    if name in ("HTMLModel", "HTMLMathModel") and model.get("value"):
        return [{"output_type": "display_data", "metadata": {}, "data": {"text/html": model["value"]}}]
    if name == "LabelModel" and model.get("value"):
        return [{"output_type": "display_data", "metadata": {},
                 "data": {"text/html": f"<p>{html.escape(model['value'])}</p>"}}]
    if "value" in model and "description" in model and name.endswith("SliderModel"):
        text = f"{model['description']} = {model['value']}"
        return [{"output_type": "display_data", "metadata": {},
                 "data": {"text/html": f"<p><em>slider at {html.escape(text)}</em></p>"}}]
    if name in ("OutputModel",):
        return [copy.deepcopy(o) for o in model.get("outputs", [])]
    outputs: list[dict] = []
    for child in model.get("children", []):
        if isinstance(child, str) and child.startswith("IPY_MODEL_"):
            outputs += _widget_outputs(child[len("IPY_MODEL_"):], state, depth + 1)
    return outputs


NOTE = ("<p class='minilora-static-widget'><em>A snapshot of an interactive explorer: run the notebook "
        "in JupyterLab, or <code>minilora classroom</code>, to move its slider.</em></p>")


def static_widgets(book: dict) -> dict:
    """A copy of `book` whose widget outputs are replaced by the pictures and text they showed."""
    book = copy.deepcopy(book)
    state = book.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in book.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        outputs = []
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW)
            if view is None:
                outputs.append(output)
                continue
            shown = _widget_outputs(view.get("model_id", ""), state)
            if shown:
                outputs += shown + [{"output_type": "display_data", "metadata": {}, "data": {"text/html": NOTE}}]
        cell["outputs"] = outputs
    book.get("metadata", {}).pop("widgets", None)
    return book

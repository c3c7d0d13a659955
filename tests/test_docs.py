"""The course notebooks run, and the website builds from them without a warning.

Each notebook is executed once here, top to bottom (nbclient, cwd: notebooks/);
the executed copy is saved under docs/_build/executed/ and the website build
that follows renders those outputs instead of running the notebooks again.
Then the site is built exactly as the README says (Sphinx, warnings as errors),
its pages are checked as files, and opened in headless Chromium: the
notebooks' figures load and the API reference renders.

Screenshots land in tests/artifacts/ (git-ignored).
"""
from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
import notebook_cache  # noqa: E402  (docs/_ext, no Sphinx needed)

from test_browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

NOTEBOOKS = notebook_cache.course_notebooks()
SITE = ROOT / "docs" / "_build" / "html"
ARTIFACTS = ROOT / "tests" / "artifacts"
BUILD_COMMAND = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html"]
BUILD_TIMEOUT_S = 900          # runs any notebook whose saved run is missing or stale
RAN_HERE: list[str] = []       # notebooks run (and saved) by this session's tests


def _nbgrader(cell: dict) -> dict:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return meta if isinstance(meta, dict) else {}


def _text(cell: dict) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


# ---------------------------------------------------------------- each notebook, once

@pytest.mark.notebooks
@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_and_its_solutions_pass_every_check(notebook):
    nbclient = pytest.importorskip("nbclient")
    try:
        book, seconds = notebook_cache.execute(notebook)
    except nbclient.exceptions.CellExecutionError as exc:
        plain = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))           # no terminal colours in the report
        pytest.fail(f"{notebook.name} failed: {exc.ename}: {exc.evalue}\n{plain[-3000:]}", pytrace=False)
    code = [c for c in book["cells"] if c["cell_type"] == "code"]
    graded = [c for c in code if _nbgrader(c).get("grade")]
    # the graded check cells (nbgrader), or where a notebook has none, every cell that calls a check
    checked = graded or [c for c in code if "checks.check_" in "".join(c["source"])]
    assert checked, f"{notebook.name} has no exercise checks"
    for cell in checked:
        assert "Correct!" in _text(cell), f"{notebook.name}: the solution fails this check:\n{''.join(cell['source'])}"
    assert notebook_cache.cached_path(notebook).is_file()        # saved: the website build reuses it
    RAN_HERE.append(notebook.name)
    print(f"{notebook.name}: {seconds:.1f} s, {len(checked)} checks passed")


# ---------------------------------------------------------------- the website

@pytest.fixture(scope="module")
def site():
    """Build the site with the README's command; returns (exit status, output, seconds)."""
    pytest.importorskip("sphinx", reason="the docs extra is not installed: pip install -e '.[docs]'")
    pytest.importorskip("myst_nb", reason="the docs extra is not installed: pip install -e '.[docs]'")
    start = time.perf_counter()
    done = subprocess.run(BUILD_COMMAND, cwd=ROOT, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    return done.returncode, done.stdout + done.stderr, time.perf_counter() - start


def test_site_builds_with_warnings_as_errors(site):
    status, output, seconds = site
    warnings = [line for line in output.splitlines() if re.search(r"\b(WARNING|ERROR)\b", line)
                and "IPKernelApp" not in line]
    assert status == 0, "the website build failed:\n" + "\n".join(warnings or output.splitlines()[-40:])
    # the notebooks this session ran are not run again (if the package changed in between, they are)
    again = [name for name in RAN_HERE if notebook_cache.RUNNING.format(name=name) in output]
    assert not again, f"the build ran these notebooks again instead of reusing this run's outputs: {again}"
    print(f"site built in {seconds:.0f} s, reusing {len(RAN_HERE)} notebook runs")


def _built(site, page: str) -> str:
    if site[0] != 0:
        pytest.skip("the build failed (see test_site_builds_with_warnings_as_errors)")
    path = SITE / page
    assert path.is_file(), f"{page} was not built"
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("page", ["index.html", "guide.html", "results.html", "differences_from_pytorch.html",
                                  "teachers_guide.html", "notebooks.html", "api/index.html"])
def test_every_reading_page_is_built_and_linked_from_the_front_page(site, page):
    _built(site, page)
    if page != "index.html":
        assert f'href="{page}"' in _built(site, "index.html"), f"index.html does not link to {page}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_each_notebook_page_has_its_card_outputs_and_figures(site, notebook):
    html = _built(site, f"course/{notebook.stem}.html")
    for label in ("Learning goal.", "Prerequisites.", "Time.", "Lesson."):
        assert label in html, f"{notebook.name}'s page has no '{label}' line (docs/course.yml)"
    nbformat = pytest.importorskip("nbformat")
    executed = nbformat.read(SITE.parent / "executed" / notebook.name, as_version=4)
    pictures = sum("image/png" in o.get("data", {}) for c in executed["cells"] if c["cell_type"] == "code"
                   for o in c.get("outputs", []))
    widgets = json.dumps(executed.get("metadata", {}).get("widgets", {})).count('"ImageModel"')
    images = re.findall(r'<img[^>]+src="(\.\./_images/[^"]+)"', html)
    assert len(images) >= pictures, f"{pictures} figures in the run, {len(images)} on the page"
    if widgets:
        assert len(images) > pictures, "the explorers' pictures are missing from the page"
    for src in images:
        assert (SITE / "course" / src).resolve().is_file(), src
    # outputs are there: the last stream output of the run appears on the page
    streams = [o["text"] for c in executed["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
               if o.get("output_type") == "stream" and o["text"].strip()]
    if streams:
        last_line = streams[-1].strip().splitlines()[-1].strip()
        assert _unescape(last_line)[:40] in _unescape(_strip_tags(html)), last_line


def _strip_tags(html: str) -> str:
    return re.sub(r"<[^>]+>", "", html)


def _unescape(text: str) -> str:
    import html as html_lib

    return html_lib.unescape(text)


def _module_names() -> list[str]:
    # from the files themselves, so a module the build could not find is still expected
    names = []
    for path in sorted((ROOT / "minilora").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not any(p.startswith("_") for p in parts) and "__main__" not in parts:
            names.append(".".join(parts))
    return names


def test_api_reference_documents_every_public_name(site):
    missing = []
    for module_name in _module_names():
        module = importlib.import_module(module_name)
        page = _built(site, f"api/{module_name}.html")
        public = getattr(module, "__all__", None) or [
            n for n, obj in vars(module).items() if not n.startswith("_")
            and (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == module_name]
        for name in public:
            obj = getattr(module, name)
            home = getattr(obj, "__module__", None) if inspect.isclass(obj) or inspect.isfunction(obj) else None
            home = home or module_name
            html = page if home == module_name else _built(site, f"api/{home}.html")
            if f'id="{home}.{name}"' not in html:
                missing.append(f"{module_name}.{name} (expected on api/{home}.html)")
    assert not missing, "not in the API reference: " + ", ".join(missing)


# ---------------------------------------------------------------- in a real browser

def _screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=False)
    return path


@pytest.mark.browser
def test_site_in_headless_chromium_shows_figures_and_the_api(site):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    _built(site, "index.html")
    pages_with_figures = [p for p in NOTEBOOKS if "<img" in _built(site, f"course/{p.stem}.html")]
    assert pages_with_figures, "no notebook page has a figure"
    shots = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            for notebook in pages_with_figures:
                page.goto((SITE / "course" / f"{notebook.stem}.html").as_uri(), wait_until="load")
                sizes = page.eval_on_selector_all(
                    "article img", "imgs => imgs.map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
                assert sizes, f"{notebook.name}: no figure in the article"
                broken = [src for src, complete, width in sizes if not complete or width == 0]
                assert not broken, f"{notebook.name}: figures that did not load: {broken}"
                assert page.locator(".minilora-card").count() == 1
                page.locator("article img").first.scroll_into_view_if_needed()
                shots.append(_screenshot(page, f"site_{notebook.stem}.png"))

            page.goto((SITE / "api" / "minilora.lora.html").as_uri(), wait_until="load")
            entry = page.locator('dt[id="minilora.lora.LoRALinear"]')
            assert entry.is_visible() and "LoRALinear" in entry.inner_text()
            assert page.locator("dl.py.function, dl.py.class").count() >= 3
            shots.append(_screenshot(page, "site_api_minilora.lora.png"))

            page.goto((SITE / "index.html").as_uri(), wait_until="load")
            nav = page.locator("nav.bd-links a").all_inner_texts()
            shots.append(_screenshot(page, "site_index.png"))
        finally:
            browser.close()
    assert any("API reference" in text for text in nav), nav
    for shot in shots:
        assert shot.stat().st_size > 5_000
    print("screenshots:", *shots, sep="\n  ")

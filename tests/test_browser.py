"""A real JupyterLab in headless Chromium: run 02_svd.ipynb, move the rank slider, see the picture change.

This is the one test that proves the widgets work where learners use them:
the comm between kernel and browser, the slider's keyboard handling, the image
refresh. It uses Debian's /usr/bin/chromium through the `playwright` package
(never `playwright install`) and skips, saying why, without them.

Screenshots: in tests/artifacts/ (git-ignored), and also in
$MINILORA_SCREENSHOT_DIR when that is set.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOK = "02_svd.ipynb"
LAST_OUTPUT = "numbers to store it"      # printed by the notebook's last code cell
STATUS_JS = "(document.querySelector('#jp-main-statusbar') || {textContent: ''}).textContent"
SERVER_START_S = 60
RUN_ALL_S = 90           # the whole notebook, kernel start included, on a busy 2-core machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with code {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer {url} within {timeout:.0f}s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server we started and its kernels (its own process group), gently then firmly."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)      # anything left in the group (e.g. a kernel)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab serving a copy of the notebooks, isolated from the user's config; yields its URL."""
    root = tmp_path / "notebooks"
    root.mkdir()
    shutil.copy(NOTEBOOKS / NOTEBOOK, root / NOTEBOOK)
    settings = tmp_path / "lab-settings"
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    # no news or update toasts over the notebook
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = dict(os.environ,
               JUPYTER_CONFIG_DIR=str(tmp_path / "jupyter-config"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "jupyter-runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(settings),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "lab-workspaces"))
    port = _free_port()
    log = tmp_path / "jupyterlab.log"
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
           "--ServerApp.token=", "--ServerApp.password=", "--ServerApp.ip=127.0.0.1", f"--port={port}",
           f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root,
                                start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_for_server(f"{url}/api/status", proc, log, SERVER_START_S)
        yield url
    finally:
        _stop(proc)


ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def _save_screenshot(page, tmp_path: Path, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    extra = os.environ.get("MINILORA_SCREENSHOT_DIR")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / name)
    return path


def test_rank_slider_redraws_in_jupyterlab(jupyterlab, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)
            page.goto(f"{jupyterlab}/lab/tree/{NOTEBOOK}", wait_until="domcontentloaded")
            # the notebook is open and its kernel is ready (Run All before that may run nothing)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            page.wait_for_function(f"() => {STATUS_JS}.includes('| Idle')", timeout=60_000, polling=250)

            # Run > Run All Cells, through the menu bar as a learner would
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()

            # wait until the last cell has printed and the kernel is idle again
            page.wait_for_function(
                f"() => [...document.querySelectorAll('.jp-OutputArea-output')]"
                f".some(o => o.textContent.includes({json.dumps(LAST_OUTPUT)})) && {STATUS_JS}.includes('| Idle')",
                timeout=RUN_ALL_S * 1000, polling=250)
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
            assert errors.count() == 0, errors.first.inner_text()

            # Run All scrolled to the end; bring the photo's explorer (the first) back into view
            explorer = page.locator(".minilora-svd-explorer").first
            explorer.wait_for(state="attached", timeout=30_000)
            explorer.scroll_into_view_if_needed()
            handle = explorer.locator(".noUi-handle").first
            handle.wait_for(state="visible", timeout=30_000)
            image = explorer.locator("img").first
            image.wait_for(state="visible")
            readout = explorer.locator(".widget-readout").first
            text = explorer.locator(".widget-html-content").first
            page.wait_for_function("el => el.textContent.includes('rank r = 10')", arg=text.element_handle())
            src_before = image.get_attribute("src")
            value_before = readout.inner_text().strip()
            _save_screenshot(page, tmp_path, "02_svd_before.png")

            # move the slider with the keyboard: focus the handle, ArrowRight x3
            handle.focus()
            for _ in range(3):
                page.keyboard.press("ArrowRight")
            page.wait_for_function("([el, old]) => el.getAttribute('src') !== old",
                                   arg=[image.element_handle(), src_before], timeout=30_000)
            page.wait_for_function("el => el.textContent.includes('rank r = 13')", arg=text.element_handle(),
                                   timeout=30_000)
            src_after = image.get_attribute("src")
            value_after = readout.inner_text().strip()
            explorer.scroll_into_view_if_needed()
            shot = _save_screenshot(page, tmp_path, "02_svd_slider.png")
        finally:
            browser.close()

    assert (value_before, value_after) == ("10", "13")
    assert src_after and src_after != src_before
    assert shot.stat().st_size > 10_000
    print(f"slider {value_before} -> {value_after}; img src changed; screenshot {shot}")

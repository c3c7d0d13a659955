"""`minilora classroom`: one Voilà page of explorers, no code on screen, stopped by Ctrl-C.

The browser test drives the real command in headless Chromium (Debian's
/usr/bin/chromium through playwright; it skips, saying why, without them):
the page shows the explorers and no code, a slider moved with the keyboard
redraws the picture and the numbers, and Ctrl-C then ends the command, Voilà
and its kernel within seconds. Screenshots land in tests/artifacts/.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from minilora import classroom
from test_browser import CHROMIUM, CHROMIUM_ARGS

try:
    import minilora.widgets as _widgets

    HAS_RANK_EXPLORER = hasattr(_widgets, "lora_rank_explorer")
except ImportError:                      # the notebook extras are missing: the page says so instead
    HAS_RANK_EXPLORER = False

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
START_S = 60            # Voilà's start on a busy 2-core machine
STOP_S = 15             # Ctrl-C to exit, Voilà's own shutdown of its kernel included


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    """Every process below `pid` (its children, theirs, ...), read from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        found += kids
        frontier += kids
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class Classroom:
    """`minilora classroom --port P` as a child process, its output collected as it comes."""

    def __init__(self, port: int):
        self.port = port
        self.proc = subprocess.Popen([sys.executable, "-m", "minilora.cli", "classroom", "--port", str(port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_until_serving(self) -> str:
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            if "minilora classroom: serving" in self.output:
                return f"http://127.0.0.1:{self.port}/"
            if self.proc.poll() is not None:
                raise RuntimeError(f"minilora classroom exited with {self.proc.returncode}:\n{self.output[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"minilora classroom did not serve within {START_S}s:\n{self.output[-3000:]}")

    def ctrl_c(self) -> tuple[int, float, list[int]]:
        """SIGINT, as a terminal's Ctrl-C; returns (exit status, seconds to exit, processes left behind)."""
        below = _children(self.proc.pid)
        start = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        status = self.proc.wait(timeout=STOP_S)
        seconds = time.monotonic() - start
        self._reader.join(timeout=5)
        time.sleep(0.5)
        return status, seconds, [p for p in below if _alive(p)]

    def kill(self) -> None:
        if self.proc.poll() is None:
            for pid in _children(self.proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def voila_installed():
    pytest.importorskip("voila", reason='Voilà is not installed: pip install -e ".[classroom]"')


def test_the_page_is_a_notebook_of_explorers_served_on_localhost_without_code(tmp_path):
    book = classroom.dashboard_notebook()
    code = "\n".join("".join(c["source"]) for c in book["cells"] if c["cell_type"] == "code")
    for explorer in ("svd_explorer()", "param_count_explorer()", "lora_rank_explorer()"):
        assert explorer in code
    command = classroom.voila_command(tmp_path / "page.ipynb", 9999)
    assert "--strip_sources=True" in command and "--Voila.ip=127.0.0.1" in command and "--port=9999" in command
    assert len({c["id"] for c in book["cells"]}) == len(book["cells"])


def test_a_port_in_use_is_a_clear_error(voila_installed, capsys):
    from minilora.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["classroom", "--port", str(port)]) == 2
    assert f"port {port} on 127.0.0.1 is in use; choose another with --port" in capsys.readouterr().err


@pytest.mark.parametrize("port,message", [("80", "80 is not a port number from 1024 to 65535"),
                                          ("x", "'x' is not a port number")])
def test_a_bad_port_is_refused_before_anything_starts(port, message, capsys):
    from minilora.cli import main

    with pytest.raises(SystemExit) as info:
        main(["classroom", "--port", port])
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_ctrl_c_stops_it_quickly_and_leaves_nothing_running(voila_installed):
    app = Classroom(_free_port())
    try:
        app.wait_until_serving()
        status, seconds, left = app.ctrl_c()
    finally:
        app.kill()
    assert status == 0, app.output[-2000:]
    assert seconds < STOP_S and not left, (seconds, left)
    assert app.output.rstrip().endswith("minilora classroom: stopped")
    with socket.socket() as s:
        s.bind(("127.0.0.1", app.port))          # the port is free again
    print(f"Ctrl-C: exit {status} in {seconds:.1f} s")


def _shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    return path


def _move_right(page, explorer, steps: int) -> None:
    handle = explorer.locator(".noUi-handle").first
    handle.scroll_into_view_if_needed()
    handle.focus()
    for _ in range(steps):
        page.keyboard.press("ArrowRight")


@pytest.mark.browser
def test_dashboard_in_headless_chromium_slider_redraws_then_ctrl_c(voila_installed):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    app = Classroom(_free_port())
    shots = []
    try:
        url = app.wait_until_serving()
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1300, "height": 1000})
                page.set_default_timeout(60_000)
                page.goto(url, wait_until="domcontentloaded")
                svd = page.locator(".minilora-svd-explorer").first
                svd.locator(".noUi-handle").first.wait_for(state="visible", timeout=120_000)
                page.locator(".minilora-param-explorer").first.wait_for(state="visible")

                body = page.inner_text("body")
                assert "svd_explorer" not in body and "import" not in body, "code is visible on the page"
                assert page.locator(".jp-InputArea-editor, .CodeMirror, .cm-editor").count() == 0

                image, text = svd.locator("img").first, svd.locator(".widget-html-content").first
                page.wait_for_function("el => el.textContent.includes('rank r = 10')", arg=text.element_handle())
                src_before, text_before = image.get_attribute("src"), text.inner_text()
                shots.append(_shot(page, "classroom_before.png"))
                _move_right(page, svd, 3)
                page.wait_for_function("([el, old]) => el.getAttribute('src') !== old",
                                       arg=[image.element_handle(), src_before])
                page.wait_for_function("el => el.textContent.includes('rank r = 13')", arg=text.element_handle())
                text_after = text.inner_text()
                svd.scroll_into_view_if_needed()
                shots.append(_shot(page, "classroom_svd_slider.png"))

                rank = page.locator(".minilora-rank-explorer")
                rank_texts = None
                if HAS_RANK_EXPLORER:                  # the LoRA rank explorer, where this version has it
                    page.wait_for_function(
                        "() => document.querySelector('.minilora-rank-explorer .noUi-handle') ||"
                        " document.body.innerText.includes('could not start')", timeout=120_000)
                    failed = re.search(r"The LoRA rank explorer could not start: .*", page.inner_text("body"))
                    assert not failed, failed.group(0)
                    rank_text = rank.locator(".widget-html-content").first
                    rank_image = rank.locator("img").first
                    before, picture_before = rank_text.text_content(), rank_image.get_attribute("src")
                    _move_right(page, rank, 1)
                    page.wait_for_function("([el, old]) => el.textContent !== old",
                                           arg=[rank_text.element_handle(), before])
                    page.wait_for_function("([el, old]) => el.getAttribute('src') !== old",
                                           arg=[rank_image.element_handle(), picture_before])
                    rank_texts = (before, rank_text.text_content())
                    rank.scroll_into_view_if_needed()
                    shots.append(_shot(page, "classroom_rank_explorer.png"))
            finally:
                browser.close()
        status, seconds, left = app.ctrl_c()
    finally:
        app.kill()

    assert re.search(r"relative error .* = ([\d.]+)", text_before).group(1) != \
        re.search(r"relative error .* = ([\d.]+)", text_after).group(1)          # the numbers changed too
    if rank_texts:
        numbers = [re.search(r"trainable parameters: ([\d,]+)", t).group(1) for t in rank_texts]
        assert numbers[0] != numbers[1], "\n---\n".join(rank_texts)
        assert all(re.search(r"accuracy: [\d.]+%", t) for t in rank_texts)
    assert status == 0 and seconds < STOP_S and not left, (status, seconds, left, app.output[-2000:])
    print(json.dumps({"screenshots": [str(s) for s in shots], "ctrl_c_seconds": round(seconds, 1)}))

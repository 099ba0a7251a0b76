"""The HTML report: its markup, and the page itself in a real headless Chromium.

The browser is driven over the Chrome DevTools protocol on ``--remote-debugging-pipe``
(file descriptors 3 and 4, NUL-terminated JSON), with nothing but the standard
library, so the test needs no extra package; it skips, saying so, when no Chromium
is installed (``.ci/run`` installs Debian's ``chromium`` when it can).
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from ri_jax.html_report import (NO_OVERLAY, Report, ReportGroup, ReportImage, ReportInput,
                                case_study_input, png_data_uri, render_html, write_report)
from ri_jax.plots import CaseBlock

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--window-size=1280,900")
METHODS = ("RI", "Grad-CAM")


def find_chromium() -> str | None:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def synthetic_report(seed: int = 0) -> Report:
    """Three inputs of two classes (one misclassified); one reference lacks a Grad-CAM map."""
    rng = np.random.default_rng(seed)

    def image(title, *, maps=METHODS, wrong=False):
        return ReportImage(rng.random((16, 16, 3)), title, f"caption of {title}",
                           {m: rng.random((16, 16)) for m in maps},
                           {m: f"{m} note of {title}" for m in maps}, misclassified=wrong)

    inputs = []
    for i, (pred, true) in enumerate([("cat", "cat"), ("cat", "dog"), ("dog", "dog")]):
        refs = [image(f"ref{i}_{j}", wrong=j == 1) for j in range(3)]
        if i == 2:
            refs.append(image(f"ref{i}_3", maps=("RI",)))
        inputs.append(ReportInput(image(f"in<{i}>.jpg", wrong=pred != true), pred, 0.75, true,
                                  f"Polytope & description {i}",
                                  [ReportGroup("covered references", refs, note="ranked")]))
    return Report("Report <title>", "An intro & more", METHODS, inputs, notes=("a note",))


def test_png_data_uri_round_trips_pixels():
    img = np.random.default_rng(1).random((5, 7, 3))
    uri = png_data_uri(img)
    assert uri.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as im:
        np.testing.assert_array_equal(np.asarray(im), np.round(img * 255).astype(np.uint8))
    with pytest.raises(ValueError, match="image"):
        png_data_uri(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="NaN"):
        png_data_uri(np.full((2, 2, 3), np.nan))


def test_render_html_is_self_contained_and_escaped():
    report = synthetic_report()
    page = render_html(report)
    # Every src is an embedded PNG; nothing is fetched from anywhere.
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)
    assert "http" not in page.replace("http-equiv", "")
    assert "<title>Report &lt;title&gt;</title>" in page and "in&lt;0&gt;.jpg" in page
    assert "Polytope &amp; description 1" in page
    cells = 3 * (1 + 3) + 1  # inputs and their references; the third input has one more
    assert page.count('data-method="none" alt=') == cells
    assert page.count('data-method="m0" alt=') == cells  # RI everywhere
    assert page.count('data-method="m1" alt=') == cells - 1  # one Grad-CAM map missing
    assert page.count('class="layer nomap"') == 1
    assert page.count('data-misclassified="1"') == 1
    with pytest.raises(ValueError, match="methods"):
        render_html(report._replace(methods=("RI",)))  # Grad-CAM maps would be unknown
    with pytest.raises(ValueError, match="methods"):
        render_html(report._replace(methods=(NO_OVERLAY, "RI")))
    with pytest.raises(ValueError, match="inputs"):
        render_html(report._replace(inputs=[]))


def test_write_report_never_overwrites_silently(tmp_path):
    path = write_report(tmp_path / "r", synthetic_report())
    assert path == tmp_path / "r" / "index.html" and path.stat().st_size > 0
    with pytest.raises(FileExistsError, match="index.html"):
        write_report(tmp_path / "r", synthetic_report())
    write_report(tmp_path / "r", synthetic_report(1), overwrite=True)


def test_case_study_input_takes_the_blocks_apart():
    rng = np.random.default_rng(2)

    def block(name, n, methods, flagged=None):
        return CaseBlock(name, rng.random((n, 8, 8, 3)), [f"{name} cap{i}\nline" for i in range(n)],
                         {m: rng.random((n, 8, 8)) for m in methods},
                         {m: [f"{m}@{name}{i}" for i in range(n)] for m in methods}, flagged)

    blocks = [block("by RI", 3, ["RI"]), block("euclid", 4, ["Grad-CAM", "RI"], [0, 1, 0, 0])]
    item = case_study_input(blocks, name="x.jpg", predicted_class="cat", probability=0.9,
                            true_class="dog", description="words")
    assert item.misclassified and item.image.misclassified and item.image.title == "x.jpg"
    np.testing.assert_array_equal(item.image.image, blocks[0].images[0])
    np.testing.assert_array_equal(item.image.heatmaps["RI"], blocks[0].method_maps["RI"][0])
    np.testing.assert_array_equal(item.image.heatmaps["Grad-CAM"],
                                  blocks[1].method_maps["Grad-CAM"][0])
    assert item.image.notes == {"RI": "RI@by RI0", "Grad-CAM": "Grad-CAM@euclid0"}
    assert item.image.caption == "by RI cap0 · line"
    assert [g.name for g in item.groups] == ["by RI", "euclid"]
    assert [len(g.images) for g in item.groups] == [2, 3]  # the input is not repeated
    assert [im.misclassified for im in item.groups[1].images] == [True, False, False]
    assert (item.groups[1].images[2].title, item.groups[1].images[2].caption) == ("euclid cap3", "line")
    np.testing.assert_array_equal(item.groups[1].images[2].heatmaps["Grad-CAM"],
                                  blocks[1].method_maps["Grad-CAM"][3])
    page = render_html(Report("t", "i", ("RI", "Grad-CAM"), [item]))
    assert page.count('class="layer nomap"') == 2  # the RI block has no Grad-CAM maps
    with pytest.raises(ValueError, match="blocks"):
        case_study_input([], name="x", predicted_class="a", probability=1.0, true_class=None,
                         description="")


def _move_above(fd: int, lowest: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, lowest)
    os.close(fd)
    return moved


class DevTools:
    """A minimal Chrome DevTools protocol client over ``--remote-debugging-pipe``."""

    def __init__(self, executable: str, user_data_dir: str):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # The child's ends move above 9, so mapping them onto 3 and 4 cannot clobber either.
        to_chrome_r, from_chrome_w = (_move_above(fd, 10) for fd in (to_chrome_r, from_chrome_w))
        # Chromium reads commands on fd 3 and writes on fd 4: a small Python trampoline maps
        # our pipe ends there and execs it (no preexec_fn, so no fork of this threaded process).
        trampoline = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
                      "os.execv(sys.argv[3], sys.argv[3:])")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", trampoline, str(to_chrome_r), str(from_chrome_w), executable,
             *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}", "--remote-debugging-pipe",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(to_chrome_r, from_chrome_w))
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self._events: queue.Queue = queue.Queue()
        self._lock = threading.Condition()
        self.events: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.session = None

    def _read(self):
        buf = b""
        while True:
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                break
            buf += chunk
            *messages, buf = buf.split(b"\0")
            for raw in messages:
                msg = json.loads(raw)
                with self._lock:
                    if "id" in msg:
                        self._replies[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                    self._lock.notify_all()

    def send(self, method: str, params: dict | None = None, *, timeout: float = 60.0) -> dict:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session is not None and not method.startswith(("Target.", "Browser.")):
            msg["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        with self._lock:
            if not self._lock.wait_for(lambda: self._next_id in self._replies, timeout):
                raise TimeoutError(f"no reply to {method} within {timeout} s")
            reply = self._replies.pop(self._next_id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def wait_event(self, method: str, *, timeout: float = 60.0) -> dict:
        with self._lock:
            found = self._lock.wait_for(
                lambda: any(e["method"] == method for e in self.events), timeout)
        if not found:
            raise TimeoutError(f"no {method} event within {timeout} s")
        return next(e for e in self.events if e["method"] == method)

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget",
                                 {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.send(f"{domain}.enable")
        self.send("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired")

    def js(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click (press + release) at the centre of the element."""
        box = self.js(f"(() => {{const e = document.querySelector({json.dumps(selector)});"
                      "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
                      "return [r.x + r.width / 2, r.y + r.height / 2];})()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1],
                                                   "button": "left", "clickCount": 1})

    def key(self, key: str) -> None:
        for kind in ("keyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", {"type": kind, "key": key, "code": key})

    def errors(self) -> list[dict]:
        """Console errors, uncaught exceptions and error log entries seen so far."""
        with self._lock:
            events = list(self.events)
        return [e for e in events
                if e["method"] == "Runtime.exceptionThrown"
                or (e["method"] == "Runtime.consoleAPICalled"
                    and e["params"]["type"] in ("error", "assert"))
                or (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (TimeoutError, RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    exe = find_chromium()
    if exe is None:
        pytest.skip("Chromium not found (/usr/bin/chromium or chromium on PATH): the HTML report's "
                    "browser test needs it; on Debian `apt-get install chromium` (.ci/run does)")
    tools = DevTools(exe, str(tmp_path_factory.mktemp("chromium-profile")))
    yield tools
    tools.close()


VISIBLE_LAYERS = ("[...document.querySelectorAll('section.input:not([hidden]) .layer')]"
                  ".filter(e => getComputedStyle(e).display !== 'none')")


def test_report_in_headless_chromium(browser, tmp_path):
    report = synthetic_report()
    page = write_report(tmp_path / "report", report)
    start = time.time()
    browser.open(page.as_uri())
    assert browser.js("document.title") == "Report <title>"
    # Every image decoded and rendered: inputs and references, with every overlay.
    images = browser.js("[...document.querySelectorAll('img.layer')].map(i => "
                        "[i.complete, i.naturalWidth, i.naturalHeight])")
    assert len(images) == 13 + 13 + 12 and all(c and w == 16 and h == 16 for c, w, h in images)
    assert browser.js("document.querySelectorAll('section.input:not([hidden])').length") == 3
    assert browser.js("document.getElementById('count').textContent") == "3 of 3 inputs shown"

    def shown_methods():
        return browser.js(f"[...new Set({VISIBLE_LAYERS}.map(e => e.dataset.method))]")

    # The heat-map toggle: RI at load, then Grad-CAM (one reference has no map), then none.
    assert shown_methods() == ["m0"]
    assert browser.js(f"{VISIBLE_LAYERS}.every(e => e.getBoundingClientRect().width > 0)")
    browser.click('input[name=method][value="m1"]')
    assert shown_methods() == ["m1"]
    assert browser.js(f"{VISIBLE_LAYERS}.filter(e => e.classList.contains('nomap')).length") == 1
    assert browser.js("[...document.querySelectorAll('.note')].filter(e => "
                      "getComputedStyle(e).display !== 'none').every(e => "
                      "e.textContent.startsWith('Grad-CAM'))")
    browser.click('input[name=method][value="none"]')
    assert shown_methods() == ["none"]
    browser.click('input[name=method][value="m0"]')

    # Filters: misclassified only, then by predicted class.
    browser.click("#misclassified-filter")
    visible = "[...document.querySelectorAll('section.input:not([hidden])')].map(s => s.id)"
    assert browser.js(visible) == ["input-1"]
    assert browser.js("document.getElementById('count').textContent") == "1 of 3 inputs shown"
    browser.click("#misclassified-filter")
    browser.js("(() => {const s = document.getElementById('class-filter'); s.value = 'dog';"
               "s.dispatchEvent(new Event('change'));})()")
    assert browser.js(visible) == ["input-2"]
    browser.js("(() => {const s = document.getElementById('class-filter'); s.value = '';"
               "s.dispatchEvent(new Event('change'));})()")
    assert len(browser.js(visible)) == 3

    # Click to enlarge, Escape to close.
    assert browser.js("document.getElementById('lightbox').hidden") is True
    browser.click('#input-2 .group .cell:nth-child(2) img.layer[data-method="m0"]')
    assert browser.js("document.getElementById('lightbox').hidden") is False
    assert browser.js("(() => {const b = document.querySelector('#lightbox img'); return "
                      "b.src === document.querySelector('#input-2 .group .cell:nth-child(2) "
                      "img.layer[data-method=\"m0\"]').src && b.naturalWidth === 16 && "
                      "b.getBoundingClientRect().width > 300;})()")
    caption = browser.js("document.querySelector('#lightbox p').textContent")
    assert caption.startswith("ref2_1 (RI): ref2_1") and "RI note of ref2_1" in caption
    assert "Grad-CAM note" not in caption  # only the shown method's note
    browser.key("Escape")
    assert browser.js("document.getElementById('lightbox').hidden") is True
    assert browser.errors() == []
    assert time.time() - start < 120

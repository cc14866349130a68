"""The HTML report in a real headless Chromium, driven over the Chrome DevTools Protocol with the stdlib only.

Chromium is started with ``--remote-debugging-pipe``: it reads CDP commands from fd 3 and writes replies and
events to fd 4, each message a JSON text ended by a NUL byte, so no websocket client, chromedriver, selenium
or playwright is needed. The test opens a generated report, really clicks two word chips (mouse events at
the chips' positions), checks that the shown heatmap changed (screenshot pixels of the image area differ), and
that the page logged no error, threw no exception and requested nothing but ``file:`` / ``data:`` URLs.

Without /usr/bin/chromium the test is skipped, except under CI=true where a missing browser fails it.
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-pipe",
]


def _require_chromium() -> str:
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    reason = f"{CHROMIUM} is missing (apt-get install -y chromium)"
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"CI=true but {reason}: the browser test must run in CI")
    pytest.skip(reason)


class Chrome:
    """A minimal CDP client over Chromium's debugging pipe (fd 3 in, fd 4 out)."""

    def __init__(self, binary: str, profile: Path, log: Path) -> None:
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()
        # copies numbered >= 10, so that neither is 3 or 4 itself (dup2 onto the same number is a no-op that
        # would keep close-on-exec, and wiring one could clobber the other)
        for_child = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_chrome_r, from_chrome_w)]
        os.close(to_chrome_r)
        os.close(from_chrome_w)

        def wire_fds() -> None:  # runs in the child before exec; dup2 clears close-on-exec on 3 and 4
            os.dup2(for_child[0], 3)
            os.dup2(for_child[1], 4)

        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            close_fds=False,  # our other fds are close-on-exec (PEP 446); only 0-4 reach Chromium
            preexec_fn=wire_fds,
        )
        for fd in for_child:
            os.close(fd)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict] = []

    # -- transport ------------------------------------------------------------------------------------
    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from Chromium in time")
            ready, _, _ = select.select([self._r], [], [], left)
            if ready:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"Chromium closed the debugging pipe (exit code {self.proc.poll()})")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30):
        self._next_id += 1
        msg: dict = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self._w, data) :]
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"CDP {method} failed: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        for i, ev in enumerate(self.events):
            if ev.get("method") == method:
                return self.events.pop(i)
        while True:
            ev = self._read_message(deadline)
            if ev.get("method") == method:
                return ev
            self.events.append(ev)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()


class Page:
    """One tab, attached with a flat session."""

    def __init__(self, chrome: Chrome, width: int = 1000, height: int = 1400) -> None:
        self.c = chrome
        target = chrome.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.s = chrome.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def send(self, method: str, params: dict | None = None, timeout: float = 30):
        return self.c.send(method, params, session=self.s, timeout=timeout)

    def goto(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})
        self.c.wait_event("Page.loadEventFired")
        deadline = time.monotonic() + 20
        while self.js("document.body && document.body.getAttribute('data-ready')") != "1":
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page never set data-ready; title: {self.js('document.title')!r}")
            time.sleep(0.05)

    def js(self, expression: str, await_promise: bool = False):
        res = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": await_promise},
        )
        if "exceptionDetails" in res:
            raise RuntimeError(f"page script failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    def rect(self, selector: str) -> dict:
        r = self.js(f"JSON.stringify(document.querySelector({json.dumps(selector)}).getBoundingClientRect())")
        return json.loads(r)

    def click(self, selector: str) -> None:
        r = self.rect(selector)
        x, y = r["x"] + r["width"] / 2, r["y"] + r["height"] / 2
        self.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
        for kind in ("mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}
            )

    def shot(self, selector: str) -> np.ndarray:
        self.js("document.getElementById('heat').decode().then(() => true)", await_promise=True)
        self.js("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))", True)
        r = self.rect(selector)
        clip = {"x": r["x"], "y": r["y"], "width": r["width"], "height": r["height"], "scale": 1}
        data = self.send("Page.captureScreenshot", {"format": "png", "clip": clip})["data"]
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"), dtype=np.float32)


def _problems(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions, failed loads and requests leaving the file."""
    out = []
    for ev in events:
        m, p = ev.get("method"), ev.get("params", {})
        if m == "Runtime.exceptionThrown":
            out.append(f"exception: {p.get('exceptionDetails', {})}")
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append(f"console.{p.get('type')}: {p.get('args')}")
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            out.append(f"log error: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        elif m == "Network.loadingFailed":
            out.append(f"loading failed: {p.get('errorText')}")
        elif m == "Network.requestWillBeSent":
            url = p.get("request", {}).get("url", "")
            if not url.startswith(("file:", "data:")):
                out.append(f"network request: {url}")
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from mmx_fast import ExplainConfig
    from mmx_fast.fast import Explainer
    from mmx_fast.testing import tiny_model

    model, processor = tiny_model("qwen2_vl", seed=0)
    photo = Path(__file__).resolve().parents[1] / "mmx_fast" / "assets" / "grace_hopper.jpg"
    image = (
        Image.open(photo)
        if photo.is_file()
        else Image.fromarray(np.random.default_rng(0).integers(0, 255, (160, 140, 3), np.uint8))
    )
    exp = Explainer(model, processor, ExplainConfig(keep_scale_maps=True)).explain(
        image, "Who is in the picture?", answer="A woman in a navy uniform stands in front of a flag."
    )
    path = tmp_path_factory.mktemp("report") / "report.html"
    exp.to_html(path, note="Tiny test model with random weights.")
    return exp, path


@pytest.fixture(scope="module")
def chrome(tmp_path_factory):
    binary = _require_chromium()
    d = tmp_path_factory.mktemp("chromium")
    c = Chrome(binary, d / "profile", d / "chromium.log")
    try:
        yield c
    finally:
        c.close()
        shutil.rmtree(d / "profile", ignore_errors=True)


def _most_different_pair(exp) -> tuple[int, int]:
    m = exp.maps.numpy()
    d = np.abs(m[:, None] - m[None]).mean(axis=(2, 3))
    i, j = np.unravel_index(np.argmax(d), d.shape)
    return int(min(i, j)), int(max(i, j))


def test_clicking_chips_changes_the_heatmap_without_errors(report, chrome):
    exp, path = report
    T = len(exp)
    a, b = _most_different_pair(exp)
    assert a != b
    page = Page(chrome)
    # the fragment selects a token at load
    page.goto(path.as_uri() + f"#token={T - 1}")
    assert page.js("document.body.getAttribute('data-token')") == str(T - 1)
    assert page.js("document.querySelectorAll('.chip').length") == T
    assert page.js("document.querySelectorAll('.chip.active').length") == 1

    # real clicks on two different chips: the shown map follows, the pixels of the image area change
    page.click(f'.chip[data-i="{a}"]')
    assert page.js("document.body.getAttribute('data-token')") == str(a)
    assert page.js(f"document.querySelector('.chip[data-i=\"{a}\"]').getAttribute('aria-pressed')") == "true"
    data = "JSON.parse(document.getElementById('mmx-data').textContent)"
    assert page.js(f"document.getElementById('heat').src === {data}.views[0].maps[{a}]")
    shot_a = page.shot("#stage")
    page.click(f'.chip[data-i="{b}"]')
    assert page.js("document.body.getAttribute('data-token')") == str(b)
    assert page.js(f"document.getElementById('heat').src === {data}.views[0].maps[{b}]")
    shot_b = page.shot("#stage")
    assert shot_a.shape == shot_b.shape and shot_a.shape[0] > 100
    diff = np.abs(shot_a - shot_b).mean()
    assert diff > 0.5, (
        f"the heatmap did not visibly change between tokens {a} and {b} (mean |diff| {diff:.3f})"
    )
    assert "#token=" + str(b) in page.js("location.hash")

    # the opacity slider and the view toggles work
    page.js(
        "var o = document.getElementById('opacity'); o.value = '0.9'; o.dispatchEvent(new Event('input'))"
    )
    assert page.js("document.getElementById('heat').style.opacity") == "0.9"
    page.click('input[name="view"][value="raw"]')
    assert page.js("document.body.getAttribute('data-view')") == "raw"
    assert page.js(f"document.getElementById('heat').src === {data}.views[1].maps[{b}]")
    assert page.js("document.getElementById('strip').offsetHeight") == 0
    page.click("#compare")
    n_views = 2 + len(exp.scale_maps)
    assert page.js("document.getElementById('strip').offsetHeight") > 20
    assert page.js("document.querySelectorAll('#strip figure').length") == n_views

    # nothing went wrong, and nothing but the file itself and data: URIs was requested
    assert not page.js("document.title").startswith("ERROR")
    assert page.js("document.body.getAttribute('data-error')") is None
    problems = _problems(chrome.events)
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def video_report(tmp_path_factory):
    """A 4-frame tiny Qwen2-VL video explanation (maps [T, 2, Hc, Wc]) and its report; the two frame pairs are
    different scenes, so both the photo and the heatmap change with the scrubber."""
    from mmx_fast import ExplainConfig
    from mmx_fast.fast import Explainer
    from mmx_fast.testing import tiny_model

    model, processor = tiny_model("qwen2_vl", seed=0)
    rng = np.random.default_rng(1)
    frames = []
    for k in range(4):
        arr = np.zeros((97, 131, 3), np.uint8)
        arr[..., k % 3] = 200 if k < 2 else 40
        arr[:, : 30 + 25 * k] = rng.integers(0, 255, (97, 30 + 25 * k, 3), np.uint8)
        frames.append(Image.fromarray(arr))
    exp = Explainer(model, processor, ExplainConfig(keep_scale_maps=True)).explain(
        frames, "What happens in the video?", answer="A red square moves to the right."
    )
    assert exp.maps.shape[1] == 2
    path = tmp_path_factory.mktemp("video_report") / "report.html"
    exp.to_html(path)
    return exp, path


def test_video_frame_scrubber(video_report, chrome):
    exp, path = video_report
    T, t = exp.maps.shape[:2]
    data = "JSON.parse(document.getElementById('mmx-data').textContent)"
    # the token whose two frame-pair maps differ most
    d = (exp.maps[:, 0] - exp.maps[:, 1]).abs().mean(dim=(1, 2))
    i = int(d.argmax())
    assert float(d[i]) > 0
    chrome.events.clear()
    page = Page(chrome)
    page.goto(path.as_uri() + f"#token={i}&frame=1")
    assert page.js("document.body.getAttribute('data-frame')") == "1"  # the fragment picks the frame pair
    assert page.js(f"{data}.frames.length") == t
    assert page.js(f"document.getElementById('heat').src === {data}.views[0].maps[{i}][1]")
    assert page.js(f"document.getElementById('base').src === {data}.frames[1]")
    shot_1 = page.shot("#stage")
    # drag the scrubber to frame pair 0: the photo and the heatmap follow
    page.js("var f = document.getElementById('frame'); f.value = '0'; f.dispatchEvent(new Event('input'))")
    assert page.js("document.body.getAttribute('data-frame')") == "0"
    assert page.js(f"document.getElementById('heat').src === {data}.views[0].maps[{i}][0]")
    assert page.js(f"document.getElementById('base').src === {data}.frames[0]")
    assert "frames 0-1" in page.js("document.getElementById('caption').textContent")
    assert "frame=0" in page.js("location.hash")
    shot_0 = page.shot("#stage")
    assert np.abs(shot_0 - shot_1).mean() > 0.5
    # the keyboard steps frame pairs; the view toggles keep the frame
    page.js("document.dispatchEvent(new KeyboardEvent('keydown', {key: 'ArrowUp'}))")
    assert page.js("document.body.getAttribute('data-frame')") == "1"
    page.click('input[name="view"][value="raw"]')
    assert page.js(f"document.getElementById('heat').src === {data}.views[1].maps[{i}][1]")
    assert page.js("document.body.getAttribute('data-error')") is None
    problems = _problems(chrome.events)
    assert not problems, "\n".join(problems)


def test_image_report_has_no_scrubber(report):
    _, path = report
    assert 'id="frame"' not in path.read_text()


def test_hostile_tokens_and_a_malformed_fragment(chrome, tmp_path):
    """Tokens that would end or swallow the page's script (``<!--`` then ``<script>``, ``</script>``, U+2028)
    stay data, and a malformed percent escape in the fragment does not throw (issue 13, defect 8)."""
    import torch

    from mmx_fast import Explanation

    tokens = ["<!--", "<script>", "x</script>", "\u2028", "&amp;"]
    g = torch.Generator().manual_seed(0)
    exp = Explanation(
        maps=torch.rand(len(tokens), 3, 4, generator=g),
        answer_ids=list(range(5, 5 + len(tokens))),
        answer_tokens=tokens,
        grid=(3, 4),
        prompt="<!-- <script>",
        image=Image.fromarray(np.full((30, 40, 3), 120, np.uint8)),
    )
    path = exp.to_html(tmp_path / "hostile.html")
    page = Page(chrome)
    page.goto(Path(path).as_uri() + "#token=%E0%A4%A&view=%")
    assert page.js("document.querySelectorAll('.chip').length") == len(tokens)
    assert page.js("JSON.parse(document.getElementById('mmx-data').textContent).tokens") == tokens
    assert page.js("document.body.getAttribute('data-token')") == "0"
    assert not page.js("document.title").startswith("ERROR")
    assert page.js("document.body.getAttribute('data-error')") is None
    page.click('.chip[data-i="2"]')
    assert page.js("document.body.getAttribute('data-token')") == "2"

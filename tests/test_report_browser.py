"""The HTML report in a real browser: headless Chromium opens it from a file:// URL, every plotly
figure renders its SVG, the console shows no error or uncaught exception, and the page requests
nothing but itself.

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages
separated by NUL bytes on file descriptors 3 and 4), so no Python browser package is needed.
Skipped when no Chromium is installed (Debian: `apt-get install chromium`).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

try:
    from test_report import write_fixture_results
except ImportError:  # tests collected as a package
    from tests.test_report import write_fixture_results

CHROMIUM = os.environ.get("BROWSER_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--remote-debugging-pipe")

pytestmark = pytest.mark.skipif(CHROMIUM is None or not Path(CHROMIUM).exists(),
                                reason="Chromium is not installed (apt-get install chromium); "
                                       "the report's in-browser rendering is not checked")


class DevTools:
    """A minimal DevTools-protocol client over Chromium's debugging pipe."""

    def __init__(self, binary: str, profile: Path):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def wire_pipe():  # in the child: the protocol wants our pipes as fds 3 (in) and 4 (out)
            high_r, high_w = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=wire_pipe, close_fds=False)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer, self._next_id, self.events = b"", 0, []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no answer from Chromium")
            ready, _, _ = select.select([self._from_chrome], [], [], remaining)
            if ready:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the debugging pipe")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30.0) -> dict:
        for event in self.events:
            if event.get("method") == method:
                return event
        deadline = time.monotonic() + timeout
        while True:
            event = self._read_message(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def close(self):
        try:
            os.write(self._to_chrome, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self._to_chrome)
            os.close(self._from_chrome)


FIGURE_STATE = """JSON.stringify(Array.from(document.querySelectorAll('figure.plot')).map(f => [
  f.dataset.figure, f.querySelectorAll('svg.main-svg').length,
  f.querySelectorAll('.scatterlayer .trace').length]))"""


def test_report_renders_every_plot_without_console_errors(tmp_path):
    from harness.report.html import write_report

    report = write_report(write_fixture_results(tmp_path / "results"), None,
                          tmp_path / "reports" / "report.html", images=False)
    browser = DevTools(CHROMIUM, tmp_path / "profile")
    try:
        targets = browser.send("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        session = browser.send("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Page.navigate", {"url": report.resolve().as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired", timeout=60)
        deadline, state = time.monotonic() + 30, []
        while time.monotonic() < deadline:  # plotly draws in the load handlers; poll until all are in
            result = browser.send("Runtime.evaluate", {"expression": FIGURE_STATE, "returnByValue": True},
                                  session=session)
            state = json.loads(result["result"]["value"])
            if state and all(svgs > 0 and traces > 0 for _, svgs, traces in state):
                break
            time.sleep(0.2)
        title = browser.send("Runtime.evaluate", {"expression": "document.title", "returnByValue": True},
                             session=session)["result"]["value"]
    finally:
        browser.close()

    assert title.startswith("Long-sequence benchmark report")
    figure_ids = {f for f, _, _ in state}
    assert {"fig-time-text-4-bf16-cuda", "fig-memory-text-4-bf16-cuda", "fig-accuracy-vs-speed"} <= figure_ids
    assert len(state) >= 6, state
    not_drawn = [(f, svgs, traces) for f, svgs, traces in state if svgs == 0 or traces == 0]
    assert not not_drawn, f"figures without plotly SVG: {not_drawn}"

    errors = []
    for event in browser.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            errors.append(params["exceptionDetails"].get("exception", {}).get("description")
                          or params["exceptionDetails"].get("text"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            errors.append(params["entry"]["text"])
    assert errors == [], errors

    requested = [e["params"]["request"]["url"] for e in browser.events
                 if e.get("method") == "Network.requestWillBeSent"]
    assert requested and all(url.startswith(("file:", "data:", "about:", "blob:")) for url in requested), requested


def test_static_images_through_kaleido(tmp_path):
    """PNG copies of the figures when kaleido and a Chromium are installed (the `images` extra)."""
    pytest.importorskip("kaleido", reason="kaleido is not installed (pip install 'lsm-harness[images]')")
    import plotly.graph_objects as go

    from harness.report.html import export_images

    fig = go.Figure(go.Scatter(x=[1024, 2048], y=[1.0, 2.0]))
    paths, message = export_images([("fig-one", "one", fig)], tmp_path / "figures")
    assert message is None
    assert [p.name for p in paths] == ["fig-one.png"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""The HTML report in a real browser: headless Chromium opens it from a file:// URL, every plotly
figure renders its SVG, the console shows no error or uncaught exception, and the page requests
nothing but itself. What a reader sees is checked where plotly draws it: OOM crosses and their
labels inside the plot area and in the legend, a break in a line where a length was not measured,
legend order equal to the table's, hover text with plain numbers and the run behind a point, the
time/throughput buttons, and the committed reference results in at most ten figures.

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages
separated by NUL bytes on file descriptors 3 and 4), so no Python browser package is needed.
Skipped when no Chromium is installed (Debian: `apt-get install chromium`).
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.report.test_report import RUN_1, RUN_2, create_run, speed_record, write_fixture_results

REFERENCE = Path(__file__).resolve().parents[2] / "results" / "reference"
RUN_3 = "20260303-090000-cccccc"

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


class ReportPage:
    """A report opened in headless Chromium, every figure drawn; `evaluate` runs JavaScript in it."""

    def __init__(self, report: Path, profile: Path):
        self.browser = DevTools(CHROMIUM, profile)
        try:
            targets = self.browser.send("Target.getTargets")["targetInfos"]
            page = next(t for t in targets if t["type"] == "page")
            self.session = self.browser.send("Target.attachToTarget",
                                             {"targetId": page["targetId"], "flatten": True})["sessionId"]
            for domain in ("Runtime", "Log", "Page", "Network"):
                self.browser.send(f"{domain}.enable", session=self.session)
            self.browser.send("Emulation.setDeviceMetricsOverride",
                              {"width": 1400, "height": 900, "deviceScaleFactor": 1, "mobile": False},
                              session=self.session)
            self.browser.send("Page.navigate", {"url": report.resolve().as_uri()}, session=self.session)
            self.browser.wait_for("Page.loadEventFired", timeout=60)
            deadline, self.state = time.monotonic() + 30, []
            while time.monotonic() < deadline:  # plotly draws in the load handlers; poll until all are in
                self.state = json.loads(self.evaluate(FIGURE_STATE))
                if self.state and all(svgs > 0 and traces > 0 for _, svgs, traces in self.state):
                    break
                time.sleep(0.2)
        except BaseException:
            self.browser.close()
            raise

    def evaluate(self, expression: str):
        reply = self.browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                       "awaitPromise": True}, session=self.session)
        if "exceptionDetails" in reply:
            raise AssertionError(f"JavaScript failed: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def close(self):
        self.browser.close()

    def console_errors(self) -> list:
        errors = []
        for event in self.browser.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                errors.append(params["exceptionDetails"].get("exception", {}).get("description")
                              or params["exceptionDetails"].get("text"))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                errors.append(params["entry"]["text"])
        return errors

    def requested(self) -> list:
        return [e["params"]["request"]["url"] for e in self.browser.events
                if e.get("method") == "Network.requestWillBeSent"]

    def assert_clean(self):
        """No console error or uncaught exception, and nothing requested but the page itself."""
        assert self.console_errors() == [], self.console_errors()
        requested = self.requested()
        assert requested and all(url.startswith(("file:", "data:", "about:", "blob:")) for url in requested), \
            requested


def test_report_renders_every_plot_without_console_errors(tmp_path):
    from harness.report.html import write_report

    report = write_report(write_fixture_results(tmp_path / "results"), None,
                          tmp_path / "reports" / "report.html", images=False)
    page = ReportPage(report, tmp_path / "profile")
    try:
        title = page.evaluate("document.title")
        state = page.state
        page.assert_clean()
    finally:
        page.close()

    assert title.startswith("Long-sequence benchmark report")
    figure_ids = [f for f, _, _ in state]
    # one figure per metric and slice (throughput is a button of the time figure), no per-run copies
    assert figure_ids == ["fig-time-text-4-bf16-cuda", "fig-memory-text-4-bf16-cuda", "fig-accuracy-vs-speed"]
    not_drawn = [(f, svgs, traces) for f, svgs, traces in state if svgs == 0 or traces == 0]
    assert not not_drawn, f"figures without plotly SVG: {not_drawn}"


# What the time figure shows, read from the SVG plotly drew: rectangles are [left, top, right, bottom].
TIME_FIGURE = """(() => {
  const gd = document.getElementById('fig-time-text-4-bf16-cuda');
  const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
  const traceOf = name => { const t = gd._fullData.find(d => d.name === name && d.visible === true);
                            return t ? gd.querySelector('.scatterlayer .trace' + t.uid) : null; };
  const oomTrace = Array.from(gd.querySelectorAll('.scatterlayer .trace'))
      .find(g => Array.from(g.querySelectorAll('text')).some(t => t.textContent === 'OOM'));
  const legendItems = Array.from(gd.querySelectorAll('.legend .traces'));
  const oomKey = legendItems.find(g => g.querySelector('.legendtext').textContent.startsWith('OOM'));
  const table = Array.from(document.querySelectorAll('.table-block'))
      .find(b => b.querySelector('h3').textContent.startsWith('Time (ms) by sequence length'));
  const mamba = traceOf('mamba');
  return JSON.stringify({
    plotArea: box(gd.querySelector('.nsewdrag')),
    svg: box(gd.querySelector('svg.main-svg')),
    oomLabels: oomTrace ? Array.from(oomTrace.querySelectorAll('text')).map(box) : [],
    oomMarks: oomTrace ? Array.from(oomTrace.querySelectorAll('path.point')).map(box) : [],
    legend: legendItems.map(g => g.querySelector('.legendtext').textContent),
    legendBox: box(gd.querySelector('.legend .bg')),
    oomKey: oomKey ? {text: box(oomKey.querySelector('.legendtext')),
                      symbols: oomKey.querySelectorAll('.legendpoints path').length} : null,
    tableRows: Array.from(table.querySelectorAll('tbody th.row_heading')).map(th => th.textContent),
    mambaLine: mamba ? Array.from(mamba.querySelectorAll('path.js-line')).map(p => p.getAttribute('d')) : null,
    megaCurve: gd._fullData.findIndex(d => d.name === 'mega' && d.visible === true),
    yTitle: gd.querySelector('.g-ytitle').textContent,
  });
})()"""

HOVER = """(async () => {
  const gd = document.getElementById('fig-time-text-4-bf16-cuda');
  Plotly.Fx.hover(gd, [{curveNumber: %d, pointNumber: %d}]);
  await new Promise(r => setTimeout(r, 100));
  return Array.from(gd.querySelectorAll('.hoverlayer .hovertext text tspan.line'))
      .map(t => t.textContent).join('\\n');
})()"""

THROUGHPUT_BUTTON = """(async () => {
  const gd = document.getElementById('fig-time-text-4-bf16-cuda');
  const button = Array.from(gd.querySelectorAll('.updatemenu-button'))
      .find(b => b.textContent.startsWith('throughput'));
  button.dispatchEvent(new MouseEvent('click', {bubbles: true}));
  await new Promise(r => setTimeout(r, 300));
  return 'clicked';
})()"""


def inside(inner, outer, slack=1.0) -> bool:
    return (inner[0] >= outer[0] - slack and inner[1] >= outer[1] - slack
            and inner[2] <= outer[2] + slack and inner[3] <= outer[3] + slack)


def test_oom_marks_gaps_legend_order_hover_and_throughput_button(tmp_path):
    """The fixture sweep (vanilla Transformer OOM at 8K) plus a run that measured mamba at 1K, 2K,
    8K and 16K but not 4K: the OOM cross and its label sit inside the plot area, the legend explains
    the cross, mamba's line breaks at 4K, legend order is the table's, a point's hover names its run
    and revision and the other run of its cell, and the throughput button keeps all of that."""
    from harness.report.html import write_report

    results = write_fixture_results(tmp_path / "results")
    run = create_run(results, RUN_3)
    for length, ms in ((1024, 2.0), (2048, 3.0), (8192, 9.0), (16384, 17.0)):
        run.append(speed_record("mamba", length, ms, 0.2 * length / 1024))
    run.update_manifest(status="finished")
    report = write_report(results, None, tmp_path / "reports" / "report.html", images=False)
    page = ReportPage(report, tmp_path / "profile")
    try:
        shown = json.loads(page.evaluate(TIME_FIGURE))
        hover = page.evaluate(HOVER % (shown["megaCurve"], 2))  # mega at 4K: measured by both runs
        page.evaluate(THROUGHPUT_BUTTON)
        toggled = json.loads(page.evaluate(TIME_FIGURE))
        page.assert_clean()
    finally:
        page.close()

    for view in (shown, toggled):
        assert len(view["oomMarks"]) == 1 and len(view["oomLabels"]) == 1  # vanilla at 8K
        assert inside(view["oomMarks"][0], view["plotArea"]), view
        assert inside(view["oomLabels"][0], view["plotArea"]), view  # the label is not clipped
        assert view["oomKey"] is not None and view["oomKey"]["symbols"] >= 1, view["legend"]
        assert inside(view["oomKey"]["text"], view["legendBox"]) and inside(view["oomKey"]["text"], view["svg"])
        assert view["legend"][:-1] == view["tableRows"], (view["legend"], view["tableRows"])
        assert view["tableRows"][0] == "mamba"  # natural order, although mamba's run was written last
        # plotly draws one path per unbroken stretch: 1K-2K, a break at 4K, then 8K-16K
        assert [d.count("M") + d.count("L") for d in view["mambaLine"]] == [2, 2], view["mambaLine"]
    assert shown["yTitle"].startswith("time per step") and toggled["yTitle"].startswith("throughput")
    # the throughput view puts the cross below the lines (higher is better there)
    assert shown["oomMarks"][0][1] < shown["plotArea"][1] + 0.3 * (shown["plotArea"][3] - shown["plotArea"][1])
    assert toggled["oomMarks"][0][1] > toggled["plotArea"][1] + 0.5 * (toggled["plotArea"][3] - toggled["plotArea"][1])

    lines = hover.split("\n")
    assert lines[0] == "mega" and "L = 4K (4,096)" in lines[1], lines
    assert "time 31.0 ms" in hover and f"run {RUN_2} · git d1ff256c0ffe" in hover, hover
    assert f"{RUN_1} (git d1ff256c0ffe)" in hover  # the earlier run's number of the same cell
    assert "tokens/s" in hover and "GiB" in hover
    assert not re.search(r"\d(\.\d+)?[kMG] ", hover), hover  # plain numbers, never 6.79k ms


def test_committed_reference_results_in_at_most_ten_figures(tmp_path):
    """`report --results-dir results/reference` (every folder of runs in it): at most ten figures,
    each drawn, every folder's README under Provenance, no console error, nothing loaded from the
    network."""
    from harness.report.html import write_report

    folders = sorted(p for p in REFERENCE.iterdir() if p.is_dir())
    assert folders, f"no reference results under {REFERENCE}"
    report = write_report(REFERENCE, None, tmp_path / "reports" / "reference.html", images=False)
    page = ReportPage(report, tmp_path / "profile")
    try:
        state = page.state
        notes = page.evaluate("Array.from(document.querySelectorAll('.readme p.from code'))"
                              ".map(c => c.textContent)")
        page.assert_clean()
    finally:
        page.close()
    assert 1 <= len(state) <= 10, [f for f, _, _ in state]
    assert all(svgs > 0 and traces > 0 for _, svgs, traces in state), state
    assert not [f for f, _, _ in state if "-runs-" in f or "throughput" in f]
    assert [Path(n).parent.name for n in notes] == [f.name for f in folders if (f / "README.md").is_file()]


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

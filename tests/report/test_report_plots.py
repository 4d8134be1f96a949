"""The report's figures as data (no browser): one figure per metric and slice, lines that break where
a length was not measured, OOM marks inside the axis range and explained in the legend, legend order
equal to the table's, hover text with plain numbers, units, run and git revision; the committed
reference results in at most ten figures; a results folder's README rendered safely under
Provenance; the missing-kaleido message as a `note:`. What plotly then draws is checked in
tests/report/test_report_browser.py.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest

from harness.report import plots, select, tables
from harness.store import load_records

from tests.report.test_report import RUN_1, RUN_2, create_run, speed_record, write_fixture_results

REFERENCE = Path(__file__).resolve().parents[2] / "results" / "reference"
SHA = "d1ff256c0ffe"  # the fixture environment's git sha, as hover text shortens it


def frame(results: Path) -> pd.DataFrame:
    return select.prepare(load_records(results))


def lines(fig, visible=True) -> dict:
    """name -> trace of the drawn lines (not OOM marks, not the legend key)."""
    return {t.name: t for t in fig.data
            if t.mode == "lines+markers" and (t.visible is not False) == visible}


@pytest.fixture
def sweep_with_holes(tmp_path):
    """Batch 4: `full` at 1K..8K, `holed` without 2K, `sparse` at 1K and 8K only. Batch 2: `alone`
    at 1K, 4K, 16K and nothing else in that slice (its sweep simply had those lengths)."""
    run = create_run(tmp_path / "results", RUN_1)
    for model, lengths in (("full", (1024, 2048, 4096, 8192)), ("holed", (1024, 4096, 8192)),
                           ("sparse", (1024, 8192))):
        for length in lengths:
            run.append(speed_record(model, length, length / 100, length / 4096))
    for length in (1024, 4096, 16384):
        run.append(speed_record("alone", length, length / 100, length / 4096, batch_size=2))
    return tmp_path / "results"


def test_lines_break_only_at_lengths_the_slice_swept(sweep_with_holes):
    df = frame(sweep_with_holes)
    fig = plots.length_figure(df, "time", {"task": "text", "batch_size": 4}, alternate="throughput")
    for shown in (True, False):  # the time lines and the throughput lines behind the button
        drawn = lines(fig, shown)
        assert list(drawn["full"].x) == [1024, 2048, 4096, 8192]
        assert list(drawn["holed"].x) == [1024, None, 4096, 8192]
        assert list(drawn["sparse"].x) == [1024, None, 8192]
        assert all(t.connectgaps is False for t in drawn.values())
    assert list(lines(fig)["holed"].y)[1] is None
    alone = plots.length_figure(df, "memory", {"task": "text", "batch_size": 2})
    assert list(lines(alone)["alone"].x) == [1024, 4096, 16384]  # nothing else was swept: no break


def test_oom_marks_inside_the_axis_and_in_the_legend(tmp_path, sweep_with_holes):
    df = frame(write_fixture_results(tmp_path / "fixture"))  # vanilla Transformer: OOM at 8K
    fig = plots.length_figure(df, "memory")
    (oom,) = [t for t in fig.data if t.name and t.name.endswith(": OOM")]
    assert oom.name == "transformer_vanilla: OOM" and list(oom.x) == [8192]
    assert list(oom.text) == ["OOM"] and oom.showlegend is False and oom.legendgroup == "transformer_vanilla"
    low, high = fig.layout.yaxis.range
    peak = max(max(y for y in t.y if y is not None) for t in lines(fig).values())
    mark = math.log10(oom.y[0])
    assert math.log10(peak) < mark and mark + math.log10(plots.OOM_ROOM) <= high + 1e-9  # room for its label
    (key,) = [t for t in fig.data if t.name == plots.OOM_NAME]
    assert key.showlegend is not False and key.marker.symbol == oom.marker.symbol
    # throughput: higher is better, so the cross sits below the lowest line
    fig = plots.length_figure(df, "throughput")
    (oom,) = [t for t in fig.data if t.name and t.name.endswith(": OOM")]
    low, high = fig.layout.yaxis.range
    lowest = min(min(y for y in t.y if y is not None) for t in lines(fig).values())
    assert low <= math.log10(oom.y[0]) - math.log10(plots.OOM_ROOM) + 1e-9 and oom.y[0] < lowest
    # without an OOM cell there is no OOM legend entry
    clean = plots.length_figure(frame(sweep_with_holes), "memory")
    assert plots.OOM_NAME not in {t.name for t in clean.data} and len(lines(clean)) == 3


def test_legend_order_is_the_tables_order(tmp_path):
    run = create_run(tmp_path / "results", RUN_1)
    for model in ("zeta", "mega10", "mega2", "alpha"):  # written out of order on purpose
        for length in (1024, 2048):
            run.append(speed_record(model, length, 5.0, 1.0))
    df = frame(tmp_path / "results")
    (table, _) = tables.length_tables(df)
    fig = plots.length_figure(df, "time")
    legend = [t.name for t in fig.data if t.showlegend is not False and t.visible is not False]
    assert legend == list(table.index) == ["alpha", "mega2", "mega10", "zeta"]


def test_hover_plain_numbers_units_run_and_revision(tmp_path):
    results = tmp_path / "results"
    first = create_run(results, RUN_1)
    first.append(speed_record("slow", 4096, 6789.3, 12.5))  # 4 * 4096 tokens / 6.79 s
    first.append(speed_record("fast", 4096, 7.0, 1.0))
    later = create_run(results, RUN_2)
    later.append(speed_record("fast", 4096, 6.5, 1.0))
    df = frame(results)
    fig = plots.length_figure(df, "time", alternate="throughput")
    slow = lines(fig)["slow"].customdata[0]
    assert "time 6790 ms (p20–p80 " in slow and "peak memory 12.50 GiB" in slow
    assert "throughput 2,410 tokens/s" in slow  # 16,384 tokens / 6.7893 s, 3 significant digits
    assert f"run {RUN_1} · git {SHA}" in slow and "other runs" not in slow
    assert not re.search(r"\d(\.\d+)?[kMG]\b", slow), slow  # never '6.79k'
    fast = lines(fig)["fast"].customdata[0]
    assert "time 6.50 ms" in fast and f"run {RUN_2} · git {SHA}" in fast  # the latest run's cell
    assert f"other runs of this cell:<br>  {RUN_1} (git {SHA}): 7.00 ms · 1.00 GiB" in fast
    pooled = lines(plots.length_figure(df, "time", aggregate=True))["fast"].customdata[0]
    assert f"median over runs {RUN_1} (git {SHA}), {RUN_2} (git {SHA})" in pooled


def test_one_figure_per_metric_and_slice_with_a_throughput_button(tmp_path):
    df = load_records(write_fixture_results(tmp_path / "results"))  # two runs with speed records
    figures = plots.report_figures(df)
    assert [f for f, _, _ in figures] == ["fig-time-text-4-bf16-cuda", "fig-memory-text-4-bf16-cuda",
                                          "fig-accuracy-vs-speed"]
    time_fig = figures[0][2]
    (menu,) = time_fig.layout.updatemenus
    assert [b.label for b in menu.buttons] == ["time per step (ms)", "throughput (tokens/s)"]
    for button, axis_title in zip(menu.buttons, ("time per step (ms)", "throughput (tokens/s)")):
        visible, layout = button.args
        shown = [t for t, v in zip(time_fig.data, visible["visible"]) if v]
        drawn = [t for t in shown if t.mode == "lines+markers"]
        assert len(drawn) == 5 and len({t.name for t in drawn}) == 5  # one line per model, one metric
        assert plots.OOM_NAME in {t.name for t in shown}
        assert layout["yaxis.title.text"] == axis_title
    assert menu.buttons[0].args[0]["visible"] == [t.visible is not False for t in time_fig.data]


@pytest.mark.parametrize("folder", sorted(p.name for p in REFERENCE.iterdir() if p.is_dir()))
def test_each_reference_folder_in_at_most_ten_figures(folder):
    ids = [f for f, _, _ in plots.report_figures(load_records(REFERENCE / folder))]
    assert 1 <= len(ids) <= 10 and len(set(ids)) == len(ids), ids
    assert not [f for f in ids if "-runs-" in f]


def test_all_reference_results_together_in_at_most_ten_figures():
    ids = [f for f, _, _ in plots.report_figures(load_records(REFERENCE))]  # every folder's runs
    assert 1 <= len(ids) <= 10, ids
    assert len(ids) == 2 * len({f.split("-", 2)[2] for f in ids})  # a time and a memory figure per slice


# -- the results folder's README and the image message ----------------------------------------------

HOSTILE = """# Reference <results> on one *GPU*

Measured with `bench --models <all>` and **bf16**; see [the spec](https://example.org/spec?a=1&b=2),
[a local file](../README.md) and [a script](javascript:alert(1)).
<script>alert("readme")</script>

Commands:

    python -m harness bench --models a,b
    <img src=x onerror=alert(2)>

- first note, which goes on
  over a second line
- second note with `code <b>`

| model | time |
|---|---|
| mega | **12.6 ms** |
"""


def test_markdown_subset_is_rendered_and_escaped():
    from harness.report.html import render_markdown

    out = str(render_markdown(HOSTILE))
    assert "<script" not in out and "<img" not in out and "javascript:" not in out.split("a script")[0]
    assert '&lt;script&gt;alert(&#34;readme&#34;)&lt;/script&gt;' in out
    assert "<h4>Reference &lt;results&gt; on one <em>GPU</em></h4>" in out
    assert "<code>bench --models &lt;all&gt;</code>" in out and "<strong>bf16</strong>" in out
    assert '<a href="https://example.org/spec?a=1&amp;b=2" rel="noopener noreferrer">the spec</a>' in out
    assert "a local file (../README.md)" in out and "a script (javascript:alert(1))" in out  # no href
    assert "<pre><code>python -m harness bench --models a,b\n&lt;img src=x onerror=alert(2)&gt;</code></pre>" in out
    assert "<li>first note, which goes on over a second line</li>" in out
    assert "<li>second note with <code>code &lt;b&gt;</code></li>" in out
    assert "<th>model</th><th>time</th>" in out and "<td>mega</td><td><strong>12.6 ms</strong></td>" in out


def test_results_folder_readme_in_the_provenance_section(tmp_path):
    from harness.report.html import results_readmes, write_report

    results = write_fixture_results(tmp_path / "results")
    (results / "README.md").write_text(HOSTILE, encoding="utf-8")
    page = write_report(results, None, tmp_path / "reports" / "r.html", images=False).read_text()
    provenance = page[page.index('<section id="provenance">'):]
    assert '<h3 id="results-notes">Notes from the results folder</h3>' in provenance
    assert "<h4>Reference &lt;results&gt; on one <em>GPU</em></h4>" in provenance
    assert f"From <code>{results / 'README.md'}</code>" in provenance
    assert 'href="#results-notes"' in page[:page.index("<main>")]  # the header points to the notes
    assert 'alert("readme")' not in page
    # a folder of run folders' folders: the README of the subfolder holding a reported run
    nested = tmp_path / "reference"
    (nested / "h100" / RUN_1).mkdir(parents=True)
    (nested / "h100" / "README.md").write_text("# H100 notes\n", encoding="utf-8")
    (nested / "other").mkdir()
    (nested / "other" / "README.md").write_text("# not ours\n", encoding="utf-8")
    found = results_readmes(nested, [RUN_1])
    assert [Path(r["path"]).parent.name for r in found] == ["h100"] and "<h4>H100 notes</h4>" in found[0]["html"]
    assert [Path(r["path"]).parent.name for r in results_readmes(nested, [f"h100/{RUN_1}"])] == ["h100"]
    assert results_readmes(write_fixture_results(tmp_path / "plain"), [RUN_1]) == []


def test_missing_image_export_is_a_note(tmp_path, monkeypatch, caplog):
    import logging

    from harness.report import html as report_html

    monkeypatch.setattr(report_html, "find_browser", lambda: None)  # kaleido or no kaleido: skipped
    with caplog.at_level(logging.INFO, logger="harness.report.html"):
        report_html.write_report(write_fixture_results(tmp_path / "results"), None, tmp_path / "r.html")
    notes = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "harness.report.html"]
    assert len(notes) == 1 and notes[0][0] == logging.INFO, notes
    assert notes[0][1].startswith("note: static images skipped: ")
    caplog.clear()
    report_html.log_image_message("static images skipped: kaleido failed (boom)")  # a failed export warns
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "static images skipped: kaleido failed (boom)")]

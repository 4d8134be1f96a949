"""Tables and the HTML report from fixture results written through the store API.

The fixture (`write_fixture_results`) is realistic on purpose: five models (mega, mega_chunk,
transformer, transformer_vanilla, s4), LRA tasks with real provenance (listops regenerated, text
user data, retrieval official release), Image as a Fashion-MNIST stand-in, an "other" task (mqar),
three seeds with one failed seed and one all-OOM cell, and a speed sweep over 1K..16K in which the
vanilla Transformer runs out of memory at 8K and is skipped at 16K. A second, later run re-measures
two speed cells, so "latest run wins" is observable.
"""

from __future__ import annotations

import html.parser
import re
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from harness import store as store_module
from harness.errors import UserError
from harness.report import format as fmt, select, tables
from harness.report.render import render
from harness.store import RunStore, config_hash, load_records, make_record

MODELS = ("mega", "mega_chunk", "transformer", "transformer_vanilla", "s4")
LENGTHS = (1024, 2048, 4096, 8192, 16384)
RUN_1 = "20260301-090000-aaaaaa"
RUN_2 = "20260302-090000-bbbbbb"
GIB = 1024 ** 3

ENVIRONMENT = {
    "python": "3.11.9", "platform": "Linux-6.8-x86_64", "torch": "2.11.0+cu130", "cuda": "13.0",
    "cudnn": 91300, "cuda_available": True, "cuda_device": "NVIDIA H100 80GB HBM3",
    "packages": {"plotly": "7.1.0", "pandas": "3.1.1", "triton": "3.6.0", "xformers": None},
    "gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_total_bytes": 85520809984,
              "driver": "580.65.06"}],
    "cpu": "AMD EPYC 9454 48-Core Processor", "cpu_count": 16, "torch_threads": 16,
    "ram_bytes": 137438953472, "hostname": "bench-01", "harness_version": "0.1.0",
    "git": {"sha": "d1ff256c0ffee1234567890abcdef1234567890a", "dirty": True},
}
CONFIG = {"models": ",".join(MODELS), "tasks": "listops,text,retrieval,image,mqar", "scale": "paper",
          "dtype": "bf16", "device": "cuda", "isolation": "subprocess", "warmup": 3, "iters": 10}

# (model, task) -> test accuracy of seed 1; None = the cell ran out of memory on every seed
ACCURACY = {
    "listops": dict(mega=0.631, mega_chunk=0.588, transformer=0.372, transformer_vanilla=0.371, s4=0.591),
    "text": dict(mega=0.904, mega_chunk=0.902, transformer=0.652, transformer_vanilla=0.650, s4=0.865),
    "retrieval": dict(mega=0.913, mega_chunk=0.910, transformer=0.791, transformer_vanilla=None, s4=0.909),
    "image": dict(mega=0.921, mega_chunk=0.912, transformer=0.884, transformer_vanilla=0.883, s4=0.902),
    "mqar": dict(mega=0.991, mega_chunk=0.975, transformer=0.999, transformer_vanilla=0.998, s4=0.553),
}
# Typed provenance for the LRA-eligible tasks; schema-1 strings (read by `Provenance.from_legacy`) for
# the official release, the Fashion-MNIST stand-in and MQAR.
PROVENANCE = {"listops": {"kind": "regenerated", "source": "listops-generator", "parameters": {"seed": 0}},
              "text": {"kind": "official", "source": "imdb (aclImdb)"},
              "retrieval": "official-release", "image": "stand-in(fashion-mnist)",
              "mqar": "regenerated(seed=0, vocab=8192)",
              "pathx": {"kind": "regenerated", "source": "pathfinder-generator", "parameters": {"seed": 0}}}
N_TEST = {"listops": 2000, "text": 25000, "retrieval": 17437, "image": 10000, "mqar": 3000, "pathx": 20000}
TASK_LENGTH = {"listops": 2000, "text": 4096, "retrieval": 4000, "image": 1024, "mqar": 512, "pathx": 16384}

# model -> (ms at 1K, time exponent in L/1K, GiB at 1K, memory exponent); batch 4, bf16, H100-like
SPEED = {"mega": (6.0, 1.2, 0.50, 1.5), "mega_chunk": (1.2, 1.0, 0.15, 1.0),
         "transformer": (1.8, 1.3, 0.25, 1.0), "transformer_vanilla": (5.0, 2.0, 0.60, 2.0),
         "s4": (2.1, 1.0, 0.20, 1.0)}


def model_config(model: str, **extra) -> dict:
    return {"name": model, "d_model": 128 if model.startswith("mega") else 256, "n_layers": 4, **extra}


def accuracy_record(model, task, seed, accuracy, status="ok", error=None, **extra):
    cfg = model_config(model)
    fields = dict(kind="accuracy", model=model, model_family="attention", model_config=cfg,
                  model_config_hash=config_hash(cfg), task=task, task_version="1",
                  seq_len=TASK_LENGTH[task], batch_size=32, dtype="bf16", device="cuda", mode="train",
                  status=status, error=error, n_params=1_000_000, seed=seed, scale="paper",
                  provenance=PROVENANCE[task], higher_is_better={"accuracy": True},
                  metrics=({"accuracy": accuracy, "val_accuracy": accuracy + 0.004, "loss": 0.7,
                            "n_test": N_TEST[task]}
                           if status == "ok" else {}))
    fields.update(extra)
    return make_record(**fields)


def speed_record(model, length, median_ms=None, peak_gib=None, status="ok", error=None, mode="train_step",
                 spread=0.01, **extra):
    cfg = model_config(model, **extra.pop("config_extra", {}))
    fields = dict(kind="speed", model=model, model_family="attention", model_config=cfg,
                  model_config_hash=config_hash(cfg), task="text", task_version="1", seq_len=length,
                  batch_size=4, dtype="bf16", device="cuda", mode=mode, status=status, error=error,
                  n_params=1_000_000, scale="paper", provenance="stand-in(random-bytes)")
    if status == "ok":
        samples = [median_ms * (1 + spread * (k - 4.5)) for k in range(10)]  # 10 timed iterations, median = median_ms
        fields.update(
            timing={"median_ms": float(np.median(samples)), "p20_ms": float(np.percentile(samples, 20)),
                    "p80_ms": float(np.percentile(samples, 80)), "n_warmup": 3, "n_iters": 10,
                    "samples_ms": samples},
            memory={"peak_allocated_bytes": int(peak_gib * GIB), "peak_reserved_bytes": int(peak_gib * GIB * 1.1),
                    "footprint_bytes": int(peak_gib * GIB * 1.1 + 600e6), "peak_rss_increase_bytes": None},
            throughput_tokens_per_s=4 * length / (float(np.median(samples)) / 1000.0))
    fields.update(extra)
    fields.setdefault("hardware", {"device_name": ENVIRONMENT["cuda_device"] if fields["device"] == "cuda"
                                   else ENVIRONMENT["cpu"], "host": ENVIRONMENT["hostname"]})
    return make_record(**fields)


def model_speed(model: str, length: int) -> tuple[float, float]:
    ms, t_exp, gib, m_exp = SPEED[model]
    x = length / 1024
    return ms * x ** t_exp, gib * x ** m_exp


def create_run(results_dir: Path, run_id: str, config=CONFIG):
    """A run with a fixed, time-sortable id (the store draws a random suffix)."""
    with mock.patch.object(store_module, "new_run_id", return_value=run_id):
        return RunStore(results_dir).create(["python", "-m", "harness", "run"], config, ENVIRONMENT)


def sweep(run, models=MODELS, scale=None):
    """Ascending lengths; the vanilla Transformer OOMs at 8K, so 16K is skipped."""
    scale = scale or {}
    for model in models:
        failed = False
        for length in LENGTHS:
            if failed:
                run.append(speed_record(model, length, status="skipped",
                                        error="skipped: oom at a shorter length"))
            elif model == "transformer_vanilla" and length >= 8192:
                run.append(speed_record(model, length, status="oom",
                                        error="CUDA out of memory. Tried to allocate 64.00 GiB"))
                failed = True
            else:
                ms, gib = model_speed(model, length)
                run.append(speed_record(model, length, ms * scale.get(model, 1.0), gib))


def write_fixture_results(results_dir: Path) -> Path:
    """Two runs: RUN_1 (accuracy, three seeds, + speed sweep) and RUN_2 (a later re-measurement
    of two speed cells)."""
    run = create_run(results_dir, RUN_1)
    for task, by_model in ACCURACY.items():
        for model, acc in by_model.items():
            for seed in (0, 1, 2):
                if acc is None:
                    run.append(accuracy_record(model, task, seed, None, status="oom",
                                               error="CUDA out of memory"))
                elif model == "s4" and task == "text" and seed == 2:
                    run.append(accuracy_record(model, task, seed, None, status="error",
                                               error="loss became NaN at step 1200"))
                else:
                    run.append(accuracy_record(model, task, seed, acc + 0.004 * (seed - 1)))
    sweep(run)
    run.update_manifest(status="finished", started="2026-03-01T09:00:00+00:00",
                        finished="2026-03-01T11:00:00+00:00")
    later = create_run(results_dir, RUN_2)
    later.append(speed_record("mega_chunk", 4096, 4.00, 0.55))  # faster than RUN_1's 4.8 ms
    later.append(speed_record("mega", 4096, 31.0, 3.9))
    later.update_manifest(status="finished", started="2026-03-02T09:00:00+00:00",
                          finished="2026-03-02T09:10:00+00:00")
    return results_dir


@pytest.fixture
def results(tmp_path):
    return write_fixture_results(tmp_path / "results")


def _table(tables_list, title_start):
    found = [t for t in tables_list if t.title.startswith(title_start)]
    assert found, [t.title for t in tables_list]
    return found[0]


# -- tables ---------------------------------------------------------------------------------------

def _seed_cell(values, extra="") -> str:
    """The expected accuracy cell of per-seed accuracies (fractions): mean ± sd (n) [95% t interval]."""
    from scipy import stats

    pct = np.array(values) * 100
    mean, sd = pct.mean(), pct.std(ddof=1)
    half = stats.t.ppf(0.975, len(pct) - 1) * sd / np.sqrt(len(pct))
    return f"{mean:.1f} ± {sd:.1f} (n={len(pct)}{extra}) [{mean - half:.1f}, {mean + half:.1f}]"


def test_accuracy_table_lra_order_seeds_and_standin_kept_out_of_avg(results):
    df = select.prepare(load_records(results))
    table = tables.accuracy_table(df)
    cols = list(table.columns)
    assert cols[:3] == list(tables.MODEL_COLUMNS) == ["params", "layers", "width"]  # the model block
    assert cols[3:6] == ["ListOps", "Text", "Retrieval"]  # LRA order, LRA-eligible data only
    assert cols[6] == "Avg"
    standin = "Image [stand-in: fashion-mnist · paper]"
    assert standin in cols and cols.index(standin) > 6
    assert "Image" not in cols and "mqar" not in cols  # the stand-in never poses as LRA Image
    # mean ± sample std over three seeds, 1 decimal, with the seed count and the 95% t interval
    acc = [0.631 + 0.004 * (s - 1) for s in range(3)]
    assert table.text.loc["mega", "ListOps"] == _seed_cell(acc) == "63.1 ± 0.4 (n=3) [62.1, 64.1]"
    assert table.text.loc["mega", "params"] == "1.00M"
    assert (table.text.loc["mega", "layers"], table.text.loc["mega", "width"], table.text.loc["s4", "width"]) == ("4", "128", "256")
    # Avg = mean of the three LRA tasks' means, not including the stand-in column; ± over per-seed averages
    avg = np.mean([0.631, 0.904, 0.913]) * 100
    assert table.text.loc["mega", "Avg"] == f"{avg:.1f} ± 0.4 (n=3)"
    assert table.numbers[("mega", "Avg")]["mean"] != pytest.approx(np.mean([63.1, 90.4, 91.3, 92.1]),
                                                                          abs=0.05)
    # failures as text, partial failures counted, missing averages say so
    assert table.text.loc["transformer_vanilla", "Retrieval"] == "OOM"
    assert table.text.loc["transformer_vanilla", "Avg"] == "n/a"
    assert table.text.loc["s4", "Text"] == _seed_cell([0.861, 0.865], "; 1 FAIL")
    assert ("mega", "ListOps") in table.bold_cells and ("mega", "Avg") in table.bold_cells
    assert ("mega_chunk", "ListOps") not in table.bold_cells  # 4 points below: separated
    assert "Path-X excluded" in table.caption and "never in an average" in table.caption
    assert "binomial s.e." in table.caption and "Welch" in table.caption


def test_avg6_appears_with_pathx_and_other_tasks_have_their_own_table(tmp_path):
    run = create_run(tmp_path, RUN_1)
    for task, acc in (("listops", 0.6), ("text", 0.8), ("pathx", 0.9)):
        run.append(accuracy_record("mega", task, 0, acc))
    run.append(accuracy_record("mega", "mqar", 0, 0.99))
    run.append(accuracy_record("transformer", "pathx", 0, None, status="error", error="did not learn"))
    df = select.prepare(load_records(tmp_path))
    table = tables.accuracy_table(df)
    assert list(table.columns) == ["params", "layers", "width", "ListOps", "Text", "Path-X", "Avg", "Avg (3)"]
    assert table.text.loc["mega", "Avg"] == "70.0" and table.text.loc["mega", "Avg (3)"] == "76.7"
    assert table.text.loc["transformer", "Path-X"] == "FAIL" and table.text.loc["transformer", "Avg (3)"] == "n/a"
    other = tables.other_tasks_table(df)
    assert list(other.columns) == ["params", "layers", "width", "mqar"] and other.text.loc["mega", "mqar"] == "99.0 (n=1)"


def test_efficiency_table_ratios_against_both_transformers(results):
    df = select.prepare(load_records(results))
    table = tables.efficiency_table(df, 4096)
    assert table.title.startswith("Efficiency at 4K")
    # RUN_2 re-measured mega_chunk at 4K: the latest run's record is shown
    assert table.text.loc["mega_chunk", "time (ms)"] == "4.00"
    assert table.text.loc["mega_chunk", "peak mem (GiB)"] == "0.55"
    vanilla_ms, vanilla_gib = model_speed("transformer_vanilla", 4096)  # 80 ms, 9.6 GiB
    fused_ms, _ = model_speed("transformer", 4096)
    assert table.text.loc["transformer_vanilla", "time (ms)"] == fmt.fmt_sig(vanilla_ms, 3) == "80.0"
    assert table.text.loc["mega_chunk", "speed-up vs transformer_vanilla"] == f"{vanilla_ms / 4.0:.0f}×"
    assert table.text.loc["mega_chunk", "memory vs transformer_vanilla"] == fmt.fmt_sig(0.55 / vanilla_gib, 2) + "×"
    assert table.text.loc["transformer", "speed-up vs transformer"] == "1.0×"
    assert table.text.loc["mega_chunk", "speed-up vs transformer"] == fmt.fmt_sig(fused_ms / 4.0, 2) + "×"
    assert ("mega_chunk", "time (ms)") in table.bold_cells
    caption = table.caption
    assert "L = 4096" in caption and "batch 4" in caption and "bf16" in caption and "median of 10" in caption


def test_efficiency_table_falls_back_to_nearest_length_and_marks_oom(results):
    df = select.prepare(load_records(results))
    table = tables.efficiency_table(df, 10000)
    assert "L = 8192 (nearest measured length; 10000 was not measured)" in table.caption
    assert table.text.loc["transformer_vanilla", "time (ms)"] == "OOM"
    assert table.text.loc["mega", "speed-up vs transformer_vanilla"] == "ref OOM"


def test_length_tables_text_statuses_and_precision(results):
    df = select.prepare(load_records(results))
    time_table, mem_table = tables.length_tables(df)
    assert list(time_table.columns) == [str(x) for x in LENGTHS]
    assert time_table.text.loc["transformer_vanilla", "8192"] == "OOM"
    assert time_table.text.loc["transformer_vanilla", "16384"] == "skipped"
    assert time_table.text.loc["mega", "1024"] == "6.00"  # 3 significant digits
    assert time_table.text.loc["mega", "16384"] == fmt.fmt_sig(model_speed("mega", 16384)[0], 3) == "167"
    assert mem_table.text.loc["s4", "2048"] == "0.40"  # GiB, 2 decimals
    for cell in time_table.text.to_numpy().ravel():
        assert cell in ("OOM", "skipped") or re.fullmatch(r"\d+(\.\d+)?", cell)
        if "." in cell:
            assert len(cell.replace(".", "").lstrip("0")) == 3, cell


def test_aggregate_pools_runs_instead_of_latest(results):
    df = select.prepare(load_records(results))
    latest = tables.efficiency_table(df, 4096)
    pooled = tables.efficiency_table(df, 4096, aggregate=True)
    run1_ms = model_speed("mega_chunk", 4096)[0]
    assert latest.text.loc["mega_chunk", "time (ms)"] == "4.00"
    assert pooled.text.loc["mega_chunk", "time (ms)"] == fmt.fmt_ms(np.median([run1_ms, 4.0]))


def test_render_formats(results):
    df = select.prepare(load_records(results))
    table = tables.accuracy_table(df)
    md = render(table, "markdown")
    assert "| Model | params | layers | width | ListOps | Text | Retrieval | Avg |" in md
    assert "**63.1 ± 0.4 (n=3) [62.1, 64.1]**" in md and "_Test accuracy" in md
    tex = render(table, "latex")
    assert r"\begin{tabular}{lrrrrrrrr}" in tex and r"\toprule" in tex and r"\bottomrule" in tex
    assert r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%" in tex  # fits the page
    assert r"\textbf{63.1 $\pm$ 0.4 (n=3) [62.1, 64.1]}" in tex and r"transformer\_vanilla" in tex
    assert "±" not in tex and "·" not in tex and "√" not in tex
    assert "_vanilla" not in tex.replace(r"\_vanilla", "")
    page = render(table, "html")
    bold = re.search(r'<td id="([^"]+)" class="[^"]*"[^>]*>63.1 ± 0.4 \(n=3\) \[62.1, 64.1\]</td>', page)
    assert bold and re.search(rf"#{bold.group(1)}\b[^{{]*{{\s*font-weight: bold", page)  # the Styler's bold
    assert re.search(r'class="data row\d+ col\d+ standin', page)
    assert 'title="CUDA out of memory"' in page  # error text as a hover note
    with pytest.raises(UserError, match="--format"):
        render(table, "csv")


def test_render_all_joins_every_table_in_reading_order(results):
    text = tables.render_all(load_records(results), "markdown")
    order = [text.index(t) for t in ("**Long Range Arena accuracy**", "**Other tasks (not LRA)**",
                                     "**Efficiency at 4K", "**Time (ms) by sequence length",
                                     "**Peak memory (GiB) by sequence length")]
    assert order == sorted(order)
    assert tables.render_all(load_records(results.parent / "nothing")) == "(no results to tabulate)\n"


def test_html_escaping_of_hostile_names(tmp_path):
    run = create_run(tmp_path, RUN_1)
    run.append(accuracy_record("<script>alert(1)</script>", "listops", 0, 0.5))
    table = tables.accuracy_table(select.prepare(load_records(tmp_path)))
    page = render(table, "html")
    assert "<script>" not in page and "&lt;script&gt;" in page


# -- the HTML report --------------------------------------------------------------------------------

class _Resources(html.parser.HTMLParser):
    """Collects the URLs a page would load: script src, link href, img/iframe src."""

    def __init__(self):
        super().__init__()
        self.loads, self.scripts, self.ids = [], 0, set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "script":
            self.scripts += 1
        for name in ("src", "href"):
            if attrs.get(name) and tag in ("script", "link", "img", "iframe", "embed", "object", "source"):
                self.loads.append(attrs[name])


def test_report_is_self_contained_with_tables_models_and_plots(results, tmp_path, capsys):
    from plotly.offline import get_plotlyjs

    from harness.report.html import write_report

    out = write_report(results, None, tmp_path / "reports" / "bench.html", images=False)
    page = out.read_text()
    # plotly.js inlined exactly once
    assert page.count(get_plotlyjs()[:400]) == 1
    assert page.count("plotly.js v") == 1
    parser = _Resources()
    parser.feed(page)
    assert parser.loads == [], parser.loads  # nothing fetched from anywhere
    assert not re.search(r"<(script|link)[^>]+(src|href)\s*=\s*[\"']?https?:", page, re.I)
    # every table, every model, every plot container
    for title in ("Long Range Arena accuracy", "Other tasks (not LRA)", "Efficiency at 4K",
                  "Time (ms) by sequence length", "Peak memory (GiB) by sequence length"):
        assert title in page
    for model in MODELS:
        assert re.search(rf'<th id="[^"]+" class="row_heading level0 row\d+" >{model}</th>', page), model
    figures = re.findall(r'data-figure="([^"]+)"', page)
    # one figure per metric and slice (throughput behind the time figure's button, other runs in hover)
    assert {"fig-time-text-4-bf16-cuda", "fig-memory-text-4-bf16-cuda", "fig-accuracy-vs-speed"} <= set(figures)
    for fig_id in figures:
        assert fig_id in parser.ids and f'Plotly.newPlot(                        "{fig_id}"' in page
    # banner, methodology, provenance
    assert "NVIDIA H100 80GB HBM3" in page and "torch 2.11.0+cu130" in page
    assert "d1ff256c0ffe (dirty" in page
    assert "3 warm-up iterations" in page and "10 timed" in page and "CUDA event" in page
    assert "stand-in: fashion-mnist" in page and "no (stand-in data)" in page
    # Markdown and LaTeX copies next to it
    md, tex = out.with_suffix(".md").read_text(), out.with_suffix(".tex").read_text()
    assert "| Model | params | layers | width | ListOps |" in md and "Efficiency at 4K" in md
    assert r"\begin{tabular}" in tex and r"\usepackage{booktabs}" in tex


def test_report_oom_points_are_marked_in_plots(results):
    from harness.report import plots

    df = select.prepare(load_records(results))
    fig = plots.length_figure(df, "memory")
    oom = [t for t in fig.data if t.name and t.name.endswith(": OOM")]
    assert [t.name for t in oom] == ["transformer_vanilla: OOM"]
    assert list(oom[0].x) == [8192] and oom[0].marker.symbol == "x-thin-open"
    assert list(fig.layout.xaxis.tickvals) == list(LENGTHS) and fig.layout.xaxis.type == "log"
    vanilla = [t for t in fig.data if t.name == "transformer_vanilla"][0]
    assert list(vanilla.x) == [1024, 2048, 4096]  # the skipped 16K cell is not drawn
    runs_fig = plots.length_figure(df, "time", across_runs=True)
    dashes = {t.line.dash for t in runs_fig.data if t.name and t.name.startswith("mega_chunk ·")}
    assert dashes == {"solid", "dash"}  # one dash style per run, colour per model
    bubble = plots.accuracy_vs_speed(df)
    assert {t.name for t in bubble.data} == set(MODELS) - {"transformer_vanilla"}  # no Avg: OOM cell


def test_static_images_skip_with_one_line_message(results, tmp_path, monkeypatch):
    from harness.report import html as report_html

    monkeypatch.setattr(report_html, "find_browser", lambda: None)
    figures = [("fig-a", "a", __import__("plotly.graph_objects").graph_objects.Figure())]
    paths, message = report_html.export_images(figures, tmp_path / "figs")
    assert paths == [] and "\n" not in message and message.startswith("static images skipped:")


def test_unknown_run_is_a_user_error_naming_available_runs(results, tmp_path):
    from harness.report.html import write_report

    with pytest.raises(UserError, match=f"run nope not found.*available runs: {RUN_1}, {RUN_2}"):
        write_report(results, ["nope"], tmp_path / "r.html")


# -- the subcommands --------------------------------------------------------------------------------

def test_cli_table_report_and_empty_results(results, tmp_path, capsys, monkeypatch):
    from harness.report.cli import main

    assert main(["table", "--results-dir", str(results), "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert "> run 20260301-090000-aaaaaa" in out and "| Model | params | layers | width | ListOps |" in out
    assert main(["table", "--results-dir", str(results), "--format", "latex", "--length", "2k",
                 "--runs", RUN_1]) == 0
    out = capsys.readouterr().out
    assert r"Efficiency at 2K" in out and r"\toprule" in out
    assert main(["table", "--results-dir", str(tmp_path / "empty")]) == 1
    assert capsys.readouterr().err.startswith(f"error: no results in {tmp_path / 'empty'}")
    assert main(["table", "--results-dir", str(results), "--runs", "missing"]) == 2
    assert "available runs" in capsys.readouterr().err
    target = tmp_path / "out" / "r.html"
    assert main(["report", "--results-dir", str(results), "--out", str(target), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(target) and target.is_file()
    monkeypatch.chdir(tmp_path)  # default: reports/report-<latest run id>.html under the working dir
    from harness.report.html import write_report

    assert write_report(results, [RUN_1, RUN_2], None, images=False) == Path(f"reports/report-{RUN_2}.html")
    assert main(["report", "--results-dir", str(results), "--quiet", "--runs", RUN_1]) == 0
    assert capsys.readouterr().out.strip() == f"reports/report-{RUN_1}.html"
    assert (tmp_path / "reports" / f"report-{RUN_1}.html").is_file()


def test_cpu_smoke_results_tiny_models_rss_memory_two_modes(tmp_path):
    """What `run` writes on a laptop: tiny models, CPU, fp32, peak-RSS memory, no accuracy."""
    from harness.report import plots
    from harness.report.html import write_report

    run = create_run(tmp_path / "results", RUN_1)
    for model, (ms, mib) in {"transformer_tiny": (2.0, 8), "transformer_vanilla_tiny": (3.0, 20),
                             "mega_tiny": (4.0, 5)}.items():
        for mode in ("train_step", "forward"):
            for length in (256, 512, 1024):
                x = length / 256
                rec = speed_record(model, length, ms * x * (0.4 if mode == "forward" else 1.0), 0,
                                   mode=mode, device="cpu", dtype="fp32", batch_size=2)
                rec["memory"] = {"peak_allocated_bytes": None, "peak_reserved_bytes": None,
                                 "footprint_bytes": None, "peak_rss_increase_bytes": int(mib * x * 2 ** 20)}
                run.append(rec)
    df = select.prepare(load_records(tmp_path / "results"))
    slices = select.speed_slices(select.speed_cells(df))
    assert [s["mode"] for s in slices] == ["train_step", "forward"]  # the papers' protocol first
    table = tables.efficiency_table(df, 4096)
    assert "L = 1024 (nearest measured length; 4096 was not measured)" in table.caption
    assert "measured as transformer_vanilla_tiny" in table.caption
    assert "peak RSS" in table.caption and "peak mem (GiB)" in table.columns
    assert table.text.loc["mega_tiny", "peak mem (GiB)"] == "0.020"  # GiB even for CPU peaks, digits kept
    assert table.text.loc["mega_tiny", "memory vs transformer_vanilla"] == "0.25×"
    assert table.text.loc["transformer_tiny", "speed-up vs transformer"] == "1.0×"
    fig = plots.length_figure(df, "time")
    assert [a.text for a in fig.layout.annotations][:2] == [plots.MODE_TITLES["train_step"],
                                                           plots.MODE_TITLES["forward"]]
    page = write_report(tmp_path / "results", [RUN_1], tmp_path / "r.html", images=False).read_text()
    assert ("Efficiency at 1K (text, forward, fp32, cpu, b=2, AMD EPYC 9454 48-Core Processor)" in page
            and "No accuracy results" in page)
    assert "fig-accuracy-vs-speed" not in page

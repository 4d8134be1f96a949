"""Plots of stored results (plotly): time per step (with throughput one click away), and peak memory
against sequence length, and accuracy against speed. Every function returns a
`plotly.graph_objects.Figure`.

Conventions (shared/spec/measurement.md §5.9, harness.md "Tables and reports"):
- x is log2 with the swept lengths as ticks (plotly's default log ticks would read 2, 5, 10...);
- one figure per metric and slice (task configuration, batch, dtype, device and the device's name:
  two GPUs never share an axis), one panel per mode (train_step = forward + backward + optimizer
  step, forward = inference); throughput is B·L / time, the same measurement as time, so the time
  figure switches to it with a button instead of repeating every slice in a figure of its own;
- one line per row label (model and variant: `mega_chunk [compile=true]`), the same colour for a
  label in every figure, legend entries in the order of the slice's by-length table;
- a line joins only neighbouring measured lengths: where a row has no number at a length the
  slice swept (never measured, or failed), the line breaks, so nothing reads as measured that was not;
- a cell that ran out of memory is an ✕ labelled "OOM" inside the panel, above the lines (below
  them for throughput, where higher is better), with an "OOM" entry in the legend; skipped cells
  are not drawn;
- time plots draw the p20-p80 spread of the timed iterations as error bars around the median;
- hover text gives plain numbers with units, at the precision of the tables, and the run and git
  revision behind the point, plus what other runs measured for the same cell (the report shows one
  figure per slice, not one per run).
"""

from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from harness.report import tables
from harness.report.format import (DASH, GIB, first_line, fmt_mem, fmt_ms, length_label, MEMORY_UNIT, missing,
                                   natural, number, slug, status_text)
from harness.report.select import (SLICE_KEYS, SPEED_KEYS, is_noisy, latest, nearest_length, prepare,
                                   select_slice, slice_text, speed_cells, speed_ok, speed_slices)

PALETTE = qualitative.D3 + qualitative.Dark2
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
HEIGHT = 420  # px, the least height of a figure
LEGEND_ROW = 21  # px per legend entry (markers and lines at plotly's default font size)
METRICS = {  # metric -> (title word, axis title; memory's unit is filled in per figure)
    "time": ("Time per step", "time per step (ms)"),
    "throughput": ("Throughput", "throughput (tokens/s)"),
    "memory": ("Peak memory", "peak memory ({unit})"),
}
MODE_TITLES = {"train_step": "train_step (forward + backward + optimizer step)",
               "forward": "forward (inference)"}
OOM_NAME = "OOM (out of memory)"  # the legend entry that explains the ✕ marks
OOM_COLOR = "#444"
OOM_STEP = 1.6  # an OOM mark sits this factor beyond the panel's extreme value (log axis)
OOM_ROOM = 2.2  # and the axis leaves this factor beyond the mark for its "OOM" label
MAX_OTHER_RUNS = 4  # hover lists at most this many other runs' measurements of a cell


# -- numbers and text -------------------------------------------------------------------------------

def model_colors(models) -> dict:
    """A stable colour per row label (natural order), shared by every figure of a report."""
    ordered = sorted(set(models), key=natural)
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(ordered)}


def _throughput(cells: pd.DataFrame) -> pd.Series:
    """Recorded tokens/s, else B*L / median time."""
    derived = cells["batch_size"] * cells["seq_len"] / (cells["timing.median_ms"] / 1000.0)
    return cells["throughput_tokens_per_s"].fillna(derived)


def plain(value, digits: int = 3) -> str:
    """`value` to `digits` significant digits with thousands separators and never an SI suffix:
    18.1, 6,790, 3,020,000 (a hover reading '6.79k' ms is a puzzle)."""
    if value is None or not np.isfinite(value):
        return DASH
    if value == 0:
        return "0"
    rounded = float(f"{value:.{digits}g}")
    decimals = max(digits - 1 - math.floor(math.log10(abs(rounded))), 0)
    return f"{rounded:,.{decimals}f}"


def si(value: float) -> str:
    """Compact tick label: 0.5, 20, 300, 2k, 1.5M (throughput's axis only)."""
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:g}{suffix}"
    return f"{value:g}"


def log_ticks(values, compact: bool = True) -> tuple[list, list]:
    """Readable ticks for a log axis: the coarsest of 1 / 1-2-5 / 1-2-3-5-7 / 1..9 per decade that
    puts 3 to 10 ticks on the data (plotly's own minor labels, '2' and '5' beside 10 and 100,
    read as a muddle, and a narrow range would get a single label). `compact`: 2k, 1.5M; else plain
    numbers (2,000), for axes in ms or GiB."""
    finite = [float(v) for v in values if v is not None and np.isfinite(v) and v > 0]
    if not finite:
        return [], []
    low, high = min(finite) / 1.3, max(finite) * 1.3
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    for steps in ((1,), (1, 2, 5), (1, 2, 3, 5, 7), tuple(range(1, 10))):
        ticks = [m * 10.0 ** e for e in decades for m in steps if low <= m * 10.0 ** e <= high]
        if 3 <= len(ticks) <= 10:
            break
    if len(ticks) < 3:  # a very narrow range: evenly spaced (in log) ticks rounded to 2 digits
        ticks = sorted({float(f"{t:.2g}") for t in np.geomspace(min(finite), max(finite), 4)})
    return ticks, [si(t) if compact else f"{t:,.10g}" for t in ticks]


def _sha(value) -> str:
    return str(value)[:12] if not missing(value) else "not recorded"


def _measurement(row, unit: tuple[str, float]) -> str:
    """'18.1 ms · 4.06 GiB' for an ok cell, else its status ('OOM', 'FAIL: ...')."""
    if not speed_ok(row):
        text = status_text(row["status"])
        error = row.get("error")
        if row["status"] == "error" and isinstance(error, str) and error.strip():
            text += ": " + first_line(error, limit=80)
        return text
    text = f"{fmt_ms(row['timing.median_ms'])} ms"
    if np.isfinite(row["peak_bytes"]):
        text += f" · {fmt_mem(row['peak_bytes'], unit)} {unit[0]}"
    return text


class _Hover:
    """The hover text of every cell of one slice: what was measured, by which run and revision,
    and what other runs measured for the same cell."""

    def __init__(self, df: pd.DataFrame, keep: dict, unit: tuple[str, float]):
        speed = df[(df["kind"] == "speed") & df["seq_len"].notna()]
        self.unit = unit
        self.sha = {r: s for r, s in zip(speed["run_id"], speed["git_sha"]) if not missing(s)}
        self.records = {}  # (label, mode, length) -> every run's latest record of the cell
        per_run = latest(select_slice(speed, keep), SPEED_KEYS + ("run_id",))
        for _, row in per_run.sort_values("run_id").iterrows():
            self.records.setdefault((row["label"], row["mode"], int(row["seq_len"])), []).append(row)

    def run_line(self, run_ids) -> str:
        runs = [r for r in run_ids if not missing(r)]
        if not runs:
            return "run not recorded"
        if len(runs) == 1:
            return f"run {runs[0]} · git {_sha(self.sha.get(runs[0]))}"
        return "median over runs " + ", ".join(f"{r} (git {_sha(self.sha.get(r))})" for r in runs)

    def __call__(self, row, name: str, extra: tuple = ()) -> str:
        """`extra`: lines (already escaped) after the cell's length, batch and mode."""
        esc = lambda s: html.escape(str(s), quote=False)  # noqa: E731  plotly reads entities back
        length = int(row["seq_len"])
        lines = [f"<b>{esc(name)}</b>",
                 f"L = {length_label(length)} ({length:,}) · batch {int(row['batch_size'])} · "
                 f"{esc(row['mode'])}", *extra]
        if speed_ok(row):
            time = f"time {fmt_ms(row['timing.median_ms'])} ms"
            if np.isfinite(row["timing.p20_ms"]) and np.isfinite(row["timing.p80_ms"]):
                time += (f" (p20–p80 {fmt_ms(row['timing.p20_ms'])}–"
                         f"{fmt_ms(row['timing.p80_ms'])} ms{', noisy' if is_noisy(row) else ''})")
            lines.append(time)
            tokens = _throughput(pd.DataFrame([row])).iloc[0]
            lines.append(f"throughput {plain(tokens)} tokens/s")
            if np.isfinite(row["peak_bytes"]):
                what = "peak RSS increase" if row.get("mem_source") == "rss" else "peak memory"
                lines.append(f"{what} {fmt_mem(row['peak_bytes'], self.unit)} {self.unit[0]}")
        else:
            lines.append(esc(_measurement(row, self.unit)))
        used = row.get("run_ids")
        used = tuple(used) if isinstance(used, (tuple, list)) and used else (row["run_id"],)
        lines.append(esc(self.run_line(used)))
        others = [r for r in self.records.get((row["label"], row["mode"], length), [])
                  if r["run_id"] not in used]
        if others:
            lines.append("other runs of this cell:")
            lines += [f"  {esc(r['run_id'])} (git {esc(_sha(r['git_sha']))}): {esc(_measurement(r, self.unit))}"
                      for r in others[:MAX_OTHER_RUNS]]
            if len(others) > MAX_OTHER_RUNS:
                lines.append(f"  and {len(others) - MAX_OTHER_RUNS} more")
        return "<br>".join(lines)


# -- axes and layout --------------------------------------------------------------------------------

def _log2_axis(fig: go.Figure, lengths, **where) -> None:
    lengths = sorted({int(x) for x in lengths})
    fig.update_xaxes(type="log", tickvals=lengths, ticktext=[length_label(x) for x in lengths],
                     title_text="sequence length L", **where)
    if lengths:  # a little margin so the end markers and OOM labels are not clipped
        lo, hi = math.log10(lengths[0]), math.log10(lengths[-1])
        pad = max(hi - lo, math.log10(2)) * 0.08
        fig.update_xaxes(range=[lo - pad, hi + pad], **where)


def _panels(modes: list) -> tuple[go.Figure, dict]:
    fig = make_subplots(rows=1, cols=len(modes), shared_yaxes=False, horizontal_spacing=0.08,
                        subplot_titles=[MODE_TITLES.get(m, str(m)) for m in modes])
    return fig, {m: i + 1 for i, m in enumerate(modes)}


def _style(fig: go.Figure, title: str) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0.01, xanchor="left"), template="plotly_white",
                      height=HEIGHT, margin=dict(l=60, r=20, t=70, b=50), hovermode="closest",
                      legend=dict(title_text="", itemsizing="constant"))
    return fig


def row_order(df: pd.DataFrame, keep: dict, modes: list, aggregate: bool = False) -> list:
    """The rows of a slice in the order its by-length tables list them (legend order = table order),
    then any row those tables leave out, in natural order."""
    order = []
    for mode in modes:
        for table in tables.length_tables(df, {**keep, "mode": mode}, aggregate)[:1]:
            order += [r for r in table.index if r not in order]
    return order


def _gapped(points: pd.DataFrame, lengths: list) -> list:
    """Row positions of `points` (sorted by length) with None wherever the slice swept a length
    between two neighbours that this line has no number for: plotly breaks the line there."""
    out, previous = [], None
    for position, length in enumerate(points["seq_len"].astype(int)):
        if previous is not None and any(previous < x < length for x in lengths):
            out.append(None)
        out.append(position)
        previous = length
    return out


# -- length figures ---------------------------------------------------------------------------------

def _metric_values(cells: pd.DataFrame, metric: str, unit: tuple[str, float]) -> pd.Series:
    if metric == "time":
        return cells["timing.median_ms"]
    if metric == "throughput":
        return _throughput(cells)
    return cells["peak_bytes"] / unit[1]


def _bar(row, column: str, sign: int) -> float:
    """Length of one error bar arm (0 at a gap or without the percentile)."""
    if row is None or not np.isfinite(row[column]):
        return 0.0
    return max(sign * (row[column] - row["value"]), 0.0)


def _draw(fig: go.Figure, cells: pd.DataFrame, metric: str, modes: list, col_of: dict, groups: list,
          colors: dict, hover: _Hover, unit: tuple[str, float], visible: bool, across_runs: bool) -> dict:
    """The lines and OOM marks of `metric` in each mode's panel; returns the y-axis settings per
    panel column (type, ticks, range, title), so a toggle can switch axes with the traces."""
    below = metric == "throughput"  # higher is better: an OOM mark must not sit among the best
    axis_title = METRICS[metric][1].format(unit=unit[0])
    cells = cells.assign(value=_metric_values(cells, metric, unit))
    settings, shown = {}, set()
    runs = sorted(set(cells["run_id"].dropna()))  # across runs: dash = the run's place in time
    for mode in modes:
        panel = cells[cells["mode"] == mode]
        lengths = sorted({int(x) for x in panel["seq_len"].dropna()})
        ok = panel[(panel["status"] == "ok") & np.isfinite(panel["value"]) & (panel["value"] > 0)]
        values = list(ok["value"])
        if metric == "time":
            values += list(ok["timing.p20_ms"].dropna()) + list(ok["timing.p80_ms"].dropna())
        values = [v for v in values if np.isfinite(v) and v > 0] or [1.0]
        extreme = min(values) / OOM_STEP if below else max(values) * OOM_STEP
        oom_marks = []
        for key in groups:
            label, run = key if across_runs else (key, None)
            line = panel[(panel["label"] == label) & ((panel["run_id"] == run) if across_runs else True)]
            if line.empty:
                continue
            name = f"{label} · {run}" if across_runs else label
            points = line[line.index.isin(ok.index)].sort_values("seq_len")
            rows = [None if p is None else points.iloc[p] for p in _gapped(points, lengths)]
            spread = None
            if metric == "time":  # the p20-p80 spread of the timed iterations as error bars
                spread = dict(type="data", symmetric=False, thickness=1.2, width=4,
                              array=[_bar(r, "timing.p80_ms", 1) for r in rows],
                              arrayminus=[_bar(r, "timing.p20_ms", -1) for r in rows])
            fig.add_trace(go.Scatter(
                x=[None if r is None else int(r["seq_len"]) for r in rows],
                y=[None if r is None else float(r["value"]) for r in rows],
                customdata=[None if r is None else hover(r, name) for r in rows],
                mode="lines+markers", name=name, legendgroup=name, showlegend=name not in shown,
                visible=visible, connectgaps=False, error_y=spread,
                line=dict(color=colors[label], width=2,
                          dash=DASHES[runs.index(run) % len(DASHES)] if across_runs else "solid"),
                marker=dict(size=7), hovertemplate="%{customdata}<extra></extra>",
            ), row=1, col=col_of[mode])
            shown.add(name)
            oom = line[line["status"] == "oom"].sort_values("seq_len")
            if len(oom):
                # each row's marks one step further out, so two rows' crosses never cover each other
                y = extreme / (1.3 ** len(oom_marks)) if below else extreme * (1.3 ** len(oom_marks))
                oom_marks.append(y)
                fig.add_trace(go.Scatter(
                    x=[int(x) for x in oom["seq_len"]], y=[y] * len(oom), mode="markers+text",
                    text=["OOM"] * len(oom), textposition="bottom center" if below else "top center",
                    textfont=dict(color=colors[label], size=11), cliponaxis=False,
                    customdata=[hover(r, name) for _, r in oom.iterrows()],
                    name=f"{name}: OOM", legendgroup=name, showlegend=False, visible=visible,
                    marker=dict(symbol="x-thin-open", size=14, line=dict(width=3, color=colors[label]),
                                color=colors[label]),
                    hovertemplate="%{customdata}<extra></extra>",
                ), row=1, col=col_of[mode])
        tickvals, ticktext = log_ticks(values, compact=metric == "throughput")
        span = [v for v in values + tickvals if np.isfinite(v) and v > 0]
        low, high = min(span) / 1.15, max(span) * 1.25
        if oom_marks:  # the marks and their labels inside the panel, with room for the text
            low, high = (min(low, min(oom_marks) / OOM_ROOM), high) if below else \
                        (low, max(high, max(oom_marks) * OOM_ROOM))
        settings[col_of[mode]] = {"type": "log", "tickvals": tickvals, "ticktext": ticktext,
                                  "range": [math.log10(low), math.log10(high)],
                                  "title.text": axis_title if col_of[mode] == 1 else None}
    return settings


def _axis_name(col: int) -> str:
    return "yaxis" if col == 1 else f"yaxis{col}"


def _title(metric: str, keep: dict, across_runs: bool) -> str:
    title = f"{METRICS[metric][0]} vs sequence length — {slice_text(keep)}"
    return title + (" — across runs (dash = run)" if across_runs else "")


def length_figure(df: pd.DataFrame, metric: str, slice_: dict | None = None, across_runs: bool = False,
                  aggregate: bool = False, alternate: str | None = None) -> go.Figure | None:
    """`metric` ('time' | 'throughput' | 'memory') against length for one slice (task, batch,
    dtype, device, device name), one panel per mode. `alternate`: a second metric of the same
    cells behind a button (the report's time figure offers throughput). `across_runs`: one line per
    (row label, run), dash = run, instead of the table's cell (the latest run's, or the pooled
    runs' with `aggregate`)."""
    df = prepare(df) if "peak_bytes" not in df else df
    if across_runs:
        cells = latest(df[(df["kind"] == "speed") & df["seq_len"].notna()],
                              SPEED_KEYS + ("run_id",))
    else:
        cells = speed_cells(df, aggregate)
    if cells.empty:
        return None
    slice_ = slice_ or speed_slices(speed_cells(df))[0]
    keep = {k: v for k, v in slice_.items() if k != "mode"}
    cells = select_slice(cells, keep)  # every mode of the slice: one panel each
    if cells.empty:
        return None
    unit = MEMORY_UNIT
    modes = sorted(cells["mode"].dropna().unique(), key=lambda m: (m != "train_step", m))
    order = row_order(df, keep, modes, aggregate)
    order += sorted(set(cells["label"].dropna()) - set(order), key=natural)
    if across_runs:
        runs = sorted(set(cells["run_id"].dropna()))
        groups = [(label, run) for label in order for run in runs]
    else:
        groups = order
    fig, col_of = _panels(modes)
    colors = model_colors(df["label"].dropna())
    hover = _Hover(df, keep, unit)
    metrics = [metric] + ([alternate] if alternate and alternate != metric else [])
    traces, axes = {}, {}
    for m in metrics:
        start = len(fig.data)
        axes[m] = _draw(fig, cells, m, modes, col_of, groups, colors, hover, unit, m == metric, across_runs)
        traces[m] = range(start, len(fig.data))
    if (cells["status"] == "oom").any():  # the legend says what a ✕ is
        fig.add_trace(go.Scatter(
            x=[None], y=[None], mode="markers", name=OOM_NAME, legendgroup="oom", hoverinfo="skip",
            marker=dict(symbol="x-thin-open", size=12, line=dict(width=3, color=OOM_COLOR), color=OOM_COLOR),
        ), row=1, col=1)
    for mode in modes:
        _log2_axis(fig, cells.loc[cells["mode"] == mode, "seq_len"].dropna(), row=1, col=col_of[mode])
    for col, settings in axes[metric].items():
        fig.update_layout({f"{_axis_name(col)}.{k}": v for k, v in settings.items()})
    _style(fig, _title(metric, keep, across_runs))
    # tall enough for every legend entry (a legend taller than the plot scrolls, hiding the last
    # entries: the OOM key among them)
    entries = len({t.legendgroup for t in fig.data if t.showlegend is not False and t.visible is not False})
    top = 124 if len(metrics) > 1 else 70
    fig.update_layout(height=max(HEIGHT, top + 50 + LEGEND_ROW * entries + 16), legend_tracegroupgap=2)
    if len(metrics) > 1:
        buttons = []
        for m in metrics:
            visible = [i in traces[m] or not any(i in r for r in traces.values()) for i in range(len(fig.data))]
            layout = {f"{_axis_name(col)}.{k}": v for col, s in axes[m].items() for k, v in s.items()}
            layout["title.text"] = _title(m, keep, across_runs)
            buttons.append(dict(label=METRICS[m][1].format(unit=unit[0]), method="update",
                                args=[{"visible": visible}, layout]))
        # a row of their own between the title (pinned to the top) and the panels' titles, so a
        # long title or a wide legend never runs into them
        fig.update_layout(margin=dict(t=top), title=dict(yref="container", y=1.0, yanchor="top",
                                                         pad=dict(t=14)),
                          updatemenus=[dict(
                              type="buttons", direction="right", buttons=buttons, active=0, showactive=True,
                              x=0.0, xanchor="left", y=1.0, yanchor="bottom", pad=dict(t=0, b=30, l=0),
                              font=dict(size=12))])
    return fig


# -- accuracy against speed -------------------------------------------------------------------------

def accuracy_vs_speed(df: pd.DataFrame, length: int = 4096, aggregate: bool = False) -> go.Figure | None:
    """Accuracy (y) against time per step at the efficiency length (x, log), bubble area = peak
    memory, one bubble per row label. Accuracy is the LRA Avg where rows have one, else the mean
    over the accuracy columns every plotted row has (named on the axis); the numbers come from the
    accuracy table's cells, never from its display text. Reference rows have no speed: not drawn."""
    df = prepare(df) if "peak_bytes" not in df else df
    acc_table = tables.accuracy_table(df, aggregate)
    cells = speed_cells(df, aggregate)
    if acc_table is None or cells.empty:
        return None
    slice_ = speed_slices(cells)[0]
    cells = select_slice(cells, slice_)
    at = nearest_length(cells["seq_len"].dropna(), length)
    speed = {r["label"]: r for _, r in cells[(cells["seq_len"] == at) & (cells["status"] == "ok")].iterrows()}
    columns = [c for c in acc_table.columns if c not in tables.MODEL_COLUMNS]
    # the mean accuracies behind the cells (the table's numbers, never its display text)
    mean = {(row, c): number(acc_table.values.loc[row, c]) for row in acc_table.index for c in columns}
    labels = [r for r in acc_table.index if r in speed]
    if not labels:
        return None
    averages = {r: mean[(r, "Avg")] for r in labels if "Avg" in columns and mean[(r, "Avg")] is not None}
    if averages:
        y_label, scores = "LRA Avg accuracy (%)", averages
    else:
        task_cols = [c for c in columns if not c.startswith("Avg")]
        common = [c for c in task_cols if all(mean[(r, c)] is not None for r in labels)]
        if not common:
            return None
        y_label = f"mean accuracy over {', '.join(common)} (%)"
        scores = {r: float(np.mean([mean[(r, c)] for c in common])) for r in labels}
    colors = model_colors(df["label"].dropna())
    hover = _Hover(df, slice_, ("GiB", GIB))
    mem = np.array([speed[r]["peak_bytes"] / GIB for r in scores], dtype=float)
    mem = np.where(np.isfinite(mem), mem, np.nanmin(mem) if np.isfinite(mem).any() else 1.0)
    sizeref = 2.0 * max(float(np.nanmax(mem)), 1e-9) / (60.0 ** 2)  # largest bubble ~60 px
    fig = go.Figure()
    for (label, score), gib in zip(scores.items(), mem):
        text = hover(speed[label], label, (f"{html.escape(y_label.split(' (')[0])} {score:.1f}%",))
        fig.add_trace(go.Scatter(
            x=[speed[label]["timing.median_ms"]], y=[score], mode="markers+text", name=label,
            text=[label], textposition="top center", customdata=[text],
            marker=dict(size=[gib], sizemode="area", sizeref=sizeref, sizemin=6, color=colors[label],
                        opacity=0.75, line=dict(width=1, color="#333")),
            hovertemplate="%{customdata}<extra></extra>",
        ))
    times = [speed[r]["timing.median_ms"] for r in scores]
    tickvals, ticktext = log_ticks(times, compact=False)
    span = [v for v in times + tickvals if np.isfinite(v) and v > 0]
    fig.update_xaxes(type="log", title_text=f"time per step at L={at} (ms, log; left is faster)",
                     tickvals=tickvals, ticktext=ticktext,
                     range=[math.log10(min(span) / 1.3), math.log10(max(span) * 1.3)])
    fig.update_layout(showlegend=False)  # every bubble carries its row label
    fig.update_yaxes(title_text=y_label)
    return _style(fig, f"Accuracy vs speed — bubble area = peak memory at L={at} "
                       f"({slice_text(slice_)})")


# -- the report's figures ---------------------------------------------------------------------------

def report_figures(df: pd.DataFrame, length: int = 4096, aggregate: bool = False) -> list[tuple]:
    """Every figure of a report as (id, title, Figure), in reading order: per slice (the tables'
    order), time per step (throughput behind its button) and peak memory; then accuracy vs speed.
    One figure per metric and slice: other runs' measurements of a cell are in its hover text."""
    df = prepare(df)
    out = []
    cells = speed_cells(df, aggregate)
    # the device's name enters a figure's id only when the records hold more than one (the ids stay
    # short and stable for the common one-machine report)
    several_devices = cells["hardware.device_name"].nunique(dropna=False) > 1 if not cells.empty else False
    seen = set()
    for slice_ in speed_slices(cells):
        keep = tuple((k, slice_[k]) for k in SLICE_KEYS if k != "mode")
        if keep in seen:  # modes are panels of one figure
            continue
        seen.add(keep)
        suffix = slug("-".join(str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
                                       for k, v in keep if k != "hardware.device_name" or several_devices))
        for metric, alternate in (("time", "throughput"), ("memory", None)):
            fig = length_figure(df, metric, dict(keep), aggregate=aggregate, alternate=alternate)
            if fig is not None:
                out.append((f"fig-{metric}-{suffix}", fig.layout.title.text, fig))
    fig = accuracy_vs_speed(df, length, aggregate)
    if fig is not None:
        out.append(("fig-accuracy-vs-speed", fig.layout.title.text, fig))
    return out

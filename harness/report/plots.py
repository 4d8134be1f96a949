"""Plots of stored results (plotly): time, throughput and peak memory against sequence length, and
accuracy against speed, for one run (latest record per cell) or across runs (colour = row,
dash = run). Every function returns a `plotly.graph_objects.Figure`.

Conventions (shared/spec/measurement.md §5.9, harness.md "Tables and reports"):
- x is log2 with the swept lengths as ticks (plotly's default log ticks would read 2, 5, 10...);
- one line per row label (model and variant: `mega_chunk [compile=true]`), the same colour for a
  label in every figure, and the legend names the label, never the bare model;
- one figure per slice (task configuration, batch, dtype, device and the device's name: two GPUs
  never share an axis);
- a cell that ran out of memory is drawn as an "OOM" cross above the model's line (there is no
  number to plot, and leaving it out would hide the failure); skipped cells are not drawn;
- one panel per mode (train_step = forward + backward + optimizer step, forward = inference);
- time plots draw the p20-p80 spread of the timed iterations as error bars around the median.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from harness.report import tables

PALETTE = qualitative.D3 + qualitative.Dark2
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
HEIGHT = 420
METRICS = {  # metric -> (column, axis title, scale applied to the column, hover format)
    "time": ("timing.median_ms", "time per step (ms)", 1.0, ".3s"),
    "throughput": ("throughput_tokens_per_s", "throughput (tokens/s)", 1.0, ".3s"),
    "memory": ("peak_bytes", "peak memory (GiB)", 1.0 / tables.GIB, ".3f"),
}
MODE_TITLES = {"train_step": "train_step (forward + backward + optimizer step)",
               "forward": "forward (inference)"}


def model_colors(models) -> dict:
    """A stable colour per row label (natural order), shared by every figure of a report."""
    ordered = sorted(set(models), key=tables._natural)
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(ordered)}


def _throughput(cells: pd.DataFrame) -> pd.Series:
    """Recorded tokens/s, else B*L / median time."""
    derived = cells["batch_size"] * cells["seq_len"] / (cells["timing.median_ms"] / 1000.0)
    return cells["throughput_tokens_per_s"].fillna(derived)


def si(value: float) -> str:
    """Compact tick label: 0.5, 20, 300, 2k, 1.5M."""
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:g}{suffix}"
    return f"{value:g}"


def log_ticks(values) -> tuple[list, list]:
    """Readable ticks for a log axis: the coarsest of 1 / 1-2-5 / 1-2-3-5-7 / 1..9 per decade that
    puts 3 to 10 ticks on the data (plotly's own minor labels, '2' and '5' beside 10 and 100,
    read as a muddle, and a narrow range would get a single label)."""
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
    return ticks, [si(t) for t in ticks]


def _log2_axis(fig: go.Figure, lengths, **where) -> None:
    lengths = sorted({int(x) for x in lengths})
    fig.update_xaxes(type="log", tickvals=lengths, ticktext=[tables.length_label(x) for x in lengths],
                     title_text="sequence length L", **where)
    if lengths:  # a little margin so the end markers are not clipped
        lo, hi = math.log10(lengths[0]), math.log10(lengths[-1])
        pad = max(hi - lo, math.log10(2)) * 0.06
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


def _oom_y(values: pd.Series, below: bool = False) -> float:
    """Where OOM crosses sit on a log axis: above the panel's highest value (time, memory), or
    below its lowest where higher is better (throughput), so a cross never reads as a good value."""
    finite = values[np.isfinite(values) & (values > 0)]
    if finite.empty:
        return 1.0
    return float(finite.min()) / 1.6 if below else float(finite.max()) * 1.6


def length_figure(df: pd.DataFrame, metric: str, slice_: dict | None = None,
                  across_runs: bool = False, aggregate: bool = False) -> go.Figure | None:
    """`metric` ('time' | 'throughput' | 'memory') against length for one slice (task, batch,
    dtype, device, device name), one panel per mode. `across_runs`: one line per (row label, run),
    dash = run."""
    column, axis_title, scale, hover = METRICS[metric]
    df = tables.prepare(df) if "peak_bytes" not in df else df
    cells = df[df["kind"] == "speed"]
    if not across_runs:
        cells = tables.speed_cells(df, aggregate)
    else:
        cells = tables.latest(cells, tables.SPEED_KEYS + ("run_id",))
    if cells.empty:
        return None
    slice_ = slice_ or tables.speed_slices(tables.speed_cells(df))[0]
    keep = {k: v for k, v in slice_.items() if k != "mode"}
    cells = tables.select_slice(cells, keep)  # every mode of the slice: one panel each
    if cells.empty:
        return None
    if metric == "memory":  # the tables' unit: MiB when every peak is below 1 GiB
        unit, divisor = tables.memory_unit(cells.loc[cells["status"] == "ok", column])
        axis_title, scale = f"peak memory ({unit})", 1.0 / divisor
    cells = cells.assign(value=(_throughput(cells) if metric == "throughput" else cells[column]) * scale)
    modes = sorted(cells["mode"].dropna().unique(), key=lambda m: (m != "train_step", m))
    fig, col_of = _panels(modes)
    colors = model_colors(df["label"].dropna())
    runs = sorted(cells["run_id"].dropna().unique())
    dash_of = {r: DASHES[i % len(DASHES)] for i, r in enumerate(runs)}
    group_keys = ["label", "run_id"] if across_runs else ["label"]
    shown = set()
    for mode in modes:
        panel = cells[cells["mode"] == mode]
        oom_at = _oom_y(panel.loc[panel["status"] == "ok", "value"], below=metric == "throughput")
        for key, line in panel.groupby(group_keys, sort=False):
            label = key[0] if isinstance(key, tuple) else key
            run = key[1] if across_runs else None
            line = line.sort_values("seq_len")
            name = f"{label} · {run}" if across_runs else label
            ok = line[(line["status"] == "ok") & np.isfinite(line["value"])]
            legend_first = name not in shown
            shown.add(name)
            spread = None
            if metric == "time":  # the p20-p80 spread of the timed iterations as error bars
                spread = dict(type="data", symmetric=False, thickness=1.2, width=4,
                              array=(ok["timing.p80_ms"] - ok["value"]).clip(lower=0).fillna(0).tolist(),
                              arrayminus=(ok["value"] - ok["timing.p20_ms"]).clip(lower=0).fillna(0).tolist())
            fig.add_trace(go.Scatter(
                x=ok["seq_len"], y=ok["value"], mode="lines+markers", name=name, legendgroup=name,
                error_y=spread,
                showlegend=legend_first,
                line=dict(color=colors[label], dash=dash_of.get(run, "solid") if across_runs else "solid",
                          width=2),
                marker=dict(size=7),
                hovertemplate=f"{name}<br>L=%{{x}}<br>{axis_title}: %{{y:{hover}}}<extra></extra>",
            ), row=1, col=col_of[mode])
            oom = line[line["status"] == "oom"]
            if len(oom):
                fig.add_trace(go.Scatter(
                    x=oom["seq_len"], y=[oom_at] * len(oom), mode="markers+text", text=["OOM"] * len(oom),
                    textposition="bottom center" if metric == "throughput" else "top center",
                    textfont=dict(color=colors[label], size=11),
                    name=f"{name}: OOM", legendgroup=name, showlegend=False,
                    marker=dict(symbol="x-thin-open", size=14, line=dict(width=3, color=colors[label]),
                                color=colors[label]),
                    hovertemplate=f"{name}<br>L=%{{x}}: out of memory<extra></extra>",
                ), row=1, col=col_of[mode])
        _log2_axis(fig, panel["seq_len"].dropna(), row=1, col=col_of[mode])
        drawn = panel[panel["status"] == "ok"]
        shown_values = list(drawn["value"]) + ([oom_at] if (panel["status"] == "oom").any() else [])
        if metric == "time":
            shown_values += list(drawn["timing.p20_ms"].dropna()) + list(drawn["timing.p80_ms"].dropna())
        tickvals, ticktext = log_ticks(shown_values)
        fig.update_yaxes(type="log", title_text=axis_title if col_of[mode] == 1 else None,
                         tickvals=tickvals, ticktext=ticktext, row=1, col=col_of[mode])
        if tickvals:  # the range must hold every tick, or plotly hides the outer ones
            span = [v for v in shown_values + tickvals if np.isfinite(v) and v > 0]
            fig.update_yaxes(range=[math.log10(min(span) / 1.15), math.log10(max(span) * 1.25)],
                             row=1, col=col_of[mode])
    what = {"time": "Time per step", "throughput": "Throughput", "memory": "Peak memory"}[metric]
    title = f"{what} vs sequence length — {tables.slice_text(keep)}"
    if across_runs:
        title += " — across runs (dash = run)"
    return _style(fig, title)


def accuracy_vs_speed(df: pd.DataFrame, length: int = 4096, aggregate: bool = False) -> go.Figure | None:
    """Accuracy (y) against time per step at the efficiency length (x, log), bubble area = peak
    memory, one bubble per row label. Accuracy is the LRA Avg where rows have one, else the mean
    over the accuracy columns every plotted row has (named on the axis); the numbers come from the
    accuracy table's cells, never from its display text. Reference rows have no speed: not drawn."""
    df = tables.prepare(df) if "peak_bytes" not in df else df
    acc_table = tables.accuracy_table(df, aggregate)
    cells = tables.speed_cells(df, aggregate)
    if acc_table is None or cells.empty:
        return None
    slice_ = tables.speed_slices(cells)[0]
    cells = tables.select_slice(cells, slice_)
    at = tables.nearest_length(cells["seq_len"].dropna(), length)
    speed = {r["label"]: r for _, r in cells[(cells["seq_len"] == at) & (cells["status"] == "ok")].iterrows()}
    numbers = acc_table.attrs.get("cells", {})
    columns = [c for c in acc_table.columns if c != tables.PARAMS]
    mean = {(row, c): (numbers.get((row, c)) or {}).get("mean") for row in acc_table.index for c in columns}
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
    mem = np.array([speed[r]["peak_bytes"] / tables.GIB for r in scores], dtype=float)
    mem = np.where(np.isfinite(mem), mem, np.nanmin(mem) if np.isfinite(mem).any() else 1.0)
    sizeref = 2.0 * max(float(np.nanmax(mem)), 1e-9) / (60.0 ** 2)  # largest bubble ~60 px
    fig = go.Figure()
    for (label, score), gib in zip(scores.items(), mem):
        fig.add_trace(go.Scatter(
            x=[speed[label]["timing.median_ms"]], y=[score], mode="markers+text", name=label,
            text=[label], textposition="top center",
            marker=dict(size=[gib], sizemode="area", sizeref=sizeref, sizemin=6, color=colors[label],
                        opacity=0.75, line=dict(width=1, color="#333")),
            hovertemplate=(f"{label}<br>time %{{x:.3s}} ms<br>accuracy %{{y:.1f}}%<br>"
                           f"peak memory {gib:.2f} GiB<extra></extra>"),
        ))
    times = [speed[r]["timing.median_ms"] for r in scores]
    tickvals, ticktext = log_ticks(times)
    span = [v for v in times + tickvals if np.isfinite(v) and v > 0]
    fig.update_xaxes(type="log", title_text=f"time per step at L={at} (ms, log; left is faster)",
                     tickvals=tickvals, ticktext=ticktext,
                     range=[math.log10(min(span) / 1.3), math.log10(max(span) * 1.3)])
    fig.update_layout(showlegend=False)  # every bubble carries its row label
    fig.update_yaxes(title_text=y_label)
    return _style(fig, f"Accuracy vs speed — bubble area = peak memory at L={at} "
                       f"({tables.slice_text(slice_)})")


def report_figures(df: pd.DataFrame, length: int = 4096, aggregate: bool = False) -> list[tuple]:
    """Every figure of a report as (id, title, Figure), in reading order."""
    df = tables.prepare(df)
    out = []
    cells = tables.speed_cells(df, aggregate)
    # the device's name enters a figure's id only when the records hold more than one (the ids stay
    # short and stable for the common one-machine report)
    several_devices = cells["hardware.device_name"].nunique(dropna=False) > 1 if not cells.empty else False
    seen = set()
    for slice_ in tables.speed_slices(cells):
        keep = tuple((k, slice_[k]) for k in tables.SLICE_KEYS if k != "mode")
        if keep in seen:  # modes are panels of one figure
            continue
        seen.add(keep)
        suffix = tables._slug("-".join(str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
                                       for k, v in keep if k != "hardware.device_name" or several_devices))
        for metric in ("time", "throughput", "memory"):
            fig = length_figure(df, metric, dict(keep), aggregate=aggregate)
            if fig is not None:
                out.append((f"fig-{metric}-{suffix}", fig.layout.title.text, fig))
        if df.loc[df["kind"] == "speed", "run_id"].nunique() > 1:
            for metric in ("time", "memory"):
                fig = length_figure(df, metric, dict(keep), across_runs=True)
                if fig is not None:
                    out.append((f"fig-{metric}-runs-{suffix}", fig.layout.title.text, fig))
    fig = accuracy_vs_speed(df, length, aggregate)
    if fig is not None:
        out.append(("fig-accuracy-vs-speed", fig.layout.title.text, fig))
    return out

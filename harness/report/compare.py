"""Compare two runs cell by cell: is B faster, leaner or more accurate than A, or only noisier?

A speed cell matches on (model, task, seq_len, batch_size, dtype, device, mode); an accuracy cell on
(model, task, seed). Matched cells whose model configuration hash, task version (or, for accuracy,
data provenance) differ are listed as "not comparable" instead of compared: a different config is
a different experiment.

Verdicts per metric (change in percent of A's value, B - A):
- median time: "within noise" when the p20-p80 intervals of A and B overlap (the spread of each
  measurement, flash-linear-attention style), else better / worse; without intervals, a change
  smaller than the threshold is noise;
- peak memory: "within noise" below MEMORY_NOISE_PCT (allocator peaks are nearly deterministic);
- accuracy: "within noise" when the change is smaller than the threshold.
A regression is a "worse" verdict whose change exceeds `threshold_pct`, or a cell that measured
in A and fails in B (OOM or error).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.report import tables
from harness.report.html import resolve_runs
from harness.store import load_records

MEMORY_NOISE_PCT = 2.0
ACCURACY_KEYS = ("model", "task", "seed")
COLUMNS = ["kind", "model", "task", "seq_len", "batch_size", "dtype", "device", "mode", "seed",
           "metric", "a", "b", "change_pct", "verdict", "regression", "note"]


def _change(a: float, b: float) -> float:
    return (b - a) / abs(a) * 100.0 if a else np.nan


def _verdict(change: float, worse_if_higher: bool, noise: bool, threshold_pct: float) -> tuple[str, bool]:
    if noise or not np.isfinite(change) or change == 0:
        return "within noise", False
    worse = change > 0 if worse_if_higher else change < 0
    return ("worse", abs(change) > threshold_pct) if worse else ("better", False)


def _overlap(a_lo, a_hi, b_lo, b_hi) -> bool | None:
    values = (a_lo, a_hi, b_lo, b_hi)
    if any(v is None or not np.isfinite(v) for v in values):
        return None
    return not (a_hi < b_lo or b_hi < a_lo)


def _status_row(base: dict, a: pd.Series, b: pd.Series) -> dict:
    """Cells where A or B has no number: a change of status, not of value."""
    sa, sb = a["status"], b["status"]
    row = dict(base, metric="status", a=sa, b=sb, change_pct=np.nan, regression=False, note="")
    if sa == "ok" and sb in ("oom", "error"):
        row.update(verdict=f"worse (now {tables.status_text(sb)})", regression=True,
                   note=(b["error"] or "")[:200] if isinstance(b["error"], str) else "")
    elif sa == "ok":
        row.update(verdict=f"not measured in B ({sb})")
    elif sb == "ok":
        row.update(verdict=f"better (was {tables.status_text(sa)})")
    else:
        row.update(verdict=f"unchanged status ({sa} / {sb})" if sa == sb else f"status {sa} -> {sb}")
    return row


def _not_comparable(a: pd.Series, b: pd.Series, kind: str) -> str | None:
    reasons = []
    for field, label in (("model_config_hash", "model config hash"), ("task_version", "task version")):
        va, vb = a[field], b[field]
        if va is not None and vb is not None and va != vb:
            reasons.append(f"{label} {va} vs {vb}")
    if kind == "accuracy" and a["provenance"] != b["provenance"]:
        reasons.append(f"data {a['provenance']} vs {b['provenance']}")
    return "; ".join(reasons) or None


def _compare_speed(a: pd.Series, b: pd.Series, base: dict, threshold_pct: float) -> list[dict]:
    rows = []
    ta, tb = a["timing.median_ms"], b["timing.median_ms"]
    change = _change(ta, tb)
    overlap = _overlap(a["timing.p20_ms"], a["timing.p80_ms"], b["timing.p20_ms"], b["timing.p80_ms"])
    noise = overlap if overlap is not None else abs(change) < threshold_pct
    verdict, regression = _verdict(change, True, noise, threshold_pct)
    note = (f"p20-p80 A [{tables.fmt_ms(a['timing.p20_ms'])}, {tables.fmt_ms(a['timing.p80_ms'])}] "
            f"B [{tables.fmt_ms(b['timing.p20_ms'])}, {tables.fmt_ms(b['timing.p80_ms'])}]"
            if overlap is not None else "no p20/p80: threshold used as noise")
    rows.append(dict(base, metric="median time (ms)", a=ta, b=tb, change_pct=change, verdict=verdict,
                     regression=regression, note=note))
    ma, mb = a["peak_bytes"], b["peak_bytes"]
    if np.isfinite(ma) and np.isfinite(mb):
        change = _change(ma, mb)
        verdict, regression = _verdict(change, True, abs(change) < MEMORY_NOISE_PCT, threshold_pct)
        rows.append(dict(base, metric="peak memory (GiB)", a=ma / tables.GIB, b=mb / tables.GIB,
                         change_pct=change, verdict=verdict, regression=regression,
                         note=f"noise: below {MEMORY_NOISE_PCT:g}%"))
    return rows


def _compare_accuracy(a: pd.Series, b: pd.Series, base: dict, threshold_pct: float) -> list[dict]:
    va, vb = a["metrics.accuracy"] * 100.0, b["metrics.accuracy"] * 100.0
    change = _change(va, vb)
    verdict, regression = _verdict(change, False, abs(change) < threshold_pct, threshold_pct)
    return [dict(base, metric="accuracy (%)", a=va, b=vb, change_pct=change, verdict=verdict,
                 regression=regression, note=f"noise: below {threshold_pct:g}%")]


def compare_frames(df_a: pd.DataFrame, df_b: pd.DataFrame, threshold_pct: float = 10.0) -> tuple[pd.DataFrame, int]:
    """Compare two prepared record frames (see `compare_runs`)."""
    rows = []
    for kind, keys in (("speed", tables.SPEED_KEYS), ("accuracy", ACCURACY_KEYS)):
        a = tables.latest(df_a[df_a["kind"] == kind], keys)
        b = tables.latest(df_b[df_b["kind"] == kind], keys)
        index_a = {tuple(r[k] for k in keys): r for _, r in a.iterrows()}
        index_b = {tuple(r[k] for k in keys): r for _, r in b.iterrows()}
        for key in sorted(set(index_a) | set(index_b), key=lambda k: [tables._natural(v) for v in k]):
            ra, rb = index_a.get(key), index_b.get(key)
            source = ra if ra is not None else rb
            base = {c: None for c in COLUMNS} | {"kind": kind} | {
                k: source[k] for k in tables.SPEED_KEYS + ACCURACY_KEYS if k in keys}
            if ra is None or rb is None:
                rows.append(dict(base, metric="-", verdict="only in B" if ra is None else "only in A",
                                 regression=False, note=""))
                continue
            reason = _not_comparable(ra, rb, kind)
            if reason:
                rows.append(dict(base, metric="-", verdict="not comparable", regression=False, note=reason))
                continue
            value = "timing.median_ms" if kind == "speed" else "metrics.accuracy"
            measured = [r["status"] == "ok" and np.isfinite(r[value]) for r in (ra, rb)]
            if not all(measured):
                rows.append(_status_row(base, ra, rb))
            elif kind == "speed":
                rows += _compare_speed(ra, rb, base, threshold_pct)
            else:
                rows += _compare_accuracy(ra, rb, base, threshold_pct)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame, int(frame["regression"].fillna(False).astype(bool).sum())


def compare_runs(results_dir, run_a: str, run_b: str, threshold_pct: float = 10.0) -> tuple[pd.DataFrame, int]:
    """Per matching cell of runs A and B: change in percent of median time, peak memory and
    accuracy with a verdict; returns (frame, number of regressions beyond `threshold_pct`)."""
    resolve_runs(results_dir, [run_a, run_b])  # unknown ids: UserError naming the available runs
    records = tables.prepare(load_records(results_dir, [run_a, run_b]))
    return compare_frames(records[records["run_id"] == run_a], records[records["run_id"] == run_b],
                          threshold_pct)


def _int(value):
    """A whole-number field for display; '?' when a damaged record lacks it (NaN after `prepare`)."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "?"
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _category(verdict: str) -> str:
    for name in ("within noise", "not comparable", "only in", "not measured", "unchanged", "better",
                 "worse"):
        if verdict.startswith(name):
            return name
    return "status change"


def format_comparison(frame: pd.DataFrame, run_a: str, run_b: str, threshold_pct: float) -> str:
    """The comparison as a Markdown table plus a one-line summary."""
    if frame.empty:
        return f"no cells to compare between {run_a} and {run_b}\n"

    def number(value, metric):
        if isinstance(value, str) or value is None or (isinstance(value, float) and not np.isfinite(value)):
            return tables.DASH if value is None or isinstance(value, float) else value
        if metric == "peak memory (GiB)":
            return f"{value:.2f}" if value >= 0.1 else tables.fmt_sig(value, 2)
        return f"{value:.1f}" if metric == "accuracy (%)" else tables.fmt_ms(value)

    display = {}
    for i, row in frame.iterrows():
        cell = (f"{row['model']} · {row['task']}"
                + (f" · L={_int(row['seq_len'])} · b={_int(row['batch_size'])} · {row['dtype']} · "
                   f"{row['device']} · {row['mode']}" if row["kind"] == "speed" else f" · seed {_int(row['seed'])}"))
        change = row["change_pct"]
        display[f"{i:04d}"] = {
            "cell": cell, "metric": row["metric"], "A": number(row["a"], row["metric"]),
            "B": number(row["b"], row["metric"]),
            "change": f"{change:+.1f}%" if isinstance(change, float) and np.isfinite(change) else tables.DASH,
            "verdict": row["verdict"] + (" ⚠ regression" if row["regression"] else ""),
            "note": row["note"] or "",
        }
    columns = ["cell", "metric", "A", "B", "change", "verdict", "note"]
    table = pd.DataFrame.from_dict(display, orient="index", columns=columns).set_index("cell")
    n_reg = int(frame["regression"].astype(bool).sum())
    counts = frame["verdict"].map(_category).value_counts()
    table.attrs.update(
        title=f"Comparison {run_a} (A) -> {run_b} (B)",
        caption=(f"change = (B - A) / A; time within noise when the p20-p80 intervals overlap, memory "
                 f"below {MEMORY_NOISE_PCT:g}%, accuracy below {threshold_pct:g}%; regression = worse by "
                 f"more than {threshold_pct:g}% or newly failing."),
        left_columns=["metric", "verdict", "note"])
    summary = (f"{n_reg} regression{'s' if n_reg != 1 else ''} beyond {threshold_pct:g}% "
               f"({', '.join(f'{n} {v}' for v, n in counts.items())})")
    flagged = [f"  {c}: {m} {ch} ({v})" for c, m, ch, v, flag in zip(
        table.index, table["metric"], table["change"], table["verdict"], frame["regression"]) if flag]
    listing = ("\nRegressions:\n" + "\n".join(flagged) + "\n") if flagged else ""
    return tables.render(table, "markdown") + listing + "\n" + summary + "\n"

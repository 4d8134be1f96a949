"""Compare two runs cell by cell: is B faster, leaner or more accurate than A, or only noisier?

The rules are those of shared/spec/statistics.md ("Comparing runs"):

- Accuracy is judged in absolute points over seeds. The records of each run are grouped by
  (row label, task, scale, data provenance); a group's seeds give mean ± sd (n). A drop is a
  regression when Welch's t-test calls it significant (two-sided p < 0.05) with n >= 2 on both
  sides; with n = 1 on a side it must exceed 2 * sqrt(se_A^2 + se_B^2), where
  se = 100 * sqrt(p (1 - p) / N) is the test set's binomial resolution (N = `metrics.n_test`;
  unknown N leaves a single seed "not enough data"). No relative-percent rule: 90.4 -> 82.0 is
  8.4 points whatever the scale. Reference rows (`ref:*`) are compared but never regressions.
- Speed is a regression only when the [p20, p80] intervals of A and B do not overlap AND the
  medians differ by more than `threshold_pct` percent (CPU timings of identical code scatter);
  peak memory is within noise below MEMORY_NOISE_PCT and a regression beyond `threshold_pct`.
- A cell measured in A that fails in B (OOM, error) is a regression.

Cells are matched on what was measured — speed on (model, task, seq_len, batch_size, dtype,
device, mode), accuracy on (model, task) — and then on the architecture: the same architecture
hash is the same experiment even when the execution settings differ (eager vs compiled, another
attention kernel), and those differences are named in the note as `compile: false → true`. A
different architecture, task version, scale or data set is "not comparable", with the differing
keys named; speed cells timed on different devices (`hardware.device_name`) are never compared.

A run is named by its id in the results folder (a folder of run folders' folders included) or by the
path of its run folder, so runs kept in two results folders compare directly. The run settings that
differ (the command's options, the environment, the measurement protocol) head the comparison, each
as `key: old → new`.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from harness.report.format import DASH, MEMORY_UNIT, fmt_mem, fmt_ms, fmt_sig, missing, natural, status_text
from harness.report.render import render
from harness.report.select import REF_PREFIX, ensure_columns, prepare
from harness.report.stats import ALPHA
from harness.report.tables import Table
from harness.store import Run, find_run, load_records

MEMORY_NOISE_PCT = 2.0
SE_FACTOR = 2.0  # single seed: a drop beyond this many combined test-set standard errors
# What was measured; the groups below say which experiment. Row label and device name are not part
# of it: compare pairs across labels (naming the differing settings) and refuses other devices.
SPEED_KEYS = ("model", "task", "seq_len", "batch_size", "dtype", "device", "mode")
ACCURACY_KEYS = ("model", "task")
# One accuracy experiment in one run: its seeds are pooled into mean ± sd (n).
ACCURACY_GROUP = ("label", "model_config_hash", "task_version", "scale", "provenance.kind",
                  "provenance.source", "provenance.subset")
SPEED_GROUP = ("label", "model_config_hash", "task_version")
# Pairing of A's and B's experiments within one measured key, tried in order: the very same
# experiment; the same architecture run another way (another label); the same row with another
# architecture or data (then "not comparable" with reasons); whatever is left, one to one.
_DATA = ("scale", "provenance.kind", "provenance.source", "provenance.subset")
ACCURACY_PAIRING = (ACCURACY_GROUP, ("model_config_hash", "task_version") + _DATA, ("label",) + _DATA,
                    _DATA, ("label",), ())
SPEED_PAIRING = (SPEED_GROUP, ("model_config_hash", "task_version"), ("label",), ())
COLUMNS = ["kind", "model", "label", "task", "seq_len", "batch_size", "dtype", "device", "mode",
           "scale", "provenance", "metric", "a", "b", "change", "change_pct", "p_value", "test",
           "verdict", "regression", "note"]
METRIC_LABELS = {"accuracy": "accuracy (%)", "median_ms": "median time (ms)",
                 "peak_bytes": "peak memory", "status": "status"}
_ARROW = "→"


# -- small helpers ----------------------------------------------------------------------------------

def _plain(value):
    """A JSON-ready scalar: numpy numbers as Python numbers, NaN as None."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return None if value is pd.NA else value


def _whole(value):
    """A count or size read back as float by pandas (1024.0) as the integer it is."""
    value = _plain(value)
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _show(value) -> str:
    """A setting as text: booleans and numbers as JSON writes them (`false`, `256`), text bare."""
    value = _plain(value)
    if value is None:
        return DASH
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, sort_keys=True)


def _diffs(ra: pd.Series, rb: pd.Series, prefixes) -> list[str]:
    """`key: old → new` for every dotted column under `prefixes` whose value differs."""
    out, seen = [], set()
    for prefix in prefixes:
        keys = sorted({c for c in list(ra.index) + list(rb.index) if c.startswith(prefix + ".")})
        for column in keys:
            name = column[len(prefix) + 1:]
            va, vb = _plain(ra.get(column)), _plain(rb.get(column))
            if name in seen or va == vb:
                continue
            seen.add(name)
            out.append(f"{name}: {_show(va)} {_ARROW} {_show(vb)}")
    return out


def _first(series: pd.Series):
    values = [v for v in series if not missing(v)]
    return values[0] if values else None


def _ident(row: pd.Series, fields) -> tuple:
    return tuple(None if missing(row.get(f)) else row.get(f) for f in fields)


def _sort_key(key: tuple) -> list:
    return [natural("" if v is None else v) for v in key]


def _pair(keys_a, keys_b, fields, pairing) -> list[tuple]:
    """Pair A's experiment identities with B's, trying each projection of `pairing` in turn."""
    left_a, left_b = sorted(keys_a, key=_sort_key), sorted(keys_b, key=_sort_key)
    pairs = []
    for projection in pairing:
        index = [fields.index(f) for f in projection]
        for ka in list(left_a):
            match = next((kb for kb in left_b if [kb[i] for i in index] == [ka[i] for i in index]), None)
            if match is not None:
                pairs.append((ka, match))
                left_a.remove(ka)
                left_b.remove(match)
    return pairs + [(ka, None) for ka in left_a] + [(None, kb) for kb in left_b]


def _provenance(row: pd.Series) -> dict | None:
    kind = row.get("provenance.kind")
    if missing(kind):
        return None
    subset = row.get("provenance.subset")
    return {"kind": kind, "source": _plain(row.get("provenance.source")),
            "subset": None if missing(subset) else subset}


def _provenance_text(prov: dict | None) -> str:
    if prov is None:
        return "data unknown"
    text = f"{prov['kind']}: {prov['source']}"
    return f"{text} ({prov['subset']})" if prov.get("subset") else text


def _incomparable(ra: pd.Series, rb: pd.Series, kind: str) -> list[str]:
    """Why two paired experiments are different experiments (empty: they may be compared)."""
    reasons = []
    ha, hb = ra.get("model_config_hash"), rb.get("model_config_hash")
    if not missing(ha) and not missing(hb) and ha != hb:
        arch = _diffs(ra, rb, ("model_config",))
        reasons.append("architecture " + ("; ".join(arch) if arch else
                                          "(its configuration is not in the records, only its hash)"))
    va, vb = ra.get("task_version"), rb.get("task_version")
    if not missing(va) and not missing(vb) and va != vb:
        reasons.append(f"task version: {va} {_ARROW} {vb}")
    if kind == "accuracy":
        if _plain(ra.get("scale")) != _plain(rb.get("scale")):
            reasons.append(f"scale: {_show(ra.get('scale'))} {_ARROW} {_show(rb.get('scale'))}")
        pa, pb = _provenance(ra), _provenance(rb)
        if pa != pb:
            reasons.append(f"data: {_provenance_text(pa)} {_ARROW} {_provenance_text(pb)}")
    else:
        da, db = ra.get("hardware.device_name"), rb.get("hardware.device_name")
        if not missing(da) and not missing(db) and da != db:
            reasons.append(f"device: {da} {_ARROW} {db}")
    return reasons


def _setting_notes(ra: pd.Series, rb: pd.Series) -> list[str]:
    """Execution settings and variant keys that differ between two comparable experiments."""
    return _diffs(ra, rb, ("runtime_config", "variant"))


# -- preparing the records --------------------------------------------------------------------------

_EXTRA_NUMERIC = ("metrics.accuracy", "metrics.val_accuracy", "metrics.n_test", "timing.median_ms",
                  "timing.p20_ms", "timing.p80_ms", "train.lr", "train.lr_multiplier")
_EXTRA_TEXT = ("label", "scale", "provenance.kind", "provenance.source", "provenance.subset",
               "hardware.device_name", "model_config_hash", "task_version", "status", "error")


def _prepared(records: pd.DataFrame) -> pd.DataFrame:
    """`select.prepare` (label, peak_bytes, ...) plus the typed columns compare reads."""
    df = ensure_columns(prepare(records), _EXTRA_NUMERIC, _EXTRA_TEXT)
    return df.sort_values(["run_id", "created"], kind="stable")


def _chosen_lr(group: pd.DataFrame) -> pd.DataFrame:
    """With an --lr-grid, the grid point the tables show: best mean validation accuracy."""
    multipliers = group["train.lr_multiplier"].dropna().unique()
    if len(multipliers) < 2:
        return group
    ok = group[group["status"] == "ok"]
    val = ok.groupby("train.lr_multiplier")["metrics.val_accuracy"].mean().dropna()
    if val.empty:
        return group
    best = val.sort_index().idxmax()  # ties: the smaller multiplier
    return group[group["train.lr_multiplier"] == best]


# -- accuracy -----------------------------------------------------------------------------------------

def _accuracy_side(group: pd.DataFrame) -> tuple[dict, np.ndarray]:
    """One run's seeds of one experiment: the numbers compare reports, and the values in points."""
    group = _chosen_lr(group.drop_duplicates(["seed", "train.lr_multiplier"], keep="last"))
    ok = group[(group["status"] == "ok") & group["metrics.accuracy"].notna()].sort_values("seed")
    # in points, rounded far below any reported digit so that equal seeds have sd exactly 0
    values = np.round(ok["metrics.accuracy"].to_numpy(dtype=float) * 100.0, 9)
    n = len(values)
    mean = float(values.mean()) if n else None
    n_test = ok["metrics.n_test"].dropna()
    n_test = int(n_test.median()) if len(n_test) else None
    se = (100.0 * math.sqrt((mean / 100.0) * (1 - mean / 100.0) / n_test)
          if mean is not None and n_test else None)
    lr = group["train.lr"].dropna()
    side = {
        "label": group["label"].iloc[-1], "mean": mean, "sd": float(values.std(ddof=1)) if n >= 2 else None,
        "n": n, "values": [float(v) for v in values], "seeds": [_whole(s) for s in ok["seed"]],
        "n_test": n_test, "se_test": se, "lr": float(lr.median()) if len(lr) else None,
        "failed": int(len(group) - n), "run_ids": _run_ids(group),
        "device_name": _first(group["hardware.device_name"]),
        "status": "ok" if n else _first(group["status"]),
        "error": _first(group["error"]) if not n else None,
    }
    return side, values


def _accuracy_test(a: dict, va: np.ndarray, b: dict, vb: np.ndarray) -> dict:
    """Change in points (B - A) and whether it is beyond the noise of seeds and test set."""
    change = b["mean"] - a["mean"]
    out = {"change": change, "change_pct": None, "p_value": None, "test": None, "threshold": None}
    if a["n"] >= 2 and b["n"] >= 2:
        p = None
        if not (a["sd"] == 0 and b["sd"] == 0):
            with warnings.catch_warnings():  # near-identical seeds: scipy warns, the p-value stands
                warnings.simplefilter("ignore", RuntimeWarning)
                p = float(stats.ttest_ind(vb, va, equal_var=False).pvalue)
        if p is None or not math.isfinite(p):  # no spread on either side: any change is real
            p = 1.0 if change == 0 else 0.0
        out.update(p_value=p, test="welch", significant=p < ALPHA)
    elif a["se_test"] is not None and b["se_test"] is not None:
        threshold = SE_FACTOR * math.sqrt(a["se_test"] ** 2 + b["se_test"] ** 2)
        out.update(test="test-set se", threshold=threshold, significant=abs(change) > threshold)
    else:
        out.update(significant=None)
    return out


def _compare_accuracy(ra: pd.Series, rb: pd.Series, ga: pd.DataFrame, gb: pd.DataFrame, base: dict) -> dict:
    a, va = _accuracy_side(ga)
    b, vb = _accuracy_side(gb)
    notes = _setting_notes(ra, rb)
    if a["lr"] is not None and b["lr"] is not None and not math.isclose(a["lr"], b["lr"]):
        notes.append(f"lr: {fmt_sig(a['lr'], 3)} {_ARROW} {fmt_sig(b['lr'], 3)}")
    if a["device_name"] and b["device_name"] and a["device_name"] != b["device_name"]:
        notes.append(f"device: {a['device_name']} {_ARROW} {b['device_name']}")
    for name, side in (("A", a), ("B", b)):
        if side["failed"] and side["n"]:
            notes.append(f"{name}: {side['failed']} of {side['failed'] + side['n']} seeds failed")
    reference = str(base["model"]).startswith(REF_PREFIX)
    if not a["n"] or not b["n"]:
        row = _status_row(base, a, b, b.get("error") or a.get("error"))
    else:
        result = _accuracy_test(a, va, b, vb)
        significant = result.pop("significant")
        threshold = result.pop("threshold")
        if significant is None:
            verdict = "not enough data"
            notes.append("n = 1 and the test-set size is unknown: no test possible")
        elif not significant or result["change"] == 0:
            verdict = "within noise"
        else:
            verdict = "worse" if result["change"] < 0 else "better"
        if threshold is not None:
            notes.append(f"n = 1: a change must exceed 2·se = {threshold:.1f} pts of the test sets")
        row = dict(base, metric="accuracy", a=a, b=b, verdict=verdict, regression=verdict == "worse",
                   note="", **result)
    if reference and row["regression"]:
        notes.append("reference row: never a regression")
        row["regression"] = False
    row["note"] = "; ".join(n for n in [row["note"]] + notes if n)
    return row


# -- speed and memory --------------------------------------------------------------------------------

def _overlap(a_lo, a_hi, b_lo, b_hi) -> bool | None:
    if any(missing(v) or not np.isfinite(v) for v in (a_lo, a_hi, b_lo, b_hi)):
        return None
    return not (a_hi < b_lo or b_hi < a_lo)


def _pct(a: float, b: float) -> float | None:
    return (b - a) / abs(a) * 100.0 if a else None


def _speed_side(r: pd.Series) -> dict:
    return {"label": r["label"], "value": _plain(r["timing.median_ms"]), "p20": _plain(r["timing.p20_ms"]),
            "p80": _plain(r["timing.p80_ms"]), "run_ids": [r["run_id"]],
            "device_name": _plain(r["hardware.device_name"]), "status": r["status"]}


def _compare_speed(ra: pd.Series, rb: pd.Series, base: dict, threshold_pct: float) -> list[dict]:
    settings = _setting_notes(ra, rb)
    a, b = _speed_side(ra), _speed_side(rb)
    if not all(r["status"] == "ok" and not missing(r["timing.median_ms"]) for r in (ra, rb)):
        row = _status_row(base, a, b, rb["error"] if isinstance(rb["error"], str) else None)
        row["note"] = "; ".join(n for n in [row["note"]] + settings if n)
        return [row]
    change_pct = _pct(a["value"], b["value"])
    overlap = _overlap(a["p20"], a["p80"], b["p20"], b["p80"])
    if change_pct is None or change_pct == 0 or overlap:
        verdict, regression = "within noise", False
    elif overlap is None and abs(change_pct) <= threshold_pct:  # no interval: the threshold is the noise
        verdict, regression = "within noise", False
    else:
        verdict = "worse" if change_pct > 0 else "better"
        regression = verdict == "worse" and change_pct > threshold_pct
    note = [] if overlap is not None else ["no p20/p80: the threshold is the noise"]
    rows = [dict(base, metric="median_ms", a=a, b=b, change=b["value"] - a["value"], change_pct=change_pct,
                 p_value=None, test="p20-p80 overlap" if overlap is not None else "threshold",
                 verdict=verdict, regression=regression, note="; ".join(note + settings))]
    ma, mb = _whole(ra["peak_bytes"]), _whole(rb["peak_bytes"])
    if ma is not None and mb is not None:
        change_pct = _pct(ma, mb)
        if change_pct is None or abs(change_pct) < MEMORY_NOISE_PCT:
            verdict, regression = "within noise", False
        else:
            verdict = "worse" if change_pct > 0 else "better"
            regression = verdict == "worse" and change_pct > threshold_pct
        rows.append(dict(base, metric="peak_bytes",
                         a={"label": a["label"], "value": ma, "run_ids": a["run_ids"]},
                         b={"label": b["label"], "value": mb, "run_ids": b["run_ids"]},
                         change=mb - ma, change_pct=change_pct, p_value=None, test="threshold",
                         verdict=verdict, regression=regression,
                         note="; ".join(settings)))
    return rows


# -- both -----------------------------------------------------------------------------------------------

def _status_row(base: dict, a: dict, b: dict, error: str | None) -> dict:
    """Cells where A or B has no number: a change of status, not of value."""
    sa, sb = a["status"], b["status"]
    row = dict(base, metric="status", a=a, b=b, change=None, change_pct=None, p_value=None, test=None,
               regression=False, note="")
    if sa == "ok" and sb in ("oom", "error"):
        row.update(verdict=f"worse (now {status_text(sb)})", regression=True, note=(error or "")[:200])
    elif sa == "ok":
        row.update(verdict=f"not measured in B ({sb})")
    elif sb == "ok":
        row.update(verdict=f"better (was {status_text(sa)})")
    else:
        row.update(verdict=f"unchanged status ({sa} / {sb})" if sa == sb else f"status {sa} -> {sb}")
    return row


def _base(kind: str, row: pd.Series, label: str) -> dict:
    base = {c: None for c in COLUMNS} | {"kind": kind, "model": row["model"], "label": label,
                                         "task": row["task"]}
    if kind == "speed":
        base.update({k: _whole(row[k]) for k in SPEED_KEYS if k not in ("model", "task")})
    else:
        base.update(scale=_plain(row["scale"]), provenance=_provenance(row))
    return base


def _run_ids(group: pd.DataFrame) -> list[str]:
    return sorted(set(group["run_id"].dropna()))


def _experiments(df: pd.DataFrame, keys, fields) -> dict:
    """{measured key: {experiment identity: records}} of one run, records in writing order."""
    out: dict = {}
    for _, row in df.iterrows():
        out.setdefault(_ident(row, keys), {}).setdefault(_ident(row, fields), []).append(row)
    return {k: {i: pd.DataFrame(rows) for i, rows in v.items()} for k, v in out.items()}


def compare_frames(df_a: pd.DataFrame, df_b: pd.DataFrame,
                   threshold_pct: float = 10.0) -> tuple[pd.DataFrame, int]:
    """Compare the records of run A with those of run B (`load_records` frames; see `compare_runs`)."""
    df_a, df_b = _prepared(df_a), _prepared(df_b)
    rows = []
    for kind, keys, fields, pairing in (("speed", SPEED_KEYS, SPEED_GROUP, SPEED_PAIRING),
                                        ("accuracy", ACCURACY_KEYS, ACCURACY_GROUP, ACCURACY_PAIRING)):
        exp_a = _experiments(df_a[df_a["kind"] == kind], keys, fields)
        exp_b = _experiments(df_b[df_b["kind"] == kind], keys, fields)
        for key in sorted(set(exp_a) | set(exp_b), key=_sort_key):
            groups_a, groups_b = exp_a.get(key, {}), exp_b.get(key, {})
            for ia, ib in _pair(list(groups_a), list(groups_b), fields, pairing):
                ga = groups_a.get(ia) if ia is not None else None
                gb = groups_b.get(ib) if ib is not None else None
                ra = ga.iloc[-1] if ga is not None else None
                rb = gb.iloc[-1] if gb is not None else None
                source = ra if ra is not None else rb
                base = _base(kind, source, source["label"])
                if ra is None or rb is None:
                    side = {"label": source["label"], "run_ids": _run_ids(ga if ga is not None else gb)}
                    rows.append(dict(base, metric=None, a=side if ra is not None else None,
                                     b=side if rb is not None else None, regression=False, note="",
                                     verdict="only in B" if ra is None else "only in A"))
                    continue
                reasons = _incomparable(ra, rb, kind)
                if reasons:
                    rows.append(dict(base, metric=None, verdict="not comparable", regression=False,
                                     a={"label": ra["label"], "run_ids": _run_ids(ga),
                                        "model_config_hash": ra["model_config_hash"]},
                                     b={"label": rb["label"], "run_ids": _run_ids(gb),
                                        "model_config_hash": rb["model_config_hash"]},
                                     note="; ".join(reasons)))
                elif kind == "speed":
                    rows += _compare_speed(ra, rb, base, threshold_pct)
                else:
                    rows.append(_compare_accuracy(ra, rb, ga, gb, base))
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["regression"] = frame["regression"].fillna(False).astype(bool)
    return frame, int(frame["regression"].sum())


# Options of the run commands that say where things go or how they are printed, not what was measured.
NOT_SETTINGS = {"results_dir", "cache_dir", "data_dir", "quiet", "json", "no_report", "resume"}


def run_settings(manifest: dict, records: pd.DataFrame | None = None) -> dict:
    """What a run measured with, flattened to `key: value` for `settings_changes`: its command's
    options (`config.*`, paths and output flags left out), the environment (torch, CUDA, GPU, driver,
    CPU, threads, git revision, packages) and the measurement protocol of its records."""
    out = {}
    for key, value in (manifest.get("config") or {}).items():
        if key not in NOT_SETTINGS:
            out[key] = value
    env = manifest.get("environment") or {}
    gpus = env.get("gpus") or []
    git = env.get("git") or {}
    sha = manifest.get("git_sha") or git.get("sha")
    dirty = manifest.get("git_dirty") if manifest.get("git_dirty") is not None else git.get("dirty")
    out.update({
        "git": (str(sha)[:12] if sha else None), "git dirty": dirty,
        "gpu": gpus[0].get("name") if gpus else env.get("cuda_device"),
        "driver": gpus[0].get("driver") if gpus else None, "gpus": len(gpus) or None,
        "torch": env.get("torch"), "cuda": env.get("cuda"), "cudnn": env.get("cudnn"),
        "python": env.get("python"), "cpu": env.get("cpu"), "cpu cores": env.get("cpu_count"),
        "torch threads": env.get("torch_threads"), "harness": manifest.get("harness_version"),
        "schema": manifest.get("schema_version")})
    for name, version in sorted((env.get("packages") or {}).items()):
        out[f"package {name}"] = version
    if records is not None and "protocol_version" in records:
        versions = sorted({int(v) for v in pd.to_numeric(records["protocol_version"], errors="coerce").dropna()})
        out["timing protocol"] = "/".join(str(v) for v in versions) or None
    return out


def settings_changes(a: dict, b: dict) -> list[tuple[str, object, object]]:
    """(key, A's value, B's value) for every setting that differs, in A's key order then B's."""
    keys = list(dict.fromkeys(list(a) + list(b)))
    return [(key, a.get(key), b.get(key)) for key in keys if _plain(a.get(key)) != _plain(b.get(key))]


def _run_side(results_dir, ref: str) -> tuple[Path, dict, pd.DataFrame]:
    """A run's folder, manifest ({} when unreadable: load_records warns) and records."""
    folder = find_run(results_dir, ref)
    records = load_records(folder.parent, [folder.name])
    if records.empty:
        records = pd.DataFrame(columns=["run_id", "kind", "model", "task", "created"])
    records["run_id"] = records["run_id"].where(records["run_id"].notna(), folder.name)
    try:
        manifest = Run(folder).manifest
    except Exception:  # a UserError: load_records has said why
        manifest = {}
    return folder, manifest, records


@dataclass
class Comparison:
    """What `compare_runs` found: one row per (cell, metric) with its verdict (`compare_frames`),
    the number of regressions, where the two runs are and the run settings that differ."""

    frame: pd.DataFrame
    n_regressions: int
    folders: dict = field(default_factory=dict)  # "a" / "b" -> the run's folder
    settings: list = field(default_factory=list)  # (key, A's value, B's value) of differing settings


def compare_runs(results_dir, run_a: str, run_b: str, threshold_pct: float = 10.0) -> Comparison:
    """Per matching cell of runs A and B: accuracy change in points with Welch's test (or the
    test-set resolution for single seeds), median time and peak memory change in percent, each
    with a verdict. `threshold_pct` applies to speed and memory only. A run is a run id of
    `results_dir` or the path of a run folder (`find_run`)."""
    side_a, side_b = _run_side(results_dir, run_a), _run_side(results_dir, run_b)
    frame, n_regressions = compare_frames(side_a[2], side_b[2], threshold_pct)
    settings = (settings_changes(run_settings(side_a[1], side_a[2]), run_settings(side_b[1], side_b[2]))
                if side_a[1] and side_b[1] else [])
    return Comparison(frame, n_regressions, {"a": str(side_a[0]), "b": str(side_b[0])}, settings)


# -- output ---------------------------------------------------------------------------------------------

def comparison_json(comparison: Comparison, run_a: str, run_b: str, threshold_pct: float) -> dict:
    """The comparison as plain data: numbers (points, milliseconds, bytes) and run ids, no display
    text except the verdict and note."""
    cells = [{c: _whole(row[c]) if c in ("seq_len", "batch_size") else _plain(row[c]) for c in COLUMNS}
             for _, row in comparison.frame.iterrows()]
    folders = comparison.folders
    return {"run_a": run_a, "run_b": run_b, "folder_a": folders.get("a"), "folder_b": folders.get("b"),
            "threshold_pct": threshold_pct,
            "settings_changed": [{"key": key, "a": _plain(a), "b": _plain(b)}
                                 for key, a, b in comparison.settings],
            "regressions": comparison.n_regressions,
            "rules": {"accuracy": f"drop in points: Welch p < {ALPHA:g} (n >= 2 both), else beyond "
                                  f"{SE_FACTOR:g}*sqrt(se_a^2 + se_b^2) of the test set",
                      "speed": f"p20-p80 intervals apart and median change > {threshold_pct:g}%",
                      "memory": f"change > {threshold_pct:g}% (noise below {MEMORY_NOISE_PCT:g}%)"},
            "cells": cells}


def _int(value):
    """A whole-number field for display; '?' when a damaged record lacks it."""
    value = _whole(value)
    return "?" if value is None else value


def _category(verdict: str) -> str:
    for name in ("within noise", "not comparable", "only in A", "only in B", "not measured", "not enough data",
                 "unchanged", "better", "worse"):
        if verdict.startswith(name):
            return name
    return "status change"


def _side_text(side, metric) -> str:
    if not isinstance(side, dict):
        return DASH
    if metric == "accuracy":
        if side["n"] >= 2:
            return f"{side['mean']:.1f} ± {side['sd']:.1f} ({side['n']})"
        return f"{side['mean']:.1f} (1)"
    if metric == "median_ms":
        text = fmt_ms(side["value"])
        if side.get("p20") is not None and side.get("p80") is not None:
            text += f" [{fmt_ms(side['p20'])}, {fmt_ms(side['p80'])}]"
        return text
    if metric == "peak_bytes":  # one unit for every memory cell, as in the tables
        return f"{fmt_mem(side['value'])} {MEMORY_UNIT[0]}"
    if metric == "status":
        return status_text(side["status"]) if side["status"] != "ok" else "ok"
    return DASH


def _cell_text(row: pd.Series) -> str:
    if row["kind"] == "speed":
        return (f"{row['label']} · {row['task']} · L={_int(row['seq_len'])} · b={_int(row['batch_size'])} · "
                f"{row['dtype']} · {row['device']} · {row['mode']}")
    scale = f" · {row['scale']}" if row["scale"] else ""
    return f"{row['label']} · {row['task']}{scale} · {_provenance_text(row['provenance'])}"


def _change_text(row: pd.Series) -> str:
    if row["metric"] == "accuracy" and not missing(row["change"]):
        return f"{row['change']:+.1f} pts"
    if not missing(row["change_pct"]):
        return f"{row['change_pct']:+.1f}%"
    return DASH


def _p_text(p) -> str:
    if missing(p):
        return DASH
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _run_name(ref: str, folder: str | None) -> str:
    """A run as its id: the folder's name when the run was given as a path."""
    return Path(folder).name if folder and Path(ref) == Path(folder) else ref


def settings_text(comparison: Comparison, run_a: str, run_b: str) -> str:
    """Where A and B are, and the run settings that differ, one `key: old → new` line each."""
    folders = comparison.folders
    lines = []
    if folders:
        lines.append(f"A = {_run_name(run_a, folders['a'])} ({folders['a']}); "
                     f"B = {_run_name(run_b, folders['b'])} ({folders['b']})")
    changes = comparison.settings
    if folders:
        if changes:
            lines.append(f"Settings that differ (A {_ARROW} B):")
            lines += [f"  {key}: {_show(a)} {_ARROW} {_show(b)}" for key, a, b in changes]
        else:
            lines.append("Settings: the same in A and B")
    return "\n".join(lines) + ("\n\n" if lines else "")


def format_comparison(comparison: Comparison, run_a: str, run_b: str, threshold_pct: float) -> str:
    """The runs' folders and differing settings, the comparison as a Markdown table, the regressions
    listed, and a one-line summary."""
    head = settings_text(comparison, run_a, run_b)
    frame, folders = comparison.frame, comparison.folders
    run_a, run_b = _run_name(run_a, folders.get("a")), _run_name(run_b, folders.get("b"))
    if frame.empty:
        return head + f"no cells to compare between {run_a} and {run_b}\n0 regressions\n"
    display = []
    for _, row in frame.iterrows():
        display.append({
            "cell": _cell_text(row), "metric": METRIC_LABELS.get(row["metric"], DASH),
            "A": _side_text(row["a"], row["metric"]), "B": _side_text(row["b"], row["metric"]),
            "change": _change_text(row), "p": _p_text(row["p_value"]),
            "verdict": row["verdict"] + (" ⚠ regression" if row["regression"] else ""),
            "note": row["note"] or "",
        })
    text = pd.DataFrame(display, columns=["cell", "metric", "A", "B", "change", "p", "verdict", "note"])
    text = text.set_index("cell")  # a cell has a row per metric: the index repeats
    values = pd.DataFrame(np.nan, index=text.index, columns=text.columns, dtype=float)  # rendered as text only
    n_reg = comparison.n_regressions
    counts = frame["verdict"].map(_category).value_counts()
    table = Table(
        title=f"Comparison {run_a} (A) {_ARROW} {run_b} (B)",
        caption=(f"Accuracy: mean ± sd (n seeds), change in points; a regression is a drop that Welch's "
                 f"test calls significant (p < {ALPHA:g}) with n ≥ 2 on both sides, or with one seed a drop "
                 f"beyond {SE_FACTOR:g}·√(se_A² + se_B²) of the test sets; reference rows are never "
                 f"regressions. Time: median [p20, p80]; a regression needs the intervals apart and the "
                 f"median more than {threshold_pct:g}% slower (CPU timings are noisy). Memory: within noise "
                 f"below {MEMORY_NOISE_PCT:g}%, a regression beyond {threshold_pct:g}% (GiB). A cell that "
                 f"newly fails is a regression. – = no number (not comparable, measured on one side only, "
                 f"or no p-value for this test); OOM = out of memory; FAIL = an error; n/a = unavailable."),
        values=values, text=text, bold=pd.DataFrame(False, index=text.index, columns=text.columns),
        tips=pd.DataFrame("", index=text.index, columns=text.columns), left_columns=("metric", "verdict", "note"))
    summary = (f"{n_reg} regression{'s' if n_reg != 1 else ''} (accuracy: significant drop in points; "
               f"speed/memory: beyond {threshold_pct:g}%) — "
               + ", ".join(f"{n} {v}" for v, n in counts.items()))
    flagged = [f"  {cell}: {metric} {change} ({verdict})" for cell, metric, change, verdict, flag in zip(
        text.index, text["metric"], text["change"], frame["verdict"], frame["regression"]) if flag]
    listing = ("\nRegressions:\n" + "\n".join(flagged) + "\n") if flagged else ""
    return head + render(table, "markdown") + listing + "\n" + summary + "\n"

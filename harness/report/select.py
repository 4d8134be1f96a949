"""Which records a table shows, and what the registry says about their tasks and models.

- Task metadata comes from each task's `TaskSpec` (harness/task.py): `lra` (one of the six LRA
  tasks), `label` (its column name, e.g. "Path-X") and `order` (LRA's own order). A record of a task
  that is no longer registered still renders: its name as the label, not LRA, sorted after the rest.
- The references of the efficiency ratios are the models registered with `efficiency_reference`
  (rank, what it is): `transformer_vanilla` (the papers' XFM) and `transformer` (fused attention).
- `prepare` normalises a `harness.store.load_records` frame; `latest` keeps one record per cell (the
  latest run's); `speed_cells` / `speed_slices` / `select_slice` cut the speed records into the
  slices the speed tables show, the papers' protocol slice first.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from harness.records import LRA_KINDS
from harness.report.format import first_line, get, missing, number, NOISY_SPREAD

log = logging.getLogger(__name__)

# What makes two speed records the same cell: the row (model variant) and the measurement
# configuration, on one kind of device.
SPEED_KEYS = ("label", "model", "task", "seq_len", "batch_size", "dtype", "device", "mode",
              "hardware.device_name")
SLICE_KEYS = ("task", "batch_size", "dtype", "device", "mode", "hardware.device_name")  # one table each
REF_PREFIX = "ref:"
REF_NAMES = {"ref:majority": "ref: majority class", "ref:linear": "ref: linear (logistic regression)"}

NUMERIC = ("timing.median_ms", "timing.p20_ms", "timing.p80_ms", "timing.n_warmup", "timing.n_iters",
           "memory.peak_allocated_bytes", "memory.peak_reserved_bytes", "memory.footprint_bytes",
           "memory.peak_rss_increase_bytes", "throughput_tokens_per_s", "metrics.accuracy",
           "metrics.val_accuracy", "metrics.n_test", "metrics.steps", "seq_len", "batch_size", "seed",
           "n_params", "model_config.n_layers", "model_config.d_model", "train.lr", "train.lr_multiplier",
           "train.total_steps", "train.batch_size", "train.warmup_steps", "train.time_budget")
TEXT = ("run_id", "created", "kind", "model", "label", "task", "task_version", "dtype", "device", "mode",
        "status", "error", "model_config_hash", "scale", "provenance.kind", "provenance.source",
        "provenance.subset", "hardware.device_name", "git_sha", "metrics.stopped")

# The papers' efficiency protocol (MEGA Table 2, after LRA's): one training step of the Text
# configuration at L = 4096 with batch 25 on a GPU. Its slice leads the speed tables when present.
PROTOCOL = {"task": "text", "batch_size": 25, "device": "cuda", "mode": "train_step"}
PROTOCOL_LENGTH = 4096
PROTOCOL_TEXT = "The papers' protocol (Text, L = 4096, batch 25, one training step on a GPU)."


# -- what the registry says -------------------------------------------------------------------------

def task_spec(task):
    """The registered `TaskSpec` of `task`; None for a task no longer registered (or no registry)."""
    try:
        from harness.registry import TASKS

        return TASKS.get(task).spec if task in TASKS else None
    except Exception as exc:  # a report renders from its records alone
        log.debug("task %s: no registered spec (%s)", task, first_line(exc))
        return None


def is_lra(task) -> bool:
    spec = task_spec(task)
    return bool(spec and spec.lra)


def task_label(task) -> str:
    """A task's column name: its TaskSpec label ('Path-X'), else its registered name."""
    spec = task_spec(task)
    return (spec.label if spec else "") or str(task)


def task_order(task) -> tuple:
    """Sort key of tasks: the LRA tasks in LRA order, then the others; unregistered tasks last."""
    spec = task_spec(task)
    if spec is None:
        return (2, math.inf)
    return (0 if spec.lra else 1, spec.order)


def lra_tasks() -> list[str]:
    """The registered LRA tasks in LRA order."""
    try:
        from harness.registry import TASKS

        names = TASKS.names()
    except Exception as exc:
        log.warning("task registry not loaded (%s): no task counts as LRA", first_line(exc))
        return []
    return sorted((n for n in names if is_lra(n)), key=task_order)


def efficiency_references() -> list[tuple[str, str]]:
    """(model, what it is) of the efficiency ratios' references, by their registered rank: the
    materialised-softmax Transformer (the papers' XFM), then fused attention. [] without a registry."""
    try:
        from harness.registry import MODELS

        entries = [MODELS.get(n) for n in MODELS.names()]
    except Exception as exc:  # a report must render without the models
        log.warning("model registry not loaded (%s): efficiency ratios left out", first_line(exc))
        return []
    refs = sorted((e.efficiency_reference, e.name) for e in entries if e.efficiency_reference)
    return [(name, what) for (_, what), name in refs]


def published_efficiency(models) -> dict:
    """{model: {"speed", "memory", "source"}} for the models whose registration carries published
    efficiency figures (importing the registry; {} where it cannot be loaded)."""
    try:
        from harness.registry import MODELS

        return {m: published for m in models
                if isinstance(m, str) and m in MODELS and (published := MODELS.get(m).published)}
    except Exception as exc:  # a report must render without the models
        log.debug("published efficiency figures not available (%s)", first_line(exc))
        return {}


# -- rows and columns of the accuracy tables ---------------------------------------------------------

def is_reference(model) -> bool:
    """A reference row (majority class, linear model): context, never ranked or averaged."""
    return isinstance(model, str) and model.startswith(REF_PREFIX)


def row_name(model, label) -> str:
    """The row of a record: its label (model [variant]); reference models get readable names."""
    label = label if isinstance(label, str) and label else str(model)
    if not is_reference(model):
        return label
    base = REF_NAMES.get(model, "ref: " + model[len(REF_PREFIX):].strip())
    return base + label[len(model):]  # keeps a variant suffix


def provenance_text(row) -> str | None:
    """'stand-in: fashion-mnist (n=2000/250/250)' from the typed provenance fields (None when absent)."""
    kind, source, subset = (get(row, f"provenance.{k}") for k in ("kind", "source", "subset"))
    if kind is None:
        return None
    text = f"{kind}: {source}" if source else str(kind)
    return f"{text} ({subset})" if subset else text


def data_detail(row) -> str:
    """What an accuracy column's data is: 'stand-in: fashion-mnist · smoke · n=2000/250/250'.
    An official release read as a subset says 'official subset'."""
    kind, source, subset = (get(row, f"provenance.{k}") for k in ("kind", "source", "subset"))
    scale = get(row, "scale")
    if kind is None:
        parts = ["provenance unknown"]
    else:
        head = f"{kind} subset" if kind == "official" and subset else str(kind)
        parts = [f"{head}: {source}" if source else head]
    parts.append(f"{scale}" if scale else "scale not recorded")
    if subset:
        parts.append(str(subset))
    return " · ".join(parts)


def lra_eligible(row) -> bool:
    """Paper scale on the whole of the task's own data (`Record.lra_eligible`, from typed fields)."""
    flag = get(row, "lra_eligible")
    if flag is not None:
        return bool(flag)
    return (get(row, "scale") == "paper" and get(row, "provenance.kind") in LRA_KINDS
            and get(row, "provenance.subset") is None)


def accuracy_column(row) -> tuple[str, str]:
    """(column label, group) of an accuracy record: group 'lra' (an LRA number, counts in Avg),
    'excluded' (an LRA task at another scale or on other data: labelled, never averaged) or
    'other' (tasks outside LRA)."""
    task = get(row, "task") or "?"
    spec = task_spec(task)
    if spec is not None and spec.lra:
        label = spec.label or str(task)  # task_label, from the spec already looked up
        if lra_eligible(row):
            return label, "lra"
        return f"{label} [{data_detail(row)}]", "excluded"
    plain = (get(row, "scale") in (None, "paper") and get(row, "provenance.subset") is None
             and get(row, "provenance.kind") in (None, *LRA_KINDS, "random-inputs"))
    return (task if plain else f"{task} [{data_detail(row)}]"), "other"


def not_lra_reasons(acc: pd.DataFrame) -> list[str]:
    """Why the records of LRA tasks in `acc` are not LRA numbers, e.g. ['smoke scale', 'stand-in data']."""
    reasons = []
    for scale in sorted({s for s in acc["scale"] if isinstance(s, str) and s != "paper"}):
        reasons.append(f"{scale} scale")
    if acc["scale"].isna().any():
        reasons.append("scale not recorded")
    kinds = set(acc["provenance.kind"].dropna())
    for kind, text in (("stand-in", "stand-in data"), ("user", "user data"),
                       ("random-inputs", "random inputs")):
        if kind in kinds:
            reasons.append(text)
    if acc["provenance.kind"].isna().any():
        reasons.append("provenance unknown")
    # a smaller scale takes smaller splits anyway: a subset is a reason of its own at paper scale only
    official = acc["provenance.kind"].isin(LRA_KINDS) & (acc["scale"] == "paper")
    if (official & acc["provenance.subset"].notna()).any():
        reasons.append("data subsets")
    return reasons


# -- loading and selecting records ------------------------------------------------------------------

def ensure_columns(df: pd.DataFrame, numeric=(), text=()) -> pd.DataFrame:
    """Every named column present with a usable dtype: numbers as floats (NaN when missing or
    unreadable), text as objects (None when missing). Modifies and returns `df`."""
    for column in numeric:
        df[column] = pd.to_numeric(df[column], errors="coerce") if column in df else np.nan
    for column in text:
        if column not in df:
            df[column] = None
        df[column] = df[column].astype(object).where(df[column].notna(), None)
    return df


def prepare(records: pd.DataFrame) -> pd.DataFrame:
    """Normalise a `load_records` frame: every column the reports read exists with a usable dtype,
    `kind` is filled in, `label` (the row: model and variant) falls back to the model name,
    `lra_eligible` is a bool, `provenance` is the readable provenance text (`kind: source
    (subset)`), and `peak_bytes` is the peak memory of the cell (CUDA peak allocated, or the
    process peak-RSS increase on CPU) with `mem_source` saying which."""
    df = ensure_columns(records.copy(), NUMERIC, TEXT)
    if "train.lr_grid" not in df:
        df["train.lr_grid"] = None
    missing_kind = df["kind"].isna()
    df.loc[missing_kind & df["timing.median_ms"].notna(), "kind"] = "speed"
    df.loc[missing_kind & df["metrics.accuracy"].notna(), "kind"] = "accuracy"
    df["label"] = df["label"].where(df["label"].notna(), df["model"])
    if "lra_eligible" in df:
        df["lra_eligible"] = df["lra_eligible"].fillna(False).astype(bool)
    else:
        df["lra_eligible"] = [lra_eligible(row) for _, row in df.iterrows()] if len(df) else []
        df["lra_eligible"] = df["lra_eligible"].astype(bool)
    df["provenance"] = [provenance_text(row) for _, row in df.iterrows()] if len(df) else []
    allocated, rss = df["memory.peak_allocated_bytes"], df["memory.peak_rss_increase_bytes"]
    df["peak_bytes"] = allocated.fillna(rss)
    df["mem_source"] = np.where(allocated.notna(), "cuda", np.where(rss.notna(), "rss", None))
    df["created"] = df["created"].fillna("")
    return df


def latest(df: pd.DataFrame, keys) -> pd.DataFrame:
    """One record per identity `keys`: the latest run's (run ids sort by start time), then the
    latest written. The row label (model and variant) is always part of the identity, so one
    variant never hides another."""
    keys = list(keys)
    if "label" in df and "label" not in keys:
        keys.insert(0, "label")
    ordered = df.sort_values(["run_id", "created"], kind="stable")
    return ordered.drop_duplicates(keys, keep="last")


def speed_cells(df: pd.DataFrame, aggregate: bool = False) -> pd.DataFrame:
    """Speed records, one per cell (`SPEED_KEYS`), with `run_ids` (the runs behind the cell) and
    `n_runs`. `aggregate=True` pools runs: the median over runs of the per-run medians (and of
    p20, p80, peak memory, throughput); status ok if any run was ok."""
    speed = df[(df["kind"] == "speed") & df["seq_len"].notna()]  # a cell without a length has no column
    if speed.empty:
        return speed.assign(run_ids=pd.Series(dtype=object), n_runs=pd.Series(dtype=int))
    if not aggregate:
        cells = latest(speed, SPEED_KEYS).copy()
        cells["run_ids"] = [() if missing(r) else (r,) for r in cells["run_id"]]
        cells["n_runs"] = 1
        return cells
    rows = []
    for _, group in speed.groupby(list(SPEED_KEYS), dropna=False, sort=False):
        ok = group[group["status"] == "ok"]
        row = latest(group, SPEED_KEYS).iloc[0].copy()
        if not ok.empty:
            row["status"] = "ok"
            for column in ("timing.median_ms", "timing.p20_ms", "timing.p80_ms", "peak_bytes",
                           "throughput_tokens_per_s"):
                row[column] = ok[column].median()
        used = ok if not ok.empty else group
        row["run_ids"] = tuple(sorted(set(used["run_id"].dropna())))
        row["n_runs"] = group["run_id"].nunique()
        rows.append(row)
    return pd.DataFrame(rows)


def speed_ok(row) -> bool:
    """A speed cell with a time: status ok and a finite median."""
    return row["status"] == "ok" and number(row["timing.median_ms"]) is not None


def spread(row) -> float | None:
    """p80 / p20 of a speed cell (None without both)."""
    p20, p80 = number(get(row, "timing.p20_ms")), number(get(row, "timing.p80_ms"))
    return p80 / p20 if p20 and p80 is not None and p20 > 0 else None


def is_noisy(row) -> bool:
    value = spread(row)
    return value is not None and value > NOISY_SPREAD


def is_protocol(slice_: dict, lengths=()) -> bool:
    """Whether a slice is the papers' protocol: its keys match PROTOCOL and L = 4096 was measured."""
    return (all(slice_.get(k) == v for k, v in PROTOCOL.items())
            and PROTOCOL_LENGTH in {int(x) for x in lengths if not missing(x)})


def speed_slices(cells: pd.DataFrame) -> list[dict]:
    """The (task, batch, dtype, device, mode, device name) combinations present, in the order a
    reader looks for them: the papers' protocol slice first (the newest measurement first when
    several GPUs have one); then GPU before CPU; Text, then the other LRA tasks in LRA order, then
    other tasks; a training step before inference; then the slice with more rows, more lengths,
    the newer runs."""
    if cells.empty:
        return []
    slices = []
    for key, group in cells.groupby(list(SLICE_KEYS), dropna=False, sort=False):
        slice_ = {k: (None if missing(v) else v) for k, v in zip(SLICE_KEYS, key)}
        runs = [str(r) for r in group["run_id"] if not missing(r)] if "run_id" in group else []
        slices.append((slice_, {"protocol": is_protocol(slice_, group["seq_len"]),
                                "rows": group["label"].nunique(), "lengths": group["seq_len"].nunique(),
                                "newest": max(runs, default="")}))
    newest = sorted({info["newest"] for _, info in slices})
    age = {run: len(newest) - i for i, run in enumerate(newest)}  # 1 = the newest

    def order(item):
        slice_, info = item
        task = slice_["task"]
        return (not info["protocol"], age[info["newest"]] if info["protocol"] else 0,
                slice_["device"] != "cuda", task != PROTOCOL["task"], task_order(task), str(task),
                slice_["mode"] != "train_step", str(slice_["mode"]), -info["rows"], -info["lengths"],
                age[info["newest"]], str(slice_["dtype"]), -(slice_["batch_size"] or 0),
                str(slice_["hardware.device_name"]))

    return [slice_ for slice_, _ in sorted(slices, key=order)]


def select_slice(cells: pd.DataFrame, slice_: dict) -> pd.DataFrame:
    """The cells matching every key given in `slice_` (leave `mode` out to keep all modes)."""
    mask = pd.Series(True, index=cells.index)
    for key, value in slice_.items():
        column = cells[key] if key in cells else pd.Series(None, index=cells.index, dtype=object)
        mask &= column.isna() if value is None else (column == value)
    return cells[mask]


def _device_name(slice_: dict) -> str:
    name = slice_.get("hardware.device_name")
    return str(name) if name else "device not recorded"


def slice_text(slice_: dict) -> str:
    """'text configuration, batch 4, bf16, cuda (NVIDIA H100 80GB HBM3), train_step' (mode only
    when the slice has one; the device's name when the slice has the key)."""
    batch = slice_.get("batch_size")
    device = slice_.get("device") or "?"
    if "hardware.device_name" in slice_:
        device = f"{device} ({_device_name(slice_)})"
    parts = [f"{slice_.get('task') or '?'} configuration",
             f"batch {int(batch)}" if batch is not None and not pd.isna(batch) else "batch ?",
             slice_.get("dtype") or "?", device]
    if "mode" in slice_:
        parts.append(slice_["mode"] or "?")
    return ", ".join(str(p) for p in parts)


def slice_tag(slice_: dict) -> str:
    """Short form for titles: 'text, train_step, bf16, cuda, b=4, NVIDIA H100 80GB HBM3'."""
    batch = slice_.get("batch_size")
    batch = f"b={int(batch)}" if batch is not None and not pd.isna(batch) else "b=?"
    tag = ", ".join(str(slice_.get(k) or "?") for k in ("task", "mode", "dtype", "device")) + f", {batch}"
    return tag + (f", {_device_name(slice_)}" if "hardware.device_name" in slice_ else "")


def nearest_length(lengths, target: int) -> int:
    """The measured length closest to `target` on a log2 scale (ties: the longer one)."""
    lengths = sorted({int(x) for x in lengths})
    return min(lengths, key=lambda x: (abs(math.log2(x) - math.log2(target)), -x))


def reference_name(models, base: str) -> str | None:
    """`base`, or its `*_tiny` variant when only tiny models were measured (rows are labels: a
    variant of the reference, e.g. a compiled one, is not the reference)."""
    models = set(models)
    for name in (base, f"{base}_tiny"):
        if name in models:
            return name
    return None

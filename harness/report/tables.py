"""Result tables: accuracy with its uncertainty, the MEGA paper's Table 2 efficiency comparison, and
speed / memory by sequence length, built with pandas from the records of `harness.store.load_records`.

Every table is a DataFrame of display strings (index = row label) that carries its presentation in
`df.attrs`: `title`, `caption` (the rules behind the numbers, always stated), `bold` ((row, column)
pairs), `tips` ((row, column, text) hover notes; column None = the row header), `col_classes`
(column -> CSS class) and `cells` ((row, column) -> the numbers behind the text, for `to_json` and
the plots). `render(df, fmt)` turns one into Markdown, LaTeX or HTML.

Conventions (shared/spec/statistics.md, harness.md "Tables and reports", lra.md §8, measurement.md):
- Rows are model variants (`label`: `mega_chunk [compile=true]`), never bare model names, so two
  variants never hide each other; reference rows (`ref:` models: majority class, a linear model on
  the raw input) sit below the models, never ranked, never averaged.
- A duplicated cell (same identity measured by several runs) shows the latest run's record unless
  `aggregate=True` pools the runs. A row whose cells come from several runs says so.
- Accuracy: test accuracy in percent, mean ± sample sd (n seeds) with the 95% Student-t interval
  over seeds; the test set's binomial standard error in the caption and the cell's hover note.
  Bold = the best mean among rows with n >= 2 and every row not separable from it (Welch p >= 0.05
  or a gap below 2 x the test-set s.e.); a column with a single-seed row ranks nothing.
- Only LRA-eligible records (paper scale, the task's whole official or faithfully regenerated
  data: `Record.lra_eligible`) enter the LRA columns and the averages; every other record of an LRA
  task gets its own column naming provenance, scale and size. Avg = mean over the LRA tasks present
  other than Path-X (the LRA paper's rule); "Avg (k)" includes Path-X (the S4/MEGA rule).
- Under an lr grid, each (row, column) shows the learning rate with the best mean validation
  accuracy, and says which.
- Speed tables are sliced by task configuration, batch, dtype, device, mode and the device's name
  (two GPUs never share a table). The papers' protocol slice (Text, L = 4096, batch 25, a training
  step on a GPU) comes first; the others follow in the order a reader looks for them
  (`speed_slices`). A time whose p80/p20 exceeds 1.5 is marked noisy (`~`); bold time = the
  fastest and every time whose p20-p80 range overlaps it (about equal).
- Efficiency: the model block (params, layers, width: the figures the accuracy table shows too),
  absolute time and peak memory beside the paper ratios, speed-up = reference time / model time and
  memory = model peak / reference peak, against `transformer_vanilla` (materialised softmax, the
  papers' XFM) and `transformer` (fused attention). The caption says what a peak includes (weights,
  gradients, optimiser state, activations: harness/bench.py measures them differently on CUDA and CPU).
- Every symbol a table's cells use (`–`, `n/a`, `OOM`, `FAIL`, `skipped`, `ref OOM`, `~`, `†`, `×`)
  is defined in its caption, with the meaning it has in that table; a symbol it does not use is not.
- Precision: ms to 3 significant digits; memory always in GiB (one unit in every table), 2 decimals
  from 0.1 GiB up and 2 significant digits below; accuracy to 1 decimal, ratios to 2 significant
  digits. A missing number is text (`OOM`, `FAIL`, `skipped`, `n/a`, `–`), never 0.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from harness.errors import UserError
from harness.records import LRA_KINDS

LRA_TASKS = ("listops", "text", "retrieval", "image", "pathfinder", "pathx")
TASK_LABELS = {"listops": "ListOps", "text": "Text", "retrieval": "Retrieval", "image": "Image",
               "pathfinder": "Pathfinder", "pathx": "Path-X"}
REFERENCES = ("transformer_vanilla", "transformer")  # the papers' XFM, and today's fused attention
# What makes two speed records the same cell: the row (model variant) and the measurement
# configuration, on one kind of device.
SPEED_KEYS = ("label", "model", "task", "seq_len", "batch_size", "dtype", "device", "mode",
              "hardware.device_name")
SLICE_KEYS = ("task", "batch_size", "dtype", "device", "mode", "hardware.device_name")  # one table each
FORMATS = ("markdown", "latex", "html")
GIB = 1024 ** 3
DASH = "–"  # a cell that was never measured
NOISY = "~"  # prefix of a speed cell whose p80/p20 exceeds NOISY_SPREAD
NOISY_SPREAD = 1.5
STOPPED = "†"  # suffix of an accuracy cell with a seed stopped by a time budget or timeout
ALPHA = 0.05  # Welch's test: p >= ALPHA = not separable
REF_PREFIX = "ref:"
REF_NAMES = {"ref:majority": "ref: majority class", "ref:linear": "ref: linear (logistic regression)"}
PARAMS = "params"

_NUMERIC = ("timing.median_ms", "timing.p20_ms", "timing.p80_ms", "timing.n_warmup", "timing.n_iters",
            "memory.peak_allocated_bytes", "memory.peak_reserved_bytes", "memory.footprint_bytes",
            "memory.peak_rss_increase_bytes", "throughput_tokens_per_s", "metrics.accuracy",
            "metrics.val_accuracy", "metrics.n_test", "metrics.steps", "seq_len", "batch_size", "seed",
            "n_params", "model_config.n_layers", "model_config.d_model", "train.lr", "train.lr_multiplier", "train.total_steps", "train.batch_size",
            "train.warmup_steps", "train.time_budget")
_TEXT = ("run_id", "created", "kind", "model", "label", "task", "task_version", "dtype", "device", "mode",
         "status", "error", "model_config_hash", "scale", "provenance.kind", "provenance.source",
         "provenance.subset", "hardware.device_name", "git_sha", "metrics.stopped")
_STATUS_TEXT = {"oom": "OOM", "error": "FAIL", "skipped": "skipped", "unavailable": "n/a"}


# -- formatting ------------------------------------------------------------------------------------

def fmt_sig(value, digits: int = 3) -> str:
    """`value` to `digits` significant digits in fixed notation (289, 30.4, 1.00, 0.0123)."""
    if value is None or not np.isfinite(value):
        return DASH
    if value == 0:
        return "0"
    rounded = float(f"{value:.{digits}g}")  # round first so 9.996 -> 10.0, not 10.00
    decimals = max(digits - 1 - math.floor(math.log10(abs(rounded))), 0)
    return f"{rounded:.{decimals}f}"


def fmt_ms(value) -> str:
    return fmt_sig(value, 3)


def fmt_ratio(value) -> str:
    return fmt_sig(value, 2) + "×" if value is not None and np.isfinite(value) else DASH


def fmt_count(value) -> str:
    """A parameter count: 812, 31.2K, 3.36M, 1.10G."""
    if value is None or not np.isfinite(value):
        return DASH
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= factor:
            return fmt_sig(value / factor, 3) + suffix
    return str(int(value))


def fmt_lr(value) -> str:
    """6.7e-4, 2e-3 (a learning rate, two significant digits, short exponent)."""
    if value is None or not np.isfinite(value):
        return DASH
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


MEMORY_UNIT = ("GiB", GIB)  # every memory cell of every table: one unit, so two tables never disagree


def memory_unit(values=()) -> tuple[str, float]:
    """The unit of memory cells: always GiB, whatever the values (a table that switched to MiB for
    small CPU peaks would put 500 beside 0.53 for the same kind of cell); `fmt_mem` keeps the
    digits of small values."""
    return MEMORY_UNIT


def fmt_mem(value, unit: tuple[str, float] = MEMORY_UNIT) -> str:
    """Bytes in `unit` (GiB): 2 decimals from 0.1 up (56.73, 0.53), 2 significant digits below
    (0.048, 0.0012), so a small CPU peak never reads 0.00."""
    if value is None or not np.isfinite(value):
        return DASH
    scaled = value / unit[1]
    if scaled == 0:
        return "0"
    if abs(scaled) >= 0.1:
        return f"{scaled:.2f}"
    return fmt_sig(scaled, 2)


def length_label(length) -> str:
    """1024 -> '1K', 16384 -> '16K', 300 -> '300'."""
    length = int(length)
    return f"{length // 1024}K" if length >= 1024 and length % 1024 == 0 else str(length)


def status_text(status) -> str:
    return _STATUS_TEXT.get(status, DASH if _missing(status) else str(status))


def _missing(value) -> bool:
    """None, NaN or pandas' NA (a list or dict is a value)."""
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def _get(row, key):
    value = row.get(key) if hasattr(row, "get") else None
    return None if _missing(value) else value


def _number(value) -> float | None:
    """A plain float for JSON (None for a missing or non-finite value)."""
    if _missing(value):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _plain(value):
    """numpy scalars, arrays and tuples as JSON-ready Python values (NaN -> None)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _number(value)
    return None if _missing(value) else value


def _natural(name) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(name))]


# -- provenance, scale and columns -----------------------------------------------------------------

def task_label(task: str) -> str:
    return TASK_LABELS.get(task, task)


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
    kind, source, subset = (_get(row, f"provenance.{k}") for k in ("kind", "source", "subset"))
    if kind is None:
        return None
    text = f"{kind}: {source}" if source else str(kind)
    return f"{text} ({subset})" if subset else text


def data_detail(row) -> str:
    """What an accuracy column's data is: 'stand-in: fashion-mnist · smoke · n=2000/250/250'.
    An official release read as a subset says 'official subset'."""
    kind, source, subset = (_get(row, f"provenance.{k}") for k in ("kind", "source", "subset"))
    scale = _get(row, "scale")
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
    flag = _get(row, "lra_eligible")
    if flag is not None:
        return bool(flag)
    return (_get(row, "scale") == "paper" and _get(row, "provenance.kind") in LRA_KINDS
            and _get(row, "provenance.subset") is None)


def accuracy_column(row) -> tuple[str, str]:
    """(column label, group) of an accuracy record: group 'lra' (an LRA number, counts in Avg),
    'excluded' (an LRA task at another scale or on other data: labelled, never averaged) or
    'other' (tasks outside LRA)."""
    task = _get(row, "task") or "?"
    if task in LRA_TASKS:
        if lra_eligible(row):
            return task_label(task), "lra"
        return f"{task_label(task)} [{data_detail(row)}]", "excluded"
    plain = (_get(row, "scale") in (None, "paper") and _get(row, "provenance.subset") is None
             and _get(row, "provenance.kind") in (None, *LRA_KINDS, "random-inputs"))
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
    df = ensure_columns(records.copy(), _NUMERIC, _TEXT)
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
        cells["run_ids"] = [() if _missing(r) else (r,) for r in cells["run_id"]]
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


# The papers' efficiency protocol (MEGA Table 2, after LRA's): one training step of the Text
# configuration at L = 4096 with batch 25 on a GPU. Its slice leads the speed tables when present.
PROTOCOL = {"task": "text", "batch_size": 25, "device": "cuda", "mode": "train_step"}
PROTOCOL_LENGTH = 4096
PROTOCOL_TEXT = "The papers' protocol (Text, L = 4096, batch 25, one training step on a GPU)."


def is_protocol(slice_: dict, lengths=()) -> bool:
    """Whether a slice is the papers' protocol: its keys match PROTOCOL and L = 4096 was measured."""
    return (all(slice_.get(k) == v for k, v in PROTOCOL.items())
            and PROTOCOL_LENGTH in {int(x) for x in lengths if not _missing(x)})


def speed_slices(cells: pd.DataFrame) -> list[dict]:
    """The (task, batch, dtype, device, mode, device name) combinations present, in the order a
    reader looks for them: the papers' protocol slice first (the newest measurement first when
    several GPUs have one); then GPU before CPU; Text, then the other LRA tasks in LRA order, then
    other tasks; a training step before inference; then the slice with more rows, more lengths,
    the newer runs."""
    if cells.empty:
        return []
    task_rank = {t: i for i, t in enumerate(("text",) + tuple(t for t in LRA_TASKS if t != "text"))}
    slices = []
    for key, group in cells.groupby(list(SLICE_KEYS), dropna=False, sort=False):
        slice_ = {k: (None if _missing(v) else v) for k, v in zip(SLICE_KEYS, key)}
        runs = [str(r) for r in group["run_id"] if not _missing(r)] if "run_id" in group else []
        slices.append((slice_, {"protocol": is_protocol(slice_, group["seq_len"]),
                                "rows": group["label"].nunique(), "lengths": group["seq_len"].nunique(),
                                "newest": max(runs, default="")}))
    newest = sorted({info["newest"] for _, info in slices})
    age = {run: len(newest) - i for i, run in enumerate(newest)}  # 1 = the newest

    def order(item):
        slice_, info = item
        task = slice_["task"]
        return (not info["protocol"], age[info["newest"]] if info["protocol"] else 0,
                slice_["device"] != "cuda", task_rank.get(task, len(task_rank)), str(task),
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


def _timing_protocol(cells: pd.DataFrame) -> str:
    if "n_runs" in cells and (cells["n_runs"] > 1).any():
        return "median over runs of each run's median (runs pooled)"
    warm = sorted({int(v) for v in cells["timing.n_warmup"].dropna()})
    iters = sorted({int(v) for v in cells["timing.n_iters"].dropna()})
    if not warm and not iters:
        return "median of the timed iterations"
    join = lambda values: "/".join(str(v) for v in values) or "?"  # noqa: E731
    return f"median of {join(iters)} timed iterations after {join(warm)} warm-up"


def _memory_definition(cells: pd.DataFrame) -> str:
    """What a peak-memory cell counts (harness/bench.py): on CUDA the allocator's peak since a reset
    right after the model and optimiser were built, so the weights are in it; on CPU the rise of the
    process's resident set over the set after the build, so the weights are not."""
    sources = set(cells["mem_source"].dropna())
    modes = set(cells["mode"].dropna()) if "mode" in cells else set()
    train, inference = "train_step" in modes or not modes, bool(modes - {"train_step"})
    step = ("a training step: forward, loss, backward, AdamW update" if train and not inference else
            "inference (no gradients, no optimiser state)" if inference and not train else
            "a training step, or inference (no gradients, no optimiser state)")
    text = []
    if "cuda" in sources:
        held = ("weights, gradients, AdamW optimiser state and activations" if train and not inference
                else "weights and activations" if not train else
                "weights and activations, plus gradients and AdamW optimiser state for a training step")
        text.append(f"peak allocated CUDA memory of {step} (torch.cuda.max_memory_allocated, reset after "
                    f"the model was built): {held} included; the allocator's cached reserve and the CUDA "
                    f"context are not")
    if "rss" in sources:
        held = ("activations, gradients and AdamW optimiser state (created by the first step) included"
                if train and not inference else "activations included" if not train else
                "activations, plus gradients and AdamW optimiser state for a training step, included")
        text.append(f"CPU: rise of the process's peak resident set (peak RSS) over the resident set after the model "
                    f"was built, during {step}: {held}; the weights, resident before, are not")
    return " / ".join(text) or "peak memory (how it was measured is not recorded)"


def _row_origins(sources: dict) -> dict:
    """row -> 'row combines runs A, B (revisions x, y)' for the rows whose cells come from more than
    one run or git revision; `sources` maps a row to the (run ids, git shas) of its cells."""
    notes = {}
    for row, (runs, shas) in sources.items():
        runs = sorted({str(r) for r in runs if not _missing(r)})
        shas = sorted({str(s)[:12] for s in shas if not _missing(s)})
        if len(runs) > 1 or len(shas) > 1:
            text = f"row combines runs {', '.join(runs)}"
            if len(shas) > 1:
                text += f" (revisions {', '.join(shas)})"
            notes[row] = text
    return notes


def _origins_caption(notes: dict) -> str:
    if not notes:
        return ""
    return " Rows measured by more than one run: " + "; ".join(
        f"{row}: {text}" for row, text in notes.items()) + "."


def _frame(rows: dict, columns: list, title: str, caption: str, bold=(), tips=(), col_classes=None,
           index_name: str = "Model", order: list | None = None, cells: dict | None = None) -> pd.DataFrame:
    index = order if order is not None else sorted(rows, key=_natural)
    df = pd.DataFrame([rows[m] for m in index], index=pd.Index(index, name=index_name),
                      columns=columns, dtype=object).fillna(DASH)
    df.attrs.update(title=title, caption=caption, bold=list(bold), tips=list(tips),
                    col_classes=dict(col_classes or {}), cells=dict(cells or {}))
    return df


def _bold_least(values: dict) -> list:
    """(row, col) of the lowest finite value per column; only when at least two rows compete."""
    bold = []
    by_column: dict = {}
    for (row, col), value in values.items():
        if value is not None and np.isfinite(value):
            by_column.setdefault(col, []).append((row, value))
    for col, entries in by_column.items():
        if len(entries) < 2:
            continue
        best = min(v for _, v in entries)
        bold += [(row, col) for row, v in entries if np.isclose(v, best, rtol=1e-9, atol=0)]
    return bold


# -- model figures and symbols ----------------------------------------------------------------------

LAYERS, WIDTH = "layers", "width"
MODEL_COLUMNS = (PARAMS, LAYERS, WIDTH)  # the model block: beside accuracy and beside speed alike
MODEL_CAPTION = (f"{PARAMS} = trainable parameters, {LAYERS} = blocks (n_layers), {WIDTH} = model width "
                 f"(d_model), from each record's model configuration (a range when they differ between "
                 f"the row's cells).")


def _span(values, fmt) -> str:
    values = sorted({int(v) for v in values if not _missing(v)})
    if not values:
        return DASH
    return fmt(values[0]) if len(values) == 1 else f"{fmt(values[0])}–{fmt(values[-1])}"


def model_figures(group: pd.DataFrame) -> tuple[dict, dict]:
    """({params, layers, width} display texts, the numbers behind them) of one row's records."""
    columns = {PARAMS: "n_params", LAYERS: "model_config.n_layers", WIDTH: "model_config.d_model"}
    text, data = {}, {}
    for name, column in columns.items():
        values = group[column] if column in group else pd.Series(dtype=float)
        text[name] = _span(values, fmt_count if name == PARAMS else str)
        found = sorted({int(v) for v in values if not _missing(v)})
        data[name] = {"value": found[0] if len(found) == 1 else None,
                      "range": [found[0], found[-1]] if found else None}
    data[PARAMS]["n_params"] = data[PARAMS]["value"]  # the key `table --json` readers know
    data[PARAMS]["n_params_range"] = data[PARAMS]["range"]
    return text, data


def _has_symbol(text: str, symbol: str) -> bool:
    if symbol == DASH:
        return text == DASH
    if symbol == NOISY:
        return text.startswith(NOISY)
    if symbol in (STOPPED, "×"):
        return symbol in text
    if symbol == "ref …":
        return text.startswith("ref ")
    return re.search(rf"(?<![\w/]){re.escape(symbol)}(?![\w/])", text) is not None


def symbols_in(frame: pd.DataFrame, columns=None) -> set:
    """The table symbols (SYMBOLS) that occur in the cells of `frame` (of `columns` only if given)."""
    cells = frame if columns is None else frame[[c for c in columns if c in frame.columns]]
    texts = [str(v) for v in cells.to_numpy().ravel()]
    return {sym for sym in SYMBOLS if any(_has_symbol(t, sym) for t in texts)}


SYMBOLS = (DASH, "n/a", "OOM", "FAIL", "skipped", "ref …", NOISY, STOPPED, "×")


def symbols_caption(frame: pd.DataFrame, meanings: dict) -> str:
    """' Symbols: – = ...; OOM = ...' for each symbol of `meanings` found in the cells of `frame` and
    not defined in its caption yet: every mark a reader meets is explained under its table, and a
    mark the table does not use is not."""
    caption = frame.attrs.get("caption", "")
    found = symbols_in(frame)
    parts = []
    for sym, meaning in meanings.items():
        if sym not in found or f"{sym} = " in caption:
            continue
        if sym == "ref …":  # the statuses a reference cell had, spelled as the cells spell them
            sym = " / ".join(sorted({str(v) for v in frame.to_numpy().ravel() if str(v).startswith("ref ")}))
        parts.append(f"{sym} = {meaning}")
    return (" Symbols: " + "; ".join(parts) + ".") if parts else ""


STATUS_MEANINGS = {"OOM": "out of memory (CUDA out-of-memory, or the process killed for memory)",
                   "FAIL": "the cell raised an error (hover for the message)",
                   "skipped": "not run: the row ran out of memory at a shorter length"}


# -- speed cells -----------------------------------------------------------------------------------

def spread(row) -> float | None:
    """p80 / p20 of a speed cell (None without both)."""
    p20, p80 = _number(_get(row, "timing.p20_ms")), _number(_get(row, "timing.p80_ms"))
    return p80 / p20 if p20 and p80 is not None and p20 > 0 else None


def is_noisy(row) -> bool:
    value = spread(row)
    return value is not None and value > NOISY_SPREAD


def _speed_ok(row) -> bool:
    return row["status"] == "ok" and _number(row["timing.median_ms"]) is not None


def _speed_data(row) -> dict:
    """The numbers of one speed cell, for `to_json` and hover notes."""
    return {"status": row["status"], "median_ms": _number(row["timing.median_ms"]),
            "p20_ms": _number(row["timing.p20_ms"]), "p80_ms": _number(row["timing.p80_ms"]),
            "spread": spread(row), "noisy": is_noisy(row), "peak_bytes": _number(row["peak_bytes"]),
            "n_runs": int(row.get("n_runs") or 1),
            "run_ids": [r for r in (row.get("run_ids") or (row["run_id"],)) if not _missing(r)],
            "error": row["error"] if isinstance(row["error"], str) else None}


def _time_text(row) -> str:
    return (NOISY if is_noisy(row) else "") + fmt_ms(row["timing.median_ms"])


def _time_tip(row) -> str:
    data = _speed_data(row)
    text = f"median {fmt_ms(data['median_ms'])} ms"
    if data["p20_ms"] is not None and data["p80_ms"] is not None:
        text += (f"; p20-p80 {fmt_ms(data['p20_ms'])}-{fmt_ms(data['p80_ms'])} ms "
                 f"(p80/p20 = {data['spread']:.2f}{', noisy' if data['noisy'] else ''})")
    return text + (f"; run {', '.join(data['run_ids'])}" if data["run_ids"] else "")


def _bold_times(entries: dict) -> list:
    """Rows whose time is bold: the fastest, plus every row whose [p20, p80] overlaps the
    fastest's (about equal); nothing when fewer than two rows compete."""
    if len(entries) < 2:
        return []
    best = min(entries, key=lambda r: entries[r][0])
    b_med, b_lo, b_hi = entries[best]
    b_lo, b_hi = (b_lo if b_lo is not None else b_med), (b_hi if b_hi is not None else b_med)
    bold = [best]
    for row, (med, lo, hi) in entries.items():
        lo, hi = (lo if lo is not None else med), (hi if hi is not None else med)
        if row != best and not (hi < b_lo or lo > b_hi):
            bold.append(row)
    return bold


SPEED_BOLD_RULE = ("Bold time = the fastest, plus every time whose p20-p80 range overlaps the fastest's "
                   "(about equal: not separable); bold memory = the lowest peak.")
NOISY_TEXT = f"noisy: p80/p20 > {NOISY_SPREAD:g} over the timed iterations"


# -- accuracy cells ---------------------------------------------------------------------------------

@dataclass
class Summary:
    """One accuracy cell: the seeds' test accuracies (in %) and what follows from them."""

    values: np.ndarray  # per-seed test accuracy, %
    seeds: list = field(default_factory=list)
    mean: float | None = None
    sd: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    se_test: float | None = None  # binomial standard error of the test set, points
    n_test: int | None = None
    run_ids: list = field(default_factory=list)
    failures: dict = field(default_factory=dict)  # status -> count
    error: str | None = None
    lr: float | None = None  # the learning rate shown (chosen on validation under a grid)
    lr_scores: dict = field(default_factory=dict)  # lr -> mean validation accuracy (%), grid only
    stopped: list = field(default_factory=list)  # (seed, steps, reason) of seeds cut short
    n_params: list = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)


def summarise(values, n_test=None) -> Summary:
    """mean, sample sd, the 95% Student-t interval over seeds and the test-set standard error."""
    values = np.asarray(values, dtype=float)
    summary = Summary(values=values)
    if len(values) == 0:
        return summary
    summary.mean = float(values.mean())
    if len(values) > 1:
        summary.sd = float(values.std(ddof=1))
        half = float(stats.t.ppf(0.975, len(values) - 1)) * summary.sd / math.sqrt(len(values))
        # an accuracy lies in [0, 100]: the t interval is cut there
        summary.ci_low, summary.ci_high = max(summary.mean - half, 0.0), min(summary.mean + half, 100.0)
    if n_test:
        p = min(max(summary.mean / 100.0, 0.0), 1.0)
        summary.n_test = int(n_test)
        summary.se_test = 100.0 * math.sqrt(p * (1.0 - p) / n_test)
    return summary


def welch_p(a, b) -> float:
    """Two-sided p of Welch's t-test; with no spread in either group, 1 when the means are equal
    and 0 otherwise."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.std() == 0 and b.std() == 0:
        return 1.0 if np.isclose(a.mean(), b.mean()) else 0.0
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return 1.0 if math.isnan(p) else p


def tied(a: Summary, best: Summary) -> bool:
    """Not separable from the best (statistics.md "Ranking and bold"): Welch p >= 0.05, or a gap
    below 2 x the test-set standard error (the larger of the two)."""
    se = [s.se_test for s in (a, best) if s.se_test is not None]
    if se and best.mean - a.mean < 2.0 * max(se):
        return True
    return welch_p(a.values, best.values) >= ALPHA


def rank(summaries: dict) -> tuple[list, str]:
    """(rows to bold, why not) for one column of model rows: the best mean among rows with n >= 2
    and every row tied with it; nothing when a row has a single seed ('single seed') or fewer
    than two rows have a number."""
    measured = {row: s for row, s in summaries.items() if s.n >= 1}
    if any(s.n == 1 for s in measured.values()):
        return [], "single seed"
    if len(measured) < 2:
        return [], "one row"
    best = max(measured, key=lambda r: measured[r].mean)
    return [best] + [r for r, s in measured.items() if r != best and tied(s, measured[best])], ""


def _has_grid(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 1


def _cell_summary(group: pd.DataFrame) -> Summary:
    """The records of one (row, column): under an lr grid, the lr with the best mean validation
    accuracy is selected first."""
    ok_mask = (group["status"] == "ok") & group["metrics.accuracy"].notna()
    lr_scores, chosen = {}, None
    if group["train.lr_grid"].map(_has_grid).any():
        ok = group[ok_mask]
        for lr, points in ok.groupby("train.lr", dropna=True):
            val = points["metrics.val_accuracy"].dropna()
            lr_scores[float(lr)] = float(val.mean() * 100.0) if len(val) else float("nan")
        scored = {lr: v for lr, v in lr_scores.items() if np.isfinite(v)}
        if scored:
            chosen = max(scored, key=lambda lr: (scored[lr], -lr))
        elif lr_scores:
            chosen = min(lr_scores)
        if chosen is not None:
            lrs = group["train.lr"].to_numpy(dtype=float)
            keep = np.isclose(lrs, chosen) | (np.isnan(lrs) & (group["status"] != "ok").to_numpy())
            group = group[keep]
            ok_mask = (group["status"] == "ok") & group["metrics.accuracy"].notna()
    ok = group[ok_mask]
    n_test = ok["metrics.n_test"].dropna()
    summary = summarise(ok["metrics.accuracy"].to_numpy(dtype=float) * 100.0,
                        int(n_test.median()) if len(n_test) else None)
    summary.seeds = [None if _missing(s) else int(s) for s in ok["seed"]]
    summary.run_ids = sorted(set(group["run_id"].dropna()))
    failed = group[~ok_mask]
    summary.failures = {str(k): int(v) for k, v in failed["status"].value_counts().items()}
    errors = [e for e in failed["error"] if isinstance(e, str) and e]
    summary.error = errors[0] if errors else None
    summary.lr_scores = lr_scores
    lrs = ok["train.lr"].dropna()
    summary.lr = chosen if chosen is not None else (float(lrs.iloc[0]) if lrs.nunique() == 1 else None)
    for _, rec in group.iterrows():
        reason = _get(rec, "metrics.stopped")
        if reason:
            steps = _get(rec, "metrics.steps")
            summary.stopped.append((_get(rec, "seed"), None if steps is None else int(steps), str(reason)))
    summary.n_params = sorted({int(v) for v in group["n_params"].dropna()})
    return summary


def _accuracy_text(s: Summary, grid: bool) -> str:
    if s.n == 0:
        for status in ("oom", "error", "unavailable", "skipped"):
            if s.failures.get(status):
                return status_text(status)
        return DASH
    extra = "; ".join(f"{n} {status_text(status)}" for status, n in s.failures.items())
    count = f"n={s.n}" + (f"; {extra}" if extra else "")
    if s.n > 1:
        text = f"{s.mean:.1f} ± {s.sd:.1f} ({count}) [{s.ci_low:.1f}, {s.ci_high:.1f}]"
    else:
        text = f"{s.mean:.1f} ({count})"
    if grid and s.lr is not None:
        text += f" lr={fmt_lr(s.lr)}"
    return text + (STOPPED if s.stopped else "")


def _accuracy_tip(s: Summary) -> str | None:
    parts = []
    if s.n > 1:
        parts.append(f"95% CI of the mean [{s.ci_low:.1f}, {s.ci_high:.1f}] over {s.n} seeds (Student t)")
    if s.se_test is not None:
        parts.append(f"test-set s.e. {s.se_test:.1f} points (N={s.n_test})")
    if s.lr_scores:
        scores = ", ".join(f"{fmt_lr(lr)}: {v:.1f}" for lr, v in sorted(s.lr_scores.items()))
        parts.append(f"lr {fmt_lr(s.lr)} chosen on validation (mean val accuracy by lr: {scores})")
    if s.stopped:
        parts.append("stopped early: " + ", ".join(
            f"seed {seed}: {reason} at {steps if steps is not None else '?'} steps"
            for seed, steps, reason in s.stopped))
    if s.error:
        parts.append(s.error)
    return "; ".join(parts) or None


def _accuracy_data(s: Summary) -> dict:
    return {"mean": s.mean, "sd": s.sd, "n": s.n, "ci_low": s.ci_low, "ci_high": s.ci_high,
            "se_test": s.se_test, "n_test": s.n_test, "values": [float(v) for v in s.values],
            "seeds": s.seeds, "run_ids": s.run_ids, "failures": s.failures, "lr": s.lr,
            "lr_scores": {fmt_lr(k): v for k, v in s.lr_scores.items()},
            "stopped": [{"seed": seed, "steps": steps, "reason": reason}
                        for seed, steps, reason in s.stopped],
            "n_params": s.n_params, "error": s.error}


def _schedule(rec) -> str | None:
    """'300 steps, batch 16, lr 2e-3, warmup 30' from a record's train settings."""
    steps, batch = _get(rec, "train.total_steps"), _get(rec, "train.batch_size")
    lr, warm = _get(rec, "train.lr"), _get(rec, "train.warmup_steps")
    if steps is None and batch is None and lr is None:
        return None
    parts = [f"{int(steps)} steps" if steps is not None else None,
             f"batch {int(batch)}" if batch is not None else None,
             (f"lr grid ×{'/'.join(f'{m:.3g}' for m in rec['train.lr_grid'])} of the base lr"
              if _has_grid(rec.get("train.lr_grid")) else f"lr {fmt_lr(lr)}" if lr is not None else None),
             f"warmup {int(warm)}" if warm is not None else None]
    budget = _get(rec, "train.time_budget")
    if budget is not None:
        parts.append(f"time budget {budget:g} s")
    return ", ".join(p for p in parts if p)


def _schedules_caption(acc: pd.DataFrame) -> str:
    by_row: dict = {}
    for _, rec in acc.iterrows():
        text = _schedule(rec)
        if text:
            by_row.setdefault(rec["row"], set()).add(text)
    if not by_row:
        return ""
    texts = {row: " / ".join(sorted(v)) for row, v in by_row.items()}
    if len(set(texts.values())) == 1:
        return f" Schedule (every row): {next(iter(texts.values()))}."
    return " Schedules: " + "; ".join(f"{row}: {texts[row]}" for row in sorted(texts, key=_natural)) + "."


# -- accuracy tables --------------------------------------------------------------------------------

def _accuracy_records(df: pd.DataFrame, aggregate: bool) -> pd.DataFrame:
    acc = df[df["kind"] == "accuracy"].copy()
    if acc.empty:
        return acc
    labels = [accuracy_column(row) for _, row in acc.iterrows()]
    acc["column"] = [label for label, _ in labels]
    acc["group"] = [group for _, group in labels]
    acc["row"] = [row_name(m, lab) for m, lab in zip(acc["model"], acc["label"])]
    acc["is_ref"] = acc["model"].map(is_reference)
    # every point of an lr grid is its own cell; without a grid, a re-run replaces the record
    grid = acc["train.lr_grid"].map(_has_grid)
    acc["lr_key"] = np.where(grid, acc["train.lr"], np.nan)
    return acc if aggregate else latest(acc, ("label", "task", "seed", "column", "lr_key"))


def _average(used: list, summaries: dict, row: str) -> Summary | None:
    """The Avg of one row over the columns `used`: the mean of the column means, with the spread
    of per-seed averages over the seeds every column has."""
    parts = [summaries.get((row, c)) for c in used]
    if any(p is None or p.n == 0 for p in parts):
        return None
    common = set.intersection(*[set(p.seeds) for p in parts]) - {None}
    per_seed = [np.mean([p.values[p.seeds.index(seed)] for p in parts]) for seed in sorted(common)]
    summary = summarise(per_seed)
    summary.mean = float(np.mean([p.mean for p in parts]))
    if summary.n > 1:  # the interval around the displayed mean
        half = float(stats.t.ppf(0.975, summary.n - 1)) * summary.sd / math.sqrt(summary.n)
        summary.ci_low, summary.ci_high = max(summary.mean - half, 0.0), min(summary.mean + half, 100.0)
    se = [p.se_test for p in parts]
    if all(v is not None for v in se):
        summary.se_test = math.sqrt(sum(v * v for v in se)) / len(se)
    summary.seeds = sorted(common)
    summary.run_ids = sorted({r for p in parts for r in p.run_ids})
    return summary


def _accuracy_frame(acc: pd.DataFrame, title: str, caption: str, with_avg: bool) -> pd.DataFrame:
    order = {t: i for i, t in enumerate(LRA_TASKS)}
    present = acc[["column", "group", "task"]].drop_duplicates("column")
    task_of = dict(zip(present["column"], present["task"]))
    group_of = dict(zip(present["column"], present["group"]))
    ranked = sorted(task_of, key=lambda c: (order.get(task_of[c], len(order)), _natural(c)))  # LRA order
    lra_cols = [c for c in ranked if group_of[c] in ("lra", "other")]
    excluded = [c for c in ranked if group_of[c] == "excluded"]
    grid = bool(acc["train.lr_grid"].map(_has_grid).any())
    models = sorted(set(acc.loc[~acc["is_ref"], "row"]), key=_natural)
    refs = sorted(set(acc.loc[acc["is_ref"], "row"]), key=_natural)

    rows, summaries, tips, data = {}, {}, [], {}
    for (row, column), group in acc.groupby(["row", "column"], sort=False):
        summary = _cell_summary(group)
        summaries[(row, column)] = summary
        rows.setdefault(row, {})[column] = _accuracy_text(summary, grid)
        data[(row, column)] = _accuracy_data(summary)
        tip = _accuracy_tip(summary)
        if tip:
            tips.append((row, column, tip))
    for row, group in acc.groupby("row", sort=False):
        text, figures = model_figures(group)
        rows.setdefault(row, {}).update(text)
        data.update({(row, name): numbers for name, numbers in figures.items()})

    bold, unranked = [], []
    for column in ranked:
        chosen, why = rank({r: summaries[(r, column)] for r in models if (r, column) in summaries})
        bold += [(r, column) for r in chosen]
        if why == "single seed":
            unranked.append(column)

    avg_cols, caption_avg = [], ""
    if with_avg:
        five = [c for c in lra_cols if task_of[c] != "pathx"]
        six = list(lra_cols)
        if len(five) >= 2:
            avg_cols.append(("Avg", five))
        if "pathx" in {task_of[c] for c in lra_cols} and len(six) >= 2:
            avg_cols.append((f"Avg ({len(six)})", six))
        for name, used in avg_cols:
            averages = {}
            for row in models:
                summary = _average(used, summaries, row)
                if summary is None:
                    rows[row][name] = "n/a"
                    continue
                averages[row] = summary
                rows[row][name] = (f"{summary.mean:.1f} ± {summary.sd:.1f} (n={summary.n})" if summary.n > 1
                                   else f"{summary.mean:.1f}")
                data[(row, name)] = _accuracy_data(summary)
            for row in refs:
                rows[row][name] = DASH  # context, never averaged
            chosen, why = rank(averages)
            bold += [(r, name) for r in chosen]
            if why == "single seed":
                unranked.append(name)
        if avg_cols:
            measured_pathx = "pathx" in {task_of[c] for c in lra_cols}
            parts = [f"{name} = mean over the {len(used)} tasks {', '.join(used)}"
                     + ((" (Path-X excluded, the LRA paper's rule" + ("" if measured_pathx else
                         "; Path-X was not measured") + ")") if name == "Avg" else
                        " (Path-X included, as S4 and MEGA report)")
                     for name, used in avg_cols]
            caption_avg = " " + "; ".join(parts) + "; its ± and n are over the seeds every task has."
    if excluded:
        caption_avg += (" A column marked [provenance · scale · size] is not an LRA number (another scale, "
                        "a subset, or data other than the task's own): labelled, never in an average.")
    caption += _resolution_caption(summaries)
    caption += (" Bold = the highest mean among rows with n ≥ 2 and every row not separable from it "
                "(Welch's t-test p ≥ 0.05, or a gap below 2 × the test-set s.e.).")
    if unranked:
        caption += (" Single seed: not ranked." if set(unranked) >= set(ranked) else
                    f" Single seed: not ranked ({', '.join(unranked)}).")
    if refs:
        caption += (" ref: rows = the majority class and a linear model on the raw input, fitted on the same "
                    "splits: context, never ranked or averaged.")
    caption += " " + MODEL_CAPTION
    caption += _schedules_caption(acc)
    if grid:
        caption += (" Under the lr grid each cell shows the learning rate whose mean validation accuracy "
                    "is best (lr=...) and its test accuracy; every grid point stays in the store.")
    caption += _stopped_caption(summaries)
    caption += caption_avg
    notes = _row_origins({row: (group["run_id"], group["git_sha"])
                          for row, group in acc.groupby("row", sort=False)})
    caption += _origins_caption(notes)
    tips += [(row, None, text) for row, text in notes.items()]
    all_cols = list(MODEL_COLUMNS) + lra_cols + [name for name, _ in avg_cols] + excluded
    col_classes = {name: "avg" for name, _ in avg_cols} | {c: "standin" for c in excluded}
    frame = _frame(rows, all_cols, title, caption, bold=bold, tips=tips, col_classes=col_classes,
                   order=models + refs, cells=data)
    averages = [name for name, _ in avg_cols]
    results = lra_cols + excluded
    dash = []
    if symbols_in(frame, results) & {DASH}:
        dash.append("no result for this task")
    if symbols_in(frame, MODEL_COLUMNS) & {DASH}:
        dash.append("not recorded (params, layers, width)")
    if refs and averages:
        dash.append("reference rows are not averaged")
    na = []
    if symbols_in(frame, results) & {"n/a"}:
        na.append("the model cannot run here (a kernel or package is missing)")
    if symbols_in(frame, averages) & {"n/a"}:
        na.append("a result the average needs is missing")
    frame.attrs["caption"] += symbols_caption(frame, {
        DASH: "; ".join(dash) or "no result", "n/a": "; ".join(na) or "not available",
        "OOM": "out of memory", "FAIL": "the run raised an error (hover for the message)",
        "skipped": "not run"})
    return frame


def _resolution_caption(summaries: dict) -> str:
    se = [s.se_test for s in summaries.values() if s.se_test is not None]
    n_test = sorted({s.n_test for s in summaries.values() if s.n_test})
    if not se:
        return " Test-set standard error: not recorded (no n_test)."
    span = f"{min(se):.1f}" if np.isclose(min(se), max(se), atol=0.05) else f"{min(se):.1f}–{max(se):.1f}"
    sizes = str(n_test[0]) if len(n_test) == 1 else f"{n_test[0]}–{n_test[-1]}"
    return (f" Test-set resolution: binomial s.e. = 100·√(p(1−p)/N) = {span} points (N = {sizes} test "
            f"examples; hover a cell for its own).")


def _stopped_caption(summaries: dict) -> str:
    notes = []
    for (row, column), s in summaries.items():
        if s.stopped:
            steps = ", ".join(f"{steps if steps is not None else '?'}" for _, steps, _ in s.stopped)
            reasons = "/".join(sorted({reason for _, _, reason in s.stopped}))
            notes.append(f"{row} · {column}: {reasons} at {steps} steps")
    if not notes:
        return ""
    return f" {STOPPED} = training stopped early, best weights evaluated: " + "; ".join(notes) + "."


ACCURACY_CAPTION = ("Test accuracy (%): mean ± sample sd ({pooled}), [a, b] = 95% Student-t interval of the "
                    "mean over seeds; a seed that failed is counted after n (e.g. n=2; 1 FAIL).")


def accuracy_table(df: pd.DataFrame, aggregate: bool = False) -> pd.DataFrame | None:
    """Accuracy on LRA tasks: one row per model variant (reference rows below), LRA-eligible tasks in
    LRA order with the Avg columns, every other scale or data source in its own labelled column."""
    acc = _accuracy_records(df, aggregate)
    acc = acc[acc["group"] != "other"] if not acc.empty else acc
    if acc.empty:
        return None
    pooled = ("n = results pooled over the selected runs" if aggregate else
              "n = seeds, latest run per (row, task, seed)")
    if (acc["group"] == "lra").any():
        title = "Long Range Arena accuracy"
    else:
        title = f"Accuracy (not LRA numbers: {' / '.join(not_lra_reasons(acc)) or 'not LRA data'})"
    return _accuracy_frame(acc, title, ACCURACY_CAPTION.format(pooled=pooled), with_avg=True)


def other_tasks_table(df: pd.DataFrame, aggregate: bool = False) -> pd.DataFrame | None:
    """Tasks outside LRA (mqar, selective_copy, induction_heads, ...): same cells, no average."""
    acc = _accuracy_records(df, aggregate)
    acc = acc[acc["group"] == "other"] if not acc.empty else acc
    if acc.empty:
        return None
    pooled = ("n = results pooled over the selected runs" if aggregate else
              "n = seeds, latest run per (row, task, seed)")
    caption = (ACCURACY_CAPTION.format(pooled=pooled)
               + " These tasks are not part of LRA and never enter its average.")
    return _accuracy_frame(acc, "Other tasks (not LRA)", caption, with_avg=False)


# -- efficiency and by-length tables ----------------------------------------------------------------

PUBLISHED_TASK, PUBLISHED_LENGTH = "text", 4096  # where the papers' Table-2 efficiency ratios were taken


def published_efficiency(models) -> dict:
    """{model: {"speed", "memory", "source"}} for the models whose registration carries published
    efficiency figures (importing the registry; {} where it cannot be loaded)."""
    try:
        from harness.registry import MODELS

        MODELS.ensure_loaded()
        out = {}
        for model in models:
            if isinstance(model, str) and model in MODELS.names() and MODELS.get(model).published:
                out[model] = MODELS.get(model).published
        return out
    except Exception:  # a report must render without the models
        return {}


def efficiency_table(df: pd.DataFrame, length: int = 4096, slice_: dict | None = None,
                     aggregate: bool = False) -> pd.DataFrame | None:
    """MEGA Table 2 style at one length: the model block (params, layers, width), time and peak
    memory, with speed-up and memory fraction against the vanilla and the fused Transformer. Falls
    back to the nearest measured length."""
    cells = speed_cells(df, aggregate)
    if cells.empty:
        return None
    slice_ = slice_ or speed_slices(cells)[0]
    cells = select_slice(cells, slice_)
    if cells.empty:
        return None
    protocol = is_protocol(slice_, cells["seq_len"])
    at = nearest_length(cells["seq_len"].dropna(), length)
    where = (f"L = {at}" if at == length else
             f"L = {at} (nearest measured length; {length} was not measured)")
    cells = cells[cells["seq_len"] == at]
    unit = memory_unit()
    by_label = {row["label"]: row for _, row in cells.iterrows()}
    refs = [(base, reference_name(by_label, base)) for base in REFERENCES]
    time_col, mem_col0 = "time (ms)", f"peak mem ({unit[0]})"
    columns = list(MODEL_COLUMNS) + [time_col, mem_col0]
    ratio_cols = []
    for base, _ in refs:
        ratio_cols += [f"speed-up vs {base}", f"memory vs {base}"]
    columns += ratio_cols
    rows, memory, tips, data, times = {}, {}, [], {}, {}
    for label, row in by_label.items():
        ok = _speed_ok(row)
        text, figures = model_figures(pd.DataFrame([row]))
        data.update({(label, name): numbers for name, numbers in figures.items()})
        data[(label, time_col)] = data[(label, mem_col0)] = _speed_data(row)
        if ok:
            text[time_col] = _time_text(row)
            text[mem_col0] = fmt_mem(row["peak_bytes"], unit)
            times[label] = (row["timing.median_ms"], _number(row["timing.p20_ms"]),
                            _number(row["timing.p80_ms"]))
            memory[(label, mem_col0)] = row["peak_bytes"]
            tips.append((label, time_col, _time_tip(row)))
        else:
            text[time_col] = text[mem_col0] = status_text(row["status"])
            if isinstance(row["error"], str) and row["error"]:
                tips.append((label, time_col, row["error"]))
        for base, ref in refs:
            speed_col, mem_col = f"speed-up vs {base}", f"memory vs {base}"
            ref_row = by_label.get(ref) if ref else None
            if not ok:
                text[speed_col] = text[mem_col] = DASH
            elif ref_row is None:
                text[speed_col] = text[mem_col] = "n/a"
            elif not _speed_ok(ref_row):
                text[speed_col] = text[mem_col] = f"ref {status_text(ref_row['status'])}"
            else:
                speedup = ref_row["timing.median_ms"] / row["timing.median_ms"]
                noisy = is_noisy(row) or is_noisy(ref_row)
                text[speed_col] = (NOISY if noisy else "") + fmt_ratio(speedup)
                mem = row["peak_bytes"] / ref_row["peak_bytes"] if ref_row["peak_bytes"] else np.nan
                text[mem_col] = fmt_ratio(mem)
                run_ids = sorted(set(_speed_data(row)["run_ids"]) | set(_speed_data(ref_row)["run_ids"]))
                data[(label, speed_col)] = {"ratio": _number(speedup), "noisy": noisy, "reference": ref,
                                            "run_ids": run_ids}
                data[(label, mem_col)] = {"ratio": _number(mem), "reference": ref, "run_ids": run_ids}
        rows[label] = text
    published = {}
    if slice_.get("task") == PUBLISHED_TASK and at == PUBLISHED_LENGTH:
        models = {label: row["model"] for label, row in by_label.items() if label == row["model"]}  # no variant
        figures = published_efficiency(set(models.values()))
        published = {label: figures[m] for label, m in models.items() if m in figures}
    paper_col = "paper speed-up / memory"
    if published:
        columns.append(paper_col)
        for label in rows:
            figure = published.get(label)
            rows[label][paper_col] = (f"{fmt_ratio(figure['speed'])} / {fmt_ratio(figure['memory'])}"
                                      if figure else DASH)
            if figure:
                data[(label, paper_col)] = {"speed": figure["speed"], "memory": figure["memory"],
                                            "source": figure.get("source")}
    bold = [(label, time_col) for label in _bold_times(times)] + _bold_least(memory)
    ref_text = "; ".join(
        f"{base} = " + ({"transformer_vanilla": "materialised softmax attention (the papers' XFM)",
                         "transformer": "fused attention (torch SDPA)"}[base])
        + ("" if ref == base else f", measured as {ref}" if ref else ", not measured here (ratios n/a)")
        for base, ref in refs)
    lead = f"{PROTOCOL_TEXT} " if protocol and at == PROTOCOL_LENGTH else ""
    caption = (f"{lead}At {where}; {slice_text(slice_)}; time = {_timing_protocol(cells)}; peak mem "
               f"({unit[0]}) = {_memory_definition(cells)}. Speed-up = reference time / model time; memory "
               f"= model peak / reference peak (the MEGA paper's Table 2 ratios). {ref_text}. "
               f"{MODEL_CAPTION} {SPEED_BOLD_RULE}")
    if published:
        sources = sorted({f.get("source") or "" for f in published.values()} - {""})
        caption += (" paper speed-up / memory = the published ratios against XFM at 4K on Text, never mixed "
                    "with ours: " + "; ".join(sources) + ". The protocols differ (hardware, batch, precision, "
                    "what a step includes), so compare orderings, not values.")
    runs = sorted({r for ids in cells["run_ids"] for r in ids if not _missing(r)})
    shas = sorted({str(s)[:12] for s in cells["git_sha"] if not _missing(s)})
    if len(runs) > 1 or len(shas) > 1:
        caption += (f" The rows come from {len(runs)} runs ({', '.join(runs)})"
                    + (f" of {len(shas)} revisions ({', '.join(shas)})" if len(shas) > 1 else "")
                    + "; hover a time for its run.")
    title = f"Efficiency at {length_label(at)} ({slice_tag(slice_)})"
    frame = _frame(rows, columns, title, caption, bold=bold, tips=tips, cells=data)
    measured = [time_col, mem_col0]
    dash = []
    if symbols_in(frame, MODEL_COLUMNS) & {DASH}:
        dash.append("not recorded (params, layers, width)")
    if symbols_in(frame, ratio_cols) & {DASH}:
        dash.append("no ratio: the row has no time or memory of its own")
    if symbols_in(frame, [paper_col]) & {DASH}:
        dash.append("no published figure for this row")
    na = []
    if symbols_in(frame, measured) & {"n/a"}:
        na.append("the model cannot run here (a kernel or package is missing)")
    if symbols_in(frame, ratio_cols) & {"n/a"}:
        na.append("the reference was not measured in this slice")
    frame.attrs["caption"] += symbols_caption(frame, {
        DASH: "; ".join(dash) or "not measured", "n/a": "; ".join(na) or "not available",
        **STATUS_MEANINGS, "ref …": "the reference's own cell at this length has that status, so no ratio",
        NOISY: NOISY_TEXT + f" (a ratio marked {NOISY} uses a noisy time)", "×": "times (a ratio)"})
    return frame


def length_tables(df: pd.DataFrame, slice_: dict | None = None,
                  aggregate: bool = False) -> list[pd.DataFrame]:
    """Time (ms) and peak memory by length for one slice: rows model variants, columns lengths."""
    cells = speed_cells(df, aggregate)
    if cells.empty:
        return []
    slice_ = slice_ or speed_slices(cells)[0]
    cells = select_slice(cells, slice_)
    lengths = sorted({int(x) for x in cells["seq_len"].dropna()})
    columns = [str(x) for x in lengths]
    unit = memory_unit()
    protocol = is_protocol(slice_, cells["seq_len"])
    notes = _row_origins({label: ([r for ids in group["run_ids"] for r in ids], group["git_sha"])
                          for label, group in cells.groupby("label", sort=False)})
    tables = []
    for metric, title in (("timing.median_ms", "Time (ms) by sequence length"),
                          ("peak_bytes", f"Peak memory ({unit[0]}) by sequence length")):
        rows, memory, tips, data, times = {}, {}, [], {}, {}
        for _, row in cells.iterrows():
            if pd.isna(row["seq_len"]):
                continue
            col, label = str(int(row["seq_len"])), row["label"]
            data[(label, col)] = _speed_data(row)
            if _speed_ok(row) and np.isfinite(row[metric]):
                if metric == "timing.median_ms":
                    rows.setdefault(label, {})[col] = _time_text(row)
                    times.setdefault(col, {})[label] = (row[metric], _number(row["timing.p20_ms"]),
                                                        _number(row["timing.p80_ms"]))
                    tips.append((label, col, _time_tip(row)))
                else:
                    rows.setdefault(label, {})[col] = fmt_mem(row[metric], unit)
                    memory[(label, col)] = row[metric]
            else:
                rows.setdefault(label, {})[col] = status_text(row["status"])
                if isinstance(row["error"], str) and row["error"]:
                    tips.append((label, col, row["error"]))
        if metric == "timing.median_ms":
            bold = [(label, col) for col, entries in times.items() for label in _bold_times(entries)]
            what = f"time (ms) = {_timing_protocol(cells)}"
            rule = ("Bold = the fastest per length, plus every time whose p20-p80 range overlaps the "
                    "fastest's (about equal: not separable).")
        else:
            bold, what = _bold_least(memory), f"peak memory ({unit[0]}) = {_memory_definition(cells)}"
            rule = "Bold = the lowest peak per length."
        lead = f"{PROTOCOL_TEXT} " if protocol else ""
        caption = f"{lead}{slice_text(slice_)}; {what}. {rule}" + _origins_caption(notes)
        frame = _frame(rows, columns, f"{title} ({slice_tag(slice_)})", caption, bold=bold,
                       tips=tips + [(r, None, t) for r, t in notes.items()],
                       index_name="Model \\ L", cells=data)
        frame.attrs["caption"] += symbols_caption(frame, {
            DASH: "not measured at this length", "n/a": "the model cannot run here (a kernel or package "
            "is missing)", **STATUS_MEANINGS, NOISY: NOISY_TEXT})
        tables.append(frame)
    return tables


def fit_exponent(lengths, values) -> tuple[float, float] | None:
    """(p, r²) of the least-squares line log(value) = p·log(L) + c over positive finite points: the
    measured exponent of value ∝ L^p. None with fewer than 2 distinct lengths."""
    points = [(float(n), float(v)) for n, v in zip(lengths, values)
              if n and v is not None and np.isfinite(v) and v > 0 and n > 0]
    if len({n for n, _ in points}) < 2:
        return None
    x = np.log([n for n, _ in points])
    y = np.log([v for _, v in points])
    p, c = np.polyfit(x, y, 1)
    residual = float(((y - (p * x + c)) ** 2).sum())
    total = float(((y - y.mean()) ** 2).sum())
    return float(p), (1.0 - residual / total) if total > 0 else 1.0


COMPLEXITY_MIN_POINTS = 3  # below this a fitted exponent is shown, marked as resting on 2 lengths


def complexity_table(df: pd.DataFrame, slice_: dict | None = None, aggregate: bool = False) -> pd.DataFrame | None:
    """Measured complexity for one slice: per row, the exponents p of time ∝ L^p and peak memory ∝ L^p
    fitted over its ok lengths, with the fit range and r², beside the registered complexity."""
    cells = speed_cells(df, aggregate)
    if cells.empty:
        return None
    slice_ = slice_ or speed_slices(cells)[0]
    cells = select_slice(cells, slice_)
    rows, data = {}, {}
    for label, group in cells.groupby("label", sort=False):
        ok = group[group["status"] == "ok"].sort_values("seq_len")
        registered = next((c for c in group.get("complexity", pd.Series(dtype=object)) if isinstance(c, str)), None)
        row = {"registered": registered or DASH}
        time_fit = fit_exponent(ok["seq_len"], ok["timing.median_ms"])
        memory_fit = fit_exponent(ok["seq_len"], ok["peak_bytes"])
        if time_fit is None:
            row.update({"time p": DASH, "memory p": DASH, "fit range": DASH})
        else:
            lengths = sorted({int(n) for n in ok["seq_len"]})
            few = "†" if len(lengths) < COMPLEXITY_MIN_POINTS else ""
            row["time p"] = f"{time_fit[0]:.2f}{few}"
            row["memory p"] = f"{memory_fit[0]:.2f}{few}" if memory_fit else DASH
            row["fit range"] = f"{length_label(lengths[0])}–{length_label(lengths[-1])} ({len(lengths)} lengths)"
            row["time r²"] = f"{time_fit[1]:.3f}"
            data[(label, "time p")] = {"p": time_fit[0], "r2": time_fit[1], "lengths": lengths}
            if memory_fit:
                data[(label, "memory p")] = {"p": memory_fit[0], "r2": memory_fit[1], "lengths": lengths}
        rows[label] = row
    if not any(r.get("time p", DASH) != DASH for r in rows.values()):
        return None
    caption = (f"{slice_text(slice_)}. p = slope of a least-squares line through log(median time) or "
               f"log(peak memory) against log(L) over the row's ok lengths (fit range), i.e. time ∝ L^p; "
               f"r² of the time fit. Fixed costs (host overhead, weights and optimiser state in memory) flatten "
               f"p at short lengths, so an O(L²) model can measure below 2 until its quadratic term dominates. "
               f"registered = the complexity its model file declares (– in records written before it was recorded). † = fitted on 2 lengths only; "
               f"– = fewer than 2 ok lengths.")
    frame = _frame(rows, ["registered", "time p", "memory p", "fit range", "time r²"],
                   f"Measured complexity ({slice_tag(slice_)})", caption, index_name="Model", cells=data)
    frame.attrs["caption"] += symbols_caption(frame, {DASH: "not available"})  # defined above already
    return frame


def all_tables(df: pd.DataFrame, length: int = 4096, aggregate: bool = False) -> list[pd.DataFrame]:
    """Every table of a report, in reading order (accuracy, other tasks, efficiency, by length,
    measured complexity); within each kind the slices in `speed_slices` order, the papers' protocol
    slice first."""
    df = prepare(df)
    out = [t for t in (accuracy_table(df, aggregate), other_tasks_table(df, aggregate)) if t is not None]
    cells = speed_cells(df, aggregate)
    slices = speed_slices(cells)
    for slice_ in slices:
        table = efficiency_table(df, length, slice_, aggregate)
        if table is not None:
            out.append(table)
    for slice_ in slices:
        out += length_tables(df, slice_, aggregate)
    for slice_ in slices:
        table = complexity_table(df, slice_, aggregate)
        if table is not None:
            out.append(table)
    return out


# -- rendering --------------------------------------------------------------------------------------

def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _markdown(df: pd.DataFrame) -> str:
    bold = {tuple(b) for b in df.attrs.get("bold", [])}
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    header = [df.index.name or ""] + [str(c) for c in df.columns]
    left = set(df.attrs.get("left_columns", []))  # text columns; numbers align right
    lines = ["| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "|".join([":---"] + [":---" if c in left else "---:" for c in df.columns]) + "|"]
    for model, row in df.iterrows():
        cells = [esc(model)] + [f"**{esc(v)}**" if (model, c) in bold else esc(v)
                                for c, v in row.items()]
        lines.append("| " + " | ".join(cells) + " |")
    out = []
    if df.attrs.get("title"):
        out += [f"**{df.attrs['title']}**", ""]
    out += lines
    if df.attrs.get("caption"):
        out += ["", f"_{df.attrs['caption']}_"]
    return "\n".join(out) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}", "±": r"$\pm$", "×": r"$\times$", "–": "--",
                  "≥": r"$\geq$", "≤": r"$\leq$", "·": r"$\cdot$", "†": r"\dag{}", "√": r"$\surd$",
                  "−": "-"}


def latex_escape(text) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _latex(df: pd.DataFrame) -> str:
    bold = {tuple(b) for b in df.attrs.get("bold", [])}
    title, caption = df.attrs.get("title", ""), df.attrs.get("caption", "")
    lines = [r"\begin{table}[ht]", r"\centering", r"\small"]
    if title or caption:
        lines.append(r"\caption{" + latex_escape(f"{title}. {caption}".strip(". ")) + "}")
    if title:
        lines.append(r"\label{tab:" + _slug(title) + "}")
    lines += [r"\begin{tabular}{l" + "r" * len(df.columns) + "}", r"\toprule",
              " & ".join(latex_escape(h) for h in [df.index.name or ""] + list(df.columns)) + r" \\",
              r"\midrule"]
    for model, row in df.iterrows():
        cells = [latex_escape(model)] + [
            r"\textbf{" + latex_escape(v) + "}" if (model, c) in bold else latex_escape(v)
            for c, v in row.items()]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _html(df: pd.DataFrame) -> str:
    bold = {tuple(b) for b in df.attrs.get("bold", [])}
    tips = {(r, c): t for r, c, t in df.attrs.get("tips", [])}
    classes = df.attrs.get("col_classes", {})
    esc = lambda s: html.escape(str(s), quote=True)  # noqa: E731
    title = df.attrs.get("title", "")
    out = [f'<div class="table-block" id="table-{_slug(title) or "untitled"}">']
    if title:
        out.append(f"<h3>{esc(title)}</h3>")
    out.append('<div class="table-scroll"><table class="results">')
    out.append("<thead><tr>" + f'<th class="rowhead">{esc(df.index.name or "")}</th>' + "".join(
        f'<th class="{esc(classes.get(c, "num"))}">{esc(c).replace("_", "_<wbr>")}</th>'  # wrap long names
        for c in df.columns) + "</tr></thead>")
    out.append("<tbody>")
    for model, row in df.iterrows():
        row_tip = f' title="{esc(tips[(model, None)])}"' if (model, None) in tips else ""
        cells = [f'<th scope="row" class="rowhead"{row_tip}>{esc(model)}</th>']
        for c, v in row.items():
            css = [classes.get(c, "num")]
            if not re.match(rf"^{re.escape(NOISY)}?[\d.]", str(v)):
                css.append("status")
            text = f"<strong>{esc(v)}</strong>" if (model, c) in bold else esc(v)
            tip = f' title="{esc(tips[(model, c)])}"' if (model, c) in tips else ""
            cells.append(f'<td class="{" ".join(css)}"{tip}>{text}</td>')
        ref = ' class="ref"' if str(model).startswith(REF_PREFIX) else ""  # context rows, muted
        out.append(f"<tr{ref}>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    if df.attrs.get("caption"):
        out.append(f'<p class="caption">{esc(df.attrs["caption"])}</p>')
    out.append("</div>")
    return "\n".join(out) + "\n"


def render(df: pd.DataFrame, fmt: str = "markdown") -> str:
    """One table as Markdown, LaTeX (booktabs) or an HTML fragment, with title and caption."""
    fmt = {"md": "markdown", "tex": "latex"}.get(fmt, fmt)
    if fmt == "markdown":
        return _markdown(df)
    if fmt == "latex":
        return _latex(df)
    if fmt == "html":
        return _html(df)
    raise UserError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")


def render_all(records: pd.DataFrame, fmt: str = "markdown", length: int = 4096,
               aggregate: bool = False) -> str:
    """Every table of `records` (a `load_records` frame) rendered in `fmt`, in reading order."""
    table_list = all_tables(records, length=length, aggregate=aggregate)
    if not table_list:
        return "(no results to tabulate)\n"
    return "\n".join(render(t, fmt) for t in table_list)


def to_json(df: pd.DataFrame) -> dict:
    """A table as plain data (for `table --json`): numbers, not display strings. Each cell has its
    `display` text, `bold`, and the numbers behind it: accuracy cells mean, sd, n, ci_low, ci_high,
    se_test, n_test, per-seed values and the run ids; speed cells median/p20/p80 ms, spread, noisy,
    peak bytes and run ids; ratio cells the ratio."""
    bold = {tuple(b) for b in df.attrs.get("bold", [])}
    numbers = df.attrs.get("cells", {})
    tips = {(r, c): t for r, c, t in df.attrs.get("tips", [])}
    rows = []
    for label, values in df.iterrows():
        cells = {}
        for column, text in values.items():
            cell = {"display": str(text), "bold": (label, column) in bold}
            cell.update(_plain(numbers.get((label, column), {})))
            cells[str(column)] = cell
        row = {"label": str(label), "cells": cells}
        if (label, None) in tips:
            row["note"] = tips[(label, None)]
        rows.append(row)
    return {"title": df.attrs.get("title"), "caption": df.attrs.get("caption"), "index": df.index.name,
            "columns": [str(c) for c in df.columns], "rows": rows}

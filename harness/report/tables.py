"""Result tables: LRA-style accuracy, the MEGA paper's Table 2 efficiency comparison, and speed /
memory by sequence length, built with pandas from the records of `harness.store.load_records`.

Every table is a DataFrame of display strings (index = model) that carries its presentation in
`df.attrs`: `title`, `caption` (the rule behind the numbers, always stated), `bold` (cells to
emphasise, as (row, column) pairs), `tips` ((row, column, text) hover notes such as error text) and
`col_classes` (column -> CSS class). `render(df, fmt)` turns one into Markdown, LaTeX or HTML.

Conventions (shared/spec/harness.md "Tables and reports", lra.md §8, measurement.md protocol):
- A duplicated cell (same identity measured by several runs) shows the latest run's record unless
  `aggregate=True` pools the runs.
- Accuracy: test accuracy in percent, mean ± sample std over seeds with the seed count. Only real
  LRA data (`official-release`, `user-data(...)`, `regenerated(...)`) enters the LRA columns and the
  averages; a `stand-in(...)` task is a different task and gets its own labelled column.
- Avg = mean over the LRA tasks present other than Path-X (the LRA paper's rule); a second
  "Avg (k)" includes Path-X (the S4/MEGA rule) when Path-X is present.
- Efficiency: absolute time and peak memory beside the paper ratios, speed-up = reference time /
  model time and memory = model peak / reference peak, against `transformer_vanilla` (materialised
  softmax, the papers' XFM) and `transformer` (fused attention).
- Precision: ms to 3 significant digits, GiB to 2 decimals, accuracy to 1 decimal, ratios to 2
  significant digits. A missing number is text (`OOM`, `FAIL`, `skipped`, `n/a`, `–`), never 0.
"""

from __future__ import annotations

import html
import math
import re

import numpy as np
import pandas as pd

from harness.errors import UserError

LRA_TASKS = ("listops", "text", "retrieval", "image", "pathfinder", "pathx")
TASK_LABELS = {"listops": "ListOps", "text": "Text", "retrieval": "Retrieval", "image": "Image",
               "pathfinder": "Pathfinder", "pathx": "Path-X"}
REFERENCES = ("transformer_vanilla", "transformer")  # the papers' XFM, and today's fused attention
SPEED_KEYS = ("model", "task", "seq_len", "batch_size", "dtype", "device", "mode")
SLICE_KEYS = ("task", "batch_size", "dtype", "device", "mode")  # one table / plot panel each
FORMATS = ("markdown", "latex", "html")
GIB = 1024 ** 3
MIB = 1024 ** 2
DASH = "–"  # a cell that was never measured

_NUMERIC = ("timing.median_ms", "timing.p20_ms", "timing.p80_ms", "timing.n_warmup", "timing.n_iters",
            "memory.peak_allocated_bytes", "memory.peak_reserved_bytes", "memory.footprint_bytes",
            "memory.peak_rss_increase_bytes", "throughput_tokens_per_s", "metrics.accuracy",
            "metrics.val_accuracy", "seq_len", "batch_size", "seed", "n_params")
_TEXT = ("run_id", "created", "kind", "model", "task", "task_version", "dtype", "device", "mode",
         "status", "error", "provenance", "model_config_hash")
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


def memory_unit(values) -> tuple[str, float]:
    """GiB, or MiB when every value is below 1 GiB (tiny CPU models would read 0.01 GiB)."""
    finite = [v for v in values if v is not None and np.isfinite(v)]
    if finite and max(finite) < GIB:
        return "MiB", MIB
    return "GiB", GIB


def fmt_mem(value, unit: tuple[str, float] = ("GiB", GIB)) -> str:
    if value is None or not np.isfinite(value):
        return DASH
    return f"{value / unit[1]:.{2 if unit[0] == 'GiB' else 1}f}"


def length_label(length) -> str:
    """1024 -> '1K', 16384 -> '16K', 300 -> '300'."""
    length = int(length)
    return f"{length // 1024}K" if length >= 1024 and length % 1024 == 0 else str(length)


def status_text(status) -> str:
    return _STATUS_TEXT.get(status, DASH if status is None or pd.isna(status) else str(status))


# -- provenance and task classes -------------------------------------------------------------------

def is_real_data(provenance) -> bool:
    """Real LRA data: the official release, the user's copy, or a faithful regeneration."""
    if not isinstance(provenance, str):
        return False
    return provenance == "official-release" or provenance.startswith(("user-data", "regenerated"))


def standin_name(provenance) -> str | None:
    """'stand-in(fashion-mnist)' -> 'fashion-mnist'; None for anything else."""
    if isinstance(provenance, str) and provenance.startswith("stand-in"):
        match = re.match(r"stand-in\((.*)\)$", provenance)
        return match.group(1) if match else provenance[len("stand-in"):].strip("() :") or "unnamed"
    return None


def task_label(task: str) -> str:
    return TASK_LABELS.get(task, task)


def accuracy_column(task: str, provenance) -> tuple[str, str]:
    """(column label, group): group 'lra' (counts in Avg), 'excluded' (LRA task without real data:
    stand-in or unknown origin, labelled, never averaged) or 'other' (non-LRA tasks)."""
    name = standin_name(provenance)
    if task in LRA_TASKS:
        if is_real_data(provenance):
            return task_label(task), "lra"
        if name:
            return f"{task_label(task)} [stand-in: {name}]", "excluded"
        return f"{task_label(task)} [provenance unknown]", "excluded"
    return (f"{task} [stand-in: {name}]" if name else task), "other"


def _natural(name) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(name))]


# -- loading and selecting records ------------------------------------------------------------------

def prepare(records: pd.DataFrame) -> pd.DataFrame:
    """Normalise a `load_records` frame: every column the reports read exists with a usable dtype,
    `kind` is filled in, and `peak_bytes` is the peak memory of the cell (CUDA peak allocated, or
    the process peak-RSS increase on CPU) with `mem_source` saying which."""
    df = records.copy()
    for column in _NUMERIC:
        df[column] = pd.to_numeric(df[column], errors="coerce") if column in df else np.nan
    for column in _TEXT:
        if column not in df:
            df[column] = None
        df[column] = df[column].astype(object).where(df[column].notna(), None)
    missing_kind = df["kind"].isna()
    df.loc[missing_kind & df["timing.median_ms"].notna(), "kind"] = "speed"
    df.loc[missing_kind & df["metrics.accuracy"].notna(), "kind"] = "accuracy"
    allocated, rss = df["memory.peak_allocated_bytes"], df["memory.peak_rss_increase_bytes"]
    df["peak_bytes"] = allocated.fillna(rss)
    df["mem_source"] = np.where(allocated.notna(), "cuda", np.where(rss.notna(), "rss", None))
    df["created"] = df["created"].fillna("")
    return df


def latest(df: pd.DataFrame, keys) -> pd.DataFrame:
    """One record per identity `keys`: the latest run's (run ids sort by start time), then the
    latest written."""
    ordered = df.sort_values(["run_id", "created"], kind="stable")
    return ordered.drop_duplicates(list(keys), keep="last")


def speed_cells(df: pd.DataFrame, aggregate: bool = False) -> pd.DataFrame:
    """Speed records, one per cell. `aggregate=True` pools runs: the median over runs of the
    per-run medians (and of p20, p80, peak memory, throughput); status ok if any run was ok."""
    speed = df[(df["kind"] == "speed") & df["seq_len"].notna()]  # a cell without a length has no column
    if speed.empty or not aggregate:
        return latest(speed, SPEED_KEYS)
    rows = []
    for _, group in speed.groupby(list(SPEED_KEYS), dropna=False, sort=False):
        ok = group[group["status"] == "ok"]
        row = latest(group, SPEED_KEYS).iloc[0].copy()
        if not ok.empty:
            row["status"] = "ok"
            for column in ("timing.median_ms", "timing.p20_ms", "timing.p80_ms", "peak_bytes",
                           "throughput_tokens_per_s"):
                row[column] = ok[column].median()
        row["n_runs"] = group["run_id"].nunique()
        rows.append(row)
    return pd.DataFrame(rows)


def speed_slices(cells: pd.DataFrame) -> list[dict]:
    """The (task, batch, dtype, device, mode) combinations present, the papers' protocol first:
    Text configuration, train_step, CUDA; then the best-populated."""
    if cells.empty:
        return []
    counts = cells.groupby(list(SLICE_KEYS), dropna=False).size().reset_index(name="n")
    slices = [{k: (None if pd.isna(row[k]) else row[k]) for k in SLICE_KEYS} | {"n": int(row["n"])}
              for _, row in counts.iterrows()]
    slices.sort(key=lambda s: (s["task"] != "text", s["mode"] != "train_step", s["device"] != "cuda",
                               -s["n"], str(s["dtype"]), -(s["batch_size"] or 0)))
    return [{k: s[k] for k in SLICE_KEYS} for s in slices]


def select_slice(cells: pd.DataFrame, slice_: dict) -> pd.DataFrame:
    """The cells matching every key given in `slice_` (leave `mode` out to keep all modes)."""
    mask = pd.Series(True, index=cells.index)
    for key, value in slice_.items():
        mask &= cells[key].isna() if value is None else (cells[key] == value)
    return cells[mask]


def slice_text(slice_: dict) -> str:
    """'text configuration, batch 4, bf16, cuda, train_step' (mode only when the slice has one)."""
    batch = slice_.get("batch_size")
    parts = [f"{slice_.get('task') or '?'} configuration",
             f"batch {int(batch)}" if batch is not None and not pd.isna(batch) else "batch ?",
             slice_.get("dtype") or "?", slice_.get("device") or "?"]
    if "mode" in slice_:
        parts.append(slice_["mode"] or "?")
    return ", ".join(str(p) for p in parts)


def slice_tag(slice_: dict) -> str:
    """Short form for titles: 'text, train_step, bf16, cuda, b=4'."""
    batch = slice_.get("batch_size")
    batch = f"b={int(batch)}" if batch is not None and not pd.isna(batch) else "b=?"
    return ", ".join(str(slice_.get(k) or "?") for k in ("task", "mode", "dtype", "device")) + f", {batch}"


def nearest_length(lengths, target: int) -> int:
    """The measured length closest to `target` on a log2 scale (ties: the longer one)."""
    lengths = sorted({int(x) for x in lengths})
    return min(lengths, key=lambda x: (abs(math.log2(x) - math.log2(target)), -x))


def reference_name(models, base: str) -> str | None:
    """`base`, or its `*_tiny` variant when only tiny models were measured."""
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
    sources = set(cells["mem_source"].dropna())
    text = []
    if "cuda" in sources:
        text.append("peak allocated CUDA memory (torch.cuda.max_memory_allocated)")
    if "rss" in sources:
        text.append("increase of the process peak RSS during the timed iterations (CPU)")
    return " / ".join(text) or "peak memory"


def _frame(rows: dict, columns: list, title: str, caption: str, bold=(), tips=(), col_classes=None,
           index_name: str = "Model") -> pd.DataFrame:
    index = sorted(rows, key=_natural)
    df = pd.DataFrame([rows[m] for m in index], index=pd.Index(index, name=index_name),
                      columns=columns, dtype=object).fillna(DASH)
    df.attrs.update(title=title, caption=caption, bold=list(bold), tips=list(tips),
                    col_classes=dict(col_classes or {}))
    return df


def _bold_best(values: dict, higher_is_better: bool) -> list:
    """(row, col) of the best finite value per column; only when at least two rows compete."""
    bold = []
    by_column: dict = {}
    for (row, col), value in values.items():
        if value is not None and np.isfinite(value):
            by_column.setdefault(col, []).append((row, value))
    for col, entries in by_column.items():
        if len(entries) < 2:
            continue
        best = max(v for _, v in entries) if higher_is_better else min(v for _, v in entries)
        bold += [(row, col) for row, v in entries if np.isclose(v, best, rtol=1e-9, atol=0)]
    return bold


# -- accuracy tables --------------------------------------------------------------------------------

def _accuracy_records(df: pd.DataFrame, aggregate: bool) -> pd.DataFrame:
    acc = df[df["kind"] == "accuracy"].copy()
    if acc.empty:
        return acc
    labels = [accuracy_column(t, p) for t, p in zip(acc["task"], acc["provenance"])]
    acc["column"] = [label for label, _ in labels]
    acc["group"] = [group for _, group in labels]
    return acc if aggregate else latest(acc, ("model", "task", "seed", "column"))


def _accuracy_cell(group: pd.DataFrame) -> tuple[str, float | None, str | None]:
    """Display text, the mean (percent) or None, and a hover note for one (model, column)."""
    ok = group[(group["status"] == "ok") & group["metrics.accuracy"].notna()]
    values = ok["metrics.accuracy"].to_numpy(dtype=float) * 100.0
    failed = group[group["status"] != "ok"]
    counts = failed["status"].value_counts()
    errors = [e for e in failed["error"] if isinstance(e, str) and e]
    tip = errors[0] if errors else None
    if len(values) == 0:
        for status in ("oom", "error", "unavailable", "skipped"):
            if counts.get(status):
                return status_text(status), None, tip
        return DASH, None, tip
    mean = float(values.mean())
    extra = "; ".join(f"{int(n)} {status_text(s)}" for s, n in counts.items())
    count = f"n={len(values)}" + (f"; {extra}" if extra else "")
    if len(values) > 1:
        text = f"{mean:.1f} ± {float(values.std(ddof=1)):.1f} ({count})"
    else:
        text = f"{mean:.1f} ({count})"
    return text, mean, tip


def _accuracy_frame(acc: pd.DataFrame, title: str, caption: str, with_avg: bool) -> pd.DataFrame:
    order = {t: i for i, t in enumerate(LRA_TASKS)}
    present = acc[["column", "group", "task"]].drop_duplicates("column")
    task_of = dict(zip(present["column"], present["task"]))
    group_of = dict(zip(present["column"], present["group"]))
    ranked = sorted(task_of, key=lambda c: (order.get(task_of[c], len(order)), _natural(c)))  # LRA order
    lra_cols = [c for c in ranked if group_of[c] in ("lra", "other")]
    excluded = [c for c in ranked if group_of[c] == "excluded"]
    rows, values, tips = {}, {}, []
    for (model, column), group in acc.groupby(["model", "column"], sort=False):
        text, mean, tip = _accuracy_cell(group)
        rows.setdefault(model, {})[column] = text
        values[(model, column)] = mean
        if tip:
            tips.append((model, column, tip))

    avg_cols, caption_avg = [], ""
    if with_avg:
        five = [c for c in lra_cols if task_of[c] != "pathx"]
        six = list(lra_cols)
        if len(five) >= 2:
            avg_cols.append(("Avg", five))
        if "pathx" in {task_of[c] for c in lra_cols} and len(six) >= 2:
            avg_cols.append((f"Avg ({len(six)})", six))
        for name, used in avg_cols:
            for model in rows:
                means = [values.get((model, c)) for c in used]
                if all(m is not None for m in means):
                    values[(model, name)] = float(np.mean(means))
                    rows[model][name] = f"{values[(model, name)]:.1f}"
                else:
                    rows[model][name] = "n/a"
        if avg_cols:
            parts = [f"{name} = mean over {', '.join(used)}"
                     + (" (LRA rule: Path-X excluded)" if name == "Avg" else
                        " (Path-X included, as S4 and MEGA report)")
                     for name, used in avg_cols]
            caption_avg = " " + "; ".join(parts) + "; n/a = a result is missing on one of these tasks."
    if excluded:
        caption_avg += (" Columns marked [stand-in: ...] are different data sets standing in for an "
                        "LRA task: labelled, never in an average.")
    all_cols = lra_cols + [name for name, _ in avg_cols] + excluded
    col_classes = {name: "avg" for name, _ in avg_cols} | {c: "standin" for c in excluded}
    return _frame(rows, all_cols, title, caption + caption_avg, bold=_bold_best(values, True),
                  tips=tips, col_classes=col_classes)


def accuracy_table(df: pd.DataFrame, aggregate: bool = False) -> pd.DataFrame | None:
    """LRA table: one row per model, LRA tasks in LRA order, Avg columns, stand-ins apart."""
    acc = _accuracy_records(df, aggregate)
    acc = acc[acc["group"] != "other"] if not acc.empty else acc
    if acc.empty:
        return None
    pooled = ("n = results pooled over the selected runs" if aggregate else
              "n = seeds, latest run per (model, task, seed)")
    caption = (f"Test accuracy (%), mean ± sample std over seeds ({pooled}); best per "
               f"column in bold; FAIL = the run errored, OOM = out of memory, n/a = unavailable.")
    return _accuracy_frame(acc, "Long Range Arena accuracy", caption, with_avg=True)


def other_tasks_table(df: pd.DataFrame, aggregate: bool = False) -> pd.DataFrame | None:
    """Tasks outside LRA (mqar, selective_copy, induction_heads, ...): same cells, no average."""
    acc = _accuracy_records(df, aggregate)
    acc = acc[acc["group"] == "other"] if not acc.empty else acc
    if acc.empty:
        return None
    caption = ("Test accuracy (%), mean ± sample std over seeds, n = seeds; best per column in bold. "
               "These tasks are not part of LRA and never enter its average.")
    return _accuracy_frame(acc, "Other tasks (not LRA)", caption, with_avg=False)


# -- efficiency and by-length tables ----------------------------------------------------------------

def efficiency_table(df: pd.DataFrame, length: int = 4096, slice_: dict | None = None,
                     aggregate: bool = False) -> pd.DataFrame | None:
    """MEGA Table 2 style at one length: time and peak memory, with speed-up and memory fraction
    against the vanilla and the fused Transformer. Falls back to the nearest measured length."""
    cells = speed_cells(df, aggregate)
    if cells.empty:
        return None
    slice_ = slice_ or speed_slices(cells)[0]
    cells = select_slice(cells, slice_)
    if cells.empty:
        return None
    at = nearest_length(cells["seq_len"].dropna(), length)
    where = (f"L = {at}" if at == length else
             f"L = {at} (nearest measured length; {length} was not measured)")
    cells = cells[cells["seq_len"] == at]
    unit = memory_unit(cells.loc[cells["status"] == "ok", "peak_bytes"])
    by_model = {row["model"]: row for _, row in cells.iterrows()}
    refs = [(base, reference_name(by_model, base)) for base in REFERENCES]
    columns = ["time (ms)", f"peak mem ({unit[0]})"]
    for base, _ in refs:
        columns += [f"speed-up vs {base}", f"memory vs {base}"]
    rows, values, tips = {}, {}, []
    for model, row in by_model.items():
        ok = row["status"] == "ok" and np.isfinite(row["timing.median_ms"])
        cells_text = {}
        if ok:
            cells_text["time (ms)"] = fmt_ms(row["timing.median_ms"])
            cells_text[columns[1]] = fmt_mem(row["peak_bytes"], unit)
            values[(model, "time (ms)")] = row["timing.median_ms"]
            values[(model, columns[1])] = row["peak_bytes"]
        else:
            cells_text["time (ms)"] = cells_text[columns[1]] = status_text(row["status"])
            if isinstance(row["error"], str) and row["error"]:
                tips.append((model, "time (ms)", row["error"]))
        for base, ref in refs:
            speed_col, mem_col = f"speed-up vs {base}", f"memory vs {base}"
            ref_row = by_model.get(ref) if ref else None
            if not ok:
                cells_text[speed_col] = cells_text[mem_col] = DASH
            elif ref_row is None:
                cells_text[speed_col] = cells_text[mem_col] = "n/a"
            elif ref_row["status"] != "ok":
                cells_text[speed_col] = cells_text[mem_col] = f"ref {status_text(ref_row['status'])}"
            else:
                cells_text[speed_col] = fmt_ratio(ref_row["timing.median_ms"] / row["timing.median_ms"])
                mem = row["peak_bytes"] / ref_row["peak_bytes"] if ref_row["peak_bytes"] else np.nan
                cells_text[mem_col] = fmt_ratio(mem)
        rows[model] = cells_text
    ref_text = "; ".join(
        f"{base} = " + ({"transformer_vanilla": "materialised softmax attention (the papers' XFM)",
                         "transformer": "fused attention (torch SDPA)"}[base])
        + ("" if ref == base else f", measured as {ref}" if ref else ", not measured here (ratios n/a)")
        for base, ref in refs)
    caption = (f"At {where}; {slice_text(slice_)}; time = {_timing_protocol(cells)}; peak mem = "
               f"{_memory_definition(cells)}. Speed-up = reference time / model time; memory = model "
               f"peak / reference peak (the MEGA paper's Table 2 ratios). {ref_text}. "
               f"Best time and memory in bold.")
    title = f"Efficiency at {length_label(at)} ({slice_tag(slice_)})"
    return _frame(rows, columns, title, caption, bold=_bold_best(values, False), tips=tips)


def length_tables(df: pd.DataFrame, slice_: dict | None = None,
                  aggregate: bool = False) -> list[pd.DataFrame]:
    """Time (ms) and peak memory by length for one slice: rows models, columns lengths."""
    cells = speed_cells(df, aggregate)
    if cells.empty:
        return []
    slice_ = slice_ or speed_slices(cells)[0]
    cells = select_slice(cells, slice_)
    lengths = sorted({int(x) for x in cells["seq_len"].dropna()})
    columns = [str(x) for x in lengths]
    unit = memory_unit(cells.loc[cells["status"] == "ok", "peak_bytes"])
    tables = []
    for metric, title, fmt in (("timing.median_ms", "Time (ms) by sequence length", fmt_ms),
                               ("peak_bytes", f"Peak memory ({unit[0]}) by sequence length",
                                lambda v: fmt_mem(v, unit))):
        rows, values, tips = {}, {}, []
        for _, row in cells.iterrows():
            if pd.isna(row["seq_len"]):
                continue
            col = str(int(row["seq_len"]))
            if row["status"] == "ok" and np.isfinite(row[metric]):
                rows.setdefault(row["model"], {})[col] = fmt(row[metric])
                values[(row["model"], col)] = row[metric]
            else:
                rows.setdefault(row["model"], {})[col] = status_text(row["status"])
                if isinstance(row["error"], str) and row["error"]:
                    tips.append((row["model"], col, row["error"]))
        what = _timing_protocol(cells) if metric == "timing.median_ms" else _memory_definition(cells)
        caption = (f"{slice_text(slice_)}; {what}. OOM = out of memory; skipped = not run after an "
                   f"OOM at a shorter length; n/a = unavailable; FAIL = error. Best per length in bold.")
        tables.append(_frame(rows, columns, f"{title} ({slice_tag(slice_)})",
                             caption, bold=_bold_best(values, False), tips=tips,
                             index_name="Model \\ L"))
    return tables


def all_tables(df: pd.DataFrame, length: int = 4096, aggregate: bool = False) -> list[pd.DataFrame]:
    """Every table of a report, in reading order (accuracy, other tasks, efficiency, by length)."""
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
                  "≥": r"$\geq$", "≤": r"$\leq$"}


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
        cells = [f'<th scope="row" class="rowhead">{esc(model)}</th>']
        for c, v in row.items():
            css = [classes.get(c, "num")]
            if not re.match(r"^[\d.]", str(v)):
                css.append("status")
            text = f"<strong>{esc(v)}</strong>" if (model, c) in bold else esc(v)
            tip = f' title="{esc(tips[(model, c)])}"' if (model, c) in tips else ""
            cells.append(f'<td class="{" ".join(css)}"{tip}>{text}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
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
    """A table as plain data (for `--json`)."""
    return {"title": df.attrs.get("title"), "caption": df.attrs.get("caption"),
            "columns": [df.index.name] + [str(c) for c in df.columns],
            "rows": [[str(model)] + [str(v) for v in row] for model, row in df.iterrows()],
            "bold": [list(b) for b in df.attrs.get("bold", [])]}

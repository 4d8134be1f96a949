"""Result tables: accuracy with its uncertainty, the MEGA paper's Table 2 efficiency comparison,
speed / memory by sequence length and the measured complexity, built with pandas from the records
of `harness.store.load_records`.

Every builder returns a `Table`: `values`, a numeric DataFrame (index = row label; the number each
cell shows, in the unit its column names, NaN where the cell is a status), `text`, the display
text of the same cells, and the presentation carried explicitly: `title`, `caption` (the rules
behind the numbers, always stated), `bold` (a boolean mask), `tips` (hover notes per cell),
`row_notes` (hover notes on row headers), `column_classes`, and `numbers` ((row, column) -> the
numbers behind a cell, for `to_json`). `harness.report.render` turns a Table into Markdown, LaTeX
or HTML; records are selected by `harness.report.select`, numbers formatted by
`harness.report.format`, accuracy cells summarised by `harness.report.stats`.

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
- The LRA tasks, their order and column labels come from each task's `TaskSpec` (lra, order,
  label). Only LRA-eligible records (paper scale, the task's whole official or faithfully
  regenerated data: `Record.lra_eligible`) enter the LRA columns and the averages; every other
  record of an LRA task gets its own column naming provenance, scale and size. Avg = mean over the
  LRA tasks present other than Path-X (the LRA paper's rule); "Avg (k)" includes Path-X (the S4/MEGA rule).
- Under an lr grid, each (row, column) shows the learning rate with the best mean validation
  accuracy, and says which.
- Speed tables are sliced by task configuration, batch, dtype, device, mode and the device's name
  (two GPUs never share a table). The papers' protocol slice (Text, L = 4096, batch 25, a training
  step on a GPU) comes first; the others follow in the order a reader looks for them
  (`select.speed_slices`). A time whose p80/p20 exceeds 1.5 is marked noisy (`~`); bold time = the
  fastest and every time whose p20-p80 range overlaps it (about equal).
- Efficiency: the model block (params, layers, width: the figures the accuracy table shows too),
  absolute time and peak memory beside the paper ratios, speed-up = reference time / model time and
  memory = model peak / reference peak, against the models registered as efficiency references
  (`transformer_vanilla`: materialised softmax, the papers' XFM; `transformer`: fused attention).
  The caption says what a peak includes (weights, gradients, optimiser state, activations:
  harness/bench.py measures them differently on CUDA and CPU).
- Every symbol a table's cells use (`–`, `n/a`, `OOM`, `FAIL`, `skipped`, `ref …`, `~`, `†`, `×`)
  is defined in its caption, with the meaning it has in that table; a symbol it does not use is not.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness.report.format import (DASH, NOISY, NOISY_SPREAD, STOPPED, fmt_count, fmt_lr, fmt_mem,
                                   fmt_ms, fmt_ratio, get, length_label, MEMORY_UNIT, missing, natural,
                                   number, plain, status_text)
from harness.report.render import render
from harness.report.select import (PROTOCOL, PROTOCOL_LENGTH, PROTOCOL_TEXT, accuracy_column,
                                   efficiency_references, is_noisy, is_protocol, is_reference, latest,
                                   nearest_length, not_lra_reasons, prepare, published_efficiency,
                                   reference_name, row_name, select_slice, slice_tag, slice_text,
                                   speed_cells, speed_ok, speed_slices, spread, task_order)
from harness.report.stats import Summary, rank, summarise

PARAMS = "params"
PATH_X = "pathx"  # the LRA paper's average leaves it out (no model learned it); S4 and MEGA include it


# -- the table value ---------------------------------------------------------------------------------

@dataclass
class Table:
    """One table: its numbers, their display text, and how to present them."""

    title: str
    caption: str  # the rules behind the numbers and every symbol the cells use
    values: pd.DataFrame  # the number a cell shows (unit in the column name); NaN for a status
    text: pd.DataFrame  # display text of the same cells
    bold: pd.DataFrame  # True = bold
    tips: pd.DataFrame  # hover note of a cell ("" = none)
    row_notes: dict = field(default_factory=dict)  # row label -> hover note on its header
    column_classes: dict = field(default_factory=dict)  # column -> CSS class ("num" when absent)
    left_columns: tuple = ()  # text columns (left-aligned); the others hold numbers
    context_rows: tuple = ()  # rows shown muted (reference models)
    numbers: dict = field(default_factory=dict)  # (row, column) -> the numbers behind the cell

    @property
    def columns(self) -> pd.Index:
        return self.text.columns

    @property
    def index(self) -> pd.Index:
        return self.text.index

    @property
    def bold_cells(self) -> list[tuple]:
        """(row, column) of every bold cell, row by row."""
        return [(row, column) for row, flags in self.bold.iterrows() for column, bold in flags.items() if bold]

    def add_symbols(self, meanings: dict) -> None:
        """Define, at the end of the caption, each symbol of `meanings` that the cells use."""
        self.caption += symbols_caption(self, meanings)


def make_table(rows: dict, columns: list, title: str, caption: str, values: dict | None = None, bold=(),
               tips=(), row_notes: dict | None = None, column_classes: dict | None = None,
               index_name: str = "Model", order: list | None = None, numbers: dict | None = None,
               left_columns=()) -> Table:
    """A Table from row -> {column: display text} (missing cells read `–`), (row, column) -> number,
    the bold (row, column) pairs and (row, column, note) hover notes (column None: a note on the row;
    the last note of a cell wins)."""
    index = pd.Index(order if order is not None else sorted(rows, key=natural), name=index_name)
    text = pd.DataFrame([rows[m] for m in index], index=index, columns=columns, dtype=object).fillna(DASH)
    value_frame = pd.DataFrame(np.nan, index=index, columns=columns, dtype=float)
    for (row, column), value in (values or {}).items():
        if row in index and column in value_frame.columns and number(value) is not None:
            value_frame.loc[row, column] = float(value)
    bold_frame = pd.DataFrame(False, index=index, columns=columns, dtype=bool)
    for row, column in bold:
        if row in index and column in bold_frame.columns:
            bold_frame.loc[row, column] = True
    tip_frame = pd.DataFrame("", index=index, columns=columns, dtype=object)
    row_notes = dict(row_notes or {})
    for row, column, note in tips:
        if column is None:  # a note on the row itself
            row_notes[row] = note
        elif row in index and column in tip_frame.columns:
            tip_frame.loc[row, column] = note
    return Table(title=title, caption=caption, values=value_frame, text=text, bold=bold_frame,
                 tips=tip_frame, row_notes=row_notes, column_classes=dict(column_classes or {}),
                 left_columns=tuple(left_columns), numbers=dict(numbers or {}),
                 context_rows=tuple(r for r in index if is_reference(r)))


# -- captions and bold shared by the tables ----------------------------------------------------------

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
        runs = sorted({str(r) for r in runs if not missing(r)})
        shas = sorted({str(s)[:12] for s in shas if not missing(s)})
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
    values = sorted({int(v) for v in values if not missing(v)})
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
        found = sorted({int(v) for v in values if not missing(v)})
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


def symbols_in(table: Table, columns=None) -> set:
    """The table symbols (SYMBOLS) that occur in the cells of `table` (of `columns` only if given)."""
    cells = table.text if columns is None else table.text[[c for c in columns if c in table.columns]]
    texts = [str(v) for v in cells.to_numpy().ravel()]
    return {sym for sym in SYMBOLS if any(_has_symbol(t, sym) for t in texts)}


SYMBOLS = (DASH, "n/a", "OOM", "FAIL", "skipped", "ref …", NOISY, STOPPED, "×")


def symbols_caption(table: Table, meanings: dict) -> str:
    """' Symbols: – = ...; OOM = ...' for each symbol of `meanings` found in the cells of `table` and
    not defined in its caption yet: every mark a reader meets is explained under its table, and a
    mark the table does not use is not."""
    caption = table.caption
    found = symbols_in(table)
    parts = []
    for sym, meaning in meanings.items():
        if sym not in found or f"{sym} = " in caption:
            continue
        if sym == "ref …":  # the statuses a reference cell had, spelled as the cells spell them
            sym = " / ".join(sorted({str(v) for v in table.text.to_numpy().ravel() if str(v).startswith("ref ")}))
        parts.append(f"{sym} = {meaning}")
    return (" Symbols: " + "; ".join(parts) + ".") if parts else ""


def meaning_in(table: Table, symbol: str, rules: list, default: str) -> str:
    """What `symbol` means in `table`: the meanings of the (columns, meaning) rules whose columns
    hold it (columns None: always), joined by '; '; `default` when no rule applies."""
    found = [meaning for columns, meaning in rules if columns is None or symbol in symbols_in(table, columns)]
    return "; ".join(found) or default


STATUS_MEANINGS = {"OOM": "out of memory (CUDA out-of-memory, or the process killed for memory)",
                   "FAIL": "the cell raised an error (hover for the message)",
                   "skipped": "not run: the row ran out of memory at a shorter length"}


# -- speed cells -----------------------------------------------------------------------------------

def _speed_data(row) -> dict:
    """The numbers of one speed cell, for `to_json` and hover notes."""
    return {"status": row["status"], "median_ms": number(row["timing.median_ms"]),
            "p20_ms": number(row["timing.p20_ms"]), "p80_ms": number(row["timing.p80_ms"]),
            "spread": spread(row), "noisy": is_noisy(row), "peak_bytes": number(row["peak_bytes"]),
            "n_runs": int(row.get("n_runs") or 1),
            "run_ids": [r for r in (row.get("run_ids") or (row["run_id"],)) if not missing(r)],
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
    summary.seeds = [None if missing(s) else int(s) for s in ok["seed"]]
    summary.run_ids = sorted(set(group["run_id"].dropna()))
    failed = group[~ok_mask]
    summary.failures = {str(k): int(v) for k, v in failed["status"].value_counts().items()}
    errors = [e for e in failed["error"] if isinstance(e, str) and e]
    summary.error = errors[0] if errors else None
    summary.lr_scores = lr_scores
    lrs = ok["train.lr"].dropna()
    summary.lr = chosen if chosen is not None else (float(lrs.iloc[0]) if lrs.nunique() == 1 else None)
    for _, rec in group.iterrows():
        reason = get(rec, "metrics.stopped")
        if reason:
            steps = get(rec, "metrics.steps")
            summary.stopped.append((get(rec, "seed"), None if steps is None else int(steps), str(reason)))
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
    steps, batch = get(rec, "train.total_steps"), get(rec, "train.batch_size")
    lr, warm = get(rec, "train.lr"), get(rec, "train.warmup_steps")
    if steps is None and batch is None and lr is None:
        return None
    parts = [f"{int(steps)} steps" if steps is not None else None,
             f"batch {int(batch)}" if batch is not None else None,
             (f"lr grid ×{'/'.join(f'{m:.3g}' for m in rec['train.lr_grid'])} of the base lr"
              if _has_grid(rec.get("train.lr_grid")) else f"lr {fmt_lr(lr)}" if lr is not None else None),
             f"warmup {int(warm)}" if warm is not None else None]
    budget = get(rec, "train.time_budget")
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
    return " Schedules: " + "; ".join(f"{row}: {texts[row]}" for row in sorted(texts, key=natural)) + "."


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
        summary.set_interval()
    se = [p.se_test for p in parts]
    if all(v is not None for v in se):
        summary.se_test = math.sqrt(sum(v * v for v in se)) / len(se)
    summary.seeds = sorted(common)
    summary.run_ids = sorted({r for p in parts for r in p.run_ids})
    return summary


def _accuracy_frame(acc: pd.DataFrame, title: str, caption: str, with_avg: bool) -> Table:
    present = acc[["column", "group", "task"]].drop_duplicates("column")
    task_of = dict(zip(present["column"], present["task"]))
    group_of = dict(zip(present["column"], present["group"]))
    ranked = sorted(task_of, key=lambda c: (task_order(task_of[c]), natural(c)))  # LRA order
    lra_cols = [c for c in ranked if group_of[c] in ("lra", "other")]
    excluded = [c for c in ranked if group_of[c] == "excluded"]
    grid = bool(acc["train.lr_grid"].map(_has_grid).any())
    models = sorted(set(acc.loc[~acc["is_ref"], "row"]), key=natural)
    refs = sorted(set(acc.loc[acc["is_ref"], "row"]), key=natural)

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
        five = [c for c in lra_cols if task_of[c] != PATH_X]
        six = list(lra_cols)
        if len(five) >= 2:
            avg_cols.append(("Avg", five))
        if PATH_X in {task_of[c] for c in lra_cols} and len(six) >= 2:
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
            measured_pathx = PATH_X in {task_of[c] for c in lra_cols}
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
    all_cols = list(MODEL_COLUMNS) + lra_cols + [name for name, _ in avg_cols] + excluded
    col_classes = {name: "avg" for name, _ in avg_cols} | {c: "standin" for c in excluded}
    # the number a cell shows: the mean accuracy (%), or the model figure
    values = {key: numbers.get("mean", numbers.get("value")) for key, numbers in data.items()}
    frame = make_table(rows, all_cols, title, caption, values=values, bold=bold, tips=tips, row_notes=notes,
                       column_classes=col_classes, order=models + refs, numbers=data)
    averages = [name for name, _ in avg_cols]
    results = lra_cols + excluded
    dash = meaning_in(frame, DASH, [(results, "no result for this task"),
                                    (MODEL_COLUMNS, "not recorded (params, layers, width)")]
                      + ([(None, "reference rows are not averaged")] if refs and averages else []), "no result")
    na = meaning_in(frame, "n/a", [(results, "the model cannot run here (a kernel or package is missing)"),
                                   (averages, "a result the average needs is missing")], "not available")
    frame.add_symbols({
        DASH: dash, "n/a": na,
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


def accuracy_table(df: pd.DataFrame, aggregate: bool = False) -> Table | None:
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


def other_tasks_table(df: pd.DataFrame, aggregate: bool = False) -> Table | None:
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

def efficiency_table(df: pd.DataFrame, length: int = 4096, slice_: dict | None = None,
                     aggregate: bool = False) -> Table | None:
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
    unit = MEMORY_UNIT
    by_label = {row["label"]: row for _, row in cells.iterrows()}
    references = dict(efficiency_references())  # model -> what it is, by registered rank
    refs = [(base, reference_name(by_label, base)) for base in references]
    time_col, mem_col0 = "time (ms)", f"peak mem ({unit[0]})"
    columns = list(MODEL_COLUMNS) + [time_col, mem_col0]
    ratio_cols = []
    for base, _ in refs:
        ratio_cols += [f"speed-up vs {base}", f"memory vs {base}"]
    columns += ratio_cols
    rows, memory, tips, data, times, measured_values = {}, {}, [], {}, {}, {}
    for label, row in by_label.items():
        ok = speed_ok(row)
        text, figures = model_figures(pd.DataFrame([row]))
        data.update({(label, name): numbers for name, numbers in figures.items()})
        data[(label, time_col)] = data[(label, mem_col0)] = _speed_data(row)
        if ok:
            text[time_col] = _time_text(row)
            text[mem_col0] = fmt_mem(row["peak_bytes"], unit)
            times[label] = (row["timing.median_ms"], number(row["timing.p20_ms"]),
                            number(row["timing.p80_ms"]))
            memory[(label, mem_col0)] = row["peak_bytes"]
            measured_values[(label, time_col)] = row["timing.median_ms"]
            measured_values[(label, mem_col0)] = row["peak_bytes"] / unit[1]
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
            elif not speed_ok(ref_row):
                text[speed_col] = text[mem_col] = f"ref {status_text(ref_row['status'])}"
            else:
                speedup = ref_row["timing.median_ms"] / row["timing.median_ms"]
                noisy = is_noisy(row) or is_noisy(ref_row)
                text[speed_col] = (NOISY if noisy else "") + fmt_ratio(speedup)
                mem = row["peak_bytes"] / ref_row["peak_bytes"] if ref_row["peak_bytes"] else np.nan
                text[mem_col] = fmt_ratio(mem)
                run_ids = sorted(set(_speed_data(row)["run_ids"]) | set(_speed_data(ref_row)["run_ids"]))
                data[(label, speed_col)] = {"ratio": number(speedup), "noisy": noisy, "reference": ref,
                                            "run_ids": run_ids}
                data[(label, mem_col)] = {"ratio": number(mem), "reference": ref, "run_ids": run_ids}
        rows[label] = text
    published = {}
    if slice_.get("task") == PROTOCOL["task"] and at == PROTOCOL_LENGTH:  # where Table 2's ratios were taken
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
        f"{base} = {references[base]}"
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
    runs = sorted({r for ids in cells["run_ids"] for r in ids if not missing(r)})
    shas = sorted({str(s)[:12] for s in cells["git_sha"] if not missing(s)})
    if len(runs) > 1 or len(shas) > 1:
        caption += (f" The rows come from {len(runs)} runs ({', '.join(runs)})"
                    + (f" of {len(shas)} revisions ({', '.join(shas)})" if len(shas) > 1 else "")
                    + "; hover a time for its run.")
    title = f"Efficiency at {length_label(at)} ({slice_tag(slice_)})"
    # the number a cell shows: ms, GiB, a ratio, a model figure (the paper column holds two: none)
    values = {key: numbers.get("ratio", numbers.get("value")) for key, numbers in data.items()}
    values.update(measured_values)
    frame = make_table(rows, columns, title, caption, values=values, bold=bold, tips=tips, numbers=data)
    measured = [time_col, mem_col0]
    dash = meaning_in(frame, DASH, [(MODEL_COLUMNS, "not recorded (params, layers, width)"),
                                    (ratio_cols, "no ratio: the row has no time or memory of its own"),
                                    ([paper_col], "no published figure for this row")], "not measured")
    na = meaning_in(frame, "n/a", [(measured, "the model cannot run here (a kernel or package is missing)"),
                                   (ratio_cols, "the reference was not measured in this slice")], "not available")
    frame.add_symbols({
        DASH: dash, "n/a": na,
        **STATUS_MEANINGS, "ref …": "the reference's own cell at this length has that status, so no ratio",
        NOISY: NOISY_TEXT + f" (a ratio marked {NOISY} uses a noisy time)", "×": "times (a ratio)"})
    return frame


def length_tables(df: pd.DataFrame, slice_: dict | None = None,
                  aggregate: bool = False) -> list[Table]:
    """Time (ms) and peak memory by length for one slice: rows model variants, columns lengths."""
    cells = speed_cells(df, aggregate)
    if cells.empty:
        return []
    slice_ = slice_ or speed_slices(cells)[0]
    cells = select_slice(cells, slice_)
    lengths = sorted({int(x) for x in cells["seq_len"].dropna()})
    columns = [str(x) for x in lengths]
    unit = MEMORY_UNIT
    protocol = is_protocol(slice_, cells["seq_len"])
    notes = _row_origins({label: ([r for ids in group["run_ids"] for r in ids], group["git_sha"])
                          for label, group in cells.groupby("label", sort=False)})
    tables = []
    for metric, title in (("timing.median_ms", "Time (ms) by sequence length"),
                          ("peak_bytes", f"Peak memory ({unit[0]}) by sequence length")):
        rows, memory, tips, data, times, values = {}, {}, [], {}, {}, {}
        for _, row in cells.iterrows():
            if pd.isna(row["seq_len"]):
                continue
            col, label = str(int(row["seq_len"])), row["label"]
            data[(label, col)] = _speed_data(row)
            if speed_ok(row) and np.isfinite(row[metric]):
                values[(label, col)] = row[metric] / (unit[1] if metric == "peak_bytes" else 1)  # ms or GiB
                if metric == "timing.median_ms":
                    rows.setdefault(label, {})[col] = _time_text(row)
                    times.setdefault(col, {})[label] = (row[metric], number(row["timing.p20_ms"]),
                                                        number(row["timing.p80_ms"]))
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
        frame = make_table(rows, columns, f"{title} ({slice_tag(slice_)})", caption, values=values, bold=bold,
                           tips=tips, row_notes=notes, index_name="Model \\ L", numbers=data)
        frame.add_symbols({
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


def complexity_table(df: pd.DataFrame, slice_: dict | None = None, aggregate: bool = False) -> Table | None:
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
    values = {key: numbers["p"] for key, numbers in data.items()}
    values.update({(label, "time r²"): data[(label, "time p")]["r2"] for label, column in data if column == "time p"})
    frame = make_table(rows, ["registered", "time p", "memory p", "fit range", "time r²"],
                       f"Measured complexity ({slice_tag(slice_)})", caption, values=values, numbers=data)
    frame.add_symbols({DASH: "not available"})  # defined above already
    return frame


# -- every table, rendered, as data ------------------------------------------------------------------

def all_tables(df: pd.DataFrame, length: int = 4096, aggregate: bool = False) -> list[Table]:
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


def render_all(records: pd.DataFrame, fmt: str = "markdown", length: int = 4096,
               aggregate: bool = False) -> str:
    """Every table of `records` (a `load_records` frame) rendered in `fmt`, in reading order."""
    table_list = all_tables(records, length=length, aggregate=aggregate)
    if not table_list:
        return "(no results to tabulate)\n"
    return "\n".join(render(t, fmt) for t in table_list)


def to_json(table: Table) -> dict:
    """A table as plain data (for `table --json`): numbers, not display strings. Each cell has its
    `display` text, `bold`, and the numbers behind it: accuracy cells mean, sd, n, ci_low, ci_high,
    se_test, n_test, per-seed values and the run ids; speed cells median/p20/p80 ms, spread, noisy,
    peak bytes and run ids; ratio cells the ratio."""
    rows = []
    for label, values in table.text.iterrows():
        cells = {}
        for column, text in values.items():
            cell = {"display": str(text), "bold": bool(table.bold.loc[label, column])}
            cell.update(plain(table.numbers.get((label, column), {})))
            cells[str(column)] = cell
        row = {"label": str(label), "cells": cells}
        if label in table.row_notes:
            row["note"] = table.row_notes[label]
        rows.append(row)
    return {"title": table.title, "caption": table.caption, "index": table.index.name,
            "columns": [str(c) for c in table.columns], "rows": rows}

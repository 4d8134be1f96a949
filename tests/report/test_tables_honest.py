"""Honest tables (issue 12): rows are model variants, speed tables never mix GPUs, accuracy cells carry
their uncertainty and are ranked only when the seeds allow it, reference rows are context, only
LRA-eligible records are called LRA numbers, and `to_json` gives numbers.

Fixtures are synthetic records written through `make_record` and `Run.append` in a temporary results
folder; the last tests read the committed reference results (schema-1 lines) and pin what they render
against numbers computed from the raw lines.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from scipy import stats

from harness import store as store_module
from harness.report import format as fmt, plots, select, tables
from harness.report.render import render
from harness.store import RunStore, load_records, make_record

H100, A100 = "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"
RUN_1, RUN_2 = "20260501-090000-aaaaaa", "20260502-090000-bbbbbb"
OFFICIAL = {"kind": "official", "source": "lra-release"}
REFERENCE = Path(__file__).resolve().parents[2] / "results" / "reference"


def new_run(root: Path, run_id: str = RUN_1):
    with mock.patch.object(store_module, "new_run_id", return_value=run_id):
        return RunStore(root).create(["python", "-m", "harness", "run"], {}, {})


def acc(model, task, seed, accuracy, scale="paper", provenance=OFFICIAL, n_test=None, variant=None,
        val=None, train=None, n_params=1000, status="ok", **metrics):
    """An accuracy record; `accuracy` in percent."""
    values = {}
    if status == "ok":
        values = {"accuracy": accuracy / 100.0,
                  "val_accuracy": (val if val is not None else accuracy) / 100.0}
        if n_test is not None:
            values["n_test"] = n_test
    values.update(metrics)
    return make_record(kind="accuracy", model=model, status=status, task=task, seed=seed, scale=scale,
                       provenance=provenance, metrics=values, variant=variant or {}, train=train,
                       n_params=n_params, mode="train", device="cpu", dtype="fp32")


def speed(model, length, median, p20=None, p80=None, device_name=H100, variant=None, peak_gib=1.0,
          batch=4, status="ok"):
    timing = ({"median_ms": median, "p20_ms": p20 if p20 is not None else median * 0.99,
               "p80_ms": p80 if p80 is not None else median * 1.01, "n_warmup": 3, "n_iters": 10}
              if status == "ok" else None)
    memory = {"peak_allocated_bytes": int(peak_gib * fmt.GIB)} if status == "ok" else None
    return make_record(kind="speed", model=model, status=status, task="text", seq_len=length,
                       batch_size=batch, dtype="bf16", device="cuda", mode="train_step",
                       variant=variant or {}, timing=timing, memory=memory,
                       hardware={"device_name": device_name, "host": "bench"})


def write(tmp_path, records, run_id=RUN_1) -> Path:
    root = tmp_path / "results"
    run = new_run(root, run_id)
    for record in records:
        run.append(record)
    return root


def table_of(root, kind="accuracy"):
    df = select.prepare(load_records(root))
    if kind == "accuracy":
        return tables.accuracy_table(df)
    return [t for t in tables.all_tables(load_records(root)) if t.title.startswith(kind)]


def t_cell(values, n_extra="") -> str:
    values = np.asarray(values, dtype=float)
    mean, sd = values.mean(), values.std(ddof=1)
    half = stats.t.ppf(0.975, len(values) - 1) * sd / math.sqrt(len(values))
    return f"{mean:.1f} ± {sd:.1f} (n={len(values)}{n_extra}) [{mean - half:.1f}, {mean + half:.1f}]"


# -- rows are variants; speed tables are per device ---------------------------------------------

def test_two_variants_of_one_model_are_two_labelled_rows(tmp_path):
    records = [acc("mega", "listops", s, a) for s, a in enumerate((60, 61, 62))]
    records += [acc("mega", "listops", s, a, variant={"attention": "laplace"})
                for s, a in enumerate((50, 51, 52))]
    compile_ = {"compile": True, "compile_mode": "reduce-overhead"}
    records += [speed("mega_chunk", 4096, 38.8), speed("mega_chunk", 4096, 18.1, variant=compile_)]
    root = write(tmp_path, records)
    table = table_of(root)
    assert list(table.index) == ["mega", "mega [attention=laplace]"]
    assert table.text.loc["mega", "ListOps"] == t_cell([60, 61, 62])
    assert table.text.loc["mega [attention=laplace]", "ListOps"] == t_cell([50, 51, 52])
    (efficiency,) = table_of(root, "Efficiency")
    compiled = "mega_chunk [compile=true, compile_mode=reduce-overhead]"
    assert list(efficiency.index) == ["mega_chunk", compiled]
    assert efficiency.text.loc["mega_chunk", "time (ms)"] == "38.8"
    assert efficiency.text.loc[compiled, "time (ms)"] == "18.1"
    fig = plots.length_figure(select.prepare(load_records(root)), "time")
    assert {t.name for t in fig.data} == {"mega_chunk", compiled}  # legends name the variant too


def test_cells_from_two_gpus_never_share_a_table(tmp_path):
    records = [speed("transformer", 4096, 33.7, device_name=H100), speed("mega", 4096, 119, device_name=H100),
               speed("transformer", 4096, 51.0, device_name=A100), speed("mega", 4096, 170, device_name=A100)]
    root = write(tmp_path, records)
    efficiency = table_of(root, "Efficiency")
    assert len(efficiency) == 2
    for table, name, ms in zip(sorted(efficiency, key=lambda t: A100 in t.title), (H100, A100),
                               ("33.7", "51.0")):
        assert name in table.title and name in table.caption
        assert list(table.index) == ["mega", "transformer"]  # one row per model: none hidden, none mixed
        assert table.text.loc["transformer", "time (ms)"] == ms
    length = table_of(root, "Time (ms) by sequence length")
    assert len(length) == 2 and {H100 in t.title for t in length} == {True, False}
    ids = [fig_id for fig_id, _, _ in plots.report_figures(load_records(root))
           if fig_id.startswith("fig-time")]
    assert len(ids) == 2 and len(set(ids)) == 2  # one figure per device, distinct ids


def test_a_row_combining_runs_says_so(tmp_path):
    root = write(tmp_path, [speed("mega", 1024, 10.0), speed("mega", 2048, 20.0)], RUN_1)
    later = new_run(root, RUN_2)
    later.append(speed("mega", 2048, 19.0))
    (time_table,) = table_of(root, "Time (ms) by sequence length")
    assert time_table.text.loc["mega", "2048"] == "19.0"  # the latest run's record
    note = f"row combines runs {RUN_1}, {RUN_2}"
    assert note in time_table.caption and time_table.row_notes["mega"] == note
    assert f'title="{note}"' in render(time_table, "html")


# -- uncertainty and ranking -----------------------------------------------------------------------

def test_single_seed_ranks_nothing(tmp_path):
    root = write(tmp_path, [acc("mega", "listops", 0, 70), acc("s4", "listops", 0, 40),
                            acc("mega", "text", 0, 80), acc("s4", "text", 0, 60)])
    table = table_of(root)
    assert table.bold_cells == []
    assert "Single seed: not ranked." in table.caption
    assert table.text.loc["mega", "ListOps"] == "70.0 (n=1)"


def test_one_single_seed_row_unranks_only_its_column(tmp_path):
    records = [acc(m, "listops", s, a + s) for m, a in (("mega", 70), ("s4", 40)) for s in range(3)]
    records += [acc("mega", "text", s, 80 + s) for s in range(3)] + [acc("s4", "text", 0, 60)]
    table = table_of(write(tmp_path, records))
    assert ("mega", "ListOps") in table.bold_cells and ("s4", "ListOps") not in table.bold_cells
    assert not [b for b in table.bold_cells if b[1] in ("Text", "Avg")]
    assert "Single seed: not ranked (Text, Avg)." in table.caption


def test_bold_marks_the_best_and_every_model_tied_with_it(tmp_path):
    seeds = {"A": (80, 81, 79), "B": (79.5, 80.5, 80), "C": (60, 61, 59)}
    root = write(tmp_path, [acc(m, "image", s, a) for m, values in seeds.items()
                            for s, a in enumerate(values)])
    table = table_of(root)
    assert set(table.bold_cells) == {("A", "Image"), ("B", "Image")}  # B is within noise of A, C is not
    assert "Welch" in table.caption and "2 × the test-set s.e." in table.caption
    for model, values in seeds.items():
        assert table.text.loc[model, "Image"] == t_cell(values)


def test_a_gap_below_twice_the_test_set_error_is_a_tie(tmp_path):
    """Three seeds 1 point apart with no spread: Welch separates them, but 250 test examples cannot."""
    def records(n_test):
        return [acc(m, "listops", s, a + 0.1 * s, n_test=n_test) for m, a in (("A", 80.0), ("B", 79.0))
                for s in range(3)]

    separated = table_of(write(tmp_path / "large", records(None)))
    assert set(separated.bold_cells) == {("A", "ListOps")}
    tied = table_of(write(tmp_path / "small", records(250)))
    assert set(tied.bold_cells) == {("A", "ListOps"), ("B", "ListOps")}
    se = 100 * math.sqrt(0.801 * 0.199 / 250)
    assert f"= {se:.1f} points (N = 250 test examples" in tied.caption
    assert f"test-set s.e. {se:.1f} points (N=250)" in tied.tips.loc["A", "ListOps"]


def test_reference_rows_shown_below_never_bold_never_averaged(tmp_path):
    records = [acc(m, t, s, a + s) for m, a in (("mega", 60), ("s4", 50)) for t in ("listops", "text")
               for s in range(3)]
    records += [acc("ref:linear", t, s, 95.0) for t in ("listops", "text") for s in range(3)]
    records += [acc("ref:majority", t, 0, 12.8) for t in ("listops", "text")]
    table = table_of(write(tmp_path, records))
    assert list(table.index) == ["mega", "s4", "ref: linear (logistic regression)", "ref: majority class"]
    assert table.text.loc["ref: linear (logistic regression)", "ListOps"] == "95.0 ± 0.0 (n=3) [95.0, 95.0]"
    assert table.text.loc["ref: majority class", "ListOps"] == "12.8 (n=1)"  # one data seed: ranks nothing anyway
    assert table.text.loc["ref: majority class", "Avg"] == fmt.DASH
    assert table.text.loc["ref: linear (logistic regression)", "Avg"] == fmt.DASH
    bold = set(table.bold_cells)
    assert ("mega", "ListOps") in bold and ("mega", "Avg") in bold  # the single-seed ref does not unrank
    assert not [b for b in bold if b[0].startswith("ref:")]
    assert "never ranked or averaged" in table.caption
    page = render(table, "html")  # reference rows read muted, model rows do not
    assert re.search(r'row2 col\d+ num[^"]* ref"', page) and not re.search(r'row1 col\d+ num[^"]* ref"', page)


# -- honest scale labels ---------------------------------------------------------------------------

def test_smoke_and_standin_records_are_never_lra_numbers(tmp_path):
    smoke = {"kind": "regenerated", "source": "listops-generator", "subset": "n=2000/250/250"}
    fashion = {"kind": "stand-in", "source": "fashion-mnist", "subset": "n=2000/250/250"}
    listops = "ListOps [regenerated: listops-generator · smoke · n=2000/250/250]"
    records = [acc(m, "listops", s, a + s, scale="smoke", provenance=smoke)
               for m, a in (("mega", 30), ("s4", 25)) for s in range(3)]
    records += [acc(m, "image", s, a + s, scale="smoke", provenance=fashion)
                for m, a in (("mega", 64), ("s4", 56)) for s in range(3)]
    table = table_of(root := write(tmp_path, records))
    assert table.title == "Accuracy (not LRA numbers: smoke scale / stand-in data)"
    assert "Long Range Arena" not in table.title
    image = "Image [stand-in: fashion-mnist · smoke · n=2000/250/250]"
    assert list(table.columns) == ["params", "layers", "width", listops, image]
    # the same folder with paper-scale official runs: those alone are the LRA columns and the Avg
    run = new_run(root, RUN_2)
    for model, base in (("mega", 60), ("s4", 55)):
        for task in ("listops", "text"):
            for seed in range(2):
                run.append(acc(model, task, seed, base + seed))
    table = table_of(root)
    assert table.title == "Long Range Arena accuracy"
    assert list(table.columns)[:6] == ["params", "layers", "width", "ListOps", "Text", "Avg"]
    assert "Avg = mean over the 2 tasks ListOps, Text (Path-X excluded" in table.caption
    assert "Path-X was not measured" in table.caption
    assert table.numbers[("mega", "Avg")]["mean"] == pytest.approx(60.5)  # not the smoke 31
    assert table.text.loc["mega", listops] == t_cell([30, 31, 32])


def test_legacy_official_release_subset_is_labelled_as_an_official_subset(tmp_path):
    legacy = "official-release(subset n=2000/250/250)"
    records = [acc(m, "retrieval", s, a + s, provenance=legacy) for m, a in (("mega", 70), ("s4", 66))
               for s in range(2)]
    records += [acc(m, "pathfinder", s, a + s) for m, a in (("mega", 80), ("s4", 76)) for s in range(2)]
    table = table_of(write(tmp_path, records))
    column = "Retrieval [official subset: lra-release · paper · n=2000/250/250]"
    assert column in table.columns and not [c for c in table.columns if "unknown" in c]
    assert "Pathfinder" in table.columns and "Avg" not in table.columns  # one LRA task: no average of one
    assert table.text.loc["mega", column] == t_cell([70, 71])


# -- fair budgets ----------------------------------------------------------------------------------

def test_lr_grid_shows_the_lr_with_the_best_mean_validation_accuracy(tmp_path):
    grid = [1 / 3, 1.0, 3.0]
    base = 2e-3
    # (multiplier) -> per-seed (test, val): the middle lr wins on validation, the high one on test
    points = {1 / 3: ((60, 61), (61, 62)), 1.0: ((62, 63), (70, 71)), 3.0: ((75, 76), (65, 66))}
    records = []
    for multiplier, (tests, vals) in points.items():
        for seed, (test, val) in enumerate(zip(tests, vals)):
            train = {"lr": base * multiplier, "lr_multiplier": multiplier, "lr_grid": grid,
                     "total_steps": 300, "batch_size": 16, "warmup_steps": 30}
            records.append(acc("mega", "image", seed, test, val=val, train=train))
    records.append(acc("s4", "image", 0, 50, status="error", error="diverged",
                       train={"lr": base * 3, "lr_multiplier": 3.0, "lr_grid": grid}))
    records += [acc("s4", "image", s, 55 + s, val=56,
                    train={"lr": base, "lr_multiplier": 1.0, "lr_grid": grid}) for s in range(2)]
    root = write(tmp_path, records)
    table = table_of(root)
    assert table.text.loc["mega", "Image"] == t_cell([62, 63]) + " lr=2e-3"
    assert table.numbers[("mega", "Image")]["lr"] == pytest.approx(2e-3)
    assert table.text.loc["s4", "Image"] == t_cell([55, 56]) + " lr=2e-3"  # the diverged lr had no validation
    assert "every grid point stays in the store" in table.caption
    assert "lr grid ×0.333/1/3 of the base lr" in table.caption
    assert len(load_records(root)) == len(records)  # every grid cell stays stored


def test_params_column_schedule_and_time_budget_note(tmp_path):
    train = {"lr": 2e-3, "total_steps": 300, "batch_size": 16, "warmup_steps": 30}
    records = [acc("mega_tiny", "listops", s, 30 + s, n_params=31_234, train=train) for s in range(2)]
    records += [acc("mega_tiny", "text", s, 60 + s, n_params=40_100, train=train) for s in range(2)]
    records += [acc("s4d_tiny", "listops", s, 28 + s, n_params=812, train=train, steps=123 + s,
                    stopped="time-budget") for s in range(2)]
    table = table_of(write(tmp_path, records))
    assert table.text.loc["mega_tiny", "params"] == "31.2K–40.1K" and table.text.loc["s4d_tiny", "params"] == "812"
    assert "Schedule (every row): 300 steps, batch 16, lr 2e-3, warmup 30." in table.caption
    assert table.text.loc["s4d_tiny", "ListOps"].endswith(fmt.STOPPED)
    assert "s4d_tiny · ListOps: time-budget at 123, 124 steps" in table.caption


# -- speed marks -----------------------------------------------------------------------------------

def test_noisy_speed_cells_are_marked_and_about_equal_times_share_the_bold(tmp_path):
    records = [speed("transformer", 4096, 10.0, 9.5, 10.5), speed("mega", 4096, 10.3, 10.0, 10.6),
               speed("s4", 4096, 20.0, 12.0, 30.0), speed("mamba", 4096, 14.0, 13.9, 14.1)]
    root = write(tmp_path, records)
    (efficiency,) = table_of(root, "Efficiency")
    assert efficiency.text.loc["s4", "time (ms)"] == "~20.0"  # p80/p20 = 2.5
    assert efficiency.text.loc["mamba", "time (ms)"] == "14.0"
    assert efficiency.text.loc["s4", "speed-up vs transformer"] == "~" + fmt.fmt_ratio(10.0 / 20.0)
    bold_times = {r for r, c in efficiency.bold_cells if c == "time (ms)"}
    assert bold_times == {"transformer", "mega"}  # overlapping p20-p80: about equal
    assert "~ = noisy: p80/p20 > 1.5" in efficiency.caption
    tip = efficiency.tips.loc["s4", "time (ms)"]
    assert "p80/p20 = 2.50, noisy" in tip
    assert re.search(r'<td id="[^"]*" class="data row\d+ col\d+ num"  title="median 20.0 ms',
                     render(efficiency, "html"))  # "~20.0" still reads as a number


# -- JSON --------------------------------------------------------------------------------------------

def test_to_json_gives_numbers_and_run_ids(tmp_path):
    root = write(tmp_path, [acc(m, "listops", s, a + s, n_test=2000) for m, a in (("mega", 60), ("s4", 50))
                            for s in range(3)] + [speed("mega", 4096, 12.5, 12.0, 13.0, peak_gib=2.0)])
    data = [tables.to_json(t) for t in tables.all_tables(load_records(root))]
    json.dumps(data, allow_nan=False)  # plain JSON, no NaN
    accuracy = data[0]
    assert accuracy["title"] and accuracy["caption"] and accuracy["columns"][:4] == ["params", "layers", "width", "ListOps"]
    row = {r["label"]: r for r in accuracy["rows"]}["mega"]
    cell = row["cells"]["ListOps"]
    values = np.array([60.0, 61.0, 62.0])
    half = stats.t.ppf(0.975, 2) * values.std(ddof=1) / math.sqrt(3)
    assert cell["mean"] == pytest.approx(61.0) and cell["sd"] == pytest.approx(1.0) and cell["n"] == 3
    assert cell["ci_low"] == pytest.approx(61 - half) and cell["ci_high"] == pytest.approx(61 + half)
    assert cell["se_test"] == pytest.approx(100 * math.sqrt(0.61 * 0.39 / 2000)) and cell["n_test"] == 2000
    assert cell["bold"] is True and cell["run_ids"] == [RUN_1]
    assert cell["values"] == pytest.approx(list(values))
    assert row["cells"]["params"]["n_params"] == 1000
    time_cell = {r["label"]: r for r in data[1]["rows"]}["mega"]["cells"]["time (ms)"]
    assert time_cell["median_ms"] == 12.5 and time_cell["p20_ms"] == 12.0 and time_cell["p80_ms"] == 13.0
    assert time_cell["peak_bytes"] == 2 * fmt.GIB and time_cell["run_ids"] == [RUN_1]
    assert not isinstance(time_cell["median_ms"], str)


# -- the committed reference results ---------------------------------------------------------------

def _raw_latest(folder: Path, **match) -> dict:
    """The latest raw (schema-1) line of `folder` matching `match`, read without the store."""
    lines = []
    for path in sorted(folder.glob("*/records.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if all(record.get(k) == v for k, v in match.items()):
                lines.append(record)
    assert lines, match
    return max(lines, key=lambda r: (r["run_id"], r["created"]))


@pytest.mark.skipif(not (REFERENCE / "h100-2026-11-22").is_dir(),
                    reason="reference results not in this checkout")
def test_reference_results_render_the_numbers_of_their_raw_records():
    folder = REFERENCE / "h100-2026-11-22"
    (table,) = [t for t in tables.all_tables(load_records(folder))
                if t.title.startswith("Efficiency at 4K") and "b=25" in t.title]
    assert H100 in table.title
    cell = dict(task="text", seq_len=4096, batch_size=25, mode="train_step", status="ok")
    vanilla = _raw_latest(folder, model="transformer_vanilla", **cell)
    fused = _raw_latest(folder, model="transformer", **cell)
    for model in ("transformer", "mega"):
        raw = _raw_latest(folder, model=model, **cell)
        timing, peak = raw["timing"], raw["memory"]["peak_allocated_bytes"]
        noisy = "~" if timing["p80_ms"] / timing["p20_ms"] > 1.5 else ""
        assert table.text.loc[model, "time (ms)"] == noisy + fmt.fmt_ms(timing["median_ms"])
        assert table.text.loc[model, "peak mem (GiB)"] == fmt.fmt_mem(peak)
        assert table.text.loc[model, "speed-up vs transformer_vanilla"].lstrip("~") == fmt.fmt_ratio(
            vanilla["timing"]["median_ms"] / timing["median_ms"])
        assert table.text.loc[model, "memory vs transformer"] == fmt.fmt_ratio(
            peak / fused["memory"]["peak_allocated_bytes"])
    assert table.text.loc["mega", "time (ms)"] == "119" and table.text.loc["transformer", "peak mem (GiB)"] == "4.69"


@pytest.mark.skipif(not (REFERENCE / "h100-2026-11-22-compiled").is_dir(),
                    reason="reference results not in this checkout")
def test_compiled_and_eager_reference_folders_show_both_variants():
    import pandas as pd

    frame = pd.concat([load_records(REFERENCE / "h100-2026-11-22"),
                       load_records(REFERENCE / "h100-2026-11-22-compiled")], ignore_index=True)
    (table,) = [t for t in tables.all_tables(frame)
                if t.title.startswith("Efficiency at 4K") and "b=25" in t.title]
    compiled = "mega_chunk [compile=true, compile_mode=reduce-overhead]"
    assert {"mega_chunk", compiled} <= set(table.index)
    raw = _raw_latest(REFERENCE / "h100-2026-11-22-compiled", model="mega_chunk", seq_len=4096, batch_size=25)
    assert table.text.loc[compiled, "time (ms)"].lstrip("~") == fmt.fmt_ms(raw["timing"]["median_ms"]) == "18.1"
    assert table.text.loc["mega_chunk", "time (ms)"].lstrip("~") == "38.8"

"""The tables a researcher would publish, and where their runs come from (issue "The report a
researcher would publish", tables and provenance items).

- The papers' protocol slice (Text, L = 4096, batch 25, a training step on a GPU) leads the speed
  tables; the other slices follow in reading order (GPU, Text, training step, more rows first).
- One memory unit (GiB) in every table and in `compare`, with the digits of small peaks kept.
- Every symbol in a table's cells is defined in its caption, and only those; "Avg" names its tasks
  and says whether Path-X is in it; the memory definition says what a peak includes.
- A model block (params, layers, width) beside speed, the same figures the accuracy table gets.
- `--results-dir` may be a folder of run folders' folders; with no runs, `table` and `report`
  point at the committed reference results; `compare` takes runs of two results folders and shows
  the settings that differ as `key: old → new`.

Fixtures are written through the store API into pytest's tmp_path.
"""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from harness.errors import UserError
from harness.report import format as fmt, select, tables
from harness.report.render import render
from harness.report.cli import main
from harness.report.compare import compare_runs
from harness.store import RunStore, folders_with_runs, load_records, make_record, run_folders

GIB = 1024 ** 3
MIB = 1024 ** 2
H100, H200, A100 = "NVIDIA H100 80GB HBM3", "NVIDIA H200", "NVIDIA A100-SXM4-80GB"


def arch(model: str) -> dict:
    """Model configurations shaped like the real ones: S4 deep and narrow-ish, MEGA narrow."""
    return {"mega": {"d_model": 128, "n_layers": 4}, "s4": {"d_model": 256, "n_layers": 23},
            "transformer": {"d_model": 256, "n_layers": 4},
            "transformer_vanilla": {"d_model": 256, "n_layers": 4}}.get(model, {"d_model": 64, "n_layers": 2})


N_PARAMS = {"mega": 990_852, "s4": 3_296_276, "transformer": 3_357_952, "transformer_vanilla": 3_357_952}


def speed(model, length, ms=None, peak=None, *, batch=25, device="cuda", device_name=H200, task="text",
          mode="train_step", status="ok", spread=0.01, rss=False, config=None):
    """A speed record: `peak` in bytes (CUDA peak allocated, or the CPU peak-RSS rise with rss=True)."""
    fields = dict(kind="speed", model=model, model_family="test", model_config=config or arch(model), task=task,
                  task_version="1", seq_len=length, batch_size=batch, dtype="bf16" if device == "cuda" else "fp32",
                  device=device, mode=mode, status=status, n_params=N_PARAMS.get(model, 1000),
                  error={"ok": None, "oom": "CUDA out of memory", "skipped": "skipped: oom at a shorter length",
                         "error": "RuntimeError: boom", "unavailable": "needs triton"}[status],
                  hardware={"device_name": device_name, "host": "bench", "device_count": 1},
                  provenance={"kind": "random-inputs", "source": "random tokens"})
    if status == "ok":
        samples = [ms * (1 + spread * (k - 4.5)) for k in range(10)]
        fields["timing"] = {"median_ms": float(np.median(samples)), "p20_ms": float(np.percentile(samples, 20)),
                            "p80_ms": float(np.percentile(samples, 80)), "n_warmup": 3, "n_iters": 10,
                            "samples_ms": samples}
        fields["memory"] = {"peak_rss_increase_bytes": int(peak)} if rss else {"peak_allocated_bytes": int(peak)}
    return make_record(**fields)


def accuracy(model, task, seed, value, status="ok"):
    return make_record(
        kind="accuracy", model=model, model_family="test", model_config=arch(model), task=task, task_version="1",
        seq_len=1024, batch_size=32, dtype="bf16", device="cuda", mode="train", status=status, seed=seed,
        n_params=N_PARAMS.get(model, 1000), scale="paper",
        error=None if status == "ok" else "RuntimeError: boom",
        provenance={"kind": "regenerated", "source": f"{task}-generator"},
        metrics={"accuracy": value / 100, "val_accuracy": value / 100, "n_test": 2000} if status == "ok" else {})


def new_run(root, records, config=None, environment=None) -> str:
    run = RunStore(root).create(["python", "-m", "harness", "bench"], config or {}, environment or {})
    for record in records:
        run.append(record)
    return run.run_id


def protocol_runs(root):
    """An older H100 and a newer H200 protocol slice, a batch-4 H100 sweep (4 rows), a ListOps slice, a
    CPU slice with the most rows, and a batch-25 Text slice (5 rows) on an A100 that never measured 4K."""
    new_run(root, [speed(m, 4096, ms, gib * GIB, device_name=H100) for m, ms, gib in
                   (("mega", 40, 5), ("transformer", 30, 5), ("transformer_vanilla", 160, 56))])
    new_run(root, [speed(m, n, 1 + n / 1024, 0.2 * n / 1024 * GIB, batch=4, device_name=H100)
                   for m in ("mega", "transformer", "s4", "transformer_vanilla") for n in (1024, 2048, 4096)])
    new_run(root, [speed(m, 2048, 5, GIB, task="listops") for m in ("mega", "transformer")])
    new_run(root, [speed(f"m{i}", 1024, 3, 30 * MIB, device="cpu", device_name="EPYC", batch=2, rss=True)
                   for i in range(6)])
    new_run(root, [speed(m, 1024, 3, GIB, device_name=A100) for m in ("mega", "transformer", "s4",
                                                                       "transformer_vanilla", "x")])
    new_run(root, [speed(m, 4096, ms, gib * GIB) for m, ms, gib in
                   (("mega", 38, 3.8), ("transformer", 28.7, 4.69), ("transformer_vanilla", 166, 56.7),
                    ("s4", 189, 26.6))])


# -- the protocol slice first --------------------------------------------------------------------------

def test_protocol_slice_leads_and_slices_follow_reading_order(tmp_path):
    protocol_runs(tmp_path)
    frame = select.prepare(load_records(tmp_path))
    slices = select.speed_slices(select.speed_cells(frame))
    described = [(s["task"], s["device"], s["batch_size"], s["hardware.device_name"]) for s in slices]
    assert described[:2] == [("text", "cuda", 25, H200), ("text", "cuda", 25, H100)]  # protocol, newest first
    # then the other Text slices on a GPU, more rows first (5 rows at 1K before 4 rows at 1K-4K; the
    # batch-25 A100 slice never measured 4K, so it is not the protocol), then other tasks, then the
    # CPU (although it has the most rows)
    assert [d[3] for d in described[2:4]] == [A100, H100] and described[4][0] == "listops"
    assert described[-1][1] == "cpu"
    text_1k = {"task": "text", "batch_size": 25, "device": "cuda", "mode": "train_step"}
    assert not select.is_protocol(text_1k, [1024]) and select.is_protocol(text_1k, [1024, 4096])
    # the first speed table a reader meets is the protocol's, and its caption says so
    table_list = tables.all_tables(load_records(tmp_path))
    first = next(t for t in table_list if t.title.startswith("Efficiency"))
    assert first.title == f"Efficiency at 4K (text, train_step, bf16, cuda, b=25, {H200})"
    assert first.caption.startswith("The papers' protocol (Text, L = 4096, batch 25")
    others = [t for t in table_list if t is not first]
    assert not any("The papers' protocol" in t.caption and H200 not in t.title
                   and H100 not in t.title for t in others)


def test_table_command_prints_the_protocol_slice_first(tmp_path, capsys):
    protocol_runs(tmp_path)
    assert main(["table", "--results-dir", str(tmp_path), "--quiet"]) == 0  # built, not printed
    assert main(["table", "--results-dir", str(tmp_path)]) == 0
    titles = re.findall(r"^\*\*(.+)\*\*$", capsys.readouterr().out, re.M)
    assert titles[0] == f"Efficiency at 4K (text, train_step, bf16, cuda, b=25, {H200})"


# -- one memory unit ----------------------------------------------------------------------------------

def test_every_memory_cell_is_in_gib_even_small_cpu_peaks(tmp_path):
    protocol_runs(tmp_path)
    table_list = tables.all_tables(load_records(tmp_path))
    text = "\n".join(render(t, "markdown") for t in table_list)
    assert "MiB" not in text and "KiB" not in text
    memory_columns = [c for t in table_list for c in t.columns if str(c).startswith("peak mem")]
    assert memory_columns and set(memory_columns) == {"peak mem (GiB)"}
    assert all("(GiB)" in t.title for t in table_list if t.title.startswith("Peak memory"))
    cpu = next(t for t in table_list if "cpu" in t.title and t.title.startswith("Efficiency"))
    assert cpu.text.loc["m0", "peak mem (GiB)"] == "0.029"  # 30 MiB: its digits kept, never "0.00"
    protocol = table_list[0] if table_list[0].title.startswith("Efficiency") else None
    assert protocol is not None and protocol.text.loc["transformer", "peak mem (GiB)"] == "4.69"
    assert [fmt.fmt_mem(v) for v in (56.7 * GIB, 0.53 * GIB, 20 * MIB, 0)] == ["56.70", "0.53", "0.020", "0"]


def test_compare_shows_memory_in_gib(tmp_path, capsys):
    a = new_run(tmp_path, [speed("mega", 1024, 3.0, 20 * MIB, device="cpu", device_name="EPYC", rss=True)])
    b = new_run(tmp_path, [speed("mega", 1024, 3.0, 40 * MIB, device="cpu", device_name="EPYC", rss=True)])
    main(["compare", a, b, "--results-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| 0.020 GiB | 0.039 GiB |" in out and "MiB" not in out


# -- symbols, Avg, memory definition ----------------------------------------------------------------

# Every form a cell of a speed table may take: a number (maybe noisy), a ratio, a count, or a status.
CELL = re.compile(r"^(~?\d+(\.\d+)?|~?\d+(\.\d+)?×|\d+(\.\d+)?[KMG]?|–|n/a|OOM|FAIL|skipped|"
                  r"ref (OOM|FAIL|skipped|n/a)|\d+(\.\d+)?× / \d+(\.\d+)?×)$")


def symbol_runs(root):
    """One slice with every mark: OOM then skipped, an error, an unavailable model, a noisy time, a
    reference that ran out of memory at 16K, a model not measured at every length; accuracy with a
    failed seed, a missing task and Path-X."""
    records = []
    for n in (2048, 4096, 8192):
        records.append(speed("transformer_vanilla", n, 50 * n / 4096, 9 * GIB) if n == 2048 else
                       speed("transformer_vanilla", n, status="oom" if n == 4096 else "skipped"))
        records.append(speed("transformer", n, 20 * n / 4096, 2 * GIB))
        records.append(speed("mega", n, 30 * n / 4096, 3 * GIB, spread=0.2))  # noisy: p80/p20 > 1.5
    records += [speed("s4", 4096, status="error"), speed("mamba", 4096, status="unavailable"),
                speed("s4", 8192, 60, 5 * GIB)]
    for seed in range(2):
        for task, value in (("listops", 60), ("text", 80), ("pathx", 70)):
            records.append(accuracy("mega", task, seed, value + seed))
        records.append(accuracy("s4", "listops", seed, 55 + seed))
        records.append(accuracy("s4", "text", seed, 0, status="error" if seed else "ok") if seed else
                       accuracy("s4", "text", seed, 78))
    new_run(root, records)


def defined(caption: str, symbol: str) -> bool:
    return f"{symbol} = " in caption or f"{symbol} / " in caption  # "ref OOM / ref skipped = ..."


def test_every_symbol_in_a_table_is_defined_in_its_caption_and_no_other(tmp_path):
    symbol_runs(tmp_path)
    table_list = tables.all_tables(load_records(tmp_path))
    seen = set()
    for table in table_list:
        caption, cells = table.caption, [str(v) for v in table.text.to_numpy().ravel()]
        found = tables.symbols_in(table)
        seen |= found
        for symbol in found - {"ref …"}:
            assert defined(caption, symbol), (table.title, symbol, caption)
        for ref in {c for c in cells if c.startswith("ref ")}:
            assert ref in caption, (table.title, ref)
        for symbol in set(tables.SYMBOLS) - found - {"ref …", fmt.STOPPED}:
            assert f"Symbols: {symbol} = " not in caption and f"; {symbol} = " not in caption.split("Symbols:")[-1]
        if not table.title.startswith(("Long Range", "Accuracy", "Other", "Measured")):
            assert all(CELL.match(c) for c in cells), [c for c in cells if not CELL.match(c)]
    assert {fmt.DASH, "n/a", "OOM", "FAIL", "skipped", "ref …", fmt.NOISY, "×"} <= seen  # the fixture has them
    efficiency = next(t for t in table_list if t.title.startswith("Efficiency at 4K"))
    assert efficiency.text.loc["transformer", "speed-up vs transformer_vanilla"] == "ref OOM"
    assert "ref OOM = the reference's own cell" in efficiency.caption
    assert efficiency.text.loc["s4", "time (ms)"] == "FAIL" and efficiency.text.loc["s4", "speed-up vs transformer"] == "–"
    assert "– = no ratio: the row has no time or memory of its own" in efficiency.caption
    assert efficiency.text.loc["mamba", "time (ms)"] == "n/a"
    assert "n/a = the model cannot run here" in efficiency.caption
    at_8k = tables.efficiency_table(select.prepare(load_records(tmp_path)), 8192)
    assert at_8k.text.loc["s4", "speed-up vs transformer_vanilla"] == "ref skipped"
    assert "ref skipped = the reference's own cell" in at_8k.caption
    times = next(t for t in table_list if t.title.startswith("Time (ms)"))
    assert times.text.loc["mamba", "2048"] == fmt.DASH and "– = not measured at this length" in times.caption
    assert "skipped = not run: the row ran out of memory at a shorter length" in times.caption


def test_accuracy_caption_defines_its_marks_and_what_avg_covers(tmp_path):
    symbol_runs(tmp_path)
    table = tables.accuracy_table(select.prepare(load_records(tmp_path)))
    caption = table.caption
    assert table.text.loc["s4", "Path-X"] == fmt.DASH and table.text.loc["s4", "Avg (3)"] == "n/a"
    assert "1 FAIL" in table.text.loc["s4", "Text"] and "FAIL = the run raised an error" in caption
    assert "– = no result for this task" in caption and "n/a = a result the average needs is missing" in caption
    assert ("Avg = mean over the 2 tasks ListOps, Text (Path-X excluded, the LRA paper's rule)" in caption
            and "Avg (3) = mean over the 3 tasks ListOps, Text, Path-X (Path-X included" in caption)
    assert "OOM = " not in caption  # no OOM cell: not defined
    # without a Path-X result, the Avg says Path-X was not measured, and there is no Avg (3)
    other = tmp_path / "nopathx"
    new_run(other, [accuracy("mega", t, s, 60 + s) for t in ("listops", "text") for s in range(2)])
    no_pathx = tables.accuracy_table(select.prepare(load_records(other)))
    assert "Path-X excluded, the LRA paper's rule; Path-X was not measured" in no_pathx.caption
    assert "Avg (3)" not in no_pathx.columns


def test_memory_definition_says_what_a_peak_includes(tmp_path):
    new_run(tmp_path, [speed("mega", 4096, 30, 3 * GIB), speed("mega", 4096, 10, GIB, mode="forward"),
                       speed("mega", 1024, 3, 30 * MIB, device="cpu", device_name="EPYC", batch=2, rss=True)])
    frame = select.prepare(load_records(tmp_path))
    captions = {}
    for slice_ in select.speed_slices(select.speed_cells(frame)):
        captions[(slice_["device"], slice_["mode"])] = tables.efficiency_table(frame, 4096, slice_).caption
    train, forward, cpu = captions[("cuda", "train_step")], captions[("cuda", "forward")], captions[("cpu", "train_step")]
    assert "weights, gradients, AdamW optimiser state and activations included" in train
    assert "cached reserve and the CUDA context are not" in train
    assert "weights and activations included" in forward and "no gradients, no optimiser state" in forward
    assert "activations, gradients and AdamW optimiser state" in cpu and "the weights, resident before, are not" in cpu
    memory_table = tables.length_tables(frame, {"task": "text", "batch_size": 25, "dtype": "bf16", "device": "cuda",
                                                "mode": "train_step", "hardware.device_name": H200})[1]
    assert "peak memory (GiB) = peak allocated CUDA memory" in memory_table.caption


# -- the model block ------------------------------------------------------------------------------------

def test_model_block_beside_speed_matches_the_accuracy_table(tmp_path):
    symbol_runs(tmp_path)
    frame = select.prepare(load_records(tmp_path))
    efficiency, accuracy_table = tables.efficiency_table(frame, 8192), tables.accuracy_table(frame)
    assert list(efficiency.columns[:5]) == ["params", "layers", "width", "time (ms)", "peak mem (GiB)"]
    assert list(accuracy_table.columns[:3]) == ["params", "layers", "width"]
    assert (efficiency.text.loc["s4", "params"], efficiency.text.loc["s4", "layers"], efficiency.text.loc["s4", "width"]) == (
        "3.30M", "23", "256")  # S4's speed is read against its 23 layers
    for row in ("mega", "s4"):
        assert [efficiency.text.loc[row, c] for c in tables.MODEL_COLUMNS] == [
            accuracy_table.text.loc[row, c] for c in tables.MODEL_COLUMNS]
    assert "layers = blocks (n_layers), width = model width (d_model)" in efficiency.caption
    data = tables.to_json(efficiency)
    s4 = next(r for r in data["rows"] if r["label"] == "s4")["cells"]
    assert s4["layers"]["value"] == 23 and s4["width"]["value"] == 256 and s4["params"]["n_params"] == 3_296_276


# -- provenance: a folder of run folders' folders, fresh clones, compare across folders --------------------

def reference_layout(root):
    """results/reference-like: two machines' folders of runs, each with a README."""
    h100, h200 = root / "h100-day", root / "h200-day"
    a = new_run(h100, [speed(m, 4096, ms, GIB, device_name=H100) for m, ms in (("mega", 40), ("transformer", 30))])
    b = new_run(h200, [speed(m, 4096, ms, GIB) for m, ms in (("mega", 35), ("transformer", 25))])
    for folder in (h100, h200):
        (folder / "README.md").write_text(f"# {folder.name}\n")
    return a, b


def test_results_dir_of_run_folders_folders_works_for_table_report_compare(tmp_path, capsys):
    root = tmp_path / "reference"
    a, b = reference_layout(root)
    assert RunStore(root).run_ids() == sorted([a, b]) and run_folders(root)[a] == root / "h100-day" / a
    assert set(load_records(root)["run_id"]) == {a, b}
    assert main(["table", "--results-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"> run {a}" in out and f"> run {b}" in out and "Efficiency at 4K" in out
    assert main(["table", "--results-dir", str(root), "--runs", b]) == 0
    assert H100 not in capsys.readouterr().out.split("> run")[-1]
    target = tmp_path / "out" / "r.html"
    assert main(["report", "--results-dir", str(root), "--out", str(target), "--quiet"]) == 0
    assert target.is_file() and "Efficiency at 4K" in target.read_text()
    assert main(["compare", a, b, "--results-dir", str(root)]) == 0
    assert "device: NVIDIA H100 80GB HBM3 → NVIDIA H200" in capsys.readouterr().out


def test_own_runs_are_never_mixed_with_folders_kept_below_them(tmp_path):
    own = new_run(tmp_path, [speed("mega", 1024, 3, GIB)])
    reference_layout(tmp_path / "reference")  # two levels down, as results/reference sits in results/
    new_run(tmp_path / "archive", [speed("mega", 1024, 3, GIB)])  # one level down, beside the own run
    assert RunStore(tmp_path).run_ids() == [own]
    assert {f.name for f in folders_with_runs(tmp_path)} == {"h100-day", "h200-day", "archive"}


def test_no_runs_message_points_at_the_committed_reference_results(tmp_path, capsys):
    """A fresh clone has results/README.md and results/reference/<machine>/<run>: nothing to read
    directly, so `table` and `report` name the folders holding runs and the committed reference."""
    fresh = tmp_path / "results"
    fresh.mkdir()
    (fresh / "README.md").write_text("# results\n")
    reference_layout(fresh / "reference")
    for command in ("table", "report"):
        assert main([command, "--results-dir", str(fresh)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: no results in {fresh}") and err.count("\n") == 1
        assert "h100-day" in err and "h200-day" in err and "as --results-dir" in err
        # this repository's own committed reference results are named too
        assert "the committed reference results are in " in err and "reference" in err
    assert main(["table", "--results-dir", str(tmp_path / "empty")]) == 1
    assert "--results-dir " in capsys.readouterr().err.split("committed reference results")[-1]


def test_compare_runs_of_two_results_folders_names_settings_as_old_to_new(tmp_path, capsys):
    env_a = {"torch": "2.10.0", "gpus": [{"name": H100, "driver": "570.1"}], "git": {"sha": "a" * 40}}
    env_b = {"torch": "2.11.0", "gpus": [{"name": H100, "driver": "580.2"}], "git": {"sha": "b" * 40}}
    run_a = new_run(tmp_path / "one", [speed("mega", 4096, 30, 3 * GIB, device_name=H100),
                                       speed("s4", 4096, 30, 3 * GIB, device_name=H100)],
                    {"dtype": "bf16", "warmup": 3, "results_dir": "/x"}, env_a)
    deeper = speed("s4", 4096, 30, 3 * GIB, device_name=H100, config={"d_model": 256, "n_layers": 6})
    run_b = new_run(tmp_path / "two", [speed("mega", 4096, 60, 3 * GIB, device_name=H100), deeper],
                    {"dtype": "bf16", "warmup": 5, "results_dir": "/y"}, env_b)
    path_a, path_b = tmp_path / "one" / run_a, tmp_path / "two" / run_b
    assert main(["compare", str(path_a), str(path_b), "--results-dir", str(tmp_path / "one")]) == 1
    out = capsys.readouterr().out
    assert f"A = {run_a} ({path_a}); B = {run_b} ({path_b})" in out
    assert f"**Comparison {run_a} (A) → {run_b} (B)**" in out
    settings = out.split("Settings that differ (A → B):\n")[1].split("\n\n")[0].splitlines()
    assert settings == ["  warmup: 3 → 5", "  git: aaaaaaaaaaaa → bbbbbbbbbbbb", "  driver: 570.1 → 580.2",
                        "  torch: 2.10.0 → 2.11.0"]  # no results_dir: where runs go is not a setting
    assert "| not comparable | architecture n_layers: 23 → 6 |" in out  # by key, never by hash
    for hash_ in {r["model_config_hash"] for r in load_records(tmp_path / "two").to_dict("records")}:
        assert hash_ not in out
    # a run id of --results-dir and a path elsewhere mix; --json carries the same differences
    assert main(["compare", run_a, str(path_b), "--results-dir", str(tmp_path / "one"), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert {"key": "torch", "a": "2.10.0", "b": "2.11.0"} in data["settings_changed"]
    assert data["folder_a"] == str(path_a) and data["folder_b"] == str(path_b)
    with pytest.raises(UserError, match=r"run nope not found .*nor a run folder.*available runs: " + run_a):
        compare_runs(tmp_path / "one", "nope", str(path_b))


# -- what the registry says: task metadata and efficiency references -------------------------------------

def test_lra_columns_take_membership_order_and_labels_from_the_task_specs(tmp_path, monkeypatch):
    from harness.registry import TASKS

    records = [accuracy(m, task, seed, 60 + seed) for m in ("mega", "s4") for seed in (0, 1)
               for task in ("pathx", "listops", "text")]
    records += [accuracy("mega", task, 0, 50) for task in ("aaa_retired_task", "mqar")]
    new_run(tmp_path, records)
    frame = select.prepare(load_records(tmp_path))
    lra = tables.accuracy_table(frame)
    assert [c for c in lra.columns if c not in tables.MODEL_COLUMNS][:3] == ["ListOps", "Text", "Path-X"]
    # a task no longer registered still renders: its name, not LRA, after the registered tasks
    other = tables.other_tasks_table(frame)
    assert list(other.columns)[len(tables.MODEL_COLUMNS):] == ["mqar", "aaa_retired_task"]
    assert select.task_label("aaa_retired_task") == "aaa_retired_task" and not select.is_lra("aaa_retired_task")
    # the table follows the spec: relabel ListOps and move it after Text
    cls = TASKS.get("listops").cls
    monkeypatch.setattr(cls, "spec", dataclasses.replace(cls.spec, label="List-Ops", order=2.5))
    relabelled = tables.accuracy_table(frame)
    assert [c for c in relabelled.columns if c not in tables.MODEL_COLUMNS][:3] == ["Text", "List-Ops", "Path-X"]
    assert select.lra_tasks() == ["text", "listops", "retrieval", "image", "pathfinder", "pathx"]


def test_efficiency_ratios_use_the_registered_references(tmp_path, monkeypatch):
    from harness.registry import MODELS

    refs = select.efficiency_references()
    assert [name for name, _ in refs] == ["transformer_vanilla", "transformer"]  # by registered rank
    assert refs == [(n, MODELS.get(n).efficiency_reference[1]) for n in ("transformer_vanilla", "transformer")]
    new_run(tmp_path, [speed(m, 4096, ms, 4 * GIB) for m, ms in (("mega", 40), ("transformer", 20),
                                                                  ("transformer_vanilla", 160))])
    frame = select.prepare(load_records(tmp_path))
    monkeypatch.setattr(tables, "efficiency_references", lambda: [("transformer", "the fused one")])
    table = tables.efficiency_table(frame)
    assert [c for c in table.columns if " vs " in c] == ["speed-up vs transformer", "memory vs transformer"]
    assert "transformer = the fused one." in table.caption
    assert table.text.loc["mega", "speed-up vs transformer"] == "0.50×"


def test_builders_return_numbers_beside_their_text(tmp_path):
    new_run(tmp_path, [speed(m, n, ms * n / 1024, gib * GIB) for m, ms, gib in
                       (("mega", 10, 2.0), ("transformer", 5, 1.0)) for n in (1024, 4096)]
            + [accuracy("mega", "listops", seed, v) for seed, v in enumerate((60, 62))])
    frame = select.prepare(load_records(tmp_path))
    for table in tables.all_tables(load_records(tmp_path)):
        assert table.values.shape == table.text.shape and (table.values.dtypes == float).all(), table.title
        assert list(table.bold.index) == list(table.text.index) and table.bold.dtypes.eq(bool).all()
    efficiency = tables.efficiency_table(frame)
    assert efficiency.values.loc["mega", "time (ms)"] == pytest.approx(40.0)
    assert efficiency.values.loc["mega", "peak mem (GiB)"] == pytest.approx(2.0)
    assert efficiency.values.loc["mega", "speed-up vs transformer"] == pytest.approx(0.5)
    assert efficiency.values.loc["mega", "params"] == N_PARAMS["mega"]
    memory = tables.length_tables(frame)[1]
    assert memory.values.loc["transformer", "1024"] == pytest.approx(1.0)  # GiB, as the text reads
    acc = tables.accuracy_table(frame)
    assert acc.values.loc["mega", "ListOps"] == pytest.approx(61.0) and acc.text.loc["mega", "ListOps"].startswith("61.0")


def test_latex_is_booktabs_scaled_to_the_line_and_escapes_every_header(tmp_path):
    new_run(tmp_path, [speed(m, n, ms, GIB) for m, ms in (("mega_chunk", 10), ("transformer", 5))
                       for n in (1024, 2048)])
    (time_table, _) = tables.length_tables(select.prepare(load_records(tmp_path)))
    tex = render(time_table, "latex")
    assert r"Model \textbackslash{} L & 1024 & 2048 \\" in tex and r"mega\_chunk" in tex
    assert tex.index(r"\resizebox") < tex.index(r"\begin{tabular}") < tex.index(r"\end{tabular}%") < tex.index("}\n\\end{table}")
    assert [line for line in tex.splitlines() if line.endswith("rule")] == [r"\toprule", r"\midrule", r"\bottomrule"]
    assert r"\textbf{5.00}" in tex  # the fastest at each length


def test_fresh_clone_table_reads_the_committed_reference_results(tmp_path, monkeypatch, capsys, caplog):
    import logging

    from harness.store import reference_results

    reference = reference_results()
    if reference is None:
        pytest.skip("no committed reference results in this checkout")
    run_id = min(run_folders(reference))
    monkeypatch.chdir(tmp_path)  # no results/ here: a fresh clone's working folder
    with caplog.at_level(logging.INFO, logger="harness.report.cli"):
        assert main(["table", "--runs", run_id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)  # the reference tables
    lines = [r.getMessage() for r in caplog.records if r.name == "harness.report.cli"]
    assert len(lines) == 1 and lines[0].startswith("no runs in results: showing the committed reference results in")
    # a folder the user names is never replaced, even when it holds no runs
    assert main(["table", "--results-dir", "results"]) == 1
    assert capsys.readouterr().err.startswith("error: no results in results")

"""Result store: manifest, append safety, corrupt lines, concurrency, pandas loading."""

import json
import logging
import multiprocessing as mp
import os

import pytest

from harness import env
from harness.errors import UserError
from harness.store import RECORD_FIELDS, RunStore, load_records, make_record


def new_run(root, config=None):
    return RunStore(root).create(["python", "-m", "harness", "test"], config or {"a": 1}, env.capture())


def speed(i, **kw):
    base = dict(kind="speed", model=f"m{i % 3}", task="text", seq_len=1024 * (1 + i % 4), batch_size=2,
                dtype="fp32", device="cpu", mode="train_step", status="ok", cell_key=f"k{i}",
                timing=dict(median_ms=10.0 + i, p20_ms=9.0, p80_ms=11.0, n_warmup=3, n_iters=10,
                            samples_ms=[10.0] * 10))
    base.update(kw)
    return make_record(**base)


def test_manifest_has_provenance(tmp_path):
    run = new_run(tmp_path)
    m = json.loads((run.dir / "run.json").read_text())
    for key in ("schema_version", "run_id", "started", "status", "command", "config", "git_sha", "git_dirty",
                "environment", "harness_version"):
        assert key in m
    assert m["environment"]["torch"] and "gpus" in m["environment"] and m["environment"]["cpu"]
    run.update_manifest(status="finished")
    assert json.loads((run.dir / "run.json").read_text())["status"] == "finished"
    assert not [p for p in run.dir.iterdir() if p.name.endswith(".tmp")]


def test_records_load_into_pandas_with_documented_fields(tmp_path):
    run = new_run(tmp_path)
    for i in range(5):
        run.append(speed(i))
    run.append(make_record(kind="accuracy", model="m0", task="listops", status="ok", seed=0,
                           metrics=dict(accuracy=0.5), provenance="regenerated(seed=0)"))
    frame = load_records(tmp_path)
    assert len(frame) == 6
    for column in RECORD_FIELDS:
        assert column in frame.columns
    for column in ("timing.median_ms", "timing.p20_ms", "timing.p80_ms", "metrics.accuracy", "run_started", "git_sha"):
        assert column in frame.columns
    assert frame.loc[frame.kind == "accuracy", "metrics.accuracy"].item() == 0.5


def test_missing_numbers_are_null_not_zero(tmp_path):
    run = new_run(tmp_path)
    run.append(speed(0, status="oom", timing={}, error="CUDA out of memory"))
    run.append(speed(1, throughput_tokens_per_s=float("nan")))
    lines = (run.dir / "records.jsonl").read_text().splitlines()
    assert json.loads(lines[1])["throughput_tokens_per_s"] is None
    frame = load_records(tmp_path)
    assert frame.loc[frame.status == "oom", "error"].item() == "CUDA out of memory"


def test_corrupt_and_torn_lines_are_skipped_with_a_warning(tmp_path, caplog):
    run = new_run(tmp_path)
    run.append(speed(0))
    with open(run.records_path, "a") as f:
        f.write("{not json}\n")
    run.append(speed(1))
    with open(run.records_path, "a") as f:
        f.write('{"kind": "speed", "model": "torn')  # a write cut by a kill
    warned = [f"{run.records_path}:2: skipped a corrupt record (not JSON)",
              f"{run.records_path}:4: skipped a corrupt record (not JSON)"]
    with caplog.at_level(logging.WARNING, logger="harness"):
        frame = load_records(tmp_path)
    assert len(frame) == 2 and [r.getMessage() for r in caplog.records] == warned
    caplog.clear()
    run.append(speed(2))  # appending after a torn line must not glue onto it: line 4 stays the torn one
    with caplog.at_level(logging.WARNING, logger="harness"):
        frame = load_records(tmp_path)
    assert [r.getMessage() for r in caplog.records] == warned
    assert sorted(frame["cell_key"]) == ["k0", "k1", "k2"]


def _writer(root, run_id, worker, n):
    from harness.store import Run

    run = Run(root / run_id)
    for i in range(n):
        run.append(speed(i, model=f"w{worker}", error="x" * 3000))  # long lines: > PIPE_BUF


def test_concurrent_writers_never_interleave(tmp_path):
    run = new_run(tmp_path)
    procs = [mp.get_context("fork").Process(target=_writer, args=(tmp_path, run.run_id, w, 150)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    lines = run.records_path.read_text().splitlines()
    assert len(lines) == 450
    records = [json.loads(line) for line in lines]  # every line parses
    assert {r["model"] for r in records} == {"w0", "w1", "w2"}


def test_two_runs_at_once_get_distinct_ids(tmp_path):
    ids = {new_run(tmp_path).run_id for _ in range(5)}
    assert len(ids) == 5
    assert sorted(ids) == sorted(RunStore(tmp_path).run_ids())


def test_unwritable_results_dir_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="not writable"):
        new_run(blocker / "results")
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(UserError, match="not writable"):
            new_run(ro)


def test_unknown_run_is_a_user_error(tmp_path):
    new_run(tmp_path)
    with pytest.raises(UserError, match="run 'nope' not found"):
        RunStore(tmp_path).open("nope")
    with pytest.raises(UserError, match="no run nope"):
        load_records(tmp_path, ["nope"])

"""Reliability: resumable training, interruption, concurrent writers, timeouts, plugin faults."""

import logging
import signal
import subprocess
import sys
import time

import pytest

from harness.config import RunConfig
from harness.store import RunStore, load_records
from tests.stored_runs import interrupt_and_check
from harness.train import train_cell


class StopAt:
    """A progress stand-in that raises KeyboardInterrupt at a given step (a Ctrl-C mid-training)."""

    def __init__(self, step):
        self.step, self.calls = step, 0

    def __call__(self, _text):
        self.calls += 1
        if self.calls == self.step:
            raise KeyboardInterrupt


def test_training_resumes_from_checkpoint_exactly(tmp_path, data_cache):
    from harness import env

    cfg = RunConfig(scale="smoke", steps=30, checkpoint_every=10, cache_dir=str(data_cache)).validate()
    reference = train_cell("transformer_tiny", "listops", 0, cfg, device="cpu", dtype="fp32")
    run = RunStore(tmp_path).create(["test"], cfg.to_dict(), env.capture())
    with pytest.raises(KeyboardInterrupt):
        train_cell("transformer_tiny", "listops", 0, cfg, device="cpu", dtype="fp32", run=run, on_progress=StopAt(15))
    checkpoints = list((run.dir / "checkpoints").glob("*.pt"))
    assert len(checkpoints) == 1  # saved at step 10
    resumed = train_cell("transformer_tiny", "listops", 0, cfg, device="cpu", dtype="fp32", run=run)
    assert resumed["status"] == "ok"
    assert resumed["metrics"]["accuracy"] == reference["metrics"]["accuracy"]
    assert resumed["metrics"]["loss"] == pytest.approx(reference["metrics"]["loss"], rel=1e-5)
    assert not list((run.dir / "checkpoints").glob("*.pt"))  # removed once the cell is done


def test_damaged_checkpoint_is_moved_aside_and_training_restarts(tmp_path, data_cache, caplog):
    from harness import env

    cfg = RunConfig(scale="smoke", steps=30, checkpoint_every=10, cache_dir=str(data_cache)).validate()
    reference = train_cell("transformer_tiny", "listops", 0, cfg, device="cpu", dtype="fp32")
    run = RunStore(tmp_path).create(["test"], cfg.to_dict(), env.capture())
    with pytest.raises(KeyboardInterrupt):
        train_cell("transformer_tiny", "listops", 0, cfg, device="cpu", dtype="fp32", run=run, on_progress=StopAt(15))
    (checkpoint,) = (run.dir / "checkpoints").glob("*.pt")
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])  # torn by a crash mid-write
    with caplog.at_level(logging.WARNING, logger="harness"):
        resumed = train_cell("transformer_tiny", "listops", 0, cfg, device="cpu", dtype="fp32", run=run)
    assert resumed["status"] == "ok"
    assert resumed["metrics"]["accuracy"] == reference["metrics"]["accuracy"]  # from step 0, same seed
    assert "is unreadable" in caplog.text
    assert checkpoint.with_name(checkpoint.name + ".damaged").exists()


def test_cell_timeout_stops_training_and_tests_the_best_weights(data_cache):
    cfg = RunConfig(scale="smoke", steps=100000, cell_timeout=1.0, cache_dir=str(data_cache)).validate()
    t0 = time.perf_counter()
    r = train_cell("transformer_tiny", "listops", 0, cfg, device="cpu", dtype="fp32")
    assert r["status"] == "ok" and r["error"] is None
    assert r["metrics"]["stopped"] == "timeout" and 1 <= r["metrics"]["steps"] < 100000
    assert r["metrics"]["accuracy"] is not None
    assert time.perf_counter() - t0 < 120


def _cli(args, cwd, **kw):
    return subprocess.Popen([sys.executable, "-m", "harness", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_ctrl_c_marks_the_run_interrupted_and_keeps_records(workdir, data_cache):
    # Its own session, so no terminal signals it, and SIGINT's default behaviour set in the child: a
    # script's `pytest ... &` starts pytest with SIGINT ignored, which the child would inherit.
    proc = _cli(["run", "--models", "transformer", "--tasks", "listops", "--steps", "100000",
                 "--cache-dir", str(data_cache), "--skip-bench", "--no-report"], workdir,
                start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    started = lambda: bool(list((workdir / "results").glob("*/run.json")))  # noqa: E731
    interrupt_and_check(proc, signal.SIGINT, started, workdir / "results", settle=3)  # 3 s: inside training


def test_two_runs_write_one_results_dir_concurrently(workdir):
    args = ["bench", "--models", "transformer_tiny,transformer_vanilla_tiny", "--bench-task", "listops",
            "--lengths", "16,32,48", "--iters", "2", "--warmup", "1", "--isolation", "inprocess", "--quiet"]
    procs = [_cli(args, workdir) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    frame = load_records(workdir / "results")
    assert len(frame) == 12 and frame["run_id"].nunique() == 2
    for run_id, group in frame.groupby("run_id"):
        assert sorted(zip(group["model"], group["seq_len"])) == sorted(
            (m, L) for m in ("transformer_tiny", "transformer_vanilla_tiny") for L in (16, 32, 48))


def test_plugin_that_fails_to_import_is_recorded_and_others_run(workdir):
    (workdir / "broken.py").write_text("import this_module_does_not_exist_anywhere\n")
    p = _cli(["bench", "--include", "broken.py", "--models", "broken_model,transformer_tiny", "--bench-task",
              "listops", "--lengths", "16", "--iters", "2", "--warmup", "1", "--isolation", "inprocess"], workdir)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert "warning: --include broken.py: the plugin failed to import: ModuleNotFoundError" in err
    frame = load_records(workdir / "results")
    status = dict(zip(frame["model"], frame["status"]))
    assert status == {"broken_model": "error", "transformer_tiny": "ok"}
    assert "this_module_does_not_exist_anywhere" in frame.loc[frame.model == "broken_model", "error"].item()


def test_truncated_records_file_still_renders_tables(workdir):
    res = subprocess.run([sys.executable, "-m", "harness", "bench", "--models", "transformer_tiny", "--bench-task",
                          "listops", "--lengths", "16,32", "--iters", "2", "--warmup", "1", "--isolation",
                          "inprocess", "--quiet"], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    records = next((workdir / "results").glob("*/records.jsonl"))
    data = records.read_bytes()
    records.write_bytes(data[: len(data) - 40])  # the last line cut mid-way, as by a kill
    table = subprocess.run([sys.executable, "-m", "harness", "table"], cwd=workdir, capture_output=True, text=True,
                           timeout=300)
    assert table.returncode == 0, table.stderr
    assert "records.jsonl:2: skipped a corrupt record" in table.stderr and "Traceback" not in table.stderr
    assert "16" in table.stdout

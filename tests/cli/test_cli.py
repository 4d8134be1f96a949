"""The command line end to end: default-style run, bad input, kill and resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import harness

from harness.cli import main
from harness.store import RunStore, load_records
from tests.checks import model_plugin

FAST_BENCH = ["--iters", "2", "--warmup", "1", "--isolation", "inprocess", "--quiet"]


def cli(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def test_run_end_to_end_prints_tables_and_writes_report(workdir, data_cache):
    res = cli("run", "--models", "transformer", "--tasks", "listops", "--scale", "smoke", "--steps", "20",
              "--seeds", "0", "--lengths", "64,128,256", "--iters", "2", "--warmup", "1", "--isolation", "inprocess",
              "--cache-dir", str(data_cache), cwd=workdir)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    out = res.stdout
    assert "transformer" in out and "listops" in out.lower()
    assert "256" in out  # the speed/memory table has the swept lengths
    report = [line for line in out.splitlines() if line.startswith("report: ")]
    assert report and os.path.exists(os.path.join(workdir, report[0].split(": ", 1)[1]))
    frame = load_records(workdir / "results")
    accuracy = frame[frame.kind == "accuracy"]
    assert sorted(accuracy["model"]) == ["ref:linear", "ref:majority", "transformer_tiny"]
    assert set(accuracy["status"]) == {"ok"}
    speed = frame[frame.kind == "speed"]
    assert sorted(speed["seq_len"]) == [64, 128, 256]
    assert set(speed["model"]) == {"transformer_tiny"}  # smoke sweeps the very models it trained
    builtin = f"built-in lsm-harness {harness.__version__}"  # which plugin supplied model and task
    ours = frame[frame.model == "transformer_tiny"]
    assert set(ours["plugins.model"]) == set(ours["plugins.task"]) == {builtin}
    assert accuracy[accuracy.model == "ref:linear"]["plugins.task"].iloc[0] == builtin
    assert "ref: majority class" in out and "not LRA numbers" in out
    manifest = RunStore(workdir / "results").manifests()[0]
    assert manifest["status"] == "finished" and manifest["command"][:4] == ["python", "-m", "harness", "run"]


def test_bench_measures_exactly_the_named_models(workdir):
    # `run` sweeps the tiny variants it trained at smoke scale; `bench` must never swap a model.
    assert main(["bench", "--models", "transformer", "--bench-task", "listops", "--lengths", "32",
                 "--batch-size", "1", *FAST_BENCH]) == 0
    speed = load_records(workdir / "results")
    assert list(speed["model"]) == ["transformer"] and list(speed["status"]) == ["ok"]


@pytest.mark.parametrize("argv,code,fragment", [
    (["run", "--models", "transfomer"], 2, "did you mean 'transformer'"),
    (["bench", "--models", "transformer", "--lengths", "1024,abc"], 2, "'abc' is not an integer"),
    (["bench", "--models", "transformer", "--lengths", "0,1024"], 2, "must be at least 1"),
    (["bench", "--models", "transformer", "--lengths", ""], 2, "--lengths is empty"),
    (["bench", "--models", "transformer", "--batch-size", "0"], 2, "--batch-size '0': expected a positive"),
    (["bench", "--models", "transformer", "--batch-size", "-3"], 2, "expected a positive integer"),
    (["run", "--tasks", "listopz"], 2, "did you mean 'listops'"),
    (["run", "--models", ""], 2, "--models is empty"),
    (["run", "--seeds", "a"], 2, "--seeds"),
    (["bench", "--iters", "0"], 2, "--iters"),
    (["bench", "--bench-task", "txt"], 2, "unknown task 'txt'"),
    (["bench", "--task", "txt"], 2, "unknown task 'txt'"),  # the spelling of --bench-task
    (["run", "--resume", "20000101-000000-abcdef"], 2, "not found"),
    (["run", "--include", "nope.py"], 2, "no such file"),
])
def test_bad_input_is_one_clear_line(workdir, capsys, argv, code, fragment):
    assert main(argv + ["--quiet"]) == code
    err = capsys.readouterr().err
    assert fragment in err and err.startswith("error: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_unwritable_results_dir(workdir, capsys):
    (workdir / "afile").write_text("x")
    assert main(["bench", "--results-dir", "afile/results", "--quiet"]) == 1
    assert "not writable" in capsys.readouterr().err


def test_device_and_dtype_the_machine_cannot_run(workdir, capsys):
    import torch

    if not torch.cuda.is_available():
        assert main(["bench", "--device", "cuda", "--quiet"]) == 1
        assert "no CUDA device" in capsys.readouterr().err
    assert main(["bench", "--device", "cpu", "--dtype", "fp16", "--quiet"]) == 2
    assert "float16" in capsys.readouterr().err


def test_data_dir_missing_files_named(workdir, capsys):
    (workdir / "lra").mkdir()
    code = main(["run", "--tasks", "listops", "--data-dir", "lra", "--skip-bench", "--no-report", "--quiet"])
    assert code == 1
    assert "basic_train.tsv" in capsys.readouterr().err


def test_argparse_errors_exit_2_without_traceback(workdir):
    res = cli("run", "--scale", "huge", cwd=workdir)
    assert res.returncode == 2 and "invalid choice" in res.stderr and "Traceback" not in res.stderr


def test_ls_lists_models_and_tasks(workdir):
    res = cli("ls", cwd=workdir)
    assert res.returncode == 0, res.stderr
    for name in ("transformer", "transformer_vanilla", "listops"):
        assert name in res.stdout
    assert "  every task: interaction: one of concat, nli (default concat); head_dropout: " in res.stdout
    assert "  retrieval: seq_len: an integer or none (default none)" in res.stdout
    assert max(len(line) for line in res.stdout.splitlines()) <= 100  # a terminal's width
    assert "built-in = lsm-harness " in res.stdout  # where the entries come from
    data = json.loads(cli("ls", "--json", cwd=workdir).stdout)
    row = {m["name"]: m for m in data["models"]}["transformer"]
    assert row["family"] == "attention" and row["complexity"] == "O(L^2)" and row["available"] == "yes"
    assert row["source"].startswith("built-in lsm-harness ") and row["origin"].startswith("harness_models.")
    text = {t["name"]: t for t in data["tasks"]}["text"]["options"]  # every task lists its options and types
    assert text["seq_len"] == "an integer or none (default none)" and "head_dropout" in text


HANGING_PLUGIN = model_plugin("hangs", imports="import os, time", forward="""
    if x.shape[1] == 96 and os.environ.get("HANG_AT_96"):
        time.sleep(600)  # the first run is killed here
""")


def test_killed_sweep_leaves_records_and_resumes_without_duplicates(workdir):
    """SIGKILL mid-sweep, then --resume: every finished record readable, every cell exactly once."""
    (workdir / "hangs.py").write_text(HANGING_PLUGIN)
    args = [sys.executable, "-m", "harness", "bench", "--include", "hangs.py", "--models", "hangs,transformer_tiny",
            "--bench-task", "listops", "--lengths", "32,64,96,128", "--iters", "2", "--warmup", "1",
            "--isolation", "inprocess", "--quiet"]
    proc = subprocess.Popen(args, cwd=workdir, env=dict(os.environ, HANG_AT_96="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records_file, deadline = None, time.time() + 120
    while time.time() < deadline and records_file is None:
        found = list((workdir / "results").glob("*/records.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= 2:
            records_file = found[0]
        time.sleep(0.1)
    time.sleep(0.5)  # now inside the hanging cell
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert records_file is not None, "the sweep never wrote its first records"
    before = load_records(workdir / "results")
    assert list(before["seq_len"]) == [32, 64] and set(before["status"]) == {"ok"}
    assert RunStore(workdir / "results").manifests()[0]["status"] == "running"  # killed, not finished
    res = subprocess.run(args + ["--resume", records_file.parent.name], cwd=workdir, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    after = load_records(workdir / "results")
    cells = list(zip(after["model"], after["seq_len"]))
    assert len(cells) == 8 and len(set(cells)) == 8 and set(after["status"]) == {"ok"}
    assert RunStore(workdir / "results").manifests()[0]["status"] == "finished"

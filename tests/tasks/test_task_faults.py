"""A plugin task's faults become that cell's error record, never a traceback (issue 13, item 5)."""

import pytest

from harness.cli import main
from harness.config import RunConfig
from harness.registry import include_file
from harness.store import load_records
from harness.train import train_cell


# Two faulty tasks as a plugin file: the worker process that trains a run's cells imports it with
# --include, and the in-process tests include the same file.
PLUGIN_TASKS = """
import torch

from harness.records import Provenance
from harness.registry import register_task
from harness.task import Task, TaskData, TaskSpec


class Tokens(Task):
    spec = TaskSpec(seq_len=8, input_kind="tokens", vocab_size=6, num_classes=2)

    def build(self, split):
        n = self.sizes(self.scale)[split]
        x = torch.randint(2, 6, (n, 8), generator=torch.Generator().manual_seed(0))
        return TaskData(inputs=x, lengths=torch.full((n,), 8), labels=(x[:, 0] > 3).long(),
                        provenance=Provenance("stand-in", "test-tokens"))


@register_task("pf_no_smoke")
class NoSmoke(Tokens):
    def sizes(self, scale):
        return {"paper": dict(train=8, val=8, test=8)}[scale]  # KeyError for any other scale


@register_task("pf_empty_val")
class EmptyVal(Tokens):
    def sizes(self, scale):
        return dict(train=16, val=0, test=8)
"""


@pytest.fixture(scope="module")
def faulty_tasks(tmp_path_factory):
    """The plugin file, included once in this process (so its tasks are registered here too)."""
    path = tmp_path_factory.mktemp("plugin") / "faulty_tasks.py"
    path.write_text(PLUGIN_TASKS)
    include_file(path)
    return path


def test_sizes_that_raise_for_a_scale_are_that_cells_error_record(tmp_path, faulty_tasks):
    config = RunConfig(steps=2, cache_dir=str(tmp_path)).validate()
    record = train_cell("transformer_tiny", "pf_no_smoke", 0, config, device="cpu", dtype="fp32")
    assert record["status"] == "error" and record["task"] == "pf_no_smoke"
    assert "scale smoke" in record["error"] and "KeyError" in record["error"]


def test_an_empty_validation_split_is_an_error_naming_the_split(tmp_path, faulty_tasks):
    config = RunConfig(steps=2, cache_dir=str(tmp_path)).validate()
    record = train_cell("transformer_tiny", "pf_empty_val", 0, config, device="cpu", dtype="fp32")
    assert record["status"] == "error" and "empty val split" in record["error"]


def test_the_run_records_both_and_exits_without_a_traceback(workdir, capsys, faulty_tasks):
    code = main(["run", "--models", "transformer_tiny", "--tasks", "pf_no_smoke,pf_empty_val", "--seeds", "0",
                 "--steps", "2", "--skip-bench", "--no-report", "--no-reference-rows", "--quiet",
                 "--include", str(faulty_tasks)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err  # every cell failed: exit 1, each failure one line
    frame = load_records(workdir / "results")
    models = frame[frame["model"] == "transformer_tiny"]
    assert sorted(models["task"]) == ["pf_empty_val", "pf_no_smoke"] and set(models["status"]) == {"error"}
    assert any("empty val split" in e for e in models["error"]) and any("KeyError" in e for e in models["error"])


def test_a_cell_process_dies_with_its_driver(tmp_path):
    # The driver starts a cell process the way bench does, then is SIGKILLed: the cell must not live on.
    import os
    import signal
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "cell.pid"
    driver = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        "from harness.bench import die_with_parent\n"
        "cell = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], preexec_fn=die_with_parent)\n"
        f"open({str(pid_file)!r}, 'w').write(str(cell.pid))\n"
        "time.sleep(120)\n")], start_new_session=True)
    try:
        for _ in range(200):
            if pid_file.exists() and pid_file.read_text():
                break
            time.sleep(0.05)
        cell = int(pid_file.read_text())
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=10)
        for _ in range(100):  # the kernel delivers the parent-death signal right away
            try:
                os.kill(cell, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            os.kill(cell, signal.SIGKILL)
            raise AssertionError("the cell process outlived its driver")
    finally:
        if driver.poll() is None:
            driver.kill()

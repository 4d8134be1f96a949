"""Scale-out (issue 13): the runner and its executors. `local`, `pool` and `ray` store the same
records for the same run; fake GPUs are each handed to one running cell at a time; a lost worker is
retried once and then recorded; a SIGKILLed driver resumes with no duplicate and no missing cell;
DDP over 2 gloo processes reaches the loss of 1 process at the same effective batch; the Python API
works; and no module of the harness imports the CLI."""

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import harness
from harness import RunConfig
from harness.executors import PoolExecutor, Slot
from harness.store import RunStore

REPO = Path(__file__).resolve().parents[2]

# `probe`: logs (visible GPU, pid, time) at every forward, so a test can see which cells ran where and
# when. `crash`: a model fault (an exception), which every executor must store as an `error` record.
# `dies`: SIGKILLs its own process (a worker lost mid-cell); given a marker file (--set once=PATH), only
# the first time (the marker says it died once).
PLUGINS = """
import os
import signal
import time
from pathlib import Path

from torch import nn

from harness.registry import register_model


class Probe(nn.Module):
    def __init__(self, d_model):
        super().__init__()
        self.lin = nn.Linear(d_model, d_model)

    def forward(self, x, padding_mask=None):
        log = os.environ.get("PROBE_LOG")
        if log:
            with open(log, "a") as f:
                f.write(f"{os.environ.get('CUDA_VISIBLE_DEVICES')} {os.getpid()} {time.time()}\\n")
        return self.lin(x)


class Crash(Probe):
    def forward(self, x, padding_mask=None):
        raise RuntimeError("crash plugin: deliberate model fault")


class Dies(Probe):
    def __init__(self, d_model, once):
        super().__init__(d_model)
        self.once = once

    def forward(self, x, padding_mask=None):
        if not self.once or not Path(self.once).exists():
            if self.once:
                Path(self.once).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.lin(x)


for name, cls in (("probe", Probe), ("crash", Crash)):
    register_model(name, family="other", paper="test plugin", complexity="O(L)",
                   defaults=dict(d_model=16))(lambda d_model, _cls=cls, **_: _cls(d_model))
register_model("dies", family="other", paper="test plugin", complexity="O(L)",
               defaults=dict(d_model=16, once=""))(lambda d_model, once, **_: Dies(d_model, once))
"""


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    """One plugin file for the module: a model name is registered once per process."""
    path = tmp_path_factory.mktemp("plugins") / "plugins.py"
    path.write_text(PLUGINS)
    return path


def small_config(tmp_path, plugin, **kw) -> RunConfig:
    values = dict(models="probe,crash", tasks="image", seeds="0", steps=2, batch_size=4, lengths="32,64",
                  bench_task="listops", warmup=0, iters=1, isolation="inprocess", no_report=True,
                  include=[str(plugin)], results_dir=str(tmp_path / "results"), cache_dir=str(tmp_path / "cache"),
                  quiet=True)
    return RunConfig(**{**values, **kw})


def outcome(result) -> set:
    return {(r.cell_key, r.model, r.kind, r.seq_len, r.seed, r.status) for r in result.records}


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """One local Ray cluster for the module (2 CPUs, 2 fake GPUs), its temp folder under the test's tmp
    path (short: Ray's socket paths must stay under ~107 characters). Its workers log probe calls to
    the returned file: they take the environment the cluster starts with."""
    ray = pytest.importorskip("ray")
    temp = tmp_path_factory.mktemp("ray")
    log = temp / "probe.log"
    previous = os.environ.get("PROBE_LOG")
    os.environ["PROBE_LOG"] = str(log)
    try:
        ray.init(num_cpus=2, num_gpus=2, _temp_dir=str(temp), include_dashboard=False, log_to_driver=False)
    finally:
        os.environ.pop("PROBE_LOG") if previous is None else os.environ.update(PROBE_LOG=previous)
    yield log
    ray.shutdown()


def gpu_turns(log: Path) -> dict:
    """{visible GPU: [pid, ...] in time order} from the probe's log."""
    rows = sorted((float(t), gpu, int(pid)) for gpu, pid, t in (line.split() for line in log.read_text().splitlines()))
    turns: dict = {}
    for _, gpu, pid in rows:
        turns.setdefault(gpu, []).append(pid)
    return turns


def assert_one_cell_at_a_time(turns: dict, gpus: set) -> None:
    """Each GPU's forward calls come from one process at a time: a process's calls on a GPU form
    one unbroken block (a second cell on the same GPU would interleave its calls)."""
    assert set(turns) <= gpus, turns
    for gpu, pids in turns.items():
        blocks = [pid for i, pid in enumerate(pids) if i == 0 or pids[i - 1] != pid]
        assert len(blocks) == len(set(blocks)), f"GPU {gpu} was shared by running cells: {blocks}"


@pytest.fixture(scope="module")
def local_outcome(tmp_path_factory, plugin):
    tmp = tmp_path_factory.mktemp("local")
    return outcome(harness.run(small_config(tmp, plugin)))


def test_python_api_runs_a_mixed_plan(local_outcome):
    kinds = {(model, kind, status) for _, model, kind, _, _, status in local_outcome}
    assert ("probe", "accuracy", "ok") in kinds and ("probe", "speed", "ok") in kinds
    assert ("crash", "accuracy", "error") in kinds and ("crash", "speed", "error") in kinds
    assert any(model.startswith("ref:") for _, model, *_ in local_outcome)
    assert len(local_outcome) == 2 + 2 + 2 * 2  # reference rows, 2 models x 1 seed, 2 models x 2 lengths


def test_pool_with_two_workers_stores_the_local_records(tmp_path, plugin, local_outcome, monkeypatch):
    log = tmp_path / "probe.log"
    monkeypatch.setenv("PROBE_LOG", str(log))
    result = harness.run(small_config(tmp_path, plugin, executor="pool", gpus="0,1"))
    assert outcome(result) == local_outcome
    assert {r.hardware.visible_devices for r in result.records if r.model == "probe"} <= {"0", "1"}
    assert_one_cell_at_a_time(gpu_turns(log), {"0", "1"})


def test_ray_on_a_local_cluster_stores_the_local_records(tmp_path, plugin, ray_cluster, local_outcome):
    from harness.executors import RayExecutor

    config = small_config(tmp_path, plugin, executor="ray")
    result = harness.run(config, executor=RayExecutor(gpus_per_unit=1))  # each cell takes a fake GPU
    assert outcome(result) == local_outcome
    assert {r.hardware.visible_devices for r in result.records if r.model == "probe"} <= {"0", "1"}
    assert_one_cell_at_a_time(gpu_turns(ray_cluster), {"0", "1"})


def test_pool_retries_a_lost_worker_once_then_records_an_error(tmp_path, plugin):
    def dies(**kw):
        return harness.run(small_config(tmp_path, plugin, models="dies", executor="pool", workers=1,
                                        skip_bench=True, no_reference_rows=True, **kw)).records

    [record] = dies()
    assert record.status == "error" and record.error.startswith("worker lost (2 attempts)")
    assert "SIGKILL" in record.error
    marker = tmp_path / "died"  # dies on the first attempt only: the retry succeeds
    assert [r.status for r in dies(set=[f"once={marker}"])] == ["ok"] and marker.exists()


def test_ray_retries_a_lost_worker_once_then_records_an_error(tmp_path, plugin, ray_cluster):
    from harness.executors import RayExecutor

    def dies(**kw):  # a speed cell measured in the Ray worker's own process: its death is the worker's
        return harness.run(small_config(tmp_path, plugin, models="dies", executor="ray", skip_train=True,
                                        lengths="32", **kw), executor=RayExecutor()).records

    [record] = dies()
    assert record.status == "error" and record.error.startswith("worker lost (2 attempts)")
    marker = tmp_path / "died"
    assert [r.status for r in dies(set=[f"once={marker}"])] == ["ok"] and marker.exists()


def test_pool_slots_split_the_cores_or_pin_one_gpu_each():
    cpu = PoolExecutor([Slot("worker 0", threads=1), Slot("worker 1", threads=1)])
    assert [s.threads for s in cpu.slots] == [1, 1]
    from harness.executors import pool_slots

    assert [s.gpu for s in pool_slots("2,3", None, None, "cuda")] == ["2", "3"]
    shares = pool_slots(None, 2, None, "cpu")
    assert len(shares) == 2 and all(s.gpu is None and s.threads >= 1 for s in shares)


WARNS_ON_IMPORT = "import logging\nlogging.getLogger('harness_models.warns').warning('logged inside the worker')\n"


@pytest.mark.parametrize("quiet", [False, True])
def test_a_warning_logged_in_a_worker_reaches_the_terminal_as_one_line(tmp_path, capfd, quiet):
    """The worker shares the driver's stderr and repeats its log handler (`--quiet` included)."""
    from harness.executors import UnitWorker
    from harness.logs import install_handler

    plugin = tmp_path / "warns.py"
    plugin.write_text(WARNS_ON_IMPORT)
    install_handler(quiet=quiet)
    job = {"includes": [str(plugin)], "kind": "speed", "cells": []}  # imports the plugin, measures nothing
    with UnitWorker() as worker:
        assert list(worker.run(job, None, 120)) == []
    err = capfd.readouterr().err
    assert err == ("" if quiet else "warning: logged inside the worker\n")


def _records(results: Path) -> list[dict]:
    return [json.loads(line) for path in results.glob("*/records.jsonl") for line in path.read_text().splitlines()]


def test_a_sigkilled_driver_resumes_with_no_duplicate_and_no_missing_cell(tmp_path):
    (tmp_path / "plugins.py").write_text(PLUGINS)
    log = tmp_path / "probe.log"
    argv = [sys.executable, "-m", "harness", "run", "--models", "probe", "--tasks", "image", "--seeds", "0,1,2,3",
            "--steps", "40", "--batch-size", "4", "--skip-bench", "--no-reference-rows", "--no-report", "--quiet",
            "--executor", "pool", "--workers", "2", "--include", str(tmp_path / "plugins.py"),
            "--results-dir", str(tmp_path / "results"), "--cache-dir", str(tmp_path / "cache")]
    env = dict(os.environ, PROBE_LOG=str(log))
    driver = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not _records(tmp_path / "results"):
        time.sleep(0.2)
    assert _records(tmp_path / "results"), "no cell finished"
    driver.kill()
    driver.wait()
    workers = {int(line.split()[1]) for line in log.read_text().splitlines()}
    time.sleep(1.0)
    for pid in workers:  # the cell processes die with their driver
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    [run_id] = RunStore(tmp_path / "results").run_ids()
    done = subprocess.run(argv + ["--resume", run_id], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    keys = [r["cell_key"] for r in _records(tmp_path / "results")]
    assert len(keys) == len(set(keys)) == 4
    assert sorted(r["seed"] for r in _records(tmp_path / "results")) == [0, 1, 2, 3]


def test_ddp_over_two_gloo_processes_matches_one_process(tmp_path):
    """The same effective batch (8) over 2 ranks of 4: the gradients are the same average, so the
    trained model, and its test loss, agree with one process up to float rounding (tolerance 1e-4)."""
    common = ["run", "--models", "transformer", "--tasks", "image", "--seeds", "0", "--steps", "15",
              "--batch-size", "8", "--skip-bench", "--no-reference-rows", "--no-report", "--quiet",
              "--cache-dir", str(tmp_path / "cache")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    single = subprocess.run([sys.executable, "-m", "harness", *common, "--results-dir", str(tmp_path / "one")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "harness", *common, "--results-dir", str(tmp_path / "two")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    [one], [two] = _records(tmp_path / "one"), _records(tmp_path / "two")  # rank 1 wrote nothing
    assert one["status"] == two["status"] == "ok"
    assert two["train"]["world_size"] == 2 and two["train"]["per_rank_batch"] == 4
    assert two["train"]["batch_size"] == one["train"]["batch_size"] == 8
    assert abs(one["metrics"]["loss"] - two["metrics"]["loss"]) < 1e-4, (one["metrics"], two["metrics"])
    assert one["metrics"]["accuracy"] == two["metrics"]["accuracy"]


def _imports(path: Path) -> set:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_no_harness_module_imports_the_cli():
    clis = {"harness.cli", "harness.report.cli"}
    allowed = {REPO / "harness" / "__main__.py", REPO / "harness" / "cli.py"}
    offenders = {str(p.relative_to(REPO)): sorted(_imports(p) & clis)
                 for p in (REPO / "harness").rglob("*.py") if p not in allowed and _imports(p) & clis}
    assert not offenders, offenders

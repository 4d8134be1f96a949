"""Store faults a hostile user (or a full disk) can cause: each is one line or one warning, never a
traceback, never a torn record or manifest, never records lost from `table` and `report`.
Issue 13, item 5: a deleted run.json, mixed-type run ids, two drivers on one run, a full disk,
the run folder deleted mid-run."""

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness import store as store_module
from harness.cli import main
from harness.errors import UserError
from harness.store import Run, RunStore, load_records
from tests.stored_runs import RUN_A, RUN_B, speed, write_two_runs

REPO = Path(__file__).resolve().parents[2]
@pytest.fixture
def results(workdir):
    """Two small runs in workdir/results (the working directory is workdir)."""
    return write_two_runs(workdir / "results")


def harness_subprocess(argv, cwd):
    """stderr as a user sees it (warning lines from the CLI's log handler, nothing else)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "harness", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=env)
    assert "Traceback" not in done.stderr
    return done


def python_child(code: str, *args, **kwargs) -> subprocess.Popen:
    """A small Python process importing this checkout's harness."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env, text=True, **kwargs)


def new_run(tmp_path, config=None) -> Run:
    run = RunStore(tmp_path / "results").create(["test"], config or {}, {"hostname": "h"})
    run.append(speed(64, 1.0))
    run.append(speed(128, 2.0))
    return run


def whole_lines(path: Path) -> list[dict]:
    raw = path.read_bytes()
    assert raw.endswith(b"\n"), "the records file ends in a torn line"
    return [json.loads(line) for line in raw.splitlines()]


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and exc.value.exit_code == 1
    return text


# -- 1. a deleted run.json (or a folder in its place) --------------------------------------------


def damage_manifest(folder: Path, how: str) -> None:
    (folder / "run.json").unlink()
    if how == "folder":
        (folder / "run.json").mkdir()


@pytest.mark.parametrize("how", ["deleted", "folder"])
def test_run_without_manifest_is_listed_and_its_records_read_with_one_warning(results, how, caplog):
    damage_manifest(results / RUN_A, how)
    assert RunStore(results).run_ids() == [RUN_A, RUN_B]
    with caplog.at_level(logging.WARNING, logger="harness"):
        frame = load_records(results)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and f"{RUN_A}/run.json: " in messages[0], messages
    assert f"the records of run {RUN_A} are read without it" in messages[0]
    mine = frame[frame["run_id"] == RUN_A]
    assert len(mine) == 2 and mine["run_started"].isna().all() and mine["git_sha"].isna().all()
    assert (frame[frame["run_id"] == RUN_B]["git_sha"] == "abc").all()


@pytest.mark.parametrize("how", ["deleted", "folder"])
def test_table_and_report_show_a_run_whose_manifest_is_gone(results, workdir, capsys, how):
    damage_manifest(results / RUN_A, how)
    done = harness_subprocess(["table", "--results-dir", "results", "--runs", RUN_A], workdir)
    assert done.returncode == 0, done.stderr
    err = done.stderr.splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: results/{RUN_A}/run.json: "), err
    assert "Time (ms) by sequence length" in done.stdout
    code = main(["report", "--results-dir", "results", "--out", "r.html"])
    assert code == 0 and RUN_A in (workdir / "r.html").read_text()
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"records of run {RUN_A} are read without it" in err


def test_a_run_without_manifest_cannot_be_resumed_and_says_why(results):
    (results / RUN_A / "run.json").unlink()
    with pytest.raises(UserError, match="has no readable run.json.*cannot be resumed") as exc:
        RunStore(results).open(RUN_A)
    one_line(exc)


def test_folders_that_are_not_runs_stay_out(results):
    (results / "notes").mkdir()
    (results / "stray.txt").write_text("x")
    assert RunStore(results).run_ids() == [RUN_A, RUN_B]


# -- 2. run_id values of mixed types ---------------------------------------------------------------


def test_table_skips_records_whose_run_id_is_not_text(results, workdir, caplog):
    with open(results / RUN_A / "records.jsonl", "a") as f:
        for run_id in (5, ["x"], True, 1.5, {"a": 1}):
            f.write(json.dumps(speed(256, 3.0, run_id=run_id)) + "\n")
        f.write(json.dumps(speed(512, 4.0, run_id=None)) + "\n")  # no id: it belongs to its folder
    done = harness_subprocess(["table", "--results-dir", "results"], workdir)
    assert done.returncode == 0, done.stderr
    err = done.stderr.splitlines()
    assert [line for line in err if "run_id is not text" in line][:3] == err[:3] and len(err) == 4, err
    assert err[3].endswith("skipped 2 more corrupt records")
    with caplog.at_level(logging.WARNING, logger="harness"):
        frame = load_records(results)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("run_id is not text" in m for m in messages) == 3 and len(messages) == 4
    assert all(isinstance(r, str) for r in frame["run_id"]) and len(frame) == 5
    assert sorted(frame["run_id"]) == [RUN_A] * 3 + [RUN_B] * 2


# -- 3. one driver per run -------------------------------------------------------------------------

HOLDER = """
import sys
from pathlib import Path
from harness.store import Run
hold = Run(Path(sys.argv[1])).hold()
print("held", flush=True)
sys.stdin.read()
"""


def test_a_second_driver_is_refused_with_the_holder_named(tmp_path):
    run = new_run(tmp_path)
    child = python_child(HOLDER, run.dir, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"run {run.run_id} is held by pid {child.pid} on host ") as exc:
            run.hold()
        assert "(started 20" in one_line(exc) and exc.value.args[0].endswith("wait for it, or stop it first")
        child.kill()  # SIGKILL: the OS releases the lock, no cleanup needed
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
        child.stdin.close()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    with run.hold() as hold:
        assert hold.held
    assert not hold.held


def test_a_hold_is_exclusive_within_one_process_and_released_on_exit(tmp_path):
    run = new_run(tmp_path)
    with run.hold():
        with pytest.raises(UserError, match=f"held by pid {os.getpid()}"):
            Run(run.dir).hold()
    with Run(run.dir).hold():  # left: free again
        pass
    with pytest.raises(RuntimeError):
        with run.hold():
            raise RuntimeError("the driver failed")
    run.hold().release()  # an exception leaving the block released the hold too


# -- 4. disk full ----------------------------------------------------------------------------------

REAL_WRITE = os.write


def fail_mid_line(fd, data):
    REAL_WRITE(fd, data[: len(data) // 2])
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def short_then_full():
    calls = []

    def write(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return REAL_WRITE(fd, data[:10])  # the kernel took 10 bytes, then the disk was full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return write


def fsync_fails(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("target,fake", [("write", fail_mid_line), ("write", short_then_full()),
                                         ("fsync", fsync_fails)])
def test_a_full_disk_never_leaves_a_torn_record(tmp_path, monkeypatch, caplog, target, fake):
    run = new_run(tmp_path)
    before = run.records_path.read_bytes()
    with monkeypatch.context() as patch:
        patch.setattr(store_module.os, target, fake)
        with pytest.raises(UserError) as exc:
            run.append(speed(256, 3.0))
    assert one_line(exc) == (f"{run.records_path}: cannot write a record (No space left on device); "
                             f"free space and continue with --resume {run.run_id}")
    assert run.records_path.read_bytes() == before  # earlier records intact, nothing torn
    run.append(speed(256, 3.0))  # space is free again: the run goes on
    with caplog.at_level(logging.WARNING, logger="harness"):
        assert [r["seq_len"] for r in run.records()] == [64, 128, 256]
    assert not caplog.records  # a torn line would warn on reading


def test_a_full_disk_leaves_the_previous_manifest_and_no_temporary_file(tmp_path, monkeypatch):
    run = new_run(tmp_path)
    before = run.manifest_path.read_text()
    with monkeypatch.context() as patch:
        patch.setattr(store_module.os, "fsync", fsync_fails)
        assert run.close("failed", "disk full") is False
        with pytest.raises(UserError, match="run.json: cannot write the manifest \\(No space left on device\\)"):
            run.update_manifest(status="finished")
    assert run.manifest_path.read_text() == before
    assert not [p.name for p in run.dir.iterdir() if p.name.endswith(".tmp")]
    assert run.close("failed", "disk full") is True  # space again: the reason is stored
    assert {k: run.manifest[k] for k in ("status", "reason")} == {"status": "failed", "reason": "disk full"}
    assert run.close("finished") is True and run.manifest["reason"] is None  # a resumed run ends clean


SIZE_LIMITED = """
import json, resource, signal, sys
from pathlib import Path
from harness.errors import UserError
from harness.store import Run
run = Run(Path(sys.argv[1]))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
size = run.records_path.stat().st_size
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 40, resource.RLIM_INFINITY))
record = dict(kind="speed", model="m", status="ok", seq_len=4096)
try:
    run.append(record)
    print("stored")
except UserError as exc:
    print(json.dumps({"error": str(exc), "closed": run.close("failed", str(exc))}))
"""


def test_a_real_file_size_limit_mid_record(tmp_path):
    """The kernel takes part of the line (up to the limit) and refuses the rest: a real short write."""
    run = new_run(tmp_path, config={"padding": "x" * 20000})  # a manifest above the limit: close fails too
    before_records, before_manifest = run.records_path.read_bytes(), run.manifest_path.read_text()
    child = python_child(SIZE_LIMITED, run.dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0 and "Traceback" not in err, err
    result = json.loads(out)
    assert result["error"] == (f"{run.records_path}: cannot write a record (File too large); "
                               f"free space and continue with --resume {run.run_id}")
    assert result["closed"] is False
    assert run.records_path.read_bytes() == before_records
    assert run.manifest_path.read_text() == before_manifest
    assert not [p.name for p in run.dir.iterdir() if p.name.endswith(".tmp")]
    run.append(speed(4096, 9.0))  # without the limit (space freed) the run continues
    assert [r["seq_len"] for r in whole_lines(run.records_path)] == [64, 128, 4096]


# -- 5. the run folder deleted mid-run -------------------------------------------------------------


@pytest.mark.parametrize("deleted", ["run folder", "results folder"])
def test_a_deleted_run_folder_is_one_line(tmp_path, deleted):
    run = new_run(tmp_path)
    shutil.rmtree(run.dir if deleted == "run folder" else run.dir.parent)
    gone = f"{run.dir}: the run folder is gone (deleted while the run was writing); nothing more can be stored"
    with pytest.raises(UserError) as exc:
        run.append(speed(256, 3.0))
    assert one_line(exc) == gone
    with pytest.raises(UserError) as exc:
        run.update_manifest(status="finished")
    assert one_line(exc) == gone
    with pytest.raises(UserError) as exc:
        run.hold()
    assert one_line(exc) == gone
    assert run.close("failed", "gone") is False
    assert not run.dir.exists()  # nothing recreated it

"""Small stored runs written by hand, for tests of damaged or unusual result folders."""

import json

RUN_A, RUN_B = "20260101-000000-000aaaa", "20260102-000000-000bbbb"


def speed(seq_len, ms, **extra):
    """A schema-1 speed record of model `m` at `seq_len` taking `ms` milliseconds."""
    return dict(kind="speed", model="m", task="text", seq_len=seq_len, batch_size=2, dtype="fp32", device="cpu",
                mode="train_step", status="ok", timing=dict(median_ms=ms, p20_ms=ms * 0.9, p80_ms=ms * 1.1),
                memory=dict(peak_rss_increase_bytes=1000), **extra)


def write_run(root, run_id, records):
    """A finished run folder holding `records` (dicts, one JSON line each)."""
    folder = root / run_id
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"run_id": run_id, "status": "finished", "config": {},
                                                 "started": "2026-01-01T00:00:00+00:00", "git_sha": "abc"}))
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def write_two_runs(results):
    """RUN_A and RUN_B, each with two speed cells (B 20% slower), in `results`."""
    for run_id, ms in ((RUN_A, 5.0), (RUN_B, 6.0)):
        write_run(results, run_id, [speed(64, ms), speed(1024, ms * 8)])
    return results


def interrupt_and_check(proc, sig, ready, results, settle: float = 0.0):
    """Send `sig` to a harness CLI process (started in its own session) once `ready()` holds, then
    check that it stopped with exit 130, no traceback and its run marked `interrupted`. The process
    group is killed whatever fails, so no training is left behind."""
    import os
    import signal
    import time

    from harness.store import RunStore

    try:
        deadline = time.time() + 120
        while time.time() < deadline and not ready() and proc.poll() is None:
            time.sleep(0.1)
        assert ready(), proc.communicate(timeout=30)[1]
        time.sleep(settle)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    manifest = RunStore(results).manifests()[0]
    assert manifest["status"] == "interrupted" and manifest["finished"]

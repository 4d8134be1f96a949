"""Faults a hostile (or just unlucky) user meets at the command line: a terminal that is not UTF-8, a
closed terminal (SIGHUP), a run started in a script's background (SIGINT ignored), a mistyped option."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import ASCII_FOR, ProgressView
from harness.executors import Event
from harness.plan import Unit
from harness.config import RunConfig
from harness.store import RunStore
from tests.stored_runs import interrupt_and_check

REPO = Path(__file__).resolve().parent.parent
REFERENCE_RUNS = REPO / "results" / "reference" / "h100-2026-11-22"

# A model whose forward announces itself in a file, then sleeps: the signal lands mid-cell.
SLEEPING_PLUGIN = """
import os
from pathlib import Path

from torch import nn

from harness.registry import register_model


class Sleeps(nn.Module):
    def __init__(self, d_model):
        super().__init__()
        self.lin = nn.Linear(d_model, d_model)

    def forward(self, x, padding_mask=None):
        Path(os.environ["SLEEPS_MARKER"]).touch()
        time.sleep(600)
        return self.lin(x)


@register_model("sleeps", family="other", paper="test", complexity="O(L)", defaults=dict(d_model=8))
def sleeps(d_model):
    return Sleeps(d_model)
"""


def test_non_utf8_output_degrades_to_ascii():
    args = [sys.executable, "-m", "harness", "table", "--results-dir", str(REFERENCE_RUNS)]
    utf8 = subprocess.run(args, capture_output=True, cwd=REPO, timeout=120,
                          env=dict(os.environ, PYTHONIOENCODING="utf-8"))
    ascii_ = subprocess.run(args, capture_output=True, cwd=REPO, timeout=120,
                            env=dict(os.environ, PYTHONIOENCODING="ascii"))
    assert utf8.returncode == 0 and ascii_.returncode == 0, ascii_.stderr.decode(errors="replace")
    assert b"Traceback" not in ascii_.stderr
    out, err = ascii_.stdout.decode("ascii"), ascii_.stderr.decode("ascii")  # raises if not ASCII
    expected = utf8.stdout.decode("utf-8")
    assert "\u00d7" in expected and "\u00b7" in expected  # the committed tables do use the symbols
    assert out == expected.translate(str.maketrans(ASCII_FOR))
    assert out.count("x") == expected.count("x") + expected.count("\u00d7")
    assert err == utf8.stderr.decode("utf-8").translate(str.maketrans(ASCII_FOR))


def test_a_character_without_an_ascii_spelling_becomes_a_question_mark():
    import io

    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii", errors="harness-ascii")
    stream.write("2.1\u00b10.3 \u00d7 L \u2265 1k \u2603.")
    stream.flush()
    assert raw.getvalue() == b"2.1+-0.3 x L >= 1k ?."


def _slow_bench(workdir, disposition, extra=()):
    """A `bench` of the sleeping model in its own session (so the test's terminal never signals it),
    with SIGINT's disposition at start set explicitly, never inherited from whatever ran pytest."""
    (workdir / "sleeps.py").write_text(SLEEPING_PLUGIN)
    marker = workdir / "inside-forward"
    args = [sys.executable, "-m", "harness", "bench", "--include", "sleeps.py", "--models", "sleeps",
            "--bench-task", "listops", "--lengths", "16", "--iters", "1", "--warmup", "0",
            "--isolation", "inprocess", "--threads", "1", *extra]
    proc = subprocess.Popen(args, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, SLEEPS_MARKER=str(marker)), start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, disposition))
    return proc, marker


@pytest.mark.parametrize("sig, disposition, extra", [
    pytest.param(getattr(signal, "SIGHUP", None), signal.SIG_DFL, (), id="sighup"),
    pytest.param(signal.SIGINT, signal.SIG_IGN, (), id="sigint-ignored-at-start"),
    pytest.param(signal.SIGTERM, signal.SIG_DFL, ("--executor", "pool", "--workers", "1"), id="sigterm-pool"),
])
def test_signal_mid_cell_marks_the_run_interrupted(workdir, sig, disposition, extra):
    if sig is None:
        pytest.skip("this platform has no SIGHUP")
    proc, marker = _slow_bench(workdir, disposition, extra)
    interrupt_and_check(proc, sig, marker.exists, workdir / "results")


def test_a_mistyped_option_is_answered_before_torch_is_imported():
    code = ("import sys; from harness.cli import main; rc = main(['run', '--modles', 'x']); "
            "print(rc, 'torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert res.stdout.split() == ["2", "False"], res.stderr
    assert res.stderr.strip().splitlines() == [
        "error: unrecognized arguments: --modles x (see `python -m harness --help`)"]


class _Bar:
    def __init__(self, disable):
        self.disable, self.lines = disable, []

    def write(self, text, file=None):
        self.lines.append(text)


def test_a_line_per_cell_as_it_starts(capsys):
    def start(label, where=""):
        return Event("start", Unit("accuracy", label, job={}), text=where)

    view = ProgressView(quiet=False)
    view(start("transformer on listops (seed 0)"))
    assert capsys.readouterr().err == "  starting transformer on listops (seed 0)\n"
    view.bar = _Bar(disable=True)  # stderr not a terminal: no bar, plain lines
    view(start("s4d on image (seed 1)", "worker 1"))
    assert capsys.readouterr().err == "  starting s4d on image (seed 1) (worker 1)\n"
    view.bar = live = _Bar(disable=False)
    view(start("mega on text (seed 2)"))  # written above the live bar
    assert live.lines == ["  starting mega on text (seed 2)"] and capsys.readouterr().err == ""
    quiet = ProgressView(quiet=True)
    quiet.bar = live
    quiet(start("mega on text (seed 2)"))
    assert capsys.readouterr().err == "" and len(live.lines) == 1


def test_a_second_driver_of_a_held_run_is_refused_with_one_line(workdir, capsys):
    from harness.cli import main

    argv = ["bench", "--models", "transformer_tiny", "--bench-task", "listops", "--lengths", "32", "--batch-size",
            "1", "--iters", "1", "--warmup", "0", "--isolation", "inprocess", "--quiet"]
    assert main(argv) == 0
    run = RunStore(workdir / "results").open(RunStore(workdir / "results").run_ids()[0])
    with run.hold():  # another driver is running this run
        code = main([*argv, "--resume", run.run_id])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error: run ") and "is held by pid" in err[0]
    assert main([*argv, "--resume", run.run_id]) == 0  # once released, a resume goes ahead

"""The user-error battery: every mistake a user can make at the command line, in a folder option, in
a model configuration or in stored results gives one clear `error:` line and a non-zero exit (or one
`warning:` line per damage and the rest of the work done), never a traceback, never a lost file.

Most cases run the CLI in this process (`harness.cli.main(argv)`, stderr through capsys); a few need
a real process: a terminal that is not UTF-8, signals, stderr exactly as a user sees it, and a
mistyped option answered before torch is imported.
"""

import io
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from harness import datacmd
from harness.cli import ASCII_FOR, ProgressView, main
from harness.config import RunConfig
from harness.errors import UserError, first_line, last_line, short_error
from harness.executors import Event
from harness.logs import install_handler
from harness.plan import Unit
from harness.registry import MODELS
from harness.store import RunStore, load_records
from harness.validate import check_config
from tests.checks import model_plugin
from tests.stored_runs import RUN_A, RUN_B, interrupt_and_check, speed, write_two_runs

REPO = Path(__file__).resolve().parents[2]
REFERENCE_RUNS = REPO / "results" / "reference" / "h100-2026-11-22"
BENCH = ["--bench-task", "listops", "--iters", "2", "--warmup", "1", "--isolation", "inprocess"]
STORED = "stored"  # the two hand-written runs of every case's working folder (tests/stored_runs.py)

RAISES_ON_IMPORT = "raise RuntimeError('plugin import exploded')\n"
OOM_PLUGIN = model_plugin("oom_model", imports="import torch", forward="""
    if x.shape[1] >= 64:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
""")
# A model whose forward announces itself in a file, then sleeps: the signal lands mid-cell.
SLEEPING_PLUGIN = model_plugin("sleeps", imports="import os, time\nfrom pathlib import Path", forward="""
    Path(os.environ["SLEEPS_MARKER"]).touch()
    time.sleep(600)
""")


def png_bytes(width=4, height=4):
    raw = b"".join(b"\x00" + bytes(width) for _ in range(height))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def make_fixtures(root: Path) -> None:
    """The damaged inputs the cases name: a file where a folder belongs, broken plugins, empty and
    malformed data folders, a records file ending in a torn line, and two intact stored runs."""
    (root / "afile").write_text("a file, not a folder")
    (root / "raises.py").write_text(RAISES_ON_IMPORT)
    (root / "oom_plugin.py").write_text(OOM_PLUGIN)
    (root / "notes.txt").write_text("not python")
    (root / "notes.md").write_text("my notes\n")
    (root / "empty_lra").mkdir()
    bad = root / "bad_tsv" / "listops-1000"
    bad.mkdir(parents=True)
    for split in ("train", "val", "test"):
        (bad / f"basic_{split}.tsv").write_text("Source\tTarget\n( [MAX 1 2 ] )\tnot-a-digit\n")
    pf = root / "bad_png" / "pathfinder32" / "curv_contour_length_14"
    (pf / "imgs" / "0").mkdir(parents=True)
    (pf / "metadata").mkdir()
    lines = []
    for i in range(4):
        (pf / "imgs" / "0" / f"sample_{i}.png").write_bytes(png_bytes())
        lines.append(f"imgs/0 sample_{i}.png {i} {i % 2} 1.0 14 4 2 0.5 1 1")
    (pf / "imgs" / "0" / "sample_2.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage, not an image")
    (pf / "metadata" / "0.npy").write_text("\n".join(lines) + "\n")
    trunc = root / "trunc" / RUN_A
    trunc.mkdir(parents=True)
    (trunc / "run.json").write_text(json.dumps({"run_id": RUN_A, "status": "finished", "config": {}}))
    good = speed(1024, 5.0)
    (trunc / "records.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(good)[:30])
    write_two_runs(root / STORED)


def tree(root: Path) -> dict:
    """Every path below `root` with its bytes (None for a folder): what a refused command must leave."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def run_cli(capsys, argv):
    """(exit code, stdout, stderr) of `python -m harness ARGV` run in this process; never a traceback."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse inside sub-parsers
        code = exc.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def warning_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning: ")]


# -- the battery: (argv, exit code, fragment of the one error line) -----------------------------------
# Every case also leaves the working folder as it found it, unless marked `writes` (a run that
# starts, then stops on its data, keeps its failed run folder).

def case(argv, code, fragment, writes=False):
    return pytest.param(argv, code, fragment, writes, id=" ".join(argv)[:70])


ZERO_LAYERS = [case(["run", "--models", m, "--set", "n_layers=-1", "--skip-bench"], 2,
                    f"error: --set n_layers=-1: model '{m}' rejects it: {m} config: n_layers=-1 is invalid")
               for m in ("transformer", "s4d", "mamba", "linear_transformer")]

CASES = [
    # names of models and tasks
    case(["run", "--models", "transfomer"], 2, "did you mean 'transformer'"),
    case(["run", "--tasks", "listopz"], 2, "did you mean 'listops'"),
    case(["run", "--models", "mega*x"], 2, "matches no model"),
    case(["run", "--models", ","], 2, "--models is empty"),
    case(["bench", "--bench-task", "txt"], 2, "unknown task 'txt'"),
    case(["bench", "--models", "transfomer_tiny", "--include", "raises.py"], 2, "did you mean 'transformer_tiny'"),
    case(["ls", "nothing_matches_*"], 1, "nothing matches"),
    # numbers and lists
    case(["bench", "--lengths", "1024,abc"], 2, "'abc' is not an integer"),
    case(["bench", "--lengths", "0,1024"], 2, "must be at least 1"),
    case(["bench", "--lengths=-4096"], 2, "must be at least 1"),
    case(["bench", "--lengths", ""], 2, "--lengths is empty"),
    case(["bench", "--lengths", "1k,,2k"], 2, "empty item"),
    case(["bench", "--lengths", "99999999999999999999"], 2, "must be at most 2147483647"),
    case(["bench", "--batch-size", "0"], 2, "--batch-size '0': expected a positive integer"),
    case(["bench", "--batch-size=-3"], 2, "expected a positive integer"),
    case(["bench", "--batch-size", "many"], 2, "expected a positive integer"),
    case(["bench", "--iters", "0"], 2, "--iters"),
    case(["bench", "--warmup=-1"], 2, "--warmup"),
    case(["bench", "--cell-timeout", "0"], 2, "--cell-timeout"),
    case(["bench", "--cell-timeout", "inf"], 2, "positive, finite number"),
    case(["bench", "--modes", "backward"], 2, "--modes 'backward': expected one of train_step, forward"),
    case(["bench", "--modes", ""], 2, "--modes '': give train_step and/or forward"),
    case(["run", "--steps", "0"], 2, "--steps"),
    case(["run", "--lr=-0.1"], 2, "--lr"),
    case(["run", "--lr", "inf"], 2, "positive, finite number"),
    case(["run", "--seeds", "a"], 2, "--seeds"),
    case(["run", "--checkpoint-every", "0"], 2, "--checkpoint-every"),
    case(["compare", "a", "b", "--threshold", "abc"], 2, "--threshold"),
    case(["data", "generate", "--task", "listops", "--out", "gen", "--n=-5"], 2, "--n"),
    case(["data", "generate", "--task", "pathfinder", "--n", "4", "--seed", "-1", "--out", "gen"], 2,
         "--seed -1: expected a non-negative integer"),
    case(["data", "generate", "--task", "listops", "--n", "4", "--seed", "-1", "--out", "gen"], 2,
         "--seed -1: expected a non-negative integer"),
    # choices and option syntax
    case(["nonsense-command"], 2, "invalid choice: 'nonsense-command'"),
    case(["run", "--modles", "x"], 2, "unrecognized arguments: --modles x"),
    case(["bench", "--dtype", "fp64"], 2, "invalid choice: 'fp64'"),
    case(["bench", "--device", "tpu"], 2, "invalid choice: 'tpu'"),
    case(["run", "--scale", "huge"], 2, "invalid choice: 'huge'"),
    case(["table", "--format", "pdf"], 2, "invalid choice: 'pdf'"),
    case(["data", "generate", "--task", "text", "--out", "gen"], 2, "'text'"),  # no generator for text
    case(["bench", "--device", "cpu", "--dtype", "fp16"], 2, "float16"),
    case(["run", "--skip-train", "--skip-bench"], 2, "leaves nothing to run"),
    case(["table", "--results-dir", STORED, "--length", "64,128"], 2, "--length '64,128': give one sequence length"),
    case(["report", "--results-dir", STORED, "--out", "r.html", "--length", "64,128"], 2,
         "--length '64,128': give one sequence length"),
    # model configurations (--set)
    case(["bench", "--set", "compile"], 2, "expected KEY=VALUE"),
    case(["bench", "--models", "transformer", "--set", "chunk_size=16"], 2, "has a config key 'chunk_size'"),
    case(["bench", "--models", "mega_tiny", "--set", "d_model=abc"], 2, "model 'mega_tiny' rejects it"),
    case(["bench", "--models", "mega_tiny", "--set", "chunk_size=-5"], 2, "chunk_size=-5 is invalid"),
    case(["bench", "--models", "transformer_tiny", "--set", "d_model=abc"], 2,
         "transformer config: d_model='abc' is invalid"),
    *ZERO_LAYERS,
    # files and folders
    case(["bench", "--results-dir", "afile/results"], 1, "not writable"),
    case(["bench", "--results-dir", ""], 2, "--results-dir is empty"),
    case(["run", "--cache-dir", "afile"], 2, "--cache-dir afile: is a file"),
    case(["run", "--data-dir", "typo_dir"], 2, "--data-dir typo_dir: no such folder"),
    case(["run", "--include", "missing_plugin.py"], 2, "no such file"),
    case(["run", "--include", "notes.txt"], 2, "expected a .py file"),
    case(["table", "--results-dir", STORED, "--include", "nope.py"], 2, "--include nope.py: no such file"),
    case(["report", "--results-dir", STORED, "--out", "r.html", "--include", "nope.py"], 2,
         "--include nope.py: no such file"),
    case(["compare", RUN_A, RUN_B, "--results-dir", STORED, "--include", "nope.py"], 2,
         "--include nope.py: no such file"),
    case(["run", "--tasks", "listops", "--data-dir", "empty_lra", "--skip-bench"], 1, "basic_train.tsv", writes=True),
    case(["run", "--tasks", "listops", "--data-dir", "bad_tsv", "--skip-bench"], 1,
         "Target 'not-a-digit' is not an integer", writes=True),
    case(["data", "check", "--task", "listops", "--data-dir", "empty_lra"], 1, "basic_train.tsv"),
    case(["data", "check", "--task", "pathfinder", "--data-dir", "bad_png"], 1, "sample_2.png"),
    case(["data", "check", "--task", "listops", "--data-dir", "no_such_dir"], 1, "no_such_dir"),
    # runs and results
    case(["run", "--resume", "20000101-000000-000abcd"], 2, "not found"),
    case(["bench", "--resume", "../elsewhere/20000101-000000-000abcd"], 2, "not a path"),
    case(["table", "--results-dir", "nothing_here"], 1, "no results in nothing_here"),
    case(["report", "--runs", "nope", "--results-dir", "trunc"], 2, "nope"),
    case(["compare", RUN_A, "nope", "--results-dir", "trunc"], 2, "nope"),
    # report --out: never a name that is not .html, never inside the results, never a file it did not write
    case(["report", "--results-dir", STORED, "--out", f"{STORED}/{RUN_A}/records.jsonl"], 2, "inside --results-dir"),
    case(["report", "--results-dir", STORED, "--out", f"{STORED}/report.html"], 2, "inside --results-dir"),
    *[case(["report", "--results-dir", STORED, "--out", name], 2, "expected a name ending in .html")
      for name in ("x.md", "x.tex", "x")],
    case(["report", "--results-dir", STORED, "--out", "notes.html"], 2, "notes.md exists and is not an earlier copy"),
]


@pytest.mark.parametrize("argv,code,fragment,writes", CASES)
def test_user_error_is_one_line(workdir, capsys, argv, code, fragment, writes):
    make_fixtures(workdir)
    before = tree(workdir)
    got, _, err = run_cli(capsys, argv + (["--quiet"] if argv[0] in ("run", "bench") else []))
    assert got == code, err
    assert fragment in one_error(err), err
    if argv[0] in ("run", "bench"):  # --quiet: nothing but the error line
        assert err.strip() == one_error(err), err
    if not writes:  # refused before anything was written: no run folder, no report, no data, no lost file
        assert tree(workdir) == before


def test_battery_is_large_enough():
    assert len(CASES) >= 70


@pytest.mark.parametrize("damage", ["[1, 2]", "counts.train"])
def test_data_check_with_a_damaged_manifest(workdir, capsys, damage):
    datacmd.generate("listops", workdir / "data", n=10, seed=0)
    path = workdir / "data" / "listops-1000" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["counts"]["train"] = "many"
    path.write_text(damage if damage.startswith("[") else json.dumps(manifest))
    code, out, err = run_cli(capsys, ["data", "check", "--task", "listops", "--data-dir", "data"])
    assert code == 1 and "manifest.json: damaged" in one_error(err) and "problem: " in out


def test_a_mistyped_option_is_answered_before_torch_is_imported():
    code = ("import sys; from harness.cli import main; rc = main(['run', '--modles', 'x']); "
            "print(rc, 'torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert res.stdout.split() == ["2", "False"], res.stderr
    assert res.stderr.strip().splitlines() == [
        "error: unrecognized arguments: --modles x (see `python -m harness --help`)"]


def test_a_resume_is_refused_while_held_or_with_other_options(workdir, capsys):
    """One line each: a second driver of a held run; a resume with other options (its manifest would
    not describe the cells measured). Released and with the run's options, the resume goes ahead."""
    argv = ["bench", "--models", "transformer_tiny", "--lengths", "16,32", "--batch-size", "1", *BENCH, "--quiet"]
    assert main(argv) == 0
    store = RunStore(workdir / "results")
    run = store.open(store.run_ids()[0])
    with run.hold():  # another driver is running this run
        code = main([*argv, "--resume", run.run_id])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error: run ") and "is held by pid" in err[0]
    other = [a if a != "16,32" else "16" for a in argv]
    assert main([*other, "--resume", run.run_id]) == 2
    assert "--lengths was '16,32', now '16'" in one_error(capsys.readouterr().err)
    assert main([*argv[:-1], "--resume", run.run_id]) == 0  # released, same options (--quiet may differ)


# -- damaged results: one warning line per damage, the rest of the records kept -------------------------

def manifest_field(field, value):
    def damage(results):
        path = results / RUN_A / "run.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    return damage


def record_field(field, value):
    def damage(results):
        with open(results / RUN_A / "records.jsonl", "a") as f:
            f.write(json.dumps({**speed(64, 1.0), field: value}) + "\n")
    return damage


def manifest_text(text):
    def damage(results):
        (results / RUN_A / "run.json").write_text(text)
    return damage


def records_folder(results):
    records = results / RUN_A / "records.jsonl"
    records.unlink()
    records.mkdir()


def record_without_length(results):
    with open(results / RUN_B / "records.jsonl", "a") as f:
        f.write(json.dumps(speed(None, 7.0)) + "\n")


TABLE = ["table", "--results-dir", STORED]
REPORT = ["report", "--results-dir", STORED, "--out", "r.html"]
COMPARE = ["compare", RUN_A, RUN_B, "--results-dir", STORED]
TIMES = "Time (ms) by sequence length"


def damaged(damage, argv, code, warning, out, id):
    return pytest.param(damage, argv, code, warning, out, id=id)


DAMAGED = [  # (damage, argv, exit code, fragment of the one warning line or None, fragment(s) of stdout)
    damaged(manifest_text("[1]"), TABLE, 0, f"{RUN_A}/run.json: unreadable manifest (not a JSON object)", TIMES,
            id="manifest-not-an-object-table"),
    damaged(manifest_text("[1]"), REPORT, 0, "not a JSON object", "", id="manifest-not-an-object-report"),
    damaged(manifest_text("{bad"), TABLE, 0, f"{RUN_A}/run.json: unreadable manifest", TIMES,
            id="manifest-not-json-table"),
    *[damaged(manifest_field(field, value), command, 0, "of the wrong type", "", id=f"manifest-{field}-{name}")
      for field, value in [("environment", [1]), ("command", 5), ("config", [1]), ("environment", {"gpus": [1]})]
      for command, name in [(TABLE, "table"), (REPORT, "report")]],
    *[damaged(record_field(field, value), command, 0, f"skipped a corrupt record ({field} is not", text,
              id=f"record-{field}-{name}")
      for field, value in [("model", ["m"]), ("seq_len", "long"), ("status", 1)]
      for command, text, name in [(TABLE, TIMES, "table"), (COMPARE, "", "compare")]],
    damaged(records_folder, TABLE, 0, f"expected a file of JSON lines; run {RUN_A} skipped", RUN_B,
            id="records-folder-table"),
    damaged(records_folder, TABLE + ["--runs", RUN_A], 1, "cannot read the records", "", id="records-folder-runs"),
    damaged(None, ["table", "--results-dir", "trunc"], 0, "records.jsonl:2: skipped a corrupt record (not JSON)",
            "1024", id="torn-last-line"),
    damaged(record_without_length, COMPARE, 0, None, ("L=? · b=2", "only in B"), id="speed-record-without-length"),
]


@pytest.mark.parametrize("damage,argv,code,warning,out", DAMAGED)
def test_damaged_results_warn_once_and_keep_the_rest(workdir, capsys, damage, argv, code, warning, out):
    make_fixtures(workdir)
    if damage:
        damage(workdir / STORED)
    got, stdout, err = run_cli(capsys, argv)
    assert got == code, err
    warnings = warning_lines(err)
    if warning is None:
        assert warnings == [], err
    else:
        assert len(warnings) == 1 and warning in warnings[0], err
    assert all(fragment in stdout for fragment in ((out,) if isinstance(out, str) else out)), stdout
    if code:
        assert "no results" in one_error(err)
    else:
        assert "error: " not in err


def test_a_damaged_manifest_stops_a_resume(workdir):
    make_fixtures(workdir)
    (workdir / STORED / RUN_A / "run.json").write_text("[1]")
    with pytest.raises(UserError, match="not a JSON object"):  # what `run --resume` reads first
        RunStore(workdir / STORED).open(RUN_A).manifest


def test_corrupt_record_warnings_are_one_line_each_and_capped(workdir, capsys):
    """stderr exactly as a user sees it (a real process: no test capture, third-party warnings shown);
    --quiet hides the warnings."""
    results = write_two_runs(workdir / "results")
    with open(results / RUN_A / "records.jsonl", "ab") as f:
        f.write(b"\x89PNG garbage\n" * 50 + b'{"kind": "speed", "mod')
    done = subprocess.run([sys.executable, "-m", "harness", "table", "--results-dir", "results"],
                          cwd=workdir, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    name = f"results/{RUN_A}/records.jsonl"
    assert done.stderr.splitlines() == [f"warning: {name}:3: skipped a corrupt record (not JSON)",
                                        f"warning: {name}:4: skipped a corrupt record (not JSON)",
                                        f"warning: {name}:5: skipped a corrupt record (not JSON)",
                                        f"warning: {name}: skipped 48 more corrupt records"]
    assert run_cli(capsys, ["table", "--results-dir", "results", "--quiet"]) == (0, "", "")


def test_table_quiet_prints_nothing(workdir, capsys):
    make_fixtures(workdir)
    assert run_cli(capsys, TABLE + ["--quiet"]) == (0, "", "")


def test_report_replaces_only_its_own_earlier_copy(workdir, capsys):
    make_fixtures(workdir)
    for _ in range(2):
        assert run_cli(capsys, ["report", "--results-dir", STORED, "--out", "r.html", "--quiet"])[0] == 0
    assert (workdir / "r.html").read_text().startswith("<!DOCTYPE html>")
    assert (workdir / "r.md").read_text().startswith("# Benchmark tables")


# -- faults inside a model or a plugin: a recorded status, the run goes on ---------------------------------

def test_plugin_raising_on_import_is_recorded_and_explained(workdir, capsys):
    """A cell that failed is said on stderr; one ok cell keeps exit 0, all failed exits 1."""
    make_fixtures(workdir)
    code = main(["bench", "--include", "raises.py", "--models", "raises_model,transformer_tiny", "--lengths", "16",
                 *BENCH, "--quiet"])
    assert code == 0 and "1 of 2 cells failed" in capsys.readouterr().err
    frame = load_records(workdir / "results")
    assert dict(zip(frame["model"], frame["status"])) == {"raises_model": "error", "transformer_tiny": "ok"}
    assert "plugin import exploded" in frame.loc[frame.model == "raises_model", "error"].item()
    assert main(["bench", "--include", "raises.py", "--models", "raises_model", "--lengths", "16", *BENCH,
                 "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "1 of 1 cells failed" in err and "raises_model speed (L=16): " in err and "plugin import exploded" in err


def test_model_running_out_of_memory_is_recorded(workdir):
    make_fixtures(workdir)
    code = main(["bench", "--include", "oom_plugin.py", "--models", "oom_model,transformer_tiny",
                 "--lengths", "32,64,128", *BENCH, "--quiet"])
    assert code == 0
    frame = load_records(workdir / "results")
    oom = frame[frame.model == "oom_model"].sort_values("seq_len")
    assert list(oom["status"]) == ["ok", "oom", "skipped"]
    assert set(frame.loc[frame.model == "transformer_tiny", "status"]) == {"ok"}


def test_failed_generation_leaves_no_empty_folder(workdir, monkeypatch):
    from harness.registry import TASKS

    def fails(folder, *args, **kwargs):
        (folder / "imgs" / "0").mkdir(parents=True)
        raise RuntimeError("generator failed")

    # the generator as the pathfinder task's own module calls it
    monkeypatch.setattr(sys.modules[TASKS.get("pathfinder").cls.generate.__module__], "generate_dataset", fails)
    with pytest.raises(RuntimeError):
        datacmd.generate("pathfinder", workdir / "gen", n=4, seed=0)
    assert not (workdir / "gen").exists()


# -- model configurations: every family rejects a bad value at construction -------------------------

BAD = [  # (model, overrides, fragment of the one-line message)
    ("transformer_tiny", dict(n_layers=-1), "transformer config: n_layers=-1 is invalid; expected a positive"),
    ("transformer_tiny", dict(n_layers=0), "n_layers=0 is invalid"),
    ("transformer_vanilla_tiny", dict(n_heads=3), "n_heads=3 is invalid; expected a divisor of d_model=32"),
    ("transformer_tiny", dict(d_ffn=2.5), "d_ffn=2.5 is invalid"),
    ("transformer_tiny", dict(dropout=1.0), "dropout=1.0 is invalid; expected a probability in [0, 1)"),
    ("transformer_tiny", dict(attn_dropout=-0.1), "attn_dropout=-0.1 is invalid"),
    ("transformer_tiny", dict(positions="learned"), "positions='learned' is invalid; expected sinusoidal | none"),
    ("transformer_tiny", dict(n_layers=True), "n_layers=True is invalid"),
    ("linear_transformer_tiny", dict(n_layers=-1), "linear_transformer config: n_layers=-1 is invalid"),
    ("linear_transformer_tiny", dict(chunk_size=0), "chunk_size=0 is invalid"),
    ("linear_transformer_tiny", dict(causal="no"), "causal='no' is invalid; expected true or false"),
    ("performer_tiny", dict(nb_features=-4), "performer config: nb_features=-4 is invalid; expected a positive "
                                             "integer or None"),
    ("performer_tiny", dict(feature_scaling=2), "feature_scaling=2 is invalid; expected 0 | 1"),
    ("performer_tiny", dict(d_model=30, n_heads=4), "n_heads=4 is invalid; expected a divisor of d_model=30"),
    ("s4d_tiny", dict(n_layers=-1), "s4d config: n_layers=-1 is invalid"),
    ("s4d_tiny", dict(d_state=7), "d_state=7 is invalid; expected an even integer"),
    ("s4d_tiny", dict(disc="euler"), "disc='euler' is invalid; expected zoh | bilinear"),
    ("s4d_tiny", dict(n_ssm=5), "n_ssm=5 is invalid; expected None or a divisor of d_model=32"),
    ("s4_tiny", dict(init="lin"), "s4 config: init='lin' is invalid; expected legs with mode='dplr'"),
    ("s4_tiny", dict(norm="group"), "norm='group' is invalid"),
    ("s4_tiny", dict(dt_min=0.5, dt_max=0.1), "dt_min=0.5 is invalid; expected at most dt_max=0.1"),
    ("s4_tiny", dict(prenorm="no"), "prenorm='no' is invalid"),
    ("mamba_tiny", dict(n_layers=-1), "mamba config: n_layers=-1 is invalid"),
    ("mamba_tiny", dict(expand=0), "expand=0 is invalid; expected a positive, finite number"),
    ("mamba_tiny", dict(d_conv=0), "d_conv=0 is invalid"),
    ("mamba_tiny", dict(dt_rank="big"), "dt_rank='big' is invalid; expected 'auto' or a positive integer"),
    ("mamba_tiny", dict(scan="fast"), "scan='fast' is invalid; expected auto | torch | sequential | mamba_ssm"),
    ("mamba_tiny", dict(chunk_size=-2), "chunk_size=-2 is invalid"),
]


@pytest.mark.parametrize("model,overrides,fragment", BAD, ids=[f"{m}-{o}" for m, o, _ in BAD])
def test_family_rejects_bad_config(model, overrides, fragment):
    with torch.device("meta"), pytest.raises(UserError) as err:
        MODELS.get(model).build(overrides=overrides)
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message and err.value.exit_code == 2


GOOD = [  # edge values every family must still accept
    ("transformer_tiny", dict(n_layers=1, n_heads=1, dropout=0.0, positions="none")),
    ("linear_transformer_tiny", dict(causal=True, chunk_size=8)),
    ("performer_tiny", dict(nb_features=None, redraw_interval=0)),
    ("s4d_tiny", dict(n_ssm=None, lr_dt=None, disc="bilinear", init="inv")),
    ("s4_tiny", dict(norm="layer", prenorm=False, d_state=2)),
    ("mamba_tiny", dict(expand=1.5, dt_rank=3, chunk_size=None, scan="sequential")),
]


@pytest.mark.parametrize("model,overrides", GOOD, ids=[m for m, _ in GOOD])
def test_family_accepts_edge_configs(model, overrides):
    with torch.device("meta"):
        backbone = MODELS.get(model).build(overrides=overrides)
    assert sum(1 for _ in backbone.parameters()) > 0


def test_check_config_kinds():
    kinds = dict(positive=("n",), probability=("p",), flags=("flag",), choices=dict(kind=("a", "b")),
                 nonnegative=("maybe",), optional=("maybe",))
    config = dict(n=3, p=0.5, flag=True, kind="a", maybe=None)
    check_config("demo", config, **kinds)
    for key, value in [("n", 3.0), ("p", float("nan")), ("flag", 1), ("kind", "c"), ("maybe", -1)]:
        with pytest.raises(UserError, match=f"demo config: {key}="):
            check_config("demo", dict(config, **{key: value}), **kinds)


def test_repeated_seeds_and_modes_run_once():
    config = RunConfig(seeds="0,0,1", modes="forward,forward").validate()
    assert config.seed_list == [0, 1] and config.mode_list == ["forward"]


# -- a quoted ~ in a folder option ------------------------------------------------------------------

def test_tilde_is_expanded_in_folder_options(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lra").mkdir()
    config = RunConfig(results_dir="~/x", cache_dir="~/cache", data_dir="~/lra").validate()
    assert config.results_dir == str(tmp_path / "x")
    assert config.cache_dir == str(tmp_path / "cache")
    assert config.data_dir == str(tmp_path / "lra")
    assert not (tmp_path / "~").exists()


def test_tilde_data_dir_missing_names_what_was_given(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(UserError, match="--data-dir ~/nowhere: no such folder"):
        RunConfig(data_dir="~/nowhere").validate()


# -- the terminal: not UTF-8, progress lines, --json ------------------------------------------------

def test_non_utf8_output_degrades_to_ascii(capsys):
    argv = ["table", "--results-dir", str(REFERENCE_RUNS)]
    code, expected, expected_err = run_cli(capsys, argv)  # the text itself, as a UTF-8 terminal shows it
    ascii_ = subprocess.run([sys.executable, "-m", "harness", *argv], capture_output=True, cwd=REPO, timeout=120,
                            env=dict(os.environ, PYTHONIOENCODING="ascii"))
    assert code == 0 and ascii_.returncode == 0, ascii_.stderr.decode(errors="replace")
    assert b"Traceback" not in ascii_.stderr
    out, err = ascii_.stdout.decode("ascii"), ascii_.stderr.decode("ascii")  # raises if not ASCII
    assert "\u00d7" in expected and "\u00b7" in expected  # the committed tables do use the symbols
    assert out == expected.translate(str.maketrans(ASCII_FOR))
    assert out.count("x") == expected.count("x") + expected.count("\u00d7")
    assert err == expected_err.translate(str.maketrans(ASCII_FOR))


def test_a_character_without_an_ascii_spelling_becomes_a_question_mark():
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii", errors="harness-ascii")
    stream.write("2.1\u00b10.3 \u00d7 L \u2265 1k \u2603.")
    stream.flush()
    assert raw.getvalue() == b"2.1+-0.3 x L >= 1k ?."


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


def test_json_output_is_one_json_document(workdir, capsys):
    assert main(["run", "--models", "transformer_tiny", "--skip-train", "--lengths", "16", *BENCH[2:],
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["model"] == "transformer_tiny" and "timing" not in rows[0] and rows[0]["timing.median_ms"] > 0


def test_a_library_exception_is_quoted_on_one_line():
    assert short_error(ValueError("\n  bad value\nTraceback detail\n")) == "ValueError: bad value"
    assert short_error(RuntimeError()) == "RuntimeError: "
    assert len(short_error(OSError("x" * 900))) == 500
    assert first_line("") == last_line("  \n") == ""
    assert last_line("Traceback (most recent call last):\n  ...\nKeyError: 'x'\n") == "KeyError: 'x'"


def test_messages_are_one_line_each_and_a_repeated_warning_is_said_once(capsys, caplog):
    """What `install_handler` (the CLI's, a worker's) prints: INFO as it is, `warning:` / `error:`
    lines, each distinct warning once per command; --quiet keeps the errors only. Installing it again
    (the next command) adds no second handler."""
    log = logging.getLogger("harness_tasks.demo")
    for quiet in (False, False, True):
        install_handler(quiet=quiet)
        log.info("reading data")
        for _ in range(2):
            log.warning("data/x.tsv: skipped 1 empty line")
        log.error("data/y.tsv: unreadable")
        expected = "" if quiet else "reading data\nwarning: data/x.tsv: skipped 1 empty line\n"
        assert capsys.readouterr().err == expected + "error: data/y.tsv: unreadable\n"
    assert caplog.text.count("skipped 1 empty line") == 6  # every message still reaches other handlers


# -- signals: a closed terminal, a script's background run, a scheduler's SIGTERM ----------------------

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

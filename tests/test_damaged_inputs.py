"""Damaged results and data, and report options that could lose work: each gives one `error:` line
and a non-zero exit, or a one-line warning and a skip; never a traceback, never a lost file."""

import json
import subprocess
import sys

import pytest

from harness import datacmd
from harness.cli import main
from harness.errors import UserError
from harness.store import RunStore
from tests.stored_runs import RUN_A, RUN_B, speed, write_two_runs

@pytest.fixture
def results(workdir):
    """Two small runs in workdir/results (the working directory is workdir)."""
    return write_two_runs(workdir / "results")


def run_cli(capsys, argv):
    """(exit code, stdout, stderr) of `python -m harness ARGV` run in this process."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def one_error(err) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def harness_subprocess(argv, cwd):
    """stderr as a user sees it: pytest captures warnings in-process, so their format needs a process."""
    done = subprocess.run([sys.executable, "-m", "harness", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=120)
    assert "Traceback" not in done.stderr
    return done


# -- report --out ----------------------------------------------------------------------------------

def test_report_out_inside_results_dir_is_refused_and_records_survive(results, capsys):
    records = results / RUN_A / "records.jsonl"
    before = records.read_bytes()
    for out in (records, results / "report.html"):
        code, _, err = run_cli(capsys, ["report", "--results-dir", "results", "--out", str(out)])
        assert code == 2 and "inside --results-dir" in one_error(err)
    assert records.read_bytes() == before
    assert sorted(p.name for p in (results / RUN_A).iterdir()) == ["records.jsonl", "run.json"]


@pytest.mark.parametrize("name", ["x.md", "x.tex", "x"])
def test_report_out_must_be_an_html_name(results, workdir, capsys, name):
    code, _, err = run_cli(capsys, ["report", "--results-dir", "results", "--out", name])
    assert code == 2 and "expected a name ending in .html" in one_error(err)
    assert not list(workdir.glob("x*"))


def test_report_never_replaces_a_file_it_did_not_write(results, workdir, capsys):
    (workdir / "notes.md").write_text("my notes\n")
    code, _, err = run_cli(capsys, ["report", "--results-dir", "results", "--out", "notes.html"])
    assert code == 2 and "notes.md exists and is not an earlier copy" in one_error(err)
    assert (workdir / "notes.md").read_text() == "my notes\n" and not (workdir / "notes.html").exists()
    for _ in range(2):  # an earlier copy of the report is replaced
        assert run_cli(capsys, ["report", "--results-dir", "results", "--out", "r.html", "--quiet"])[0] == 0
    assert (workdir / "r.html").read_text().startswith("<!DOCTYPE html>")
    assert (workdir / "r.md").read_text().startswith("# Benchmark tables")


# -- damaged results -------------------------------------------------------------------------------

def test_manifest_that_is_not_an_object_is_warned_and_the_records_kept(results, capsys):
    (results / RUN_A / "run.json").write_text("[1]")
    with pytest.warns(UserWarning, match="run.json: unreadable manifest \\(not a JSON object\\)"):
        code, out, _ = run_cli(capsys, ["table", "--results-dir", "results"])
    assert code == 0 and "Time (ms) by sequence length" in out
    with pytest.warns(UserWarning, match="not a JSON object"):
        assert run_cli(capsys, ["report", "--results-dir", "results", "--out", "r.html"])[0] == 0
    with pytest.raises(UserError, match="not a JSON object"):  # what `run --resume` reads first
        RunStore(results).open(RUN_A).manifest


@pytest.mark.parametrize("field,value", [("environment", [1]), ("command", 5), ("config", [1]),
                                         ("environment", {"gpus": [1]})])
def test_manifest_with_a_field_of_the_wrong_type_is_warned_and_the_records_kept(results, capsys, field, value):
    manifest = json.loads((results / RUN_A / "run.json").read_text())
    (results / RUN_A / "run.json").write_text(json.dumps({**manifest, field: value}))
    for command in (["table"], ["report", "--out", "r.html"]):
        with pytest.warns(UserWarning, match="of the wrong type"):
            assert run_cli(capsys, [*command, "--results-dir", "results"])[0] == 0


@pytest.mark.parametrize("field,value", [("model", ["m"]), ("seq_len", "long"), ("status", 1)])
def test_record_with_a_field_of_the_wrong_type_is_skipped(results, capsys, field, value):
    bad = {**speed(64, 1.0), field: value}
    with open(results / RUN_A / "records.jsonl", "a") as f:
        f.write(json.dumps(bad) + "\n")
    with pytest.warns(UserWarning, match=f"skipped a corrupt record \\({field} is not"):
        code, out, _ = run_cli(capsys, ["table", "--results-dir", "results"])
    assert code == 0 and "Time (ms) by sequence length" in out
    with pytest.warns(UserWarning, match="corrupt record"):
        assert run_cli(capsys, ["compare", RUN_A, RUN_B, "--results-dir", "results"])[0] in (0, 1)


def test_records_file_that_is_a_folder_skips_that_run(results, capsys):
    records = results / RUN_A / "records.jsonl"
    records.unlink()
    records.mkdir()
    with pytest.warns(UserWarning, match=f"cannot read the records.*run {RUN_A} skipped"):
        code, out, _ = run_cli(capsys, ["table", "--results-dir", "results"])
    assert code == 0 and RUN_B in out
    with pytest.warns(UserWarning, match="cannot read the records"):
        code, _, err = run_cli(capsys, ["table", "--results-dir", "results", "--runs", RUN_A])
    assert code == 1 and "no results" in one_error(err)


def test_compare_with_a_speed_record_without_length(results, capsys):
    with open(results / RUN_B / "records.jsonl", "a") as f:
        f.write(json.dumps(speed(None, 7.0)) + "\n")
    code, out, _ = run_cli(capsys, ["compare", RUN_A, RUN_B, "--results-dir", "results"])
    assert code == 0 and "L=? · b=2" in out and "only in B" in out


def test_corrupt_record_warnings_are_one_line_each_and_capped(results, workdir):
    with open(results / RUN_A / "records.jsonl", "ab") as f:
        f.write(b"\x89PNG garbage\n" * 50 + b'{"kind": "speed", "mod')
    err = harness_subprocess(["table", "--results-dir", "results"], workdir).stderr.splitlines()
    name = f"results/{RUN_A}/records.jsonl"
    assert err == [f"warning: {name}:3: skipped a corrupt record (not JSON)",
                   f"warning: {name}:4: skipped a corrupt record (not JSON)",
                   f"warning: {name}:5: skipped a corrupt record (not JSON)",
                   f"warning: {name}: skipped 48 more corrupt records"]
    assert harness_subprocess(["table", "--results-dir", "results", "--quiet"], workdir).stderr == ""


def test_unreadable_manifest_is_warned_once(results, workdir):
    (results / RUN_A / "run.json").write_text("{bad")
    err = harness_subprocess(["table", "--results-dir", "results"], workdir).stderr.splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: results/{RUN_A}/run.json: unreadable manifest")


# -- table / report / compare options --------------------------------------------------------------

@pytest.mark.parametrize("argv", [["table"], ["report", "--out", "r.html"], ["compare", RUN_A, RUN_B]])
def test_include_of_a_missing_file_is_an_error(results, capsys, argv):
    code, _, err = run_cli(capsys, argv + ["--results-dir", "results", "--include", "nope.py"])
    assert code == 2 and "--include nope.py: no such file" in one_error(err)


def test_table_quiet_prints_nothing(results, capsys):
    assert run_cli(capsys, ["table", "--results-dir", "results", "--quiet"]) == (0, "", "")


@pytest.mark.parametrize("command", [["table"], ["report", "--out", "r.html"]])
def test_length_takes_one_value(results, capsys, command):
    code, _, err = run_cli(capsys, command + ["--results-dir", "results", "--length", "64,128"])
    assert code == 2 and "--length '64,128': give one sequence length" in one_error(err)


# -- data check / generate -------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["[1, 2]", "counts.train"])
def test_data_check_with_a_damaged_manifest(workdir, capsys, damage):
    datacmd.generate("listops", workdir / "data", n=10, seed=0)
    path = workdir / "data" / "listops-1000" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["counts"]["train"] = "many"
    path.write_text(damage if damage.startswith("[") else json.dumps(manifest))
    code, out, err = run_cli(capsys, ["data", "check", "--task", "listops", "--data-dir", "data"])
    assert code == 1 and "manifest.json: damaged" in one_error(err) and "problem: " in out


@pytest.mark.parametrize("task", ["pathfinder", "listops"])
def test_generate_refuses_a_negative_seed_and_writes_nothing(workdir, capsys, task):
    code, _, err = run_cli(capsys, ["data", "generate", "--task", task, "--n", "4", "--seed", "-1", "--out", "gen"])
    assert code == 2 and "--seed -1: expected a non-negative integer" in one_error(err)
    assert not (workdir / "gen").exists()


def test_failed_generation_leaves_no_empty_folder(workdir, monkeypatch):
    import harness_tasks.pathfinder

    def fails(folder, *args, **kwargs):
        (folder / "imgs" / "0").mkdir(parents=True)
        raise RuntimeError("generator failed")

    monkeypatch.setattr(harness_tasks.pathfinder, "generate_dataset", fails)
    with pytest.raises(RuntimeError):
        datacmd.generate("pathfinder", workdir / "gen", n=4, seed=0)
    assert not (workdir / "gen").exists()

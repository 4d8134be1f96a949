"""README's quick start: exactly two commands, and CI runs the test command verbatim."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def quick_start_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for line in section.splitlines() if line.startswith("    ") and line.strip()]


def test_quick_start_has_the_two_commands():
    commands = quick_start_commands()
    assert len(commands) == 2, commands
    run, test = commands
    assert run.endswith("python -m harness run") and "pip install" in run
    assert test.endswith("python -m pytest") and "[test]" in test


def test_ci_runs_the_readme_test_command():
    test_command = quick_start_commands()[1]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_command in [line.strip() for line in ci]


def python_block(first_line: str) -> str:
    """The README's ```python block that starts with `first_line` (e.g. "# my_task.py")."""
    text = (REPO / "README.md").read_text()
    for block in text.split("```python\n")[1:]:
        code = block.split("```", 1)[0]
        if code.startswith(first_line):
            return code
    raise AssertionError(f"README has no python block starting with {first_line!r}")


def test_the_readme_plugins_generate_check_and_train(tmp_path):
    """The model and task plugins the README shows work as written, with the commands it gives."""
    (tmp_path / "my_model.py").write_text(python_block("# my_model.py"))
    (tmp_path / "my_task.py").write_text(python_block("# my_task.py"))

    def harness(*args):
        done = subprocess.run([sys.executable, "-m", "harness", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        return done.stdout

    include = ["--include", "my_model.py", "--include", "my_task.py"]
    harness("data", "generate", *include, "--task", "parity", "--out", "data", "--task-option", "parity.width=8")
    assert len((tmp_path / "data" / "parity" / "train.txt").read_text().split()[0]) == 8
    assert "parity: OK" in harness("data", "check", *include, "--task", "parity", "--data-dir", "data")
    harness("run", *include, "--models", "gru_tiny", "--tasks", "parity", "--data-dir", "data", "--seeds", "0",
            "--steps", "5", "--skip-bench", "--task-option", "parity.width=8", "--quiet")
    records = [json.loads(line) for path in (tmp_path / "results").glob("*/records.jsonl")
               for line in path.read_text().splitlines()]
    trained = [r for r in records if r["model"] == "gru_tiny"]
    assert [r["status"] for r in trained] == ["ok"] and trained[0]["task_options"] == {"width": 8}
    assert trained[0]["plugins"]["model"].startswith("file ") and trained[0]["plugins"]["model"].endswith("my_model.py")
    assert trained[0]["plugins"]["task"].endswith("my_task.py")

"""README's quick start: exactly two commands, and CI runs the test command verbatim."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


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

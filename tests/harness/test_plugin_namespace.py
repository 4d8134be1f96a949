"""A plugin author's working directory cannot replace the built-ins: the repository's `models/` and
`tasks/` folders install as `harness_models` and `harness_tasks`, so a `models.py` or a `tasks/`
package beside the user's script is just the user's own code."""

import json
import subprocess
import sys


def _ls(cwd) -> dict:
    proc = subprocess.run([sys.executable, "-m", "harness", "ls", "--json"], cwd=cwd, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_a_models_py_and_a_tasks_folder_in_the_working_directory_change_nothing(tmp_path):
    baseline = _ls(tmp_path)
    # Code that would shout if Python imported it in place of the built-ins.
    (tmp_path / "models.py").write_text("raise RuntimeError('the user models.py was imported')\n")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "__init__.py").write_text("raise RuntimeError('the user tasks/ was imported')\n")
    shadowed = _ls(tmp_path)
    names = lambda listing, kind: sorted(row["name"] for row in listing[kind])  # noqa: E731
    assert names(shadowed, "models") == names(baseline, "models")
    assert names(shadowed, "tasks") == names(baseline, "tasks")
    assert {"mega", "transformer"} <= set(names(shadowed, "models"))
    assert {"listops", "text"} <= set(names(shadowed, "tasks"))
    assert not shadowed["plugin_errors"]


def test_the_user_files_stay_importable_as_the_users_own(tmp_path):
    (tmp_path / "models.py").write_text("WHO = 'user'\n")
    code = "import models, harness_models; print(models.WHO, harness_models.__name__)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["user", "harness_models"]

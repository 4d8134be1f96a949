"""Registry: decorators, wildcards, did-you-mean, duplicates, availability, --include, entry points."""

import dataclasses
import subprocess
import sys
import textwrap

import pytest

from harness.errors import UserError
from harness.registry import MODELS, TASKS, ModelEntry, Registry, include_file, natural_key, register_task
from harness.task import Task, TaskOptions

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def entry(name, origin="test:origin", **kw):
    base = dict(factory=lambda **cfg: cfg, family="other", paper="p", complexity="O(L)",
                defaults=dict(d_model=8), origin=origin)
    base.update(kw)
    return ModelEntry(name=name, **base)


def fresh(*names):
    reg = Registry("model", "harness.test-none", "models")
    reg._loaded = True
    for n in names:
        reg.add(entry(n, origin=f"test:{n}"))
    return reg


def test_builtins_registered_with_metadata():
    for name in ("transformer", "transformer_vanilla", "transformer_tiny", "transformer_vanilla_tiny"):
        e = MODELS.get(name)
        assert e.family == "attention" and e.paper and e.complexity == "O(L^2)"
    assert "listops" in TASKS.names()
    assert MODELS.get("transformer").config("text")["d_model"] == 256  # LRA Text: d 256
    assert MODELS.get("transformer").config("text")["n_layers"] == 4
    assert MODELS.get("transformer_tiny").config("text")["d_model"] == 32


def test_wildcards_natural_sort_and_exclude():
    reg = fresh("mega10", "mega2", "mega_chunk", "s4")
    assert reg.list("mega*") == ["mega2", "mega10", "mega_chunk"]
    assert reg.list("mega*", exclude="*chunk") == ["mega2", "mega10"]
    assert sorted(["a10", "a9"], key=natural_key) == ["a9", "a10"]
    assert reg.resolve("s4,mega*") == ["s4", "mega2", "mega10", "mega_chunk"]


def test_unknown_name_suggests():
    with pytest.raises(UserError) as err:
        MODELS.get("transfomer")
    assert "did you mean 'transformer'" in str(err.value)
    assert err.value.exit_code == 2
    with pytest.raises(UserError, match="matches no model"):
        MODELS.resolve("zzz*")


def test_duplicate_names_both_origins_and_override():
    reg = fresh("a")
    with pytest.raises(UserError) as err:
        reg.add(entry("a", origin="plugin.py:12"))
    assert "test:a" in str(err.value) and "plugin.py:12" in str(err.value)
    reg.add(entry("a", origin="plugin.py:12"), override=True)
    assert reg.get("a").origin == "plugin.py:12"


def test_none_overrides_never_replace_defaults():
    e = entry("x", defaults=dict(d_model=8, depth=2), task_configs={"text": dict(depth=4)})
    assert e.config("text", dict(depth=None, d_model=16)) == dict(d_model=16, depth=4)


def test_availability_reports_missing_package_and_probe():
    assert entry("y", requires=("surely_not_a_package_xyz",)).availability() == (
        False, "optional package 'surely_not_a_package_xyz' is not installed")
    ok, reason = entry("z", probe=lambda: "needs a CUDA device").availability()
    assert not ok and reason == "needs a CUDA device"
    ok, reason = entry("w", probe=lambda: 1 / 0).availability()
    assert not ok and "ZeroDivisionError" in reason
    with pytest.raises(UserError, match="unavailable"):
        entry("v", requires=("surely_not_a_package_xyz",)).build()


PLUGIN = textwrap.dedent('''
    import torch.nn as nn
    from harness.registry import register_model

    class Identity(nn.Module):
        def __init__(self, d_model):
            super().__init__()
            self.proj = nn.Linear(d_model, d_model)

        def forward(self, x, padding_mask=None):
            return self.proj(x)

    @register_model("{name}", family="other", paper="test plugin", complexity="O(L)",
                    defaults=dict(d_model=16))
    def factory(d_model):
        return Identity(d_model)
''')


def test_include_file_registers_and_errors(tmp_path):
    path = tmp_path / "my_plugin.py"
    path.write_text(PLUGIN.format(name="included_identity"))
    include_file(path)
    e = MODELS.get("included_identity")
    assert str(path) in e.origin or "my_plugin" in e.origin
    bad = tmp_path / "broken_plugin.py"
    bad.write_text("raise RuntimeError('boom at import')\n")
    with pytest.raises(UserError, match="failed to import: RuntimeError: boom at import"):
        include_file(bad)
    with pytest.raises(UserError, match="no such file"):
        include_file(tmp_path / "missing.py")
    clash = tmp_path / "clash.py"
    clash.write_text(PLUGIN.format(name="transformer"))
    with pytest.raises(UserError, match="duplicate model name 'transformer'"):
        include_file(clash)


def run_cli(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def test_plugin_from_include_file_appears_in_ls_and_runs(tmp_path):
    path = tmp_path / "gru_plugin.py"
    path.write_text(PLUGIN.format(name="file_identity"))
    ls = run_cli("ls", "file_*", "--include", str(path), cwd=tmp_path)
    assert ls.returncode == 0, ls.stderr
    assert "file_identity" in ls.stdout
    res = run_cli("bench", "--include", str(path), "--models", "file_identity", "--bench-task", "listops",
                  "--lengths", "64,128", "--iters", "2", "--warmup", "1", "--results-dir", str(tmp_path / "r"),
                  "--quiet", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    from harness.store import load_records

    frame = load_records(tmp_path / "r")
    assert list(frame["status"]) == ["ok", "ok"] and set(frame["model"]) == {"file_identity"}


def test_installed_entry_point_plugin(tmp_path):
    """A package declaring a `harness.models` entry point, installed with pip, shows up and runs."""
    pkg = tmp_path / "pkg"
    (pkg / "harness_demo_plugin").mkdir(parents=True)
    (pkg / "harness_demo_plugin" / "__init__.py").write_text(PLUGIN.format(name="entry_identity"))
    (pkg / "pyproject.toml").write_text(textwrap.dedent('''
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "harness-demo-plugin"
        version = "0.0.1"
        [project.entry-points."harness.models"]
        entry_identity = "harness_demo_plugin"
    '''))
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(site), str(pkg)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    import os

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO)]))
    ls = run_cli("ls", "entry_*", env=env, cwd=tmp_path)
    assert ls.returncode == 0 and "entry_identity" in ls.stdout, ls.stderr
    res = run_cli("bench", "--models", "entry_identity", "--bench-task", "listops", "--lengths", "64",
                  "--iters", "2", "--warmup", "1", "--isolation", "inprocess",
                  "--results-dir", str(tmp_path / "r"), "--quiet", env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("options", [
    dict,  # not a TaskOptions
    type("Loose", (TaskOptions,), {"__annotations__": {"width": int}, "width": 3}),  # not a dataclass itself
    dataclasses.dataclass(type("Mutable", (), {"__annotations__": {"width": int}, "width": 3})),  # not a TaskOptions
])
def test_a_task_options_class_must_be_a_frozen_taskoptions_dataclass(options):
    with pytest.raises(ValueError, match="Options must be a frozen dataclass subclassing"):
        register_task("bad_options_task")(type("Bad", (Task,), {"Options": options}))
    assert "bad_options_task" not in TASKS.names()

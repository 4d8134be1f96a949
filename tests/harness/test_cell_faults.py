"""A model that crashes, exits or hangs inside an accuracy cell: that cell's error record, and the run
goes on (issue 13, item 5; harness/executors.py)."""

import textwrap

import pytest

from harness import executors
from harness.cli import main
from harness.store import RunStore, load_records

PLUGIN = textwrap.dedent('''
    import os, signal, sys, time
    from torch import nn
    from harness.registry import register_model

    class Faulty(nn.Module):
        def __init__(self, d_model, fault):
            super().__init__()
            self.proj = nn.Linear(d_model, d_model)
            self.fault = fault

        def forward(self, x, padding_mask=None):
            if self.fault == "segv":
                os.kill(os.getpid(), signal.SIGSEGV)
            elif self.fault == "os_exit":
                os._exit(3)
            elif self.fault == "sys_exit":
                sys.exit(2)
            elif self.fault == "hang":
                time.sleep(600)
            return self.proj(x)

    for fault in ("segv", "os_exit", "sys_exit", "hang"):
        register_model(f"cf_{fault}", family="other", paper="test", complexity="O(L)",
                       defaults=dict(d_model=16, fault=fault))(lambda d_model, fault: Faulty(d_model, fault))
''')
RUN = ["run", "--tasks", "listops", "--seeds", "0", "--steps", "3", "--skip-bench", "--no-report",
       "--no-reference-rows", "--quiet"]


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """One file for the module: an --include'd file registers its models once per process."""
    path = tmp_path_factory.mktemp("plugin") / "faulty.py"
    path.write_text(PLUGIN)
    return str(path)


def test_a_crash_or_exit_inside_a_model_is_that_cells_error_and_the_run_goes_on(workdir, plugin, data_cache, capsys):
    code = main([*RUN, "--include", plugin, "--cache-dir", str(data_cache),
                 "--models", "cf_segv,cf_os_exit,cf_sys_exit,transformer_tiny"])
    assert code == 0, capsys.readouterr().err  # one model trained: the run succeeded
    frame = load_records("results").set_index("model")
    assert frame.loc["transformer_tiny", "status"] == "ok"
    assert "killed by SIGSEGV" in frame.loc["cf_segv", "error"]
    assert "exited with code 3" in frame.loc["cf_os_exit", "error"]
    assert "exited with code 2" in frame.loc["cf_sys_exit", "error"]
    assert (frame.loc[["cf_segv", "cf_os_exit", "cf_sys_exit"], "status"] == "error").all()
    assert RunStore("results").manifests()[0]["status"] == "finished"


def test_a_hang_inside_a_forward_pass_is_killed_from_outside(workdir, plugin, data_cache, monkeypatch):
    # killed at 8 s + 2 s of grace; 8 s leave a loaded machine time for the healthy model's 3 steps
    monkeypatch.setattr(executors, "TIMEOUT_GRACE_MIN_SECONDS", 2.0)
    code = main([*RUN, "--include", plugin, "--cache-dir", str(data_cache), "--cell-timeout", "8",
                 "--models", "cf_hang,transformer_tiny"])
    assert code == 0
    frame = load_records("results").set_index("model")
    assert frame.loc["cf_hang", "status"] == "error" and "killed from outside" in frame.loc["cf_hang", "error"]
    assert frame.loc["transformer_tiny", "status"] == "ok"


def test_inprocess_isolation_keeps_the_old_single_process_path(workdir, data_cache):
    assert main([*RUN, "--cache-dir", str(data_cache), "--models", "transformer_tiny",
                 "--isolation", "inprocess"]) == 0
    assert list(load_records("results")["status"]) == ["ok"]

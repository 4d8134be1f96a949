"""`compare`: a planted regression is flagged (exit 1), an unchanged re-run passes (exit 0),
noise is judged by p20-p80 overlap, and cells with a different config are "not comparable"."""

from __future__ import annotations

import pytest

from harness.errors import UserError
from harness.report.compare import compare_runs

try:
    from test_report import accuracy_record, create_run, model_speed, speed_record, sweep
except ImportError:  # tests collected as a package
    from tests.test_report import accuracy_record, create_run, model_speed, speed_record, sweep

RUN_A, RUN_SAME, RUN_WORSE = "20260401-080000-aaaaaa", "20260402-080000-bbbbbb", "20260403-080000-cccccc"
SPEED_MODELS = ("mega", "mega_chunk", "transformer", "transformer_vanilla", "s4")


def _accuracy(run, listops_mega=0.631):
    for seed in (0, 1):
        run.append(accuracy_record("mega", "listops", seed, listops_mega + 0.002 * seed))
        run.append(accuracy_record("s4", "listops", seed, 0.591 + 0.002 * seed))


@pytest.fixture
def results(tmp_path):
    """A: baseline; SAME: an identical re-run; WORSE: mega_chunk 40% slower everywhere, s4 8%
    slower (beyond its p20-p80 spread but under the threshold), transformer 30% faster, mega at
    1K with another config, transformer newly OOM at 16K, mega's ListOps accuracy 20% lower."""
    root = tmp_path / "results"
    baseline = create_run(root, RUN_A)
    sweep(baseline, SPEED_MODELS)
    _accuracy(baseline)
    same = create_run(root, RUN_SAME)
    sweep(same, SPEED_MODELS)
    _accuracy(same)
    worse = create_run(root, RUN_WORSE)
    sweep(worse, ("mega_chunk", "transformer_vanilla"), scale={"mega_chunk": 1.4})
    sweep(worse, ("s4",), scale={"s4": 1.08})
    for length in (1024, 2048, 4096, 8192):
        ms, gib = model_speed("transformer", length)
        worse.append(speed_record("transformer", length, ms * 0.7, gib))
    worse.append(speed_record("transformer", 16384, status="oom", error="CUDA out of memory"))
    ms, gib = model_speed("mega", 1024)
    worse.append(speed_record("mega", 1024, ms, gib, config_extra={"chunk_size": 256}))
    for length in (2048, 4096, 8192, 16384):
        ms, gib = model_speed("mega", length)
        worse.append(speed_record("mega", length, ms, gib))
    _accuracy(worse, listops_mega=0.631 * 0.8)
    return root


def _rows(frame, **match):
    mask = True
    for key, value in match.items():
        mask = mask & (frame[key] == value)
    return frame[mask]


def test_unchanged_run_has_no_regression(results):
    frame, n_regressions = compare_runs(results, RUN_A, RUN_SAME, 10.0)
    assert n_regressions == 0
    measured = frame[frame["metric"].isin(["median time (ms)", "peak memory (GiB)", "accuracy (%)"])]
    # 23 measured speed cells (4 models x 5 lengths + vanilla at 1K-4K) x (time, memory) + 4 accuracies
    assert len(measured) == 23 * 2 + 4
    assert set(measured["verdict"]) == {"within noise"}
    vanilla = _rows(frame, model="transformer_vanilla", seq_len=8192)
    assert vanilla["verdict"].tolist() == ["unchanged status (oom / oom)"]


def test_planted_regression_is_flagged(results):
    frame, n_regressions = compare_runs(results, RUN_A, RUN_WORSE, 10.0)
    chunk = _rows(frame, model="mega_chunk", metric="median time (ms)")
    assert len(chunk) == 5 and chunk["verdict"].eq("worse").all() and chunk["regression"].all()
    assert chunk["change_pct"].round(6).eq(40.0).all()
    chunk_mem = _rows(frame, model="mega_chunk", metric="peak memory (GiB)")
    assert chunk_mem["verdict"].eq("within noise").all() and not chunk_mem["regression"].any()
    # 8% slower, p20-p80 apart (each spans about ±2.7%): worse, but not beyond the 10% threshold
    s4 = _rows(frame, model="s4", metric="median time (ms)")
    assert s4["verdict"].eq("worse").all() and not s4["regression"].any()
    fused = _rows(frame, model="transformer", metric="median time (ms)")
    assert fused["verdict"].eq("better").all() and fused["change_pct"].round(6).eq(-30.0).all()
    oom = _rows(frame, model="transformer", seq_len=16384)
    assert oom["verdict"].tolist() == ["worse (now OOM)"] and oom["regression"].all()
    other_config = _rows(frame, model="mega", seq_len=1024)
    assert other_config["verdict"].tolist() == ["not comparable"]
    assert "model config hash" in other_config["note"].iloc[0] and not other_config["regression"].any()
    assert _rows(frame, model="mega", seq_len=2048, metric="median time (ms)")["verdict"].tolist() == ["within noise"]
    acc = _rows(frame, model="mega", metric="accuracy (%)")
    assert acc["verdict"].eq("worse").all() and acc["regression"].all()
    assert _rows(frame, model="s4", metric="accuracy (%)")["verdict"].eq("within noise").all()
    assert n_regressions == 5 + 1 + 2  # mega_chunk times, the new OOM, mega's two seeds
    # a looser threshold keeps only what is beyond it (the new OOM always counts)
    _, loose = compare_runs(results, RUN_A, RUN_WORSE, 50.0)
    assert loose == 1


def test_cli_compare_exit_codes_and_output(results, capsys):
    from harness.report.cli import main

    assert main(["compare", RUN_A, RUN_SAME, "--results-dir", str(results)]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("0 regressions beyond 10%")
    assert main(["compare", RUN_A, RUN_WORSE, "--results-dir", str(results), "--threshold", "10"]) == 1
    out = capsys.readouterr().out
    assert "worse ⚠ regression" in out and "not comparable" in out and "+40.0%" in out
    assert "8 regressions beyond 10%" in out
    assert main(["compare", RUN_A, "nope", "--results-dir", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: run nope not found") and RUN_A in err and err.count("\n") == 1
    assert main(["compare", RUN_A, RUN_SAME, "--results-dir", str(results), "--threshold", "-3"]) == 2


def test_unknown_run_raises_user_error(results):
    with pytest.raises(UserError, match=f"available runs: {RUN_A}, {RUN_SAME}, {RUN_WORSE}"):
        compare_runs(results, "20990101-000000-ffffff", RUN_A, 10.0)

"""The bad-input battery: every user mistake gives one clear `error:` line and a non-zero exit (or a
recorded status for faults inside a model), never a traceback and never a lost record."""

import json
import struct
import zlib

import pytest

from harness.cli import main
from harness.store import load_records

BENCH = ["--bench-task", "listops", "--iters", "2", "--warmup", "1", "--isolation", "inprocess"]

RAISES_ON_IMPORT = "raise RuntimeError('plugin import exploded')\n"
OOM_PLUGIN = """
import torch, torch.nn as nn
from harness.registry import register_model

class Oom(nn.Module):
    def __init__(self, d_model):
        super().__init__()
        self.lin = nn.Linear(d_model, d_model)

    def forward(self, x, padding_mask=None):
        if x.shape[1] >= 64:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
        return self.lin(x)

@register_model("oom_model", family="other", paper="test", complexity="O(L)", defaults=dict(d_model=8))
def oom_model(d_model):
    return Oom(d_model)
"""


def png_bytes(width=4, height=4):
    raw = b"".join(b"\x00" + bytes(width) for _ in range(height))
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def make_fixtures(root):
    (root / "afile").write_text("a file, not a folder")
    (root / "raises.py").write_text(RAISES_ON_IMPORT)
    (root / "oom_plugin.py").write_text(OOM_PLUGIN)
    (root / "notes.txt").write_text("not python")
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
    trunc = root / "trunc"
    (trunc / "20260101-000000-000aaaa").mkdir(parents=True)
    (trunc / "20260101-000000-000aaaa" / "run.json").write_text(json.dumps({"run_id": "20260101-000000-000aaaa",
                                                                            "status": "finished", "config": {}}))
    good = dict(kind="speed", model="m", task="text", seq_len=1024, batch_size=2, dtype="fp32", device="cpu",
                mode="train_step", status="ok", timing=dict(median_ms=5.0, p20_ms=4.0, p80_ms=6.0),
                memory=dict(peak_rss_increase_bytes=1000))
    (trunc / "20260101-000000-000aaaa" / "records.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(good)[:30])


# (argv, expected exit code, fragment of the one-line message)
CASES = [
    (["run", "--models", "transfomer"], 2, "did you mean 'transformer'"),
    (["run", "--tasks", "listopz"], 2, "did you mean 'listops'"),
    (["run", "--models", "mega*x"], 2, "matches no model"),
    (["run", "--models", ","], 2, "--models is empty"),
    (["bench", "--lengths", "1024,abc"], 2, "'abc' is not an integer"),
    (["bench", "--lengths", "0,1024"], 2, "must be at least 1"),
    (["bench", "--lengths=-4096"], 2, "must be at least 1"),
    (["bench", "--lengths", ""], 2, "--lengths is empty"),
    (["bench", "--lengths", "1k,,2k"], 2, "empty item"),
    (["bench", "--batch-size", "0"], 2, "--batch-size '0': expected a positive integer"),
    (["bench", "--batch-size=-3"], 2, "expected a positive integer"),
    (["bench", "--batch-size", "many"], 2, "expected a positive integer"),
    (["bench", "--iters", "0"], 2, "--iters"),
    (["bench", "--warmup=-1"], 2, "--warmup"),
    (["bench", "--cell-timeout", "0"], 2, "--cell-timeout"),
    (["bench", "--modes", "backward"], 2, "--modes 'backward': expected one of train_step, forward"),
    (["run", "--steps", "0"], 2, "--steps"),
    (["run", "--lr=-0.1"], 2, "--lr"),
    (["run", "--seeds", "a"], 2, "--seeds"),
    (["run", "--checkpoint-every", "0"], 2, "--checkpoint-every"),
    (["bench", "--bench-task", "txt"], 2, "unknown task 'txt'"),
    (["bench", "--dtype", "fp64"], 2, "invalid choice: 'fp64'"),
    (["bench", "--device", "tpu"], 2, "invalid choice: 'tpu'"),
    (["run", "--scale", "huge"], 2, "invalid choice: 'huge'"),
    (["bench", "--device", "cpu", "--dtype", "fp16"], 2, "float16"),
    (["bench", "--results-dir", "afile/results"], 1, "not writable"),
    (["run", "--resume", "20000101-000000-000abcd"], 2, "not found"),
    (["run", "--include", "missing_plugin.py"], 2, "no such file"),
    (["run", "--include", "notes.txt"], 2, "expected a .py file"),
    (["run", "--tasks", "listops", "--data-dir", "empty_lra", "--skip-bench"], 1, "basic_train.tsv"),
    (["run", "--tasks", "listops", "--data-dir", "bad_tsv", "--skip-bench"], 1, "Target 'not-a-digit' is not an integer"),
    (["table", "--results-dir", "nothing_here"], 1, "no results in nothing_here"),
    (["report", "--runs", "nope", "--results-dir", "trunc"], 2, "nope"),
    (["compare", "20260101-000000-000aaaa", "nope", "--results-dir", "trunc"], 2, "nope"),
    (["compare", "a", "b", "--threshold", "abc"], 2, "--threshold"),
    (["table", "--format", "pdf"], 2, "invalid choice: 'pdf'"),
    (["ls", "nothing_matches_*"], 1, "nothing matches"),
    (["data", "check", "--task", "listops", "--data-dir", "empty_lra"], 1, "basic_train.tsv"),
    (["data", "check", "--task", "pathfinder", "--data-dir", "bad_png"], 1, "sample_2.png"),
    (["data", "check", "--task", "listops", "--data-dir", "no_such_dir"], 1, "no_such_dir"),
    (["data", "generate", "--task", "listops", "--out", "gen", "--n=-5"], 2, "--n"),
    (["data", "generate", "--task", "text", "--out", "gen"], 2, "invalid choice: 'text'"),
    (["bench", "--set", "compile"], 2, "expected KEY=VALUE"),
    (["bench", "--models", "transformer", "--set", "chunk_size=16"], 2, "has a config key 'chunk_size'"),
    (["nonsense-command"], 2, "invalid choice: 'nonsense-command'"),
    (["bench", "--lengths", "99999999999999999999"], 2, "must be at most 2147483647"),
    (["bench", "--cell-timeout", "inf"], 2, "positive, finite number"),
    (["run", "--lr", "inf"], 2, "positive, finite number"),
    (["run", "--cache-dir", "afile"], 2, "--cache-dir afile: is a file"),
    (["run", "--data-dir", "typo_dir"], 2, "--data-dir typo_dir: no such folder"),
    (["bench", "--results-dir", ""], 2, "--results-dir is empty"),
    (["bench", "--modes", ""], 2, "--modes '': give train_step and/or forward"),
    (["run", "--skip-train", "--skip-bench"], 2, "leaves nothing to run"),
    (["bench", "--resume", "../elsewhere/20000101-000000-000abcd"], 2, "not a path"),
    (["bench", "--models", "mega_tiny", "--set", "d_model=abc"], 2, "model 'mega_tiny' rejects it"),
    (["bench", "--models", "mega_tiny", "--set", "chunk_size=-5"], 2, "chunk_size=-5 is invalid"),
    (["bench", "--models", "transformer_tiny", "--set", "d_model=abc"], 2, "transformer config: d_model='abc' is invalid"),
    (["bench", "--models", "transfomer_tiny", "--include", "raises.py"], 2, "did you mean 'transformer_tiny'"),
]


@pytest.mark.parametrize("argv,code,fragment", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_invocation(workdir, capsys, argv, code, fragment):
    make_fixtures(workdir)
    try:
        got = main(argv + (["--quiet"] if argv[0] in ("run", "bench") else []))
    except SystemExit as exc:  # argparse inside sub-parsers
        got = exc.code
    err = capsys.readouterr().err
    assert got == code, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert fragment in lines[0], err


def test_battery_is_large_enough():
    assert len(CASES) + 3 >= 30


def test_plugin_raising_on_import_is_recorded(workdir, capsys):
    make_fixtures(workdir)
    code = main(["bench", "--include", "raises.py", "--models", "raises_model,transformer_tiny",
                 "--lengths", "16", *BENCH, "--quiet"])
    assert code == 0
    frame = load_records(workdir / "results")
    assert dict(zip(frame["model"], frame["status"])) == {"raises_model": "error", "transformer_tiny": "ok"}
    assert "plugin import exploded" in frame.loc[frame.model == "raises_model", "error"].item()


def test_model_running_out_of_memory_is_recorded(workdir):
    make_fixtures(workdir)
    code = main(["bench", "--include", "oom_plugin.py", "--models", "oom_model,transformer_tiny",
                 "--lengths", "32,64,128", *BENCH, "--quiet"])
    assert code == 0
    frame = load_records(workdir / "results")
    oom = frame[frame.model == "oom_model"].sort_values("seq_len")
    assert list(oom["status"]) == ["ok", "oom", "skipped"]
    assert set(frame.loc[frame.model == "transformer_tiny", "status"]) == {"ok"}


def test_truncated_records_file_warns_and_keeps_the_rest(workdir, capsys):
    make_fixtures(workdir)
    with pytest.warns(UserWarning, match="records.jsonl:2: skipped a corrupt record"):
        assert main(["table", "--results-dir", "trunc"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "1024" in captured.out or "1k" in captured.out.lower()


def test_resume_with_other_options_is_refused(workdir, capsys):
    """A resumed run keeps its manifest: other cells under it would be measured but not described."""
    assert main(["bench", "--models", "transformer_tiny", "--lengths", "16,32", *BENCH, "--quiet"]) == 0
    run_id = load_records(workdir / "results")["run_id"].iloc[0]
    capsys.readouterr()
    assert main(["bench", "--models", "transformer_tiny", "--lengths", "16", *BENCH, "--quiet",
                 "--resume", run_id]) == 2
    assert "--lengths was '16,32', now '16'" in capsys.readouterr().err
    assert main(["bench", "--models", "transformer_tiny", "--lengths", "16,32", *BENCH, "--resume", run_id]) == 0


def test_failed_cells_are_explained_and_all_failed_exits_non_zero(workdir, capsys):
    """A run whose every cell fails says why on stderr and exits 1; one ok cell keeps exit 0."""
    make_fixtures(workdir)
    assert main(["bench", "--include", "raises.py", "--models", "raises_model", "--lengths", "16", *BENCH,
                 "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "1 of 1 cells failed" in err and "raises_model speed (L=16): " in err and "plugin import exploded" in err
    assert main(["bench", "--include", "raises.py", "--models", "raises_model,transformer_tiny", "--lengths", "16",
                 *BENCH, "--quiet"]) == 0
    assert "1 of 2 cells failed" in capsys.readouterr().err


def test_repeated_seeds_and_modes_run_once():
    from harness.config import RunConfig

    config = RunConfig(seeds="0,0,1", modes="forward,forward").validate()
    assert config.seed_list == [0, 1] and config.mode_list == ["forward"]


def test_json_output_is_one_json_document(workdir, capsys):
    assert main(["run", "--models", "transformer_tiny", "--skip-train", "--lengths", "16", *BENCH[2:],
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["model"] == "transformer_tiny" and "timing" not in rows[0] and rows[0]["timing.median_ms"] > 0

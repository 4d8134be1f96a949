"""Speed/memory runner (measurement.md protocol) and accuracy runner (train.py)."""

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from harness import env
from harness.heads import build_classifier
from harness.bench import Cell, backbone_runtime_info, make_iteration, measure_cell, measure_in_subprocess
from harness.config import RunConfig
from harness.heads import SequenceModel, batch_to, param_groups
from harness.registry import MODELS, TASKS, register_model
from harness.store import RunStore, load_records
from harness.executors import run_unit
from tests.checks import forbid_host_reads
from harness.train import TrainSettings, lr_factor, resolve_settings, train_cell


def sweep(cells, run, done=()):
    """Each model's cells as one in-process speed unit (as the plan makes them), stored in `run`."""
    records = []
    for model in dict.fromkeys(c.model for c in cells):
        job = dict(kind="speed", cells=[dataclasses.asdict(c) for c in cells if c.model == model],
                   isolation="inprocess", timeout=None, done_keys=sorted(done))
        for record in run_unit(job):
            run.append(record)
            records.append(record)
    return records


class FailsAtLength(nn.Module):
    """Raises a given exception once the sequence reaches `at` (simulates OOM and plugin faults)."""

    def __init__(self, d_model, at=10**9, error="oom"):
        super().__init__()
        self.lin = nn.Linear(d_model, d_model)
        self.at, self.error = at, error

    def forward(self, x, padding_mask=None):
        if x.shape[1] >= self.at:
            if self.error == "oom":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 64 GiB")
            if self.error == "nan":
                return self.lin(x) * float("nan")
            if self.error == "shape":
                return self.lin(x)[:, :-1]
            raise RuntimeError("plugin exploded")
        return self.lin(x)


for name, kw in {"t_oom": dict(at=256, error="oom"), "t_raise": dict(at=1, error="raise"),
                 "t_nan": dict(at=1, error="nan"), "t_shape": dict(at=1, error="shape")}.items():
    register_model(name, family="other", paper="test", complexity="O(L)", defaults=dict(d_model=8, **kw),
                   override=True)(lambda **cfg: FailsAtLength(**cfg))


def new_run(tmp_path):
    return RunStore(tmp_path).create(["test"], {}, env.capture())


def cell(model, L, **kw):
    return Cell(model=model, task="listops", seq_len=L, batch_size=2, dtype="fp32", device="cpu",
                mode=kw.pop("mode", "train_step"), warmup=1, iters=3, **kw)


def test_ok_cell_has_protocol_fields():
    r = measure_cell(cell("transformer_tiny", 64))
    assert r["status"] == "ok", r["error"]
    t = r["timing"]
    assert t["n_warmup"] == 1 and t["n_iters"] == 3 and len(t["samples_ms"]) == 3
    assert t["p20_ms"] <= t["median_ms"] <= t["p80_ms"] and t["timer"] == "perf_counter"
    assert r["throughput_tokens_per_s"] == pytest.approx(2 * 64 / (t["median_ms"] / 1e3))
    assert r["n_params"] > 0 and r["model_config_hash"] and r["cell_key"]
    assert "peak_rss_increase_bytes" in r["memory"]
    fwd = measure_cell(cell("transformer_tiny", 64, mode="forward"))
    assert fwd["status"] == "ok" and fwd["mode"] == "forward"


@pytest.mark.parametrize("model,registered", [("mega", 2002), ("mega_chunk_tiny", 2002), ("linformer", 2000)])
def test_fit_length_hook_widens_position_tables(model, registered):
    """A model's `fit_length` hook adapts its config to the cell's length (MEGA's simple bias and
    Linformer's projection are widened to it); the widened value is the recorded config."""
    entry = MODELS.get(model)
    assert entry.config("listops")["max_positions"] == registered
    assert cell(model, 1024).config(entry)["max_positions"] == registered  # long enough: unchanged
    assert cell(model, 8192).config(entry)["max_positions"] == 8192
    assert cell(model, 8192, overrides=dict(max_positions=16384)).config(entry)["max_positions"] == 16384


def test_models_without_a_length_hook_keep_their_config():
    entry = MODELS.get("transformer_tiny")
    assert entry.fit_length is None
    assert cell("transformer_tiny", 8192).config(entry) == entry.config("listops")


def test_runtime_info_is_an_optional_part_of_the_backbone_contract():
    """Only a backbone that reports how it ran (Mamba: which scan) fills the record's `runtime`."""
    mamba = MODELS.get("mamba_tiny").build("listops")
    mamba(torch.randn(1, 8, 32))
    assert backbone_runtime_info(mamba) == {"scan": "torch-chunked"}
    assert backbone_runtime_info(MODELS.get("transformer_tiny").build("listops")) is None
    record = measure_cell(cell("mamba_tiny", 16, mode="forward"))
    assert record["status"] == "ok" and record["runtime"] == {"scan": "torch-chunked"}


def test_oom_then_longer_lengths_skipped_and_next_model_runs(tmp_path):
    run = new_run(tmp_path)
    cells = [cell(m, L) for m in ("t_oom", "transformer_tiny") for L in (512, 128, 256)]
    records = sweep(cells, run)
    by = {(r["model"], r["seq_len"]): r for r in records}
    assert [by[("t_oom", L)]["status"] for L in (128, 256, 512)] == ["ok", "oom", "skipped"]
    assert by[("t_oom", 512)]["error"] == "oom at the shorter length 256"
    assert all(by[("transformer_tiny", L)]["status"] == "ok" for L in (128, 256, 512))
    assert by[("t_oom", 256)]["timing"] is None  # a missing number is absent/null, never 0
    assert len(load_records(tmp_path)) == 6


@pytest.mark.parametrize("model,fragment", [("t_raise", "plugin exploded"),
                                            ("t_nan", "non-finite"),
                                            ("t_shape", "model contract is (B, L, d)")])
def test_faults_become_error_records(model, fragment):
    r = measure_cell(cell(model, 32))
    assert r["status"] == "error" and fragment in r["error"]


def test_resume_skips_measured_cells(tmp_path):
    run = new_run(tmp_path)
    cells = [cell("transformer_tiny", L) for L in (32, 64)]
    first = sweep(cells[:1], run)
    second = sweep(cells, run, done=run.done_keys())
    assert len(first) == 1 and [r["seq_len"] for r in second] == [64]


def test_subprocess_isolation_and_timeout(tmp_path):
    r = measure_in_subprocess(cell("transformer_tiny", 32), timeout=300)
    assert r["status"] == "ok" and r["timing"]["n_iters"] == 3
    slow = measure_in_subprocess(cell("transformer", 2048), timeout=0.5)
    assert slow["status"] == "error" and slow["error"].startswith("timeout")


def test_batch_to_notes_padding_on_the_host():
    """The forward pass is told whether a mask has pads instead of asking the device (a sync), and
    gets the same answer either way."""
    from harness.registry import TASKS

    task = TASKS.get("text").cls
    batch = task().random_batch(3, 12, torch.Generator().manual_seed(0))
    assert batch_to(batch, "cpu")["has_pad"] is False
    batch["mask"][1, 8:] = True
    moved = batch_to(batch, "cpu")
    assert moved["has_pad"] is True and moved["mask"].equal(batch["mask"])
    seen = []

    class Probe(nn.Module):
        def forward(self, x, mask):
            seen.append(mask)
            return x

    model = SequenceModel(Probe(), task.spec, 8).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(moved), model(batch))
        model(batch_to({**batch, "mask": torch.zeros_like(batch["mask"])}, "cpu"))
    assert seen[0] is not None and seen[1] is not None and seen[2] is None


OWN_CODE = tuple(str(Path(__file__).resolve().parents[2] / part) for part in ("harness", "models", "tasks"))
TINY_MODELS = sorted(name for name in MODELS.names() if name.endswith("_tiny") and MODELS.get(name).availability()[0])


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("train", [True, False], ids=["train_step", "forward"])
@pytest.mark.parametrize("model_name", TINY_MODELS)
def test_timed_iteration_never_waits_for_the_device(model_name, train, padded, monkeypatch):
    """A benchmark iteration must not read tensor values on the host: such a read stalls the GPU
    until the host has launched the rest of the step, which charges host overhead to the model."""
    torch.manual_seed(0)
    model, _, _, _ = build_classifier(model_name, "listops", {})
    batch = TASKS.get("listops").cls().random_batch(2, 64, torch.Generator().manual_seed(0))
    if padded:
        batch["mask"][1, 40:] = True
        batch["x"][1, 40:] = 0
    batch = batch_to(batch, "cpu")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if train else None
    model.train(train)
    iteration = make_iteration(model, batch, optimizer, "cpu", "fp32")
    forbid_host_reads(monkeypatch, OWN_CODE)
    bad = iteration()
    monkeypatch.undo()
    assert bad.dtype == torch.bool and not bool(bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("model_name", ["mega_tiny", "mega_chunk_tiny", "transformer_tiny", "s4d_tiny"])
def test_cuda_iteration_has_no_device_sync(model_name):
    """The same on a GPU, where torch itself reports every synchronising call."""
    torch.manual_seed(0)
    model, _, _, _ = build_classifier(model_name, "listops", {})
    model.cuda().train()
    batch = TASKS.get("listops").cls().random_batch(2, 64, torch.Generator().manual_seed(0))
    batch["mask"][1, 40:] = True
    batch = batch_to(batch, "cuda")
    iteration = make_iteration(model, batch, torch.optim.AdamW(model.parameters(), lr=1e-4), "cuda", "bf16")
    iteration()  # first call: lazy library initialisation may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        bad = iteration()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert not bool(bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("model_name", ["mega_tiny", "mega_chunk_tiny", "transformer_tiny", "s4d_tiny"])
def test_cuda_graph_replays_are_the_eager_steps(model_name):
    """--cuda-graphs times replays of one captured step: the same training steps as eager ones, so
    after 3 warm-up steps and 4 replays the weights equal those after 7 eager steps."""
    def weights_after(graphs: bool):
        torch.manual_seed(0)
        model = build_classifier(model_name, "listops", {})[0].cuda().train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, capturable=True)
        batch = TASKS.get("listops").cls().random_batch(2, 64, torch.Generator().manual_seed(0))
        batch["mask"][1, 40:] = True
        iteration = make_iteration(model, batch_to(batch, "cuda"), optimizer, "cuda", "fp32", cuda_graphs=graphs)
        for _ in range(4 if graphs else 7):  # capture itself ran 3 warm-up steps
            bad = iteration()
        torch.cuda.synchronize()
        assert not bool(bad)
        return [p.detach().clone() for p in model.parameters()]

    for eager, graphed in zip(weights_after(False), weights_after(True)):
        torch.testing.assert_close(graphed, eager, rtol=1e-4, atol=1e-5)


def test_host_read_guard_catches_a_read(monkeypatch):
    """The guard above is live: a model that asks the device for a value is caught."""
    class Reads(nn.Module):
        def forward(self, x, padding_mask=None):
            return x * float(x.abs().max().clamp_min(1.0))

    task = TASKS.get("listops").cls
    model = SequenceModel(Reads(), task.spec, 8)
    batch = batch_to(task().random_batch(2, 16, torch.Generator().manual_seed(0)), "cpu")
    iteration = make_iteration(model, batch, None, "cpu", "fp32")
    iteration()  # unguarded, it runs
    forbid_host_reads(monkeypatch, roots=(__file__,))
    with pytest.raises(AssertionError, match="host read of a tensor"):
        iteration()


def test_lr_schedule_warmup_then_linear_decay():
    s = TrainSettings(lr=1e-3, warmup_steps=10, total_steps=110)
    factors = [lr_factor(i, s) for i in range(110)]
    start = 1e-7 / 1e-3  # fairseq starts the warm-up at warmup_init_lr
    assert factors[0] == pytest.approx(start) and factors[5] == pytest.approx(start + (1 - start) * 0.5)
    assert factors[10] == pytest.approx(1.0) and factors[60] == pytest.approx(0.5)
    assert all(a < b for a, b in zip(factors[:10], factors[1:11]))  # rises to the peak at step 10
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert lr_factor(110, s) == 0.0


def test_warmup_power_two_is_quadratic_as_mega_path_x():
    s = TrainSettings(lr=1e-2, warmup_steps=100, warmup_power=2.0, total_steps=200)
    start = 1e-7 / 1e-2
    assert lr_factor(50, s) == pytest.approx(start + (1 - start) * 0.25)
    assert lr_factor(100, s) == pytest.approx(1.0)
    assert MODELS.get("mega").train_config("pathx")["warmup_power"] == 2


def test_param_groups_honour_optim_hints():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[1].weight._optim = {"lr": 1e-3, "weight_decay": 0.0}
    groups = param_groups(model, lr=1e-2, weight_decay=0.1)
    special = [g for g in groups if g["lr"] == 1e-3]
    assert len(special) == 1 and special[0]["weight_decay"] == 0.0 and special[0]["params"][0] is model[1].weight
    assert sum(len(g["params"]) for g in groups) == 4


def test_settings_resolution_order():
    cfg = RunConfig(scale="paper").validate()
    paper = resolve_settings("transformer", "text", cfg)
    assert paper.lr == MODELS.get("transformer").train_config("text")["lr"]
    smoke = resolve_settings("transformer_tiny", "text", RunConfig(scale="smoke", steps=40, lr=0.5).validate())
    assert smoke.total_steps == 40 and smoke.lr == 0.5 and smoke.warmup_steps == 4


def test_train_cell_best_validation_on_test(data_cache):
    cfg = RunConfig(scale="smoke", steps=30, cache_dir=str(data_cache)).validate()
    r = train_cell("transformer_tiny", "listops", 0, cfg, device="cpu", dtype="fp32")
    assert r["status"] == "ok", r["error"]
    m = r["metrics"]
    assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["val_accuracy"] <= 1.0 and 1 <= m["best_step"] <= 30
    assert (r["provenance"]["kind"], r["provenance"]["parameters"]["seed"]) == ("regenerated", 0) and r["train"]["total_steps"] == 30
    assert r["kind"] == "accuracy" and r["higher_is_better"]["accuracy"] is True
    again = train_cell("transformer_tiny", "listops", 0, cfg, device="cpu", dtype="fp32")
    assert again["metrics"]["accuracy"] == m["accuracy"]  # seeded: identical
    assert train_cell("transformer_tiny", "listops", 0, cfg, device="cpu", dtype="fp32",
                      done_keys={r["cell_key"]}) is None


def test_divergence_is_an_error_record(data_cache):
    cfg = RunConfig(scale="smoke", steps=5, cache_dir=str(data_cache)).validate()
    r = train_cell("t_nan", "listops", 0, cfg, device="cpu", dtype="fp32")
    assert r["status"] == "error" and r["error"].startswith("diverged at step 1")

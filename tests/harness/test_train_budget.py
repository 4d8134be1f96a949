"""Fair budgets in the trainer: --time-budget, --cell-timeout (both test the best-validation
weights), learning-rate multipliers, and the typed fields of accuracy records (n_test, hardware,
architecture apart from runtime settings, variant, provenance, input spec)."""

import dataclasses
import time
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

import harness.train as train_module
from harness.config import RunConfig
from harness.records import PROTOCOL_VERSIONS, Provenance, Record, config_hash
from harness.registry import MODELS, TASKS, register_model, register_task
from harness.task import Task, TaskData, TaskSpec
from harness.train import cell_identity, train_cell

TASK = "selective_copy"  # smoke: 128 tokens, 250 test examples with 8 scored positions each
CLOCK = SimpleNamespace(now=0.0)  # virtual seconds: the trainer's clock in the tests that patch it
STEP = 1 / 16  # virtual seconds of one training forward (exact in binary, so sums are exact)


class Slow(nn.Module):
    """A small trainable backbone whose training forward advances the virtual clock by `cost`
    seconds, so a time limit ends training after an exact number of steps on any machine."""

    def __init__(self, d_model, cost):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)
        self.cost = cost

    def forward(self, x, padding_mask=None):
        if self.training:
            CLOCK.now += self.cost
        return x + torch.tanh(self.proj(x))


@register_model("tb_slow", family="other", paper="test", complexity="O(L)",
                defaults=dict(d_model=16, cost=STEP, build_cost=0.0))
def tb_slow(d_model, cost, build_cost, **_):
    CLOCK.now += build_cost  # a slow build (e.g. compilation) eats into --cell-timeout
    return Slow(d_model, cost)


@pytest.fixture
def clock(monkeypatch):
    """The trainer reads the virtual clock (validation and testing take no virtual time)."""
    CLOCK.now = 1000.0
    monkeypatch.setattr(train_module, "time", SimpleNamespace(perf_counter=lambda: CLOCK.now))
    return CLOCK


@register_task("tb_first_token")
class FirstToken(Task):
    """A small sequence task: the class is the first token (ids 2..5), with 40 test examples."""

    spec = TaskSpec(seq_len=12, input_kind="tokens", vocab_size=6, num_classes=4)

    def sizes(self, scale):
        return dict(train=64, val=32, test=40)

    def build(self, split):
        g = torch.Generator().manual_seed(["train", "val", "test"].index(split))
        n = self.sizes(self.scale)[split]
        x = torch.randint(2, 6, (n, 12), generator=g)
        return TaskData(inputs=x, lengths=torch.full((n,), 12), labels=x[:, 0] - 2,
                        provenance=Provenance("stand-in", "first-token-generator"))


def config(data_cache, **kw):
    return RunConfig(scale="smoke", cache_dir=str(data_cache), **kw).validate()


@pytest.fixture
def spy_evaluate(monkeypatch):
    """Records every evaluation: (accuracy, a copy of the weights evaluated); the last call of a cell
    is the test split, the others are validations. `calls.scores`, when set, replaces the accuracy
    of the first evaluations, so that the test knows which validation was the best."""

    class Calls(list):
        scores: list = []

    calls = Calls()
    original = train_module.evaluate

    def spy(model, data, device, dtype, batch_size):
        acc, loss, n = original(model, data, device, dtype, batch_size)
        if len(calls) < len(calls.scores):
            acc = calls.scores[len(calls)]
        weights = torch.cat([v.detach().float().flatten() for v in model.state_dict().values()]).clone()
        calls.append((acc, weights))
        return acc, loss, n

    monkeypatch.setattr(train_module, "evaluate", spy)
    return calls


def every_steps(monkeypatch, n):
    """Validate every `n` steps (the smoke preset validates every 100)."""
    original = train_module.resolve_settings

    def resolve(*args):
        s = original(*args)
        s.eval_every = n
        return s

    monkeypatch.setattr(train_module, "resolve_settings", resolve)


def assert_tested_best_validation_weights(calls, best: int):
    """The test split saw the weights of validation number `best`, not the last weights."""
    *validations, test = calls
    assert len(validations) > best + 1, "the best validation must not be the last one"
    assert torch.equal(test[1], validations[best][1])
    assert not torch.equal(test[1], validations[-1][1])


def test_time_budget_stops_early_and_tests_the_best_weights(data_cache, monkeypatch, clock, spy_evaluate):
    every_steps(monkeypatch, 3)
    spy_evaluate.scores = [0.5, 0.9] + [0.1] * 100  # the second validation (step 6) is the best
    cfg = config(data_cache, steps=200, time_budget=1.0)
    r = train_cell("tb_slow", TASK, 0, cfg, device="cpu", dtype="fp32")
    assert r["status"] == "ok" and r["error"] is None
    m = r["metrics"]
    assert m["stopped"] == "time-budget" and m["steps"] == 16  # 16 steps of 1/16 s fill 1 s
    assert m["train_step_seconds"] == 1.0 and r["train"]["time_budget"] == 1.0
    assert r["train"]["total_steps"] == 200  # the schedule is the resolved one, not compressed
    assert m["best_step"] == 6 and m["val_accuracy"] == 0.9 and m["accuracy"] is not None
    assert len(spy_evaluate) == 5 + 1 + 1  # steps 3..15, one at the stop (16), then the test
    assert_tested_best_validation_weights(spy_evaluate, best=1)


def test_time_budget_before_any_validation_validates_at_the_stop(data_cache, clock, spy_evaluate):
    cfg = config(data_cache, steps=200, time_budget=0.5)  # the smoke preset validates every 100 steps
    r = train_cell("tb_slow", TASK, 0, cfg, device="cpu", dtype="fp32")
    assert r["status"] == "ok", r["error"]
    m = r["metrics"]
    assert m["stopped"] == "time-budget" and m["steps"] == 8
    assert len(spy_evaluate) == 2 and m["best_step"] == 8  # one validation at the stop, then the test
    assert m["val_accuracy"] == spy_evaluate[0][0]
    assert torch.equal(spy_evaluate[1][1], spy_evaluate[0][1])  # tested what was validated


def test_budget_longer_than_training_runs_every_step(data_cache, clock):
    r = train_cell("tb_slow", TASK, 0, config(data_cache, steps=4, time_budget=600.0), device="cpu", dtype="fp32")
    assert r["status"] == "ok" and r["metrics"]["steps"] == 4 and r["metrics"]["stopped"] is None


def test_cell_timeout_tests_the_best_weights(data_cache, monkeypatch, clock, spy_evaluate):
    every_steps(monkeypatch, 4)
    spy_evaluate.scores = [0.9] + [0.1] * 100  # the first validation (step 4) is the best
    cfg = config(data_cache, steps=200, cell_timeout=1.0)
    r = train_cell("tb_slow", TASK, 0, cfg, device="cpu", dtype="fp32")
    assert r["status"] == "ok" and r["error"] is None
    m = r["metrics"]
    assert m["stopped"] == "timeout" and 16 <= m["steps"] <= 17 and 0.0 <= m["accuracy"] <= 1.0
    assert r["train"]["time_budget"] is None and m["best_step"] == 4 and m["val_accuracy"] == 0.9
    assert_tested_best_validation_weights(spy_evaluate, best=0)


def test_cell_timeout_before_the_first_step_is_an_error(data_cache, clock):
    cfg = config(data_cache, steps=10, cell_timeout=0.5, set=["build_cost=2.0"])
    r = train_cell("tb_slow", TASK, 0, cfg, device="cpu", dtype="fp32")
    assert r["status"] == "error" and r["error"].startswith("timeout before the first step")
    assert r["metrics"] == {} and r["variant"] == {"build_cost": 2.0}


def test_cell_timeout_on_the_real_clock(data_cache):
    """Without the virtual clock: a long cell still ends soon after --cell-timeout, tested."""
    t0 = time.perf_counter()
    r = train_cell("tb_slow", TASK, 0, config(data_cache, steps=10**6, cell_timeout=1.0), device="cpu", dtype="fp32")
    assert time.perf_counter() - t0 < 60
    assert r["status"] == "ok" and r["metrics"]["stopped"] == "timeout" and r["metrics"]["steps"] < 10**6
    assert r["metrics"]["accuracy"] is not None


def test_lr_multiplier_scales_the_peak_lr_and_the_cell_key(data_cache, monkeypatch):
    used = []
    original = train_module.param_groups
    monkeypatch.setattr(train_module, "param_groups", lambda model, lr, wd: used.append(lr) or original(model, lr, wd))
    cfg = config(data_cache, steps=2, lr_grid="1/3,1,3")
    one = train_cell("tb_slow", TASK, 0, cfg, device="cpu", dtype="fp32", lr_multiplier=1.0)
    three = train_cell("tb_slow", TASK, 0, cfg, device="cpu", dtype="fp32", lr_multiplier=3.0)
    assert three["train"]["lr"] == pytest.approx(3 * one["train"]["lr"])
    assert used == [one["train"]["lr"], three["train"]["lr"]]  # the optimiser got the scaled lr
    assert (one["train"]["lr_multiplier"], three["train"]["lr_multiplier"]) == (1.0, 3.0)
    assert three["train"]["lr_grid"] == pytest.approx([1 / 3, 1.0, 3.0])
    assert one["cell_key"] != three["cell_key"]
    # resume works per grid point: a finished point is skipped, the others are not
    assert train_cell("tb_slow", TASK, 0, cfg, device="cpu", dtype="fp32", lr_multiplier=1.0,
                      done_keys={one["cell_key"]}) is None
    assert cell_identity("tb_slow", TASK, 0, cfg, device="cpu", dtype="fp32",
                         lr_multiplier=3.0)["key"] == three["cell_key"]
    plain = cell_identity("tb_slow", TASK, 0, config(data_cache, steps=2), device="cpu", dtype="fp32")
    assert "lr_grid" not in plain["base"]["train"] and plain["base"]["train"]["lr_multiplier"] == 1.0


def test_n_test_counts_scored_positions_and_examples(data_cache):
    cfg = config(data_cache, steps=2)
    token = train_cell("tb_slow", TASK, 0, cfg, device="cpu", dtype="fp32")
    labels = TASKS.get(TASK).cls(scale="smoke", seed=0, cache_dir=str(data_cache)).load("test").labels
    assert token["metrics"]["n_test"] == int((labels != -100).sum()) == 250 * 8
    sequence = train_cell("tb_slow", "tb_first_token", 0, cfg, device="cpu", dtype="fp32")
    assert sequence["status"] == "ok" and sequence["metrics"]["n_test"] == 40  # examples, not positions


def test_accuracy_record_fields(data_cache):
    r = train_cell("tb_slow", TASK, 0, config(data_cache, steps=2), device="cpu", dtype="fp32")
    typed = Record.from_dict(r)
    assert typed.provenance.kind == "regenerated" and typed.provenance.source
    assert typed.hardware.device_name and typed.hardware.host
    assert typed.scale == "smoke" and typed.protocol_version == PROTOCOL_VERSIONS["accuracy"]
    assert typed.variant == {} and typed.model_config_hash == config_hash(typed.model_config)
    assert typed.metrics["steps"] == 2 and typed.metrics["stopped"] is None


def test_runtime_settings_are_apart_from_the_architecture(data_cache):
    cfg = config(data_cache, steps=1, set=["softmax_kernel=matmul", "compile=false"])
    r = train_cell("mega_tiny", TASK, 0, cfg, device="cpu", dtype="fp32")
    assert r["status"] == "ok", r["error"]
    assert r["runtime_config"]["softmax_kernel"] == "matmul" and "softmax_kernel" not in r["model_config"]
    assert r["runtime_config"]["compile"] is False and "compile" not in r["model_config"]
    # the variant labels the row by what differs from the registered config (compile=false does not)
    assert r["variant"] == {"softmax_kernel": "matmul"}
    default = cell_identity("mega_tiny", TASK, 0, config(data_cache, steps=1), device="cpu", dtype="fp32")["base"]
    assert r["model_config"] == default["model_config"]
    assert r["model_config_hash"] == default["model_config_hash"] == config_hash(default["model_config"])
    assert set(r["runtime_config"]) == set(MODELS.get("mega_tiny").runtime_keys)


def test_classifier_uses_the_task_instances_input_spec(data_cache, monkeypatch):
    cfg = config(data_cache, steps=1)
    plain = train_cell("tb_slow", TASK, 0, cfg, device="cpu", dtype="fp32")
    cls = TASKS.get(TASK).cls
    wider = dataclasses.replace(cls.spec, vocab_size=cls.spec.vocab_size + 5)
    monkeypatch.setattr(cls, "input_spec", lambda self: wider, raising=False)
    r = train_cell("tb_slow", TASK, 0, cfg, device="cpu", dtype="fp32")
    assert r["n_params"] == plain["n_params"] + 5 * 16  # five more embedding rows of d_model 16


def test_an_unreadable_checkpoint_is_a_logged_warning_and_moved_aside(tmp_path, caplog):
    path = tmp_path / "cell.pt"
    path.write_bytes(b"not a checkpoint")
    with caplog.at_level("WARNING", logger="harness.train"):
        assert train_module._load_checkpoint(path) is None
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "is unreadable" in caplog.records[0].getMessage() and "restarts from step 0" in caplog.text
    assert not path.exists() and (tmp_path / "cell.pt.damaged").exists()

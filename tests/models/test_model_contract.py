"""The model contract, checked once for every built-in model (tiny variants on CPU):
registration metadata, forward/backward, padding invariance, bf16 autocast, and the LRA
"apples-to-apples" parameter budget of the baselines."""

import pytest
import torch

import harness_models  # noqa: F401  (registers every built-in family)
from harness.errors import UserError
from harness.heads import count_parameters
from harness.registry import FAMILIES, MODELS
from tests.checks import LRA_TASKS, assert_every_parameter_gets_a_gradient, assert_padding_invariant, pad_mask

TRAIN_KEYS = {"lr", "weight_decay", "batch_size", "warmup_steps", "total_steps"}
BUILTIN = [n for n in MODELS.names() if MODELS.get(n).origin.startswith("harness_models.") and not n.endswith("_tiny")]
RUNNABLE = [n for n in BUILTIN if MODELS.get(n).availability()[0]]
BUDGETED = ("s4", "s4d", "linear_transformer", "performer", "mamba", "bigbird", "luna")  # within 10% of the Transformer


@pytest.mark.parametrize("name", BUILTIN)
def test_registration_metadata(name):
    entry = MODELS.get(name)
    assert entry.family in FAMILIES and entry.paper and entry.complexity.startswith("O(")
    assert "d_model" in entry.defaults
    assert set(LRA_TASKS) <= set(entry.task_configs), "per-task defaults for every LRA task"
    for task in entry.train_configs:
        assert set(entry.train_config(task)) - {"betas", "warmup_power"} == TRAIN_KEYS
    tiny = MODELS.get(f"{name}_tiny")
    assert tiny.tiny_of == name and tiny.config()["d_model"] <= 64


@pytest.mark.parametrize("name", RUNNABLE)
def test_forward_backward_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = MODELS.get(f"{name}_tiny").build()
    d = MODELS.get(f"{name}_tiny").config()["d_model"]
    assert_every_parameter_gets_a_gradient(model, torch.randn(2, 24, d), pad_mask([24, 17], 24), nonzero=False)


@pytest.mark.parametrize("name", RUNNABLE)
def test_padding_does_not_change_real_positions(name):
    torch.manual_seed(0)
    model = MODELS.get(f"{name}_tiny").build().eval()
    d = MODELS.get(f"{name}_tiny").config()["d_model"]
    with torch.no_grad():
        assert_padding_invariant(model, d, real=12, extra=6, scale=7.0)


@pytest.mark.parametrize("name", RUNNABLE)
def test_bf16_autocast_stays_close_to_fp32(name):
    torch.manual_seed(0)
    model = MODELS.get(f"{name}_tiny").build().eval()
    d = MODELS.get(f"{name}_tiny").config()["d_model"]
    x = torch.randn(2, 32, d)
    with torch.no_grad():
        ref = model(x, None)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, None).float()
    rel = (low - ref).norm() / ref.norm()
    assert rel < 0.05, float(rel)


@pytest.mark.parametrize("name", BUDGETED)
@pytest.mark.parametrize("task", LRA_TASKS)
def test_parameter_budget_within_10_percent_of_the_transformer(name, task):
    ours = count_parameters(MODELS.get(name).build(task))
    ref = count_parameters(MODELS.get("transformer").build(task))
    assert abs(ours / ref - 1) <= 0.10, (ours, ref)


@pytest.mark.parametrize("name", BUILTIN)
def test_unknown_config_key_is_one_clear_line(name):
    """Every family builds its config dataclass from the factory's keywords: a key it does not have
    is a one-line UserError naming the known keys (not a TypeError from deep inside a constructor)."""
    entry = MODELS.get(f"{name}_tiny")
    with pytest.raises(UserError) as err:
        entry.factory(**entry.config(), colour="red")
    message = str(err.value)
    assert "unknown key(s) colour" in message and "d_model" in message and "\n" not in message

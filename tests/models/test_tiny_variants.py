"""The built-in `*_tiny` variants are a fair comparison (statistics.md, fair budgets): on every LRA
task the whole classifier (embedding, backbone, head, as the harness builds it) of each tiny variant
is within 10% of every other in parameters, and all of them train with the same dropout, whatever
the per-task configs they inherit set."""

import pytest
import torch.nn as nn

import harness_models  # noqa: F401  (registers every built-in family)
from harness.heads import build_classifier
from harness.heads import count_parameters
from harness.registry import MODELS

LRA_TASKS = ("image", "listops", "text", "retrieval", "pathfinder", "pathx")
# The families the default suite and the accuracy tables compare; more built-ins are checked too.
EXPECTED = {"mega", "mega_chunk", "transformer", "transformer_vanilla", "s4", "s4d", "mamba", "reformer", "linformer", "bigbird", "luna", "s4_v1", "s4_v2",
            "linear_transformer", "performer"}
TINY = sorted(n for n in MODELS.names()
              if n.endswith("_tiny") and MODELS.get(n).origin.startswith("harness_models."))
BUILDABLE = [n for n in TINY if MODELS.get(n).availability()[0]]


def test_every_compared_family_has_a_tiny_variant():
    assert {f"{name}_tiny" for name in EXPECTED} <= set(BUILDABLE)


@pytest.mark.parametrize("task", LRA_TASKS)
def test_tiny_variants_are_parameter_matched_within_10_percent(task):
    counts = {name: count_parameters(build_classifier(name, task)[0]) for name in BUILDABLE}
    assert max(counts.values()) / min(counts.values()) <= 1.10, counts


def dropout_settings(config: dict) -> tuple[set, set]:
    """(rates, switches) of a resolved config's dropout-like keys: numbers such as dropout,
    attn_dropout, hidden_dropout; booleans such as tie_dropout, feature_dropout."""
    items = [v for k, v in config.items() if "dropout" in k.lower()]
    return {v for v in items if not isinstance(v, bool)}, {v for v in items if isinstance(v, bool)}


@pytest.mark.parametrize("task", LRA_TASKS)
def test_tiny_variants_share_one_dropout(task):
    rates, switches = set(), set()
    for name in TINY:
        config = MODELS.get(name).config(task)
        assert "dropout" in config, f"{name}: the harness's head reads `dropout` from the config"
        r, s = dropout_settings(config)
        rates |= r
        switches |= s
    assert len(rates) == 1, f"{task}: dropout rates {sorted(rates)} differ between tiny variants"
    assert len(switches) <= 1, f"{task}: dropout switches {sorted(switches)} differ"


@pytest.mark.parametrize("task", ("image", "listops"))
def test_built_dropout_modules_use_the_shared_rate(task):
    """What the configs say is what the modules do: every dropout layer in every built classifier
    (embedding, backbone, head) has the shared rate, so no dropout hides outside the config keys."""
    shared = MODELS.get("transformer_tiny").config(task)["dropout"]
    for name in BUILDABLE:
        model = build_classifier(name, task)[0]
        rates = {m.p for m in model.modules()
                 if isinstance(m, nn.modules.dropout._DropoutNd) or "dropout" in type(m).__name__.lower()}
        assert rates == {shared}, (name, rates)

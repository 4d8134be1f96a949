"""Issue 13, faults: a bad model configuration is a one-line usage error (never a zero-layer model
stored as ok), and a quoted `~` in a folder option reaches the real home folder."""

from __future__ import annotations

import pytest
import torch

from harness.cli import main
from harness.config import RunConfig
from harness.errors import UserError
from harness.registry import MODELS
from harness.validate import check_config


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- every family rejects a bad value at construction -----------------------------------------------

BAD = [  # (model, overrides, fragment of the one-line message)
    ("transformer_tiny", dict(n_layers=-1), "transformer config: n_layers=-1 is invalid; expected a positive"),
    ("transformer_tiny", dict(n_layers=0), "n_layers=0 is invalid"),
    ("transformer_vanilla_tiny", dict(n_heads=3), "n_heads=3 is invalid; expected a divisor of d_model=32"),
    ("transformer_tiny", dict(d_ffn=2.5), "d_ffn=2.5 is invalid"),
    ("transformer_tiny", dict(dropout=1.0), "dropout=1.0 is invalid; expected a probability in [0, 1)"),
    ("transformer_tiny", dict(attn_dropout=-0.1), "attn_dropout=-0.1 is invalid"),
    ("transformer_tiny", dict(positions="learned"), "positions='learned' is invalid; expected sinusoidal | none"),
    ("transformer_tiny", dict(n_layers=True), "n_layers=True is invalid"),
    ("linear_transformer_tiny", dict(n_layers=-1), "linear_transformer config: n_layers=-1 is invalid"),
    ("linear_transformer_tiny", dict(chunk_size=0), "chunk_size=0 is invalid"),
    ("linear_transformer_tiny", dict(causal="no"), "causal='no' is invalid; expected true or false"),
    ("performer_tiny", dict(nb_features=-4), "performer config: nb_features=-4 is invalid; expected a positive "
                                             "integer or None"),
    ("performer_tiny", dict(feature_scaling=2), "feature_scaling=2 is invalid; expected 0 | 1"),
    ("performer_tiny", dict(d_model=30, n_heads=4), "n_heads=4 is invalid; expected a divisor of d_model=30"),
    ("s4d_tiny", dict(n_layers=-1), "s4d config: n_layers=-1 is invalid"),
    ("s4d_tiny", dict(d_state=7), "d_state=7 is invalid; expected an even integer"),
    ("s4d_tiny", dict(disc="euler"), "disc='euler' is invalid; expected zoh | bilinear"),
    ("s4d_tiny", dict(n_ssm=5), "n_ssm=5 is invalid; expected None or a divisor of d_model=32"),
    ("s4_tiny", dict(init="lin"), "s4 config: init='lin' is invalid; expected legs with mode='dplr'"),
    ("s4_tiny", dict(norm="group"), "norm='group' is invalid"),
    ("s4_tiny", dict(dt_min=0.5, dt_max=0.1), "dt_min=0.5 is invalid; expected at most dt_max=0.1"),
    ("s4_tiny", dict(prenorm="no"), "prenorm='no' is invalid"),
    ("mamba_tiny", dict(n_layers=-1), "mamba config: n_layers=-1 is invalid"),
    ("mamba_tiny", dict(expand=0), "expand=0 is invalid; expected a positive, finite number"),
    ("mamba_tiny", dict(d_conv=0), "d_conv=0 is invalid"),
    ("mamba_tiny", dict(dt_rank="big"), "dt_rank='big' is invalid; expected 'auto' or a positive integer"),
    ("mamba_tiny", dict(scan="fast"), "scan='fast' is invalid; expected auto | torch | sequential | mamba_ssm"),
    ("mamba_tiny", dict(chunk_size=-2), "chunk_size=-2 is invalid"),
]


@pytest.mark.parametrize("model,overrides,fragment", BAD, ids=[f"{m}-{o}" for m, o, _ in BAD])
def test_family_rejects_bad_config(model, overrides, fragment):
    with torch.device("meta"), pytest.raises(UserError) as err:
        MODELS.get(model).build(overrides=overrides)
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message and err.value.exit_code == 2


GOOD = [  # edge values every family must still accept
    ("transformer_tiny", dict(n_layers=1, n_heads=1, dropout=0.0, positions="none")),
    ("linear_transformer_tiny", dict(causal=True, chunk_size=8)),
    ("performer_tiny", dict(nb_features=None, redraw_interval=0)),
    ("s4d_tiny", dict(n_ssm=None, lr_dt=None, disc="bilinear", init="inv")),
    ("s4_tiny", dict(norm="layer", prenorm=False, d_state=2)),
    ("mamba_tiny", dict(expand=1.5, dt_rank=3, chunk_size=None, scan="sequential")),
]


@pytest.mark.parametrize("model,overrides", GOOD, ids=[m for m, _ in GOOD])
def test_family_accepts_edge_configs(model, overrides):
    with torch.device("meta"):
        backbone = MODELS.get(model).build(overrides=overrides)
    assert sum(1 for _ in backbone.parameters()) > 0


def test_check_config_kinds():
    config = dict(n=3, p=0.5, flag=True, kind="a", maybe=None)
    check_config("demo", config, positive=("n",), probability=("p",), flags=("flag",),
                 choices=dict(kind=("a", "b")), nonnegative=("maybe",), optional=("maybe",))
    for key, value in [("n", 3.0), ("p", float("nan")), ("flag", 1), ("kind", "c"), ("maybe", -1)]:
        with pytest.raises(UserError, match=f"demo config: {key}="):
            check_config("demo", dict(config, **{key: value}), positive=("n",), probability=("p",),
                         flags=("flag",), choices=dict(kind=("a", "b")), nonnegative=("maybe",),
                         optional=("maybe",))


@pytest.mark.parametrize("model", ["transformer", "s4d", "mamba", "linear_transformer"])
def test_cli_rejects_zero_layer_model(workdir, capsys, model):
    code = main(["run", "--models", model, "--set", "n_layers=-1", "--skip-bench", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith(f"error: --set n_layers=-1: model '{model}' rejects it:")
    assert "n_layers=-1 is invalid" in err
    assert not (workdir / "results").exists()  # refused before a run folder was created


# -- a quoted ~ in a folder option ------------------------------------------------------------------

def test_tilde_is_expanded_in_folder_options(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lra").mkdir()
    config = RunConfig(results_dir="~/x", cache_dir="~/cache", data_dir="~/lra").validate()
    assert config.results_dir == str(tmp_path / "x")
    assert config.cache_dir == str(tmp_path / "cache")
    assert config.data_dir == str(tmp_path / "lra")
    assert not (tmp_path / "~").exists()


def test_tilde_data_dir_missing_names_what_was_given(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(UserError, match="--data-dir ~/nowhere: no such folder"):
        RunConfig(data_dir="~/nowhere").validate()

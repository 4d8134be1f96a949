"""Sweeps (issue 14, item 3): `--sweep KEY=V1,V2` and `--set KEY=V1,V2` run every value as its own
labelled variant row (several keys: their product), for `run` and `bench` alike."""

import pytest

import harness
from harness.cli import main
from harness.config import RunConfig
from harness.errors import UserError
from harness.records import row_label


def test_a_comma_list_in_set_is_a_sweep_and_sweeps_multiply():
    config = RunConfig(set=["attention=softmax,relu2,laplace", "compile=true"], sweep=["chunk_size=16,64"])
    grid = config.override_grid
    assert len(grid) == 6 and all(point["compile"] is True for point in grid)
    assert [(p["attention"], p["chunk_size"]) for p in grid[:2]] == [("softmax", 16), ("softmax", 64)]
    assert config.model_overrides == {"compile": True} and config.swept_keys == ["attention", "chunk_size"]
    variants = config.variants()
    assert [v.model_overrides["attention"] for v in variants[::2]] == ["softmax", "relu2", "laplace"]
    assert all(v.swept_keys == ["attention", "chunk_size"] and v.variants() == [v] for v in variants)


def test_one_json_value_is_not_a_sweep():
    config = RunConfig(set=["dims=[1,2]", "name=\"a,b\""], sweep=["h=[2,4]"])
    assert config.override_grid == [{"dims": [1, 2], "name": "a,b", "h": 2}, {"dims": [1, 2], "name": "a,b", "h": 4}]
    assert RunConfig(sweep=["h_dim=8"]).swept_keys == ["h_dim"]  # one value, still labelled as a sweep


@pytest.mark.parametrize("items, fragment", [
    (dict(set=["a=1,,2"]), "an empty value"),
    (dict(set=["a=1"], sweep=["a=2,3"]), "a is given twice"),
    (dict(sweep=["no-equals"]), "expected KEY=VALUE"),
])
def test_bad_sweeps_are_one_line_errors(items, fragment):
    with pytest.raises(UserError, match=fragment):
        RunConfig(**items).validate()


def test_cli_sweep_of_an_unknown_key_is_refused_before_any_run(workdir, capsys):
    code = main(["bench", "--models", "transformer_tiny", "--sweep", "no_such_key=1,2", "--lengths", "16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no_such_key" in err[0]
    assert not (workdir / "results").exists() or not any((workdir / "results").iterdir())


def test_run_sweep_gives_one_labelled_row_per_value(tmp_path, data_cache):
    config = RunConfig(models="transformer", tasks="image", seeds="0", steps=2, batch_size=4, skip_bench=True,
                       no_reference_rows=True, no_report=True, quiet=True, set=["n_layers=1,2"],
                       results_dir=str(tmp_path), cache_dir=str(data_cache))
    records = harness.run(config).records
    labels = [row_label(r.model, r.variant) for r in records]
    # n_layers=1 may be the registered value: in a sweep it is named all the same
    assert labels == ["transformer_tiny [n_layers=1]", "transformer_tiny [n_layers=2]"]
    assert len({r.cell_key for r in records}) == 2 and {r.model_config["n_layers"] for r in records} == {1, 2}


def test_bench_sweep_measures_each_value_and_groups_its_rows(tmp_path):
    from harness.report import tables
    from harness.store import load_records

    config = RunConfig(models="mega_chunk_tiny", sweep=["chunk_size=8,16"], lengths="32,64", batch_size=1,
                       bench_task="listops", warmup=0, iters=1, isolation="inprocess", quiet=True,
                       results_dir=str(tmp_path))
    records = harness.run(config, command="bench").records
    assert [(r.variant, r.seq_len, r.status) for r in records] == [
        ({"chunk_size": 8}, 32, "ok"), ({"chunk_size": 8}, 64, "ok"),
        ({"chunk_size": 16}, 32, "ok"), ({"chunk_size": 16}, 64, "ok")]
    text = tables.render_all(load_records(tmp_path), fmt="markdown")
    rows = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| mega_chunk_tiny")]
    assert "mega_chunk_tiny [chunk_size=8]" in rows and "mega_chunk_tiny [chunk_size=16]" in rows

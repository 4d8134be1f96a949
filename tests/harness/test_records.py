"""Typed records (schema 2): validation, the reader for schema-1 lines, and the committed reference results."""

import json
from pathlib import Path

import pytest

from harness.records import (LEGACY_RUNTIME_DEFAULTS, Provenance, Record, RecordError, config_hash, row_label)
from harness.store import RunStore, load_records, make_record

REFERENCE = Path(__file__).resolve().parents[2] / "results" / "reference"


@pytest.mark.parametrize("text, kind, source, subset", [
    ("official-release", "official", "lra-release", None),
    ("official-release(subset n<=2000/250/250, seq_len=256, seed=0)", "official", "lra-release",
     "n<=2000/250/250, seq_len=256, seed=0"),
    ("user-data(imdb aclimdb; subset n=2000/250/250, seq_len=256)", "user", "imdb aclimdb",
     "subset n=2000/250/250, seq_len=256"),
    ("regenerated(seed=3, n=2000/250/250, length=21-119, max_depth=10, max_args=10)", "regenerated",
     "generator", "n=2000/250/250"),
    ("stand-in(fashion-mnist; 28x28 padded to 32x32, n=2000/250/250)", "stand-in", "fashion-mnist",
     "28x28 padded to 32x32, n=2000/250/250"),
    ("synthetic-inputs(random tokens)", "random-inputs", "random tokens", None),
])
def test_schema1_provenance_strings_become_typed(text, kind, source, subset):
    p = Provenance.from_legacy(text)
    assert (p.kind, p.source, p.subset) == (kind, source, subset)
    assert p.lra_data == (kind in ("official", "regenerated") and subset is None)


def test_a_subset_of_the_official_release_is_official_but_never_lra_data():
    whole = Provenance.from_legacy("official-release")
    part = Provenance.from_legacy("official-release(subset n<=2000/250/250, seq_len=256, seed=0)")
    assert whole.kind == part.kind == "official" and whole.lra_data and not part.lra_data


def v1_line(**fields):
    line = dict(schema_version=1, kind="speed", model="mega_chunk", status="ok", task="text", device="cuda",
                seq_len=4096, batch_size=25, mode="train_step", provenance="synthetic-inputs(random tokens)",
                model_config=dict(d_model=128, chunk_size=128, impl="fast", compile=True,
                                  compile_mode="reduce-overhead", softmax_kernel="auto"),
                model_config_hash="0123456789ab", timing=dict(median_ms=18.1, p20_ms=18.0, p80_ms=18.3),
                memory=dict(peak_allocated_bytes=4 * 2**30), metrics={})
    line.update(fields)
    return line


def test_schema1_lines_split_runtime_settings_and_take_hardware_from_the_manifest():
    manifest = {"environment": {"gpus": [{"name": "NVIDIA H100 80GB HBM3"}], "hostname": "gpu-1", "cpu": "EPYC"}}
    record = Record.from_dict(v1_line(), manifest)
    assert record.schema_version == 2 and record.protocol_version == 1
    assert record.model_config == {"d_model": 128, "chunk_size": 128}
    assert record.runtime_config == {"impl": "fast", "compile": True, "compile_mode": "reduce-overhead",
                                     "softmax_kernel": "auto"}
    # only what differs from the default way of running labels the row
    assert record.variant == {"compile": True, "compile_mode": "reduce-overhead"}
    assert record.label == "mega_chunk [compile=true, compile_mode=reduce-overhead]"
    assert record.model_config_hash == config_hash({"d_model": 128, "chunk_size": 128})
    assert record.hardware.device_name == "NVIDIA H100 80GB HBM3" and record.hardware.host == "gpu-1"
    cpu = Record.from_dict(v1_line(device="cpu"), manifest)
    assert cpu.hardware.device_name == "EPYC"


def test_eager_and_compiled_schema1_records_share_the_architecture_hash():
    eager = Record.from_dict(v1_line(model_config=dict(d_model=128, chunk_size=128, **LEGACY_RUNTIME_DEFAULTS)))
    compiled = Record.from_dict(v1_line())
    assert eager.model_config_hash == compiled.model_config_hash
    assert eager.label == "mega_chunk" and compiled.label != eager.label


@pytest.mark.parametrize("bad, reason", [
    (dict(status="fine"), "status"),
    (dict(kind="other"), "kind"),
    (dict(seq_len="4096"), "seq_len"),
    (dict(model=3), "model"),
    (dict(provenance=dict(kind="rumour", source="x")), "provenance kind"),
    (dict(timing=dict(p20_ms=1.0)), "timing"),
])
def test_invalid_lines_are_record_errors(bad, reason):
    line = v1_line(schema_version=2, provenance=None, **{k: v for k, v in bad.items() if k != "provenance"})
    if "provenance" in bad:
        line["provenance"] = bad["provenance"]
    with pytest.raises(RecordError, match=reason):
        Record.from_dict(line)


def test_a_new_record_is_typed_and_round_trips(tmp_path):
    run = RunStore(tmp_path).create(["test"], {}, {"hostname": "h", "cpu": "c", "gpus": []})
    run.append(make_record(kind="accuracy", model="mega_tiny", status="ok", task="image", seed=0, scale="smoke",
                           variant={"attention": "laplace"}, metrics=dict(accuracy=0.6, n_test=2000),
                           provenance=Provenance("stand-in", "fashion-mnist", subset="n=5000/1000/2000")))
    stored = json.loads(run.records_path.read_text().splitlines()[0])
    assert stored["schema_version"] == 2 and stored["provenance"]["kind"] == "stand-in"
    frame = load_records(tmp_path)
    row = frame.iloc[0]
    assert row["label"] == "mega_tiny [attention=laplace]" and row["provenance.source"] == "fashion-mnist"
    assert not row["lra_eligible"]  # smoke scale, stand-in data


def test_only_paper_scale_runs_on_whole_lra_data_are_lra_eligible():
    def eligible(scale, provenance):
        return Record(kind="accuracy", model="m", status="ok", scale=scale, provenance=provenance).lra_eligible

    regenerated = Provenance("regenerated", "listops-generator")
    assert eligible("paper", regenerated)
    assert not eligible("smoke", regenerated)
    assert not eligible("paper", Provenance("regenerated", "listops-generator", subset="n=2000/250/250"))
    assert not eligible("paper", Provenance("stand-in", "fashion-mnist"))
    assert not eligible("paper", Provenance("user", "my copy"))


def test_row_label_of_no_variant_is_the_model_name():
    assert row_label("transformer", {}) == "transformer" and row_label("transformer", None) == "transformer"


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="no committed reference results")
def test_committed_reference_results_load_as_typed_records():
    frame = load_records(REFERENCE / "h100-2026-11-22")
    assert len(frame) > 50 and set(frame["schema_version"]) == {2} and set(frame["protocol_version"]) == {1}
    assert set(frame["provenance.kind"]) == {"random-inputs"}
    assert set(frame["hardware.device_name"]) == {"NVIDIA H100 80GB HBM3"}
    compiled = load_records(REFERENCE / "h100-2026-11-22-compiled")
    labels = set(compiled["label"])
    assert "mega_chunk [compile=true, compile_mode=reduce-overhead]" in labels
    assert "transformer" in labels  # the eager reference keeps its bare name
    ablation = load_records(REFERENCE / "h100-2026-11-22-compiled-ablation-sdpa")
    assert any("softmax_kernel=sdpa" in label for label in ablation["label"])

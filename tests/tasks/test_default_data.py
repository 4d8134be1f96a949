"""The default data: the embedded Fashion-MNIST subset behind the Image task at smoke scale, the pixel
statistics each Image source is embedded with, and the smoke-scale MQAR vocabulary."""

from __future__ import annotations

import hashlib
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.errors import UserError
from harness_tasks.image import (CIFAR_STATS, EMBEDDED_FASHION, FASHION_FILES, FASHION_MNIST_DIR, FASHION_STATS, SCALES,
                         SHAPES_STATS, ImageTask, ImageTokens, read_fashion_mnist, synthetic_shapes)
from harness_tasks.synthetic import MQAR, MQAR_VOCAB, InductionHeads, SelectiveCopy

README = EMBEDDED_FASHION.parent / "README.md"
HAVE_DEBIAN = all((FASHION_MNIST_DIR / f).is_file() for pair in FASHION_FILES.values() for f in pair)
needs_debian = pytest.mark.skipif(not HAVE_DEBIAN, reason="Debian's dataset-fashion-mnist is not installed")
SPLITS = ("train", "val", "test")


def embedded_task(tmp_path, cls=ImageTask, **kw) -> ImageTask:
    """The image task with the Debian copy hidden, as on a machine without it."""
    return cls(options={"fashion_mnist_dir": str(tmp_path / "no-debian-copy"), **kw.pop("options", {})}, **kw)


# -- the embedded file -----------------------------------------------------------------------------
def test_embedded_file_holds_the_smoke_splits_and_matches_its_readme():
    raw = EMBEDDED_FASHION.read_bytes()
    assert len(raw) < 3 * 2 ** 20
    notes = README.read_text()
    assert hashlib.sha256(raw).hexdigest() in re.findall(r"[0-9a-f]{64}", notes)
    assert f"{len(raw):,} bytes" in notes
    for needed in ("MIT", "Zalando SE", "0.0~git20200523.55506a9-1", "github.com/zalandoresearch/fashion-mnist",
                   "python -m harness_tasks.data.build_fashion_mnist"):
        assert needed in notes
    with np.load(EMBEDDED_FASHION) as z:
        for split in SPLITS:
            n = SCALES["smoke"][split]
            assert z[f"{split}_pixels"].shape == (n, 256) and z[f"{split}_pixels"].dtype == np.uint8
            assert z[f"{split}_labels"].shape == (n,) and set(np.unique(z[f"{split}_labels"])) == set(range(10))
        assert not set(z["train_index"]) & set(z["val_index"])  # val is carved out of the training images
        assert z["test_index"].tolist() == list(range(SCALES["smoke"]["test"]))


def test_default_image_task_reads_the_embedded_subset(tmp_path):
    task = embedded_task(tmp_path, scale="smoke", seed=0, cache_dir=tmp_path / "cache")
    assert task.source_name == "fashion-mnist-embedded"
    parts = {s: task.load(s) for s in SPLITS}
    assert [tuple(parts[s].inputs.shape) for s in SPLITS] == [(5000, 256), (1000, 256), (2000, 256)]
    prov = parts["train"].provenance
    assert (prov.kind, prov.source, prov.subset) == ("stand-in", "fashion-mnist", "n=5000/1000/2000, pool=2 (16x16)")
    assert "embedded" in prov.parameters["copy"]
    assert prov.parameters["sha256"] == hashlib.sha256(EMBEDDED_FASHION.read_bytes()).hexdigest()
    again = embedded_task(tmp_path, scale="smoke", seed=0, cache_dir=tmp_path / "cache").load("train")
    assert again.provenance == prov and torch.equal(again.inputs, parts["train"].inputs)  # through the cache
    tokens = embedded_task(tmp_path, cls=ImageTokens, scale="smoke", seed=0).build("test")
    assert torch.equal(tokens.inputs.long(), parts["test"].inputs.long() + 1)
    spec = task.input_spec()
    assert (spec.real_mean, spec.real_std) == FASHION_STATS and ImageTask.spec.real_mean == CIFAR_STATS[0]
    assert ImageTokens(scale="smoke").input_spec() is ImageTokens.spec  # token inputs have no statistics


@needs_debian
def test_embedded_subset_equals_the_full_debian_copy(tmp_path):
    full = ImageTask(scale="smoke", seed=0)
    embedded = embedded_task(tmp_path, scale="smoke", seed=0)
    assert full.source_name == "fashion-mnist" and embedded.source_name == "fashion-mnist-embedded"
    for split in SPLITS:
        a, b = full.build(split), embedded.build(split)
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels), split
    assert full.input_spec() == embedded.input_spec()
    assert "Debian" in full.provenance.parameters["copy"]


@needs_debian
def test_build_script_rebuilds_the_committed_arrays(tmp_path):
    from harness_tasks.data.build_fashion_mnist import main

    out = tmp_path / "rebuilt.npz"
    assert main(["--out", str(out)]) == 0
    with np.load(out) as new, np.load(EMBEDDED_FASHION) as committed:
        assert sorted(new.files) == sorted(committed.files)
        for name in committed.files:
            np.testing.assert_array_equal(new[name], committed[name], err_msg=name)
    assert main(["--source", str(tmp_path), "--out", str(tmp_path / "x.npz")]) == 2  # no IDX files there


@needs_debian
def test_fashion_mnist_statistics_are_those_of_the_padded_training_images():
    images, _ = read_fashion_mnist(FASHION_MNIST_DIR, "train")
    assert images.shape == (60000, 32, 32)
    counts = np.bincount(images.ravel(), minlength=256)  # exact moments from the pixel histogram
    levels = np.arange(256) / 255
    mean = (counts * levels).sum() / counts.sum()
    std = np.sqrt((counts * (levels - mean) ** 2).sum() / counts.sum())
    assert abs(mean - FASHION_STATS[0]) < 1e-3 and abs(std - FASHION_STATS[1]) < 1e-3


def test_synthetic_shapes_statistics():
    images, _ = synthetic_shapes(2000, seed=[11, 0])
    values = images.astype(np.float64) / 255
    assert abs(values.mean() - SHAPES_STATS[0]) < 5e-3 and abs(values.std() - SHAPES_STATS[1]) < 5e-3


def test_other_scales_and_seeds_fall_back_to_labelled_shapes_with_a_warning(tmp_path, caplog):
    for kw in (dict(scale="smoke", seed=1), dict(scale="small", seed=0), dict(scale="smoke", options={"pool": 1})):
        task = embedded_task(tmp_path, **kw)
        caplog.clear()
        assert task.source_name == "synthetic-shapes"
        assert "embedded Fashion-MNIST subset serves only" in caplog.text
        assert (task.provenance.kind, task.provenance.source) == ("stand-in", "synthetic-shapes")
        assert (task.input_spec().real_mean, task.input_spec().real_std) == SHAPES_STATS


def write_cifar(root: Path, per_batch: int = 20) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch))


def test_cifar_is_official_data_with_its_own_statistics(tmp_path):
    write_cifar(tmp_path)
    paper = ImageTask(scale="paper", seed=0, data_dir=tmp_path)
    prov = paper.provenance
    assert (prov.kind, prov.source, prov.subset) == ("official", "cifar-10", None) and prov.lra_data
    assert prov.parameters["split_seed"] == 0
    assert (paper.input_spec().real_mean, paper.input_spec().real_std) == CIFAR_STATS
    smoke = ImageTask(scale="smoke", seed=0, data_dir=tmp_path).provenance
    assert smoke.kind == "official" and smoke.subset == "n=5000/1000/2000, pool=2 (16x16)" and not smoke.lra_data


# -- MQAR at smoke scale ---------------------------------------------------------------------------
def test_mqar_smoke_vocabulary_covers_only_the_ids_in_use():
    task = MQAR(scale="smoke", seed=0)
    spec = task.input_spec()
    assert spec.vocab_size == spec.num_classes == 68 and MQAR.spec.vocab_size == MQAR_VOCAB
    data = task.build("train")
    scored = data.labels[data.labels != -100]
    assert int(data.inputs.max()) < 68 and int(scored.min()) >= 34 and int(scored.max()) < 68
    assert MQAR(scale="small").input_spec().num_classes == MQAR_VOCAB
    assert MQAR(scale="smoke", options={"vocab": 200}).input_spec().vocab_size == 200
    with pytest.raises(UserError, match="key_pool=32 must be between num_kv and vocab/2-2"):
        MQAR(scale="smoke", options={"vocab": 60}).sizes("smoke")
    prov = data.provenance
    assert (prov.kind, prov.source, prov.subset) == ("regenerated", "mqar-generator", "n=2000/250/250")
    assert prov.parameters == dict(seed=0, seq_len=128, num_kv=8, key_pool=32, vocab=68)


def test_mqar_smoke_model_scores_the_small_vocabulary():
    from harness.heads import build_classifier
    from harness.heads import task_loss

    task = MQAR(scale="smoke", seed=0)
    data = task.build("val")
    model, *_ = build_classifier("transformer_tiny", "mqar", spec=task.input_spec())
    batch = data.batch(torch.arange(4))
    logits = model(dict(batch, x=batch["x"].long()))
    assert logits.shape == (4, 128, 68)
    assert torch.isfinite(task_loss(logits, batch["y"]))


def test_synthetic_tasks_record_their_generator():
    for cls, source in ((SelectiveCopy, "selective-copy-generator"), (InductionHeads, "induction-heads-generator")):
        prov = cls(scale="smoke", seed=4).provenance
        assert (prov.kind, prov.source, prov.subset) == ("regenerated", source, "n=2000/250/250")
        assert prov.parameters["seed"] == 4 and prov.parameters["seq_len"] == 128

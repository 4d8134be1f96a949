"""Text (IMDB), Retrieval (AAN) and Image (CIFAR-10): official-format readers, splits and stand-ins."""

import gzip
import json
import pickle
import struct

import numpy as np
import pytest
import torch

from harness.errors import UserError
from harness_tasks.byte_text import decode_ids, encode_documents
from harness_tasks.image import ImageTask, ImageTokens, read_cifar_batch, tf_grayscale
from harness_tasks.retrieval import Retrieval, read_tsv, synthetic_pairs
from harness_tasks.text import Text, keyword_label, synthetic_documents


# -- byte encoding ---------------------------------------------------------------------------------
def test_byte_encoding_is_lra_byte_text_encoder():
    x, n = encode_documents(["héllo".encode(), b"", b"abcdef"], seq_len=4)
    assert x.dtype == torch.int16 and x.shape == (3, 4)
    assert x[0].tolist() == [ord("h") + 1, 0xC3 + 1, 0xA9 + 1, ord("l") + 1]  # UTF-8 bytes + 1, cut at 4
    assert n.tolist() == [4, 1, 4] and x[1].tolist() == [0, 0, 0, 0]
    assert decode_ids(x[2], 4) == b"abcd"


# -- Text ------------------------------------------------------------------------------------------
def write_aclimdb(root, per_class=6):
    for part in ("train", "test"):
        for label, cls in ((0, "neg"), (1, "pos")):
            folder = root / "aclImdb" / part / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                text = f"{part} {cls} review {i} <br /><br />caf\u00e9 " + "x" * (5 * i)
                (folder / f"{i}_{7 if label else 2}.txt").write_text(text, encoding="utf-8")


def test_text_reads_aclimdb_with_a_carved_validation_split(tmp_path):
    write_aclimdb(tmp_path, per_class=10)  # 20 train reviews -> 18 train / 2 val
    task = Text(scale="paper", seed=0, data_dir=tmp_path, cache_dir=tmp_path / "cache")
    parts = {s: task.load(s) for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [18, 2, 20]
    docs = {s: [decode_ids(x, int(n)) for x, n in zip(parts[s].inputs, parts[s].lengths)] for s in parts}
    assert not set(docs["train"]) & set(docs["val"])  # validation is carved out of train
    assert all(d.startswith(b"test ") for d in docs["test"])
    for s in parts:  # labels follow the folder: pos = 1, neg = 0
        assert [int(b" pos " in d) for d in docs[s]] == parts[s].labels.tolist()
    assert "caf\u00e9 ".encode() in docs["test"][0] and b"<br />" in docs["test"][0]
    assert parts["train"].inputs.shape[1] == 4096
    assert (parts["train"].provenance.kind, parts["train"].provenance.source) == ("official", "imdb (aclimdb)")


def test_text_lra_original_profile_validates_on_test(tmp_path):
    write_aclimdb(tmp_path)
    task = Text(scale="paper", data_dir=tmp_path, options={"profile": "lra-original"})
    val, test = task.build("val"), task.build("test")
    assert torch.equal(val.inputs, test.inputs) and len(task.build("train")) == 12
    assert "val=test (lra-original)" in val.provenance.parameters["validation"]
    with pytest.raises(UserError, match="profile"):
        Text(scale="smoke", data_dir=tmp_path, options={"profile": "s4"}).build("train")


def test_text_reads_an_exported_jsonl_and_csv(tmp_path):
    (tmp_path / "imdb").mkdir()
    for part in ("train", "test"):
        rows = [{"text": f'{part} "quoted", review {i}', "label": i % 2} for i in range(10)]
        (tmp_path / "imdb" / f"{part}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = Text(scale="smoke", data_dir=tmp_path, options={"seq_len": 64}).build("test")
    assert len(data) == 10 and data.inputs.shape == (10, 64) and "jsonl" in data.provenance.source
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    for part in ("train", "test"):
        (csv_dir / f"{part}.csv").write_text('text,label\n"a, ""quoted"" review",1\nplain review,0\n')
    data = Text(scale="paper", data_dir=csv_dir).build("test")
    assert sorted(decode_ids(x, int(n)) for x, n in zip(data.inputs, data.lengths)) == \
        [b'a, "quoted" review', b"plain review"]
    (csv_dir / "test.csv").write_text("body,stars\nx,1\n")
    with pytest.raises(UserError, match="'text' and 'label'"):
        Text(scale="paper", data_dir=csv_dir).build("test")


def test_text_stand_in_labels_follow_planted_keywords():
    docs, labels = synthetic_documents(300, 256, seed=0)
    assert [keyword_label(d) for d in docs] == labels
    assert 0.35 < np.mean(labels) < 0.65 and all(128 <= len(d) <= 256 for d in docs)
    data = Text(scale="smoke", seed=0).build("val")
    assert (data.provenance.kind, data.provenance.source) == ("stand-in", "synthetic-keywords")
    assert [keyword_label(decode_ids(x, int(n))) for x, n in zip(data.inputs, data.lengths)] == data.labels.tolist()


def test_text_splits_are_seeded(tmp_path):
    write_aclimdb(tmp_path, per_class=30)

    def train_docs(seed):
        return Text(scale="smoke", seed=seed, data_dir=tmp_path).build("train").inputs

    assert torch.equal(train_docs(0), train_docs(0))
    assert not torch.equal(train_docs(0), train_docs(1))


# -- Retrieval -------------------------------------------------------------------------------------
def aan_row(label, i, text1, text2):
    return f"{label}\tP{i}-a\tP{i}-b\t{text1}\t{text2}\n"


def test_aan_tsv_is_read_with_quoting_off(tmp_path):
    folder = tmp_path / "lra_release" / "tsv_data"
    folder.mkdir(parents=True)
    rows = [aan_row("1.0", 0, '"Quoted title" starts the text', "plain second"),
            aan_row("0.0", 1, "first", '"unbalanced quote'),
            aan_row("1", 2, "x" * 12000, "short")]
    for name in ("train", "eval", "test"):
        (folder / f"new_aan_pairs.{name}.tsv").write_text("".join(rows), encoding="utf-8")
    task = Retrieval(scale="paper", data_dir=tmp_path)
    data = task.build("val")
    assert data.labels.tolist() == [1, 0, 1]
    assert decode_ids(data.inputs[0], int(data.lengths[0])) == b'"Quoted title" starts the text'
    assert decode_ids(data.inputs2[1], int(data.lengths2[1])) == b'"unbalanced quote'
    assert int(data.lengths[2]) == 4000 and data.inputs.shape[1] == 4000  # 10,000 raw bytes, then 4000
    assert (data.provenance.kind, data.provenance.source) == ("official", "lra-release (aan)") and Retrieval.spec.dual


def test_corrupt_aan_tsv_gives_a_clear_error(tmp_path):
    bad = tmp_path / "new_aan_pairs.train.tsv"
    bad.write_text(aan_row("1", 0, "a", "b") + "1\tonly\tthree\n")
    with pytest.raises(UserError, match=r"new_aan_pairs.train.tsv:2: expected 5 tab-separated fields"):
        read_tsv(bad, 100)
    bad.write_text(aan_row("yes", 0, "a", "b"))
    with pytest.raises(UserError, match="label .* is not a number"):
        read_tsv(bad, 100)


def test_retrieval_stand_in_pairs_share_a_span_exactly_when_positive():
    d1, d2, labels = synthetic_pairs(200, 256, seed=0)
    for a, b, label in zip(d1, d2, labels):
        span_a = a[a.index(b"["):a.index(b"]") + 1]
        span_b = b[b.index(b"["):b.index(b"]") + 1]
        assert (span_a == span_b) == bool(label)
    data = Retrieval(scale="smoke").build("train")
    assert data.inputs2.shape == data.inputs.shape == (2000, 256)
    assert (data.provenance.kind, data.provenance.source) == ("stand-in", "synthetic-citation")


# -- Image -----------------------------------------------------------------------------------------
def write_cifar(root, per_batch=20, seed=0):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data}, f)
    return folder


def test_cifar_pickles_are_read_and_converted_like_tf(tmp_path):
    folder = write_cifar(tmp_path)
    rgb, labels = read_cifar_batch(folder / "test_batch")
    assert rgb.shape == (20, 3, 32, 32) and labels.shape == (20,)
    gray = tf_grayscale(rgb)
    r, g, b = (rgb[:, c].astype(np.float64) for c in range(3))
    reference = np.floor(255.5 * (0.2989 * r + 0.5870 * g + 0.1140 * b) / 255)
    assert np.abs(gray - reference).max() <= 1 and (gray == reference).mean() > 0.99
    assert tf_grayscale(np.full((1, 3, 1, 1), 255, np.uint8))[0, 0, 0] == 255

    task = ImageTask(scale="paper", seed=0, data_dir=tmp_path)
    parts = {s: task.build(s) for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in parts] == [90, 10, 20]  # val = 10% of 100 here (5,000 of 50,000 for real)
    assert parts["test"].inputs.dtype == torch.uint8 and parts["test"].inputs.shape == (20, 1024)
    assert torch.equal(parts["test"].inputs, torch.from_numpy(gray.reshape(20, 1024)))
    p = parts["train"].provenance
    assert (p.kind, p.source) == ("official", "cifar-10")
    tokens = ImageTokens(scale="paper", data_dir=tmp_path).build("test")
    assert torch.equal(tokens.inputs.long(), parts["test"].inputs.long() + 1)  # id = pixel + 1, 0 stays pad


def test_cifar_split_is_seeded(tmp_path):
    write_cifar(tmp_path)

    def val(seed):
        return ImageTask(scale="paper", seed=seed, data_dir=tmp_path).build("val").inputs

    assert torch.equal(val(0), val(0)) and not torch.equal(val(0), val(1))


def test_cifar_pickle_with_code_is_refused(tmp_path):
    folder = write_cifar(tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": print}, f)
    with pytest.raises(UserError, match="test_batch: not a CIFAR-10 python batch"):
        read_cifar_batch(folder / "test_batch")


def write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_image_stand_ins_are_labelled(tmp_path, caplog):
    rng = np.random.default_rng(0)
    for part, n in (("train", 50), ("t10k", 10)):
        write_idx(tmp_path / f"{part}-images-idx3-ubyte.gz", rng.integers(1, 256, size=(n, 28, 28)))
        write_idx(tmp_path / f"{part}-labels-idx1-ubyte.gz", rng.integers(0, 10, size=n))
    data = ImageTask(scale="paper", options={"fashion_mnist_dir": str(tmp_path)}).build("test")
    assert (data.provenance.kind, data.provenance.source) == ("stand-in", "fashion-mnist") and data.inputs.shape == (10, 1024)
    grid = data.inputs.view(10, 32, 32)
    assert (grid[:, :2] == 0).all() and (grid[:, 2:30, 2:30] > 0).all()  # 28x28 zero-padded to 32x32
    caplog.clear()
    shapes = ImageTask(scale="smoke", seed=1, options={"fashion_mnist_dir": str(tmp_path / "absent")}).build("val")
    assert "synthetic shapes" in caplog.text
    assert shapes.provenance.source == "synthetic-shapes" and shapes.inputs.shape == (1000, 256)
    assert len(set(shapes.labels.tolist())) == 10

"""Text: byte-level IMDB sentiment (Maas et al., ACL 2011; LRA, Tay et al., ICLR 2021), lra.md §1, §3.

Input: the UTF-8 bytes of a review (HTML `<br />` kept), ids byte+1 with 0 = pad (vocab 257),
truncated to `seq_len` bytes (4096 at paper scale: the paper's 4K; LRA's released config used 1000,
`--task-option text.seq_len=1000` reproduces it). Two classes, accuracy.

Where the reviews come from (`--data-dir D`, first match wins):
- the Stanford release `aclImdb/` (D/aclImdb or D itself): `{train,test}/{pos,neg}/<id>_<rating>.txt`,
  read as bytes, files in natural order of their id (never os.listdir order);
- an export of HF `imdb` / TFDS `imdb_reviews`, in D/imdb or D itself: `train.jsonl` + `test.jsonl`
  (one JSON object per line with "text" and "label", as `datasets.Dataset.to_json` writes) or
  `train.csv` + `test.csv` (header with `text` and `label` columns, standard CSV quoting, as
  `Dataset.to_csv` or pandas write). Label 1 = positive.

Splits (option `profile`, see `TextOptions`):
- "default": a real validation split: 10% of train (2,500 reviews) carved out with the split seed
  (option `split_seed`, default the task seed); test = the 25,000 test reviews;
- "lra-original": LRA's setup, train = all 25,000 train reviews and validation = test (lra.md §3),
  so model selection sees the test set; reported as such in the provenance.

Smaller scales take seeded subsets of each split and shorter byte lengths, recorded in the provenance.

Without IMDB the task is an honest stand-in, `stand-in(synthetic-keywords)` (lra.md §9): documents
of random lowercase pseudo-words; the label is decided by planted uppercase keywords, positive
(GOOD, GREAT, SUPERB, LOVED) against negative (BAD, AWFUL, BORING, HATED): the class with more
occurrences wins, 1 to 4 of the winning kind and fewer of the other, scattered anywhere within the
visible `seq_len` bytes. It exercises tokenisation, padding and long inputs; it is not sentiment.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import logging
import re
import sys
from typing import Literal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.errors import UserError
from harness.records import Provenance
from harness.registry import register_task
from harness.task import Task, TaskData, TaskOptions, TaskSpec
from harness_tasks.byte_text import BYTE_VOCAB, encode_documents, filler, plant
from harness_tasks.common import SPLITS, files_fingerprint, scale_sizes, seeded_subset, split_number, user_data
from harness_tasks.datafiles import Problems

log = logging.getLogger(__name__)

VAL_FRACTION = 0.1  # of the 25,000 train reviews, in the default profile
REVIEWS_PER_FOLDER = 12500  # aclImdb: reviews in each of {train,test}/{pos,neg}
REVIEWS_PER_PART = 25000  # an export: reviews in train and in test
SCALES = {
    "smoke": dict(train=2000, val=250, test=250, seq_len=256),
    "small": dict(train=10000, val=1000, test=5000, seq_len=1024),
    "paper": dict(train=22500, val=2500, test=25000, seq_len=4096),
}
POSITIVE_WORDS = (b"GOOD", b"GREAT", b"SUPERB", b"LOVED")
NEGATIVE_WORDS = (b"BAD", b"AWFUL", b"BORING", b"HATED")


# -- readers ---------------------------------------------------------------------------------------
def natural_key(path: Path) -> tuple:
    """aclImdb names are `<id>_<rating>.txt`: sort by the integer id, then by name."""
    m = re.match(r"(\d+)_", path.name)
    return (int(m.group(1)) if m else sys.maxsize, path.name)


def find_source(data_dir: Path) -> tuple[str, Path] | None:
    """('aclimdb', dir) or ('jsonl' / 'csv', dir) for the first layout found under data_dir."""
    for c in (data_dir / "aclImdb", data_dir):
        if (c / "train").is_dir() and (c / "test").is_dir() and ((c / "train" / "pos").is_dir()
                                                                 or (c / "train" / "neg").is_dir()):
            return "aclimdb", c
    for c in (data_dir / "imdb", data_dir):
        for kind in ("jsonl", "csv"):
            if (c / f"train.{kind}").is_file() or (c / f"test.{kind}").is_file():
                return kind, c
    return None


def source_files(kind: str, root: Path) -> list[Path]:
    if kind == "aclimdb":
        return [root / s / c for s in ("train", "test") for c in ("neg", "pos")]
    return [root / f"{s}.{kind}" for s in ("train", "test")]


def read_aclimdb(root: Path, part: str) -> tuple[list[bytes], list[int]]:
    """Reviews of `aclImdb/<part>` (train or test): neg (label 0) then pos (label 1), natural order."""
    docs, labels = [], []
    for label, name in ((0, "neg"), (1, "pos")):
        folder = root / part / name
        if not folder.is_dir():
            raise UserError(f"{folder}: missing; aclImdb needs {part}/pos and {part}/neg folders of .txt "
                            f"reviews", exit_code=1)
        files = sorted(folder.glob("*.txt"), key=natural_key)
        if not files:
            raise UserError(f"{folder}: no .txt reviews", exit_code=1)
        empty = []
        for f in files:
            data = f.read_bytes()
            if not data:
                empty.append(f.name)
                continue
            docs.append(data)
            labels.append(label)
        if empty:
            log.warning(f"{folder}: skipped {len(empty)} empty review file(s): {', '.join(empty[:3])}")
    return docs, labels


def parse_label(value, where: str) -> int:
    try:
        label = int(float(value))
    except (TypeError, ValueError):
        raise UserError(f"{where}: label {value!r} is not a number (expected 0 = negative, 1 = positive)",
                        exit_code=1)
    if label not in (0, 1):
        raise UserError(f"{where}: label {label} is not 0 or 1", exit_code=1)
    return label


def read_export(kind: str, path: Path) -> tuple[list[bytes], list[int]]:
    """Reviews of an exported split: JSON lines or CSV, each record with `text` and `label`."""
    if not path.is_file():
        raise UserError(f"{path}: missing; an exported IMDB needs train.{kind} and test.{kind}", exit_code=1)
    docs, labels = [], []
    with open(path, newline="", encoding="utf-8") as f:
        if kind == "jsonl":
            rows = ((n, line) for n, line in enumerate(f, start=1) if line.strip())
            for line_no, line in rows:
                try:
                    record = json.loads(line)
                    text, label = record["text"], record["label"]
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise UserError(f"{path}:{line_no}: expected a JSON object with 'text' and 'label' "
                                    f"({type(exc).__name__}: {exc})", exit_code=1)
                docs.append(str(text).encode("utf-8"))
                labels.append(parse_label(label, f"{path}:{line_no}"))
        else:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"text", "label"} <= set(reader.fieldnames):
                raise UserError(f"{path}: expected a CSV header with 'text' and 'label' columns, found "
                                f"{reader.fieldnames}", exit_code=1)
            for line_no, row in enumerate(reader, start=2):
                docs.append((row["text"] or "").encode("utf-8"))
                labels.append(parse_label(row["label"], f"{path}:{line_no}"))
    if not docs:
        raise UserError(f"{path}: no reviews", exit_code=1)
    return docs, labels


# -- stand-in --------------------------------------------------------------------------------------
def synthetic_documents(n: int, seq_len: int, seed) -> tuple[list[bytes], list[int]]:
    """The keyword stand-in: (documents, labels), balanced in expectation; see the module docstring."""
    rng = np.random.default_rng(seed)
    docs, labels = [], []
    for _ in range(n):
        label = int(rng.integers(0, 2))
        n_major = int(rng.integers(1, 5))
        n_minor = int(rng.integers(0, n_major))
        length = int(rng.integers(seq_len // 2, seq_len + 1))
        doc = filler(rng, length)
        major, minor = (POSITIVE_WORDS, NEGATIVE_WORDS) if label == 1 else (NEGATIVE_WORDS, POSITIVE_WORDS)
        taken: list[tuple[int, int]] = []
        for words, count in ((major, n_major), (minor, n_minor)):
            for _ in range(count):
                plant(doc, rng, words[int(rng.integers(len(words)))], taken)
        docs.append(bytes(doc))
        labels.append(label)
    return docs, labels


def keyword_label(doc: bytes) -> int:
    """The stand-in's rule, recomputed from a document (tests use it to check the labels)."""
    pos = sum(doc.count(w) for w in POSITIVE_WORDS)
    neg = sum(doc.count(w) for w in NEGATIVE_WORDS)
    return int(pos > neg)


def check_aclimdb(root: Path, problems: Problems) -> None:
    """Every {train,test}/{pos,neg} folder present, no empty review, the release's counts."""
    for part in ("train", "test"):
        for cls in ("neg", "pos"):
            folder = root / part / cls
            if not folder.is_dir():
                problems.add(f"{folder}: missing folder")
                continue
            files = list(folder.glob("*.txt"))
            for f in files:
                if f.stat().st_size == 0:
                    problems.add(f"{f}: empty review file", "empty review")
            if len(files) != REVIEWS_PER_FOLDER:
                problems.add(f"{folder}: {len(files)} reviews, the Stanford release has {REVIEWS_PER_FOLDER}",
                             minor=True)


def check_export(kind: str, root: Path, problems: Problems) -> None:
    """Both exported parts readable, no empty review, IMDB's counts."""
    for part in ("train", "test"):
        path = root / f"{part}.{kind}"
        if not problems.readable(path):
            continue
        try:
            docs, _ = read_export(kind, path)
        except UserError as exc:
            problems.add(str(exc))
            continue
        empty = sum(1 for d in docs if not d)
        if empty:
            problems.add(f"{path}: {empty} empty review(s)")
        if len(docs) != REVIEWS_PER_PART:
            problems.add(f"{path}: {len(docs)} reviews, IMDB has {REVIEWS_PER_PART}", minor=True)


# -- task ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextOptions(TaskOptions):
    profile: Literal["default", "lra-original"] = "default"  # validation carved from train, or = test (LRA)
    split_seed: int | None = None  # seed of the validation carve-out and of subsets; None = the run seed
    seq_len: int | None = None  # bytes kept per review; None = the scale's (4096 at paper scale)


@register_task("text")
class Text(Task):
    spec = TaskSpec(
        seq_len=4096, input_kind="tokens", vocab_size=BYTE_VOCAB, num_classes=2,
        splits=dict(train=22500, val=2500, test=25000), lra=True, label="Text", order=2, version="1",
        description="Byte-level IMDB sentiment (UTF-8 bytes, id = byte+1); validation carved from train "
                    "(profile 'lra-original': validation = test, as LRA did)",
    )
    needs_data = True
    Options = TextOptions

    @property
    def profile(self) -> str:
        return self.options.profile

    @property
    def split_seed(self) -> int:
        return self.seed if self.options.split_seed is None else int(self.options.split_seed)

    def sizes(self, scale: str) -> dict:
        s = scale_sizes(SCALES, scale)
        if scale == "paper" and self.profile == "lra-original":
            s.update(train=25000, val=25000)
        if self.options.seq_len is not None:
            s["seq_len"] = int(self.options.seq_len)
            if s["seq_len"] < 1:
                raise UserError(f"task text option seq_len={s['seq_len']}: expected a positive integer")
        return s

    @functools.cached_property
    def source(self) -> tuple[str, Path] | None:
        return user_data(self.data_dir, find_source, "no aclImdb/ or imdb/{train,test}.{jsonl,csv} found; Text "
                                                     "uses the synthetic stand-in")

    @property
    def provenance(self) -> Provenance:
        s = self.sizes(self.scale)
        sizes = f"n={s['train']}/{s['val']}/{s['test']}, seq_len={s['seq_len']}"
        if self.source is None:
            return Provenance("stand-in", "synthetic-keywords", subset=sizes, parameters=dict(seed=self.seed))
        kind, _ = self.source
        val = "val=test (lra-original)" if self.profile == "lra-original" else \
            f"val=10% of train, split_seed={self.split_seed}"
        # IMDb itself (the data LRA Text is built from), read from the user's copy
        return Provenance("official", f"imdb ({kind})", subset=None if self.scale == "paper" else sizes,
                          parameters=dict(seq_len=s["seq_len"], validation=val))

    @functools.cached_property
    def source_fingerprint(self) -> str:
        """Names, sizes and times of the user's files (every review file for aclImdb)."""
        if self.source is None:
            return ""
        kind, root = self.source
        files = source_files(kind, root)
        if kind == "aclimdb":
            files = [f for d in files if d.is_dir() for f in d.glob("*.txt")]
        return files_fingerprint([f for f in files if f.exists()])

    def cache_key(self, split: str) -> str:
        """The base identity plus the user's files, so edited data is re-read."""
        ident = super().cache_key(split) + self.source_fingerprint
        return hashlib.sha256(ident.encode()).hexdigest()[:16]

    @functools.cached_property
    def _parts(self) -> dict:
        """The user's reviews as {'train': (docs, labels), 'test': (docs, labels)}."""
        kind, root = self.source
        if kind == "aclimdb":
            return {part: read_aclimdb(root, part) for part in ("train", "test")}
        return {part: read_export(kind, root / f"{part}.{kind}") for part in ("train", "test")}

    def split_examples(self, split: str) -> tuple[list[bytes], list[int]]:
        """The full (unreduced) split: the default profile carves validation from train."""
        if self.profile == "lra-original":
            docs, labels = self._parts["test" if split in ("val", "test") else "train"]
            return docs, labels
        if split == "test":
            return self._parts["test"]
        docs, labels = self._parts["train"]
        perm = np.random.default_rng(self.split_seed).permutation(len(docs))
        n_val = int(round(len(docs) * VAL_FRACTION))
        index = perm[:n_val] if split == "val" else np.sort(perm[n_val:])
        return [docs[i] for i in index], [labels[i] for i in index]

    def build(self, split: str) -> TaskData:
        number = split_number(self.name, split)
        s = self.sizes(self.scale)
        if self.source is None:
            docs, labels = synthetic_documents(s[split], s["seq_len"], seed=[self.seed, number])
        else:
            docs, labels = self.split_examples(split)
            if len(docs) > s[split]:  # smaller scales: a seeded subset (val = test stays true in lra-original)
                same_as = "test" if self.profile == "lra-original" and split == "val" else split
                keep = seeded_subset(len(docs), s[split], self.split_seed + 17 * (1 + SPLITS.index(same_as)))
                docs, labels = [docs[i] for i in keep], [labels[i] for i in keep]
        inputs, lengths = encode_documents(docs, s["seq_len"])
        return TaskData(inputs=inputs, lengths=lengths, labels=torch.tensor(labels, dtype=torch.int64),
                        provenance=self.provenance)

    def check(self, data_dir: Path) -> list[str]:
        """The reviews under `data_dir` in either layout the reader accepts."""
        problems = Problems()
        found = find_source(data_dir)
        if found is None:
            problems.add(f"{data_dir}: no aclImdb/{{train,test}}/{{pos,neg}}/*.txt and no imdb/{{train,test}}."
                         f"{{jsonl,csv}} export found")
        elif found[0] == "aclimdb":
            check_aclimdb(found[1], problems)
        else:
            check_export(*found, problems)
        return problems.result()

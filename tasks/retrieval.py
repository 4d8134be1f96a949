"""Retrieval: byte-level ACL Anthology Network citation matching (Radev et al. 2013; LRA, Tay et al.,
ICLR 2021), spec: shared/spec/lra.md §1-3.

A dual task: two documents, does one cite the other? Each document is encoded separately by the same
backbone (TaskSpec dual=True: inputs/lengths and inputs2/lengths2); the harness head
(harness/heads.py) combines the two pooled vectors with the `interaction` option: `concat`
([x2, x1], as MEGA and LRA's released code) or `nli` ([u, v, u*v, u-v], as the LRA paper and S4).

Files: `new_aan_pairs.{train,eval,test}.tsv` from `lra_release` (looked up in --data-dir D as
D/tsv_data, D/lra_release/tsv_data, D/lra_release/lra_release/tsv_data, D/aan or D itself); `eval`
is the validation split. No header; five tab-separated columns `label id1 id2 text1 text2`.
Parsed as LRA does: quoting OFF (a field starting with `"` is ordinary text), lines split on `\n`
only, the label read as a float and cast to int, each text's raw bytes cut at 10,000 and then to
`seq_len` (4000 per document at paper scale, LRA's `max_length`), ids byte+1, 0 = pad (vocab 257).

Without the AAN files the task is an honest stand-in, `stand-in(synthetic-citation)` (lra.md §9):
two documents of random lowercase pseudo-words, each carrying one "citation" span (e.g. `[QBRT]`) of four
letters from A-F at a random position; a positive pair shares the same span, a negative pair has
two different spans. It tests the dual-encoder plumbing at long lengths; it is not AAN.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.errors import UserError
from harness.records import Provenance
from harness.registry import register_task
from harness.task import Task, TaskData, TaskOptions, TaskSpec
from harness_tasks.byte_text import BYTE_VOCAB, encode_documents, filler, plant
from harness_tasks.common import (files_fingerprint, first_folder, release_folders, scale_sizes, seeded_subset,
                                   split_number, user_data)
from harness_tasks.datafiles import Problems

FILES = {"train": "new_aan_pairs.train.tsv", "val": "new_aan_pairs.eval.tsv", "test": "new_aan_pairs.test.tsv"}
RAW_LIMIT = 10000  # LRA cuts each raw text at 10,000 bytes before encoding
SCALES = {
    "smoke": dict(train=2000, val=250, test=250, seq_len=256),
    "small": dict(train=10000, val=1000, test=1000, seq_len=1000),
    "paper": dict(train=147086, val=18090, test=17437, seq_len=4000),
}
SPAN_LETTERS = b"ABCDEF"
SPAN_LENGTH = 4


# -- reader ----------------------------------------------------------------------------------------
def find_tsv_dir(data_dir: Path) -> Path | None:
    """The folder holding any new_aan_pairs.*.tsv, or None."""
    candidates = release_folders(data_dir, "tsv_data") + [data_dir / "aan", data_dir]
    return first_folder(candidates, lambda c: any((c / name).is_file() for name in FILES.values()))


def split_line(line: bytes) -> list[bytes] | None:
    """The tab-separated fields of one line read in binary, or None for a blank line (as LRA parses:
    quoting off, only a newline ends a line, one trailing carriage return dropped)."""
    line = line.rstrip(b"\n")
    if line.endswith(b"\r"):
        line = line[:-1]
    return line.split(b"\t") if line else None


def read_tsv(path: Path, seq_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs1, lengths1, inputs2, lengths2, labels) of one AAN TSV, parsed with quoting off."""
    if not path.is_file():
        raise UserError(f"{path}: missing; Retrieval needs {', '.join(FILES.values())}", exit_code=1)
    docs1, docs2, labels = [], [], []
    keep = min(RAW_LIMIT, seq_len)  # cutting at 10,000 and then at seq_len keeps the first min() bytes
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            fields = split_line(line)  # no quote handling: a leading '"' is ordinary text
            if fields is None:
                continue
            if len(fields) != 5:
                raise UserError(f"{path}:{line_no}: expected 5 tab-separated fields (label, id1, id2, text1, "
                                f"text2), found {len(fields)}; is this an AAN pairs file?", exit_code=1)
            try:
                label = int(float(fields[0]))
            except ValueError:
                raise UserError(f"{path}:{line_no}: label {fields[0][:20]!r} is not a number", exit_code=1)
            if label not in (0, 1):
                raise UserError(f"{path}:{line_no}: label {label} is not 0 or 1", exit_code=1)
            docs1.append(fields[3][:keep])
            docs2.append(fields[4][:keep])
            labels.append(label)
    if not labels:
        raise UserError(f"{path}: no rows", exit_code=1)
    x1, n1 = encode_documents(docs1, seq_len)
    x2, n2 = encode_documents(docs2, seq_len)
    return x1, n1, x2, n2, torch.tensor(labels, dtype=torch.int64)


def check_tsv(path: Path, problems: Problems) -> int:
    """Problems of one AAN pairs file (fields per line, labels); returns the number of pairs."""
    rows = 0
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            fields = split_line(line)
            if fields is None:
                continue
            rows += 1
            if len(fields) != 5:
                problems.add(f"{path}:{line_no}: {len(fields)} tab-separated fields, expected 5 "
                             f"(label id1 id2 text1 text2)", "aan fields")
                continue
            try:
                ok = int(float(fields[0])) in (0, 1)
            except ValueError:
                ok = False
            if not ok:
                problems.add(f"{path}:{line_no}: label {fields[0][:20]!r} is not 0 or 1", "aan label")
    return rows


# -- stand-in --------------------------------------------------------------------------------------
def citation_span(rng: np.random.Generator) -> bytes:
    return b"[" + bytes(SPAN_LETTERS[int(i)] for i in rng.integers(0, len(SPAN_LETTERS), SPAN_LENGTH)) + b"]"


def synthetic_pairs(n: int, seq_len: int, seed) -> tuple[list[bytes], list[bytes], list[int]]:
    """The citation stand-in: (documents 1, documents 2, labels); see the module docstring."""
    rng = np.random.default_rng(seed)
    docs1, docs2, labels = [], [], []
    for _ in range(n):
        label = int(rng.integers(0, 2))
        span1 = citation_span(rng)
        span2 = span1
        while label == 0 and span2 == span1:
            span2 = citation_span(rng)
        for docs, span in ((docs1, span1), (docs2, span2)):
            doc = filler(rng, int(rng.integers(max(seq_len // 2, 4 * len(span)), seq_len + 1)))
            plant(doc, rng, span, [])
            docs.append(bytes(doc))
        labels.append(label)
    return docs1, docs2, labels


# -- task ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetrievalOptions(TaskOptions):
    seq_len: int | None = None  # bytes kept per document; None = the scale's (4000 at paper scale)


@register_task("retrieval")
class Retrieval(Task):
    spec = TaskSpec(
        seq_len=4000, input_kind="tokens", vocab_size=BYTE_VOCAB, num_classes=2, dual=True,
        splits=dict(train=147086, val=18090, test=17437), lra=True, label="Retrieval", order=3, version="1",
        description="Byte-level AAN citation matching, two documents of 4000 bytes each, one shared "
                    "encoder; pair interaction set by the head option 'interaction' (concat = MEGA / "
                    "LRA code, nli = [u, v, u*v, u-v] as the LRA paper and S4)",
    )
    needs_data = True
    Options = RetrievalOptions

    def sizes(self, scale: str) -> dict:
        s = scale_sizes(SCALES, scale)
        if self.options.seq_len is not None:
            s["seq_len"] = int(self.options.seq_len)
            if s["seq_len"] < 1:
                raise UserError(f"task retrieval option seq_len={s['seq_len']}: expected a positive integer")
        return s

    @functools.cached_property
    def tsv_dir(self) -> Path | None:
        return user_data(self.data_dir, find_tsv_dir, "no tsv_data/new_aan_pairs.*.tsv found; Retrieval uses the "
                                                      "synthetic stand-in")

    @property
    def provenance(self) -> Provenance:
        s = self.sizes(self.scale)
        sizes = f"n<={s['train']}/{s['val']}/{s['test']}, seq_len={s['seq_len']}"
        if self.tsv_dir is None:
            return Provenance("stand-in", "synthetic-citation", subset=sizes.replace("<=", ""),
                              parameters=dict(seed=self.seed))
        whole = self.scale == "paper" and s["seq_len"] == SCALES["paper"]["seq_len"]
        return Provenance("official", "lra-release (aan)", subset=None if whole else sizes,
                          parameters=dict(seed=self.seed))

    def cache_key(self, split: str) -> str:
        ident = super().cache_key(split)
        if self.tsv_dir is not None:
            ident += files_fingerprint([self.tsv_dir / f for f in FILES.values() if (self.tsv_dir / f).is_file()])
        return hashlib.sha256(ident.encode()).hexdigest()[:16]

    def build(self, split: str) -> TaskData:
        number = split_number(self.name, split)
        s = self.sizes(self.scale)
        if self.tsv_dir is None:
            d1, d2, labels = synthetic_pairs(s[split], s["seq_len"], seed=[self.seed, number])
            x1, n1 = encode_documents(d1, s["seq_len"])
            x2, n2 = encode_documents(d2, s["seq_len"])
            y = torch.tensor(labels, dtype=torch.int64)
        else:
            x1, n1, x2, n2, y = read_tsv(self.tsv_dir / FILES[split], s["seq_len"])
            if len(y) > s[split]:  # smaller scales: a seeded subset
                keep = torch.from_numpy(seeded_subset(len(y), s[split], self.seed + 17 * (1 + number)))
                x1, n1, x2, n2, y = x1[keep], n1[keep], x2[keep], n2[keep], y[keep]
        return TaskData(inputs=x1, lengths=n1, labels=y, inputs2=x2, lengths2=n2, provenance=self.provenance)

    def check(self, data_dir: Path) -> list[str]:
        """The three AAN pairs files: present, fields and labels per line, the release's counts."""
        problems = Problems()
        folder = find_tsv_dir(data_dir)
        if folder is None:
            problems.add(f"{data_dir}: no tsv_data/new_aan_pairs.{{train,eval,test}}.tsv found (also looked in "
                         f"lra_release/, lra_release/lra_release/, aan/)")
            return problems.result()
        for split, name in FILES.items():
            path = folder / name
            if problems.readable(path):
                rows = check_tsv(path, problems)
                if rows != self.spec.splits[split]:
                    problems.add(f"{path}: {rows} pairs, the LRA release has {self.spec.splits[split]}", minor=True)
        return problems.result()

"""Long ListOps (Nangia & Bowman 2018; LRA, Tay et al., ICLR 2021), spec: shared/spec/lra.md §4.

The generator re-implements `lra_benchmarks/data/listops.py` in our own words, with the three
changes a reproducible harness needs (recorded in the provenance string):
- `random` is seeded (upstream sets no seed);
- duplicates are removed in insertion order (upstream iterates a hash-ordered `set`), so the
  train/val/test split is a pure function of the seed;
- the token vocabulary has a fixed order (upstream builds it from a Python set).

Everything else follows upstream: operators MIN, MAX, MED, SM (sum mod 10); leaves with probability
0.75 below `max_depth`; 2..max_args arguments; length counts operator + `]` + descendants, not
parentheses; accept `min_length < length < max_length`; MED = int(np.median(args)) (floor of the
middle average); the TSV has a `Source<TAB>Target` header. Reading strips parentheses *before*
truncating (`]` becomes `X`), as LRA's input pipeline does.
"""

from __future__ import annotations

import csv
import json
import random
import statistics
import time
from pathlib import Path

import torch

from harness.errors import UserError
from harness.files import atomic_path, sha256_file
from harness.records import Provenance
from harness.registry import register_task
from harness.task import Task, TaskData, TaskSpec
from harness_tasks.common import SPLITS, first_folder, generated_root, release_folders, scale_sizes
from harness_tasks.datafiles import (Problems, expected_count, output_folder, read_manifest, verify_checksums,
                                     write_manifest)

MIN, MAX, MED, SUM_MOD = "[MIN", "[MAX", "[MED", "[SM"
OPERATORS = (MIN, MAX, MED, SUM_MOD)
END = "]"
VALUE_P = 0.25  # probability that a non-forced node is an operator (r <= 0.25)
# Fixed vocabulary: id 0 = pad, 1..15 = tokens, 16 = out-of-vocabulary.
VOCAB = list(OPERATORS) + [str(d) for d in range(10)] + ["X"]
TOKEN_ID = {tok: i + 1 for i, tok in enumerate(VOCAB)}
OOV_ID = len(VOCAB) + 1
MAX_DEPTH, MAX_ARGS = 10, 10  # the released generator's tree limits
RELEASE_FOLDER = "listops-1000"
HELD_OUT = 0.02  # `data generate`: val and test each hold 2% of the examples (the release's 96/2/2)

# Per-scale sizes. `paper` is the released dataset's generator setting.
SCALES = {
    "smoke": dict(train=2000, val=250, test=250, min_length=20, max_length=120, seq_len=120),
    "small": dict(train=20000, val=1000, test=1000, min_length=100, max_length=500, seq_len=500),
    "paper": dict(train=96000, val=2000, test=2000, min_length=500, max_length=2000, seq_len=2000),
}


# -- generator -----------------------------------------------------------------------------------
def generate_tree(rng: random.Random, depth: int = 1, max_depth: int = MAX_DEPTH, max_args: int = MAX_ARGS):
    """A random expression tree and its length (tokens without parentheses)."""
    r = rng.random() if depth < max_depth else 1.0
    if r > VALUE_P:
        return rng.choice(range(10)), 1
    n_args = rng.randint(2, max_args)
    children, length = [], 2  # the operator token and the closing bracket
    for _ in range(n_args):
        child, child_len = generate_tree(rng, depth + 1, max_depth, max_args)
        children.append(child)
        length += child_len
    tree = (rng.choice(OPERATORS), children[0])  # left-nested pairs: ((((op, a1), a2), ...), END)
    for child in children[1:]:
        tree = (tree, child)
    return (tree, END), length


def to_string(tree) -> str:
    """Fully parenthesised source string, e.g. `( ( ( [MAX 2 ) 9 ) ] )`."""
    if isinstance(tree, tuple):
        return f"( {to_string(tree[0])} {to_string(tree[1])} )"
    return str(tree)


def apply_operator(op: str, args: list[int]) -> int:
    if op == MIN:
        return min(args)
    if op == MAX:
        return max(args)
    if op == MED:
        return int(statistics.median(args))  # same as int(np.median): floor of the middle mean
    return sum(args) % 10


def to_value(tree) -> int:
    """Evaluate a tree (iteratively over the left-nested chain, so deep trees cannot recurse far)."""
    if not isinstance(tree, tuple):
        return tree
    node, end = tree  # ((...(op, a1), ...), an), END)
    assert end == END
    args = []
    while isinstance(node[0], tuple):
        node, last = node
        args.append(to_value(last))
    op, first = node
    args.append(to_value(first))
    return apply_operator(op, args[::-1])


def generate_examples(n: int, seed: int, min_length: int = 500, max_length: int = 2000,
                      max_depth: int = MAX_DEPTH, max_args: int = MAX_ARGS) -> list[tuple[str, int]]:
    """`n` unique (source, target) pairs, deterministic in `seed`, in first-seen order."""
    rng = random.Random(seed)
    unique: dict = {}
    while len(unique) < n:
        tree, length = generate_tree(rng, 1, max_depth, max_args)
        if min_length < length < max_length:
            unique.setdefault(tree, None)
    return [(to_string(t), to_value(t)) for t in unique]


def tsv_name(split: str) -> str:
    return f"basic_{split}.tsv"


def write_tsv(path: Path, rows: list[tuple[str, int]]) -> None:
    """The released format: a `Source<TAB>Target` header, then one example per line (all at once)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["Source", "Target"])
        writer.writerows(rows)


def generate_files(out_dir: Path, seed: int, sizes: dict) -> dict:
    """Write `basic_{train,val,test}.tsv` (the released layout); returns {file: sha256}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    total = sum(sizes[s] for s in SPLITS)
    rows = generate_examples(total, seed, sizes.get("min_length", 500), sizes.get("max_length", 2000))
    checksums, start = {}, 0
    for split in SPLITS:
        path = out_dir / tsv_name(split)
        write_tsv(path, rows[start:start + sizes[split]])
        start += sizes[split]
        checksums[path.name] = sha256_file(path)
    return checksums


# -- reader --------------------------------------------------------------------------------------
def tokenize(source: str) -> list[int]:
    """LRA preprocessing: `]` -> `X`, parentheses removed, whitespace split, fixed ids."""
    tokens = source.replace("]", "X").replace("(", "").replace(")", "").split()
    return [TOKEN_ID.get(t, OOV_ID) for t in tokens]


def read_tsv(path: Path, seq_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """inputs (N, seq_len) int16, lengths (N,), labels (N,) from an official-format TSV."""
    ids, labels = [], []
    with open(path, newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["Source", "Target"]:
            raise UserError(f"{path}: expected a header 'Source<TAB>Target' (the LRA ListOps format), "
                            f"found {header!r}", exit_code=1)
        for line_no, row in enumerate(reader, start=2):
            if len(row) < 2:
                raise UserError(f"{path}:{line_no}: expected 2 tab-separated columns, found {len(row)}",
                                exit_code=1)
            try:
                label = int(float(row[1]))
            except ValueError:
                raise UserError(f"{path}:{line_no}: Target {row[1]!r} is not an integer", exit_code=1)
            if not 0 <= label <= 9:
                raise UserError(f"{path}:{line_no}: Target {label} is outside 0-9", exit_code=1)
            ids.append(tokenize(row[0])[:seq_len])  # strip first, then truncate
            labels.append(label)
    if not ids:
        raise UserError(f"{path}: no examples", exit_code=1)
    inputs = torch.zeros(len(ids), seq_len, dtype=torch.int16)
    for i, seq in enumerate(ids):
        inputs[i, : len(seq)] = torch.tensor(seq, dtype=torch.int16)
    lengths = torch.tensor([max(len(s), 1) for s in ids], dtype=torch.int64)
    return inputs, lengths, torch.tensor(labels, dtype=torch.int64)


def candidate_dirs(data_dir: Path) -> list[Path]:
    """Where basic_*.tsv may be: `data_dir`, `data_dir/listops-1000` or the doubled release."""
    return [data_dir] + release_folders(data_dir, RELEASE_FOLDER)


def find_release_dir(data_dir: Path) -> Path:
    """The first candidate folder holding all three basic_*.tsv."""
    found = first_folder(candidate_dirs(data_dir), lambda c: all((c / tsv_name(s)).is_file() for s in SPLITS))
    if found is not None:
        return found
    missing = [tsv_name(s) for s in SPLITS if not (data_dir / RELEASE_FOLDER / tsv_name(s)).is_file()
               and not (data_dir / tsv_name(s)).is_file()]
    raise UserError(f"--data-dir {data_dir}: ListOps needs listops-1000/basic_{{train,val,test}}.tsv; "
                    f"missing {', '.join(missing) or 'a complete set in one folder'}", exit_code=1)


def check_tsv(path: Path, problems: Problems) -> int:
    """Problems of one ListOps TSV (header, columns, targets); returns the number of examples."""
    rows = 0
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["Source", "Target"]:
            problems.add(f"{path}: first line should be the header 'Source<TAB>Target', found {header!r}")
        for line_no, row in enumerate(reader, start=2):
            rows += 1
            if len(row) < 2:
                problems.add(f"{path}:{line_no}: expected 2 tab-separated columns, found {len(row)}", "listops columns")
                continue
            try:
                ok = 0 <= int(float(row[1])) <= 9
            except ValueError:
                ok = False
            if not ok:
                problems.add(f"{path}:{line_no}: Target {row[1]!r} is not a digit 0-9", "listops target")
    return rows


@register_task("listops")
class ListOps(Task):
    spec = TaskSpec(
        seq_len=2000, input_kind="tokens", vocab_size=OOV_ID + 1, num_classes=10,
        splits=dict(train=96000, val=2000, test=2000), lra=True, label="ListOps", order=1, version="1",
        description="Long ListOps: evaluate nested MIN/MAX/MED/SM expressions (10 classes)",
    )

    generatable = True

    def sizes(self, scale: str) -> dict:
        return scale_sizes(SCALES, scale)

    @property
    def provenance(self) -> Provenance:
        s = self.sizes(self.scale)
        if self.data_dir is not None:
            manifest = find_release_dir(self.data_dir) / "manifest.json"  # written by `data generate`
            if manifest.is_file():
                info = json.loads(manifest.read_text())
                c = info.get("counts", {})
                used = {k: min(s[k], int(c.get(k) or 0)) for k in ("train", "val", "test")}
                return Provenance("regenerated", "listops-generator (data generate)",
                                  subset=self._subset(used, self.spec.splits),
                                  parameters=dict(seed=info.get("seed"), counts=c))
            return Provenance("official", "lra-release", subset=self._subset(s, self.spec.splits))
        return Provenance("regenerated", "listops-generator", subset=self._subset(s, self.spec.splits),
                          parameters=dict(seed=self.seed, length=f"{s['min_length'] + 1}-{s['max_length'] - 1}",
                                          max_depth=MAX_DEPTH, max_args=MAX_ARGS))

    def _subset(self, sizes: dict, full: dict) -> str | None:
        """None when the run uses the whole published split sizes, else what it took."""
        taken = "/".join(str(sizes[k]) for k in ("train", "val", "test"))
        if self.scale == "paper" and all(sizes[k] >= (full.get(k) or 0) for k in ("train", "val", "test")):
            return None
        return f"n={taken}"

    def source_dir(self) -> Path:
        if self.data_dir is not None:
            return find_release_dir(self.data_dir)
        sizes = self.sizes(self.scale)
        root = generated_root(self.cache_dir)
        out = root / "listops" / f"generated-seed{self.seed}-{self.scale}"
        if not all((out / tsv_name(s)).is_file() for s in SPLITS):
            generate_files(out, self.seed, sizes)
        return out

    def build(self, split: str) -> TaskData:
        inputs, lengths, labels = read_tsv(self.source_dir() / tsv_name(split), self.seq_len)
        return TaskData(inputs=inputs, lengths=lengths, labels=labels, provenance=self.provenance)

    # -- data check / data generate ------------------------------------------------------------------
    def check(self, data_dir: Path) -> list[str]:
        """Header, columns and targets of the three TSVs; counts against manifest.json or the release."""
        problems = Problems()
        folder = first_folder(candidate_dirs(data_dir), lambda c: any((c / tsv_name(s)).exists() for s in SPLITS))
        if folder is None:
            problems.add(f"{data_dir}: ListOps files basic_train.tsv, basic_val.tsv, basic_test.tsv not found (looked "
                         f"in ., listops-1000/, lra_release/listops-1000/, lra_release/lra_release/listops-1000/)")
            return problems.result()
        manifest = read_manifest(folder, problems)
        for split in SPLITS:
            path = folder / tsv_name(split)
            if not problems.readable(path):
                continue
            rows = check_tsv(path, problems)
            want, where = expected_count(manifest, split, self.spec.splits[split])
            if rows != want:
                problems.add(f"{path}: {rows} examples, {where} has {want}", minor=True)
        verify_checksums(folder, manifest, problems)
        return problems.result()

    def generate(self, out_dir: Path, n: int | None = None, seed: int = 0, workers: int = 1,
                 progress=None) -> dict:
        """`out_dir/listops-1000/basic_*.tsv` in the release's 96/2/2 proportions (`n` examples in all,
        default the release's 100,000) and manifest.json; one process, so `workers` is unused."""
        started = time.perf_counter()
        total = int(n) if n is not None else sum(self.spec.splits.values())
        if total < 3:
            raise UserError(f"--n {total}: ListOps needs at least 3 examples (train, val, test)")
        held_out = max(1, round(total * HELD_OUT))
        sizes = dict(SCALES["paper"], train=total - 2 * held_out, val=held_out, test=held_out)
        folder = Path(out_dir) / RELEASE_FOLDER
        with output_folder(folder):
            checksums = generate_files(folder, int(seed), sizes)
        manifest = dict(generator="harness_tasks.listops (re-implementation of lra_benchmarks/data/listops.py)",
                        seed=int(seed), params=dict(max_depth=MAX_DEPTH, max_args=MAX_ARGS,
                                                    min_length=sizes["min_length"], max_length=sizes["max_length"]),
                        counts={k: sizes[k] for k in SPLITS},
                        seconds=round(time.perf_counter() - started, 3), files=checksums)
        write_manifest(folder, manifest)
        manifest["path"] = str(folder / "manifest.json")
        return manifest

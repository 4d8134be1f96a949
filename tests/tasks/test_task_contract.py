"""The task contract, checked once for every built-in task: spec, options and sizes per scale; building
every split at smoke scale (from a small generated tree for the tasks that can generate their data);
provenance kinds; and `check()` on an empty folder, on a small fixture tree and on a damaged one."""

import dataclasses
import inspect
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import harness_tasks  # noqa: F401  (registers every built-in family)
from harness.errors import UserError
from harness.registry import TASKS
from harness.task import IGNORE_INDEX, Task, TaskOptions

SPLITS = ("train", "val", "test")
SCALES = ("smoke", "small", "paper")
KINDS = {"official", "user", "regenerated", "stand-in"}
BUILTIN = [n for n in TASKS.names() if TASKS.get(n).origin.startswith("harness_tasks.")]


def checkable(cls) -> bool:
    return getattr(cls, "check", None) not in (None, getattr(Task, "check", None))


def generatable(cls) -> bool:
    return bool(getattr(cls, "generatable", False))


# -- small trees in the formats of the real data sets (tasks that cannot generate theirs) ------------
def write_imdb(root):
    for part in ("train", "test"):
        for cls in ("neg", "pos"):
            folder = root / "aclImdb" / part / cls
            folder.mkdir(parents=True)
            for i in range(10):
                (folder / f"{i}_{8 if cls == 'pos' else 2}.txt").write_text(f"{part} {cls} review {i} " * 3)
    return root / "aclImdb" / "test" / "pos" / "0_8.txt"


def write_aan(root):
    folder = root / "tsv_data"
    folder.mkdir(parents=True)
    for name in ("train", "eval", "test"):
        rows = [f"{i % 2}\tid{i}a\tid{i}b\tfirst text {i}\tsecond text {i}\n" for i in range(10)]
        (folder / f"new_aan_pairs.{name}.tsv").write_text("".join(rows))
    return folder / "new_aan_pairs.eval.tsv"


def write_cifar(root):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8),
                         b"labels": [int(v) for v in rng.integers(0, 10, 10)]}, f)
    return folder / "data_batch_3"


FIXTURES = {"text": write_imdb, "retrieval": write_aan, "image": write_cifar, "image_tokens": write_cifar}
COUNT_NOTE = re.compile(r": \d+ (reviews|pairs|images), .* has \d+$")  # a smaller tree than the release


def data_tree(cls, root):
    """A small valid tree for a checkable task, and the file `damage` empties."""
    if generatable(cls):
        manifest = cls(scale="paper").generate(root, n=10, seed=1, workers=1)
        return Path(manifest["path"]).parent / sorted(manifest["files"])[0]
    return FIXTURES[cls.name](root)


# -- tests ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BUILTIN)
def test_spec_options_and_sizes(name):
    cls = TASKS.get(name).cls
    spec = cls.spec
    assert spec.input_kind in ("tokens", "real") and spec.num_classes >= 2 and spec.seq_len > 0
    assert (spec.vocab_size > 0) == (spec.input_kind == "tokens") and spec.target in ("sequence", "token")
    assert set(spec.splits) == set(SPLITS) and spec.description
    # options: a frozen TaskOptions dataclass, every field with a commented default
    assert issubclass(cls.Options, TaskOptions) and cls.Options.__dataclass_params__.frozen
    source = "".join(inspect.getsource(k) for k in cls.Options.__mro__ if dataclasses.is_dataclass(k))
    for f in dataclasses.fields(cls.Options):
        assert f.default is not dataclasses.MISSING, f"option {f.name} has no default"
        assert re.search(rf"^\s+{f.name}: .+ = .+# \S", source, re.M), f"option {f.name}: default without a comment"
    task = cls()
    assert isinstance(task.options, cls.Options) and task.options.changed() == {}
    previous = None
    for scale in SCALES:
        s = task.sizes(scale)
        assert all(isinstance(s[k], int) and s[k] > 0 for k in SPLITS), s
        assert 0 < s.get("seq_len", spec.seq_len) <= spec.seq_len
        if previous is not None:
            assert all(previous[k] <= s[k] for k in SPLITS), "a larger scale has no smaller split"
        previous = s
    assert {k: previous[k] for k in SPLITS} == spec.splits, "paper scale uses the published split sizes"
    with pytest.raises(UserError, match="--scale 'huge'"):
        task.sizes("huge")


@pytest.mark.parametrize("name", BUILTIN)
def test_build_every_split_at_smoke_scale(name, tmp_path):
    cls = TASKS.get(name).cls
    data_dir = None
    if generatable(cls):  # from a small generated tree: regenerating the smoke data is slow
        data_dir = tmp_path / "data"
        cls(scale="paper").generate(data_dir, n=10, seed=1, workers=1)
    task = cls(scale="smoke", seed=0, data_dir=data_dir, cache_dir=tmp_path / "cache")
    s, spec = task.sizes("smoke"), task.input_spec()
    for split in SPLITS:
        data = task.build(split)
        data.validate(spec, name)
        n, length = data.inputs.shape
        assert 0 < n <= s[split] and length == task.seq_len
        assert bool(((data.lengths >= 1) & (data.lengths <= length)).all())
        if spec.input_kind == "tokens":
            assert 0 <= int(data.inputs.min()) and int(data.inputs.max()) < spec.vocab_size
        else:
            assert data.inputs.dtype == torch.uint8
        scored = data.labels[data.labels != IGNORE_INDEX]
        assert data.labels.shape == ((n,) if spec.target == "sequence" else (n, length)) and scored.numel() > 0
        assert 0 <= int(scored.min()) and int(scored.max()) < spec.num_classes
        if spec.dual:
            assert data.inputs2.shape[0] == n and data.lengths2.shape == (n,)
        kind = data.provenance.kind
        assert kind in KINDS
        if data_dir is not None:
            assert kind == "regenerated" and data.provenance.parameters["seed"] == 1
        elif cls.needs_data:
            assert kind == "stand-in", "without the user's data a task says it uses a stand-in"
        assert data.provenance.subset, "a smoke run is a subset"


@pytest.mark.parametrize("name", [n for n in BUILTIN if checkable(TASKS.get(n).cls)])
def test_check_an_empty_folder_a_fixture_tree_and_a_damaged_file(name, tmp_path):
    cls = TASKS.get(name).cls
    task = cls(scale="paper")
    (tmp_path / "empty").mkdir()
    problems = task.check(tmp_path / "empty")
    assert problems and all(isinstance(p, str) for p in problems) and str(tmp_path / "empty") in problems[0]

    damaged = data_tree(cls, tmp_path / "tree")
    problems = task.check(tmp_path / "tree")
    if generatable(cls):
        assert problems == [], "generated data with its manifest checks clean"
    else:
        assert problems and all(COUNT_NOTE.search(p) for p in problems), problems  # only the size differs
        built = cls(scale="smoke", data_dir=tmp_path / "tree", cache_dir=tmp_path / "cache").build("val")
        assert built.provenance.kind == "official" and len(built) > 0

    damaged.write_bytes(b"")
    problems = task.check(tmp_path / "tree")
    assert str(damaged) in problems[0] and "empty" in problems[0], problems


def test_every_checkable_task_has_a_fixture_here():
    for name in BUILTIN:
        cls = TASKS.get(name).cls
        if checkable(cls) and not generatable(cls):
            assert name in FIXTURES, f"add a small {name} tree to FIXTURES"

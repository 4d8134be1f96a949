"""ListOps generator and reader against lra.md §4."""

import random
import statistics

import pytest
import torch

from harness.errors import UserError
from harness_tasks import listops
from harness_tasks.listops import (END, OPERATORS, ListOps, apply_operator, generate_examples, generate_files,
                           generate_tree, read_tsv, to_string, to_value, tokenize)


def evaluate_tokens(tokens: list[str]) -> int:
    """Independent evaluator of the stripped token form (`[MAX 2 9 X`), with an explicit stack."""
    stack = []
    for tok in tokens:
        if tok in OPERATORS:
            stack.append([tok])
        elif tok == "X":
            op, *args = stack.pop()
            value = apply_operator(op, args)
            if not stack:
                return value
            stack[-1].append(value)
        else:
            stack[-1].append(int(tok))
    raise AssertionError("unbalanced expression")


@pytest.fixture(scope="module")
def paper_examples():
    return generate_examples(120, seed=7)  # the released generator settings (500 < length < 2000)


def test_lengths_after_stripping_are_501_to_1999(paper_examples):
    lengths = [len(s.replace("(", "").replace(")", "").split()) for s, _ in paper_examples]
    assert min(lengths) >= 501 and max(lengths) <= 1999
    assert 800 <= statistics.median(lengths) <= 1300  # spec: median ≈ 997


def test_operator_set_and_format(paper_examples):
    tokens = set()
    for source, _ in paper_examples:
        tokens.update(source.split())
    assert tokens <= set(OPERATORS) | {str(d) for d in range(10)} | {"(", ")", END}
    assert set(OPERATORS) <= tokens
    assert "[MEAN" not in tokens


def test_label_rule_matches_independent_evaluator(paper_examples):
    for source, target in paper_examples:
        tokens = source.replace("]", "X").replace("(", "").replace(")", "").split()
        assert evaluate_tokens(tokens) == target


def test_med_floors_the_middle_mean_and_sm_is_mod_10():
    assert apply_operator("[MED", [1, 4]) == 2  # median 2.5 -> 2
    assert apply_operator("[MED", [3, 1, 2]) == 2
    assert apply_operator("[SM", [9, 8, 7]) == 4
    assert to_value(((("[MAX", 2), 9), END)) == 9
    assert to_string(((("[MAX", 2), 9), END)) == "( ( ( [MAX 2 ) 9 ) ] )"


def test_tree_length_excludes_parentheses():
    rng = random.Random(3)
    for _ in range(200):
        tree, length = generate_tree(rng)
        assert length == len(to_string(tree).replace("(", "").replace(")", "").split())


def test_generator_is_deterministic_and_unique():
    a = generate_examples(50, seed=1, min_length=10, max_length=60)
    b = generate_examples(50, seed=1, min_length=10, max_length=60)
    c = generate_examples(50, seed=2, min_length=10, max_length=60)
    assert a == b and a != c
    assert len({s for s, _ in a}) == 50


def test_tsv_roundtrip_strips_before_truncating(tmp_path):
    sizes = dict(train=30, val=5, test=5, min_length=10, max_length=80)
    sums = generate_files(tmp_path, seed=0, sizes=sizes)
    assert set(sums) == {"basic_train.tsv", "basic_val.tsv", "basic_test.tsv"}
    header = (tmp_path / "basic_train.tsv").read_text().splitlines()[0]
    assert header == "Source\tTarget"
    inputs, lengths, labels = read_tsv(tmp_path / "basic_train.tsv", seq_len=8)
    assert inputs.shape == (30, 8) and int(lengths.max()) == 8
    first = (tmp_path / "basic_train.tsv").read_text().splitlines()[1].split("\t")[0]
    assert inputs[0].tolist() == tokenize(first)[:8]  # the operator comes first, not "(" tokens
    assert inputs[0, 0].item() in [listops.TOKEN_ID[o] for o in OPERATORS]


def test_reader_errors_are_one_line(tmp_path):
    bad = tmp_path / "basic_train.tsv"
    bad.write_text("Source\tTarget\n( [MAX 1 2 ] )\tseven\n")
    with pytest.raises(UserError, match=r"basic_train.tsv:2: Target 'seven' is not an integer"):
        read_tsv(bad, 10)
    bad.write_text("wrong header\n")
    with pytest.raises(UserError, match="expected a header"):
        read_tsv(bad, 10)


def test_official_layout_from_data_dir(tmp_path):
    release = tmp_path / "lra_release" / "lra_release" / "listops-1000"
    generate_files(release, seed=0, sizes=dict(train=20, val=4, test=4, min_length=10, max_length=60))
    task = ListOps(scale="smoke", seed=0, data_dir=tmp_path, cache_dir=tmp_path / "cache")
    data = task.load("val")
    assert len(data) == 4 and (data.provenance.kind, data.provenance.source) == ("official", "lra-release")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"missing basic_train.tsv, basic_val.tsv, basic_test.tsv"):
        ListOps(scale="smoke", data_dir=empty).load("train")


def test_regenerated_provenance_and_cache(tmp_path):
    task = ListOps(scale="smoke", seed=5, cache_dir=tmp_path)
    first = task.load("test")
    assert (first.provenance.kind, first.provenance.parameters["seed"]) == ("regenerated", 5)
    cached = list((tmp_path / "listops").glob("test-*.pt"))
    assert len(cached) == 1
    again = ListOps(scale="smoke", seed=5, cache_dir=tmp_path).load("test")
    assert torch.equal(first.inputs, again.inputs) and torch.equal(first.labels, again.labels)
    other = ListOps(scale="smoke", seed=6, cache_dir=tmp_path).load("test")
    assert not torch.equal(first.labels, other.labels) or not torch.equal(first.inputs, other.inputs)

"""Synthetic per-position tasks (lra.md §11): the answer is never visible in the input."""

import numpy as np
import pytest
import torch

from harness.errors import UserError
from harness.task import IGNORE_INDEX
from harness_tasks.synthetic import (COPY_MARKER, COPY_NOISE, INDUCTION_TRIGGER, MQAR, MQAR_BLANK, MQAR_VOCAB,
                             InductionHeads, SelectiveCopy, induction_examples, mqar_examples,
                             selective_copy_examples)


def test_mqar_queries_hold_keys_and_labels_hold_values():
    n, length, num_kv = 64, 96, 8
    x, y = mqar_examples(np.random.default_rng(0), n, length, num_kv, key_pool=200)
    context = 2 * num_kv
    for i in range(n):
        keys, values = x[i, 0:context:2], x[i, 1:context:2]
        assert len(set(keys.tolist())) == num_kv and len(set(values.tolist())) == num_kv
        assert keys.max() < MQAR_VOCAB // 2 <= values.min()
        pairs = dict(zip(keys.tolist(), values.tolist()))
        scored = np.flatnonzero(y[i] != IGNORE_INDEX)
        assert len(scored) == num_kv and scored.min() >= context
        assert ((scored - context) % 2 == 0).all()  # query slots at even offsets after the context
        for q in scored:
            assert x[i, q] in pairs and y[i, q] == pairs[x[i, q]]  # label = the queried key's value
            assert q + 1 >= length or x[i, q + 1] == MQAR_BLANK  # the value never follows its query
        assert sorted(x[i, scored].tolist()) == sorted(keys.tolist())  # every key queried once
        for v in values:  # a value appears in the input only inside its pair
            assert np.count_nonzero(x[i] == v) == 1
        rest = np.setdiff1d(np.arange(context, length), scored)
        assert (x[i, rest] == MQAR_BLANK).all()


def test_mqar_gaps_prefer_short_distances():
    x, y = mqar_examples(np.random.default_rng(1), 400, 256, 4, key_pool=100)
    gaps = (np.argwhere(y != IGNORE_INDEX)[:, 1] - 8) // 2
    assert np.median(gaps) < 30  # p(i) ∝ i^(a-1) with a = 0.01 puts most mass on short gaps


def test_induction_answer_only_after_the_earlier_trigger():
    n, length = 200, 64
    x, y = induction_examples(np.random.default_rng(2), n, length, num_triggers=3)
    for i in range(n):
        scored = np.flatnonzero(y[i] != IGNORE_INDEX)
        assert scored.tolist() == [length - 1]  # labels only at the final query
        assert x[i, -1] == INDUCTION_TRIGGER
        triggers = np.flatnonzero(x[i, :-1] == INDUCTION_TRIGGER)
        assert 1 <= len(triggers) <= 3 and (triggers < length - 2).all()
        assert all(x[i, t + 1] == y[i, -1] for t in triggers)  # the copied token follows each trigger
        assert y[i, -1] != INDUCTION_TRIGGER and y[i, -1] >= 2


def test_selective_copy_targets_only_at_marker_positions():
    n, length, m = 50, 64, 6
    x, y = selective_copy_examples(np.random.default_rng(3), n, length, m, chunk=16)
    assert (x[:, -m:] == COPY_MARKER).all()  # the answer positions show only the marker
    assert (y[:, :-m] == IGNORE_INDEX).all()
    for i in range(n):
        data = x[i, :-m][(x[i, :-m] != COPY_NOISE)]
        assert len(data) == m and (y[i, -m:] == data).all()  # the data tokens, in order


def test_task_shapes_options_and_determinism(tmp_path):
    a = MQAR(scale="smoke", seed=0).build("train")
    b = MQAR(scale="smoke", seed=0).build("train")
    c = MQAR(scale="smoke", seed=1).build("train")
    assert torch.equal(a.inputs, b.inputs) and not torch.equal(a.inputs, c.inputs)
    assert not torch.equal(a.inputs, MQAR(scale="smoke", seed=0).build("test").inputs)
    assert a.labels.shape == a.inputs.shape and a.labels.dtype == torch.int64
    assert MQAR.spec.target == "token" and (a.provenance.kind, a.provenance.parameters.get("seed")) == ("regenerated", 0)
    ih = InductionHeads(scale="smoke", options={"test_len": 200})
    assert ih.build("test").inputs.shape[1] == 200 and ih.build("val").inputs.shape[1] == 128
    sc = SelectiveCopy(scale="smoke", options={"seq_len": 40, "n_tokens": 4}).load("val")
    assert sc.inputs.shape == (250, 40) and int((sc.labels != IGNORE_INDEX).sum()) == 250 * 4
    with pytest.raises(UserError, match="4\\*num_kv <= seq_len"):
        MQAR(scale="smoke", options={"num_kv": 64}).build("train")

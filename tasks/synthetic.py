"""Synthetic long-context tasks scored per position (lra.md §11): selective copying, induction heads,
multi-query associative recall (MQAR).

Sources: selective copying from S4's `copying.py` (`variable=True`) as used by Mamba (Gu & Dao 2023,
App. E.1); induction heads from HazyResearch/safari `generate_induction_head` (Mamba §4.1); MQAR
from HazyResearch/zoology `_mqar` (Arora et al., ICLR 2024, "Zoology").

Every task here is TaskSpec(target="token"): labels are (N, L) with IGNORE_INDEX (-100) where a
position is not scored, and the classifier predicts a token id at every position.

The harness models are bidirectional encoders, so the causal constructions of the sources are
changed so that the INPUT NEVER CONTAINS THE ANSWER where it is asked for. In the causal originals
the answer is the next input token; here the question sits at a position and the answer exists only
in that position's label. The rule of each task:

- selective_copy: ids 0 pad, 1 noise (blank), 2..15 data, 16 marker. The first L-M positions hold
  M data tokens at random sorted positions and noise elsewhere; the last M positions hold the
  marker. Labels: the M data tokens, in order, at the M marker positions; -100 elsewhere. The data
  tokens never appear at marker positions of the input.
- induction_heads: ids 0 pad, 1 trigger `=>`, 2..15 data. Positions 0..L-2 are random data tokens
  with one trigger (or more, `num_triggers`) each followed by the same copied token; the last position
  L-1 holds the trigger as the query. Label: the copied token at L-1 only. Nothing follows the
  query, so the answer is visible only after the earlier trigger(s).
- mqar: ids 0 pad, 1 blank, keys in [2, V/2), values in [V/2, V) (V = 8192, zoology's setting, at
  small and paper scale; smoke draws from 32 keys and 32 values, so its vocabulary is V = 68 and the
  classifier covers only the ids in use instead of 8,192 classes at every position; `input_spec()`
  gives the model that per-scale vocabulary).
  N distinct keys with N distinct values fill positions 0..2N-1 as k1 v1 ... kN vN. Each key is
  queried once at position 2N + 2*gap, gaps drawn without replacement with p(i) ∝ a*i^(a-1),
  a = 0.01 (Gumbel top-k, the same law as sequential sampling). The query position holds the key,
  its label is the value; every other position past the context is blank (never a random token, so
  the value cannot appear next to its query). A value occurs in the input only inside its pair.

Data is a pure function of (seed, split, sizes): each split has its own numpy generator
`default_rng([seed, split_index, task_salt])`. Provenance: kind "regenerated", the generator's name
as source, the split sizes as subset, and the seed and generator settings as parameters.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from harness.errors import UserError
from harness.records import Provenance
from harness.registry import register_task
from harness.task import IGNORE_INDEX, Task, TaskData, TaskOptions, TaskSpec
from harness_tasks.common import SPLITS, scale_sizes, split_number


class SyntheticTask(Task):
    """Shared scaffolding: per-scale parameters with option overrides, seeded generators, provenance.

    Each task's options are integers that replace the scale's value of the same name when given
    (None = the scale's)."""

    SCALES: dict = {}
    SALT: int = 0  # separates the random streams of the different tasks
    GENERATOR: str = ""  # the provenance source, e.g. "mqar-generator"

    def sizes(self, scale: str) -> dict:
        s = scale_sizes(self.SCALES, scale)
        s.update(self.options.data_changed())  # typed integers (make_options); head options shape no data
        self.validate_sizes(s)
        return s

    def validate_sizes(self, s: dict) -> None:
        """Raise UserError for inconsistent parameters."""

    def rng(self, split: str) -> np.random.Generator:
        return np.random.default_rng([self.seed, split_number(self.name, split), self.SALT])

    @property
    def provenance(self) -> Provenance:
        s = self.sizes(self.scale)
        params = dict(seed=self.seed, **{k: v for k, v in s.items() if k not in SPLITS})
        return Provenance("regenerated", self.GENERATOR, subset=f"n={s['train']}/{s['val']}/{s['test']}",
                          parameters=params)

    def pack(self, inputs: np.ndarray, labels: np.ndarray) -> TaskData:
        n, length = inputs.shape
        return TaskData(inputs=torch.from_numpy(inputs.astype(np.int16)),
                        lengths=torch.full((n,), length, dtype=torch.int64),
                        labels=torch.from_numpy(labels.astype(np.int64)), provenance=self.provenance)


# -- selective copying -----------------------------------------------------------------------------
COPY_NOISE, COPY_FIRST_DATA, COPY_MARKER = 1, 2, 16  # data tokens 2..15


def selective_copy_examples(rng: np.random.Generator, n: int, seq_len: int, n_tokens: int,
                            chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """inputs (n, seq_len), labels (n, seq_len); see the module docstring."""
    span = seq_len - n_tokens  # where the data tokens may sit
    inputs = np.full((n, seq_len), COPY_NOISE, dtype=np.int16)
    labels = np.full((n, seq_len), IGNORE_INDEX, dtype=np.int64)
    inputs[:, span:] = COPY_MARKER
    for start in range(0, n, chunk):  # chunks bound the (chunk, span) random matrix
        rows = np.arange(start, min(start + chunk, n))
        pos = np.sort(np.argsort(rng.random((len(rows), span)), axis=1)[:, :n_tokens], axis=1)  # (c, M)
        tokens = rng.integers(COPY_FIRST_DATA, COPY_MARKER, size=(len(rows), n_tokens))  # (c, M)
        inputs[rows[:, None], pos] = tokens
        labels[rows, span:] = tokens
    return inputs, labels


@dataclasses.dataclass(frozen=True)
class SelectiveCopyOptions(TaskOptions):
    seq_len: int | None = None  # sequence length; None = the scale's (128 smoke, 4096 paper)
    n_tokens: int | None = None  # data tokens to copy; None = the scale's (8 smoke, 16 otherwise)


@register_task("selective_copy")
class SelectiveCopy(SyntheticTask):
    spec = TaskSpec(
        seq_len=4096, input_kind="tokens", vocab_size=17, num_classes=17, target="token",
        splits=dict(train=20000, val=1000, test=1000), version="1",
        description="Selective copying (Mamba App. E.1): recall 16 data tokens scattered among noise, "
                    "answered at the 16 trailing marker positions",
    )
    Options = SelectiveCopyOptions
    SALT = 101
    GENERATOR = "selective-copy-generator"
    # Mamba: length 4096, 16 tokens to memorise, alphabet of 16 (noise + 14 data + marker); its
    # training data is fresh every step, ours is a fixed set of the sizes below.
    SCALES = {
        "smoke": dict(train=2000, val=250, test=250, seq_len=128, n_tokens=8),
        "small": dict(train=10000, val=500, test=500, seq_len=1024, n_tokens=16),
        "paper": dict(train=20000, val=1000, test=1000, seq_len=4096, n_tokens=16),
    }

    def validate_sizes(self, s: dict) -> None:
        if not 1 <= s["n_tokens"] <= s["seq_len"] // 2:
            raise UserError(f"task selective_copy: n_tokens={s['n_tokens']} must be between 1 and seq_len/2 "
                            f"({s['seq_len'] // 2})")

    def build(self, split: str) -> TaskData:
        s = self.sizes(self.scale)
        return self.pack(*selective_copy_examples(self.rng(split), s[split], s["seq_len"], s["n_tokens"]))


# -- induction heads -------------------------------------------------------------------------------
INDUCTION_TRIGGER, INDUCTION_FIRST_DATA, INDUCTION_VOCAB = 1, 2, 16


def induction_examples(rng: np.random.Generator, n: int, seq_len: int,
                       num_triggers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """inputs (n, seq_len), labels (n, seq_len) scored only at the last position."""
    if seq_len < 4:
        raise UserError(f"task induction_heads: seq_len={seq_len} must be at least 4")
    inputs = rng.integers(INDUCTION_FIRST_DATA, INDUCTION_VOCAB, size=(n, seq_len)).astype(np.int16)
    labels = np.full((n, seq_len), IGNORE_INDEX, dtype=np.int64)
    for i in range(n):
        k = 1 if num_triggers == 1 or rng.random() < 0.5 else num_triggers  # safari: half the time one
        positions = np.sort(rng.integers(0, seq_len - 3, size=k))  # trigger at p, copied token at p+1 <= L-3
        kept = [int(positions[0])]
        for p in positions[1:]:
            if p - kept[-1] > 1:  # triggers never overlap a copied token
                kept.append(int(p))
        answer = inputs[i, kept[0] + 1]
        for p in kept:
            inputs[i, p] = INDUCTION_TRIGGER
            inputs[i, p + 1] = answer
        inputs[i, -1] = INDUCTION_TRIGGER  # the query; nothing follows it
        labels[i, -1] = answer
    return inputs, labels


@dataclasses.dataclass(frozen=True)
class InductionHeadsOptions(TaskOptions):
    seq_len: int | None = None  # train/val length; None = the scale's (128 smoke, 256 otherwise)
    num_triggers: int | None = None  # triggers per example (half the examples keep one); None = the scale's 1
    test_len: int | None = None  # length of the test split, for extrapolation (Mamba: 2^6..2^20); None = seq_len


@register_task("induction_heads")
class InductionHeads(SyntheticTask):
    spec = TaskSpec(
        seq_len=256, input_kind="tokens", vocab_size=INDUCTION_VOCAB, num_classes=INDUCTION_VOCAB,
        target="token", splits=dict(train=65536, val=1000, test=1000), version="1",
        description="Induction heads (safari / Mamba §4.1): at the final trigger, name the token that "
                    "followed the earlier trigger",
    )
    Options = InductionHeadsOptions
    SALT = 202
    GENERATOR = "induction-heads-generator"
    # Mamba: vocab 16, train length 256, 8192 steps x batch 8 per epoch.
    SCALES = {
        "smoke": dict(train=2000, val=250, test=250, seq_len=128, num_triggers=1),
        "small": dict(train=16384, val=1000, test=1000, seq_len=256, num_triggers=1),
        "paper": dict(train=65536, val=1000, test=1000, seq_len=256, num_triggers=1),
    }

    def validate_sizes(self, s: dict) -> None:
        if s["num_triggers"] < 1:
            raise UserError(f"task induction_heads: num_triggers={s['num_triggers']} must be at least 1")
        if s.get("test_len", s["seq_len"]) < 4 or s["seq_len"] < 4:
            raise UserError("task induction_heads: seq_len and test_len must be at least 4")

    def build(self, split: str) -> TaskData:
        s = self.sizes(self.scale)
        length = s.get("test_len", s["seq_len"]) if split == "test" else s["seq_len"]
        return self.pack(*induction_examples(self.rng(split), s[split], length, s["num_triggers"]))


# -- multi-query associative recall ----------------------------------------------------------------
MQAR_BLANK, MQAR_FIRST_KEY, MQAR_VOCAB = 1, 2, 8192
MQAR_POWER_A = 0.01  # zoology's gap law p(i) ∝ a * i^(a-1)


def distinct_draws(rng: np.random.Generator, rows: int, k: int, pool: int) -> np.ndarray:
    """(rows, k) integers in [0, pool), distinct within a row, uniformly (all k-subsets in random order)."""
    if pool <= 16 * k:  # small pool: a random permutation per row
        return np.argsort(rng.random((rows, pool)), axis=1)[:, :k]
    out = rng.integers(0, pool, size=(rows, k))
    while True:  # large pool: redraw the few rows with a repeat (rejection keeps the law uniform)
        s = np.sort(out, axis=1)
        bad = np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1))
        if bad.size == 0:
            return out
        out[bad] = rng.integers(0, pool, size=(bad.size, k))


def mqar_examples(rng: np.random.Generator, n: int, seq_len: int, num_kv: int, key_pool: int,
                  vocab: int = MQAR_VOCAB, power_a: float = MQAR_POWER_A,
                  chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """inputs (n, seq_len), labels (n, seq_len); see the module docstring.

    `key_pool` keys and as many values are used (at most V/2 - 2): fewer makes a smaller, learnable task.
    """
    half = vocab // 2
    context = 2 * num_kv
    space = (seq_len - context) // 2  # query slots at even offsets after the context
    log_p = np.log(power_a) + (power_a - 1) * np.log(np.arange(1, space + 1))
    inputs = np.full((n, seq_len), MQAR_BLANK, dtype=np.int16)
    labels = np.full((n, seq_len), IGNORE_INDEX, dtype=np.int64)
    inputs_ctx = inputs[:, :context]
    for start in range(0, n, chunk):  # chunks bound the size of the random matrices
        rows = np.arange(start, min(start + chunk, n))[:, None]
        c = len(rows)
        keys = distinct_draws(rng, c, num_kv, key_pool) + MQAR_FIRST_KEY  # (c, N) distinct keys
        values = distinct_draws(rng, c, num_kv, key_pool) + half  # (c, N) distinct values
        # Gumbel top-k: the N largest log p(i) + Gumbel noise = N draws without replacement from p.
        scores = log_p[None, :] - np.log(-np.log(rng.random((c, space))))
        gaps = np.argsort(-scores, axis=1)[:, :num_kv]  # (c, N), in draw order
        inputs_ctx[rows[:, 0], 0::2] = keys
        inputs_ctx[rows[:, 0], 1::2] = values
        query = context + 2 * gaps  # (c, N) positions of the queries
        inputs[rows, query] = keys
        labels[rows, query] = values
    return inputs, labels


@dataclasses.dataclass(frozen=True)
class MQAROptions(TaskOptions):
    seq_len: int | None = None  # sequence length; None = the scale's (128 smoke, 256 otherwise)
    num_kv: int | None = None  # key-value pairs per example; None = the scale's (8 smoke, 16 otherwise)
    key_pool: int | None = None  # keys (and values) drawn from; None = the scale's (32 smoke, V/2-2 otherwise)
    vocab: int | None = None  # token ids and classes; None = the scale's (68 smoke, 8192 otherwise)


@register_task("mqar")
class MQAR(SyntheticTask):
    spec = TaskSpec(
        seq_len=256, input_kind="tokens", vocab_size=MQAR_VOCAB, num_classes=MQAR_VOCAB, target="token",
        splits=dict(train=100000, val=3000, test=3000), version="2",
        description="Multi-query associative recall (zoology): N key-value pairs, then each key queried "
                    "once; the value is the label at the query position (vocabulary 8192; smoke 68)",
    )
    Options = MQAROptions
    SALT = 303
    GENERATOR = "mqar-generator"
    # Zoology figure 2: V = 8192, (L, N) in {(64,4), (128,8), (256,16)}, 100k train / 3k test. Smoke
    # draws keys and values from 32 of each so a tiny model can make progress, and its vocabulary
    # holds just those ids (2 + 32 keys, then 32 values from V/2 = 34): the output layer scores 68
    # classes, not 8,192, at each of the 128 positions. Version 2: that smoke vocabulary.
    SCALES = {
        "smoke": dict(train=2000, val=250, test=250, seq_len=128, num_kv=8, key_pool=32, vocab=68),
        "small": dict(train=20000, val=1000, test=1000, seq_len=256, num_kv=16, key_pool=MQAR_VOCAB // 2 - 2,
                      vocab=MQAR_VOCAB),
        "paper": dict(train=100000, val=3000, test=3000, seq_len=256, num_kv=16, key_pool=MQAR_VOCAB // 2 - 2,
                      vocab=MQAR_VOCAB),
    }
    MAX_VOCAB = 2 ** 15 - 1  # inputs are stored as int16

    def validate_sizes(self, s: dict) -> None:
        if s["num_kv"] < 1 or 4 * s["num_kv"] > s["seq_len"]:
            raise UserError(f"task mqar: needs 1 <= num_kv and 4*num_kv <= seq_len (zoology's constraint), "
                            f"got num_kv={s['num_kv']}, seq_len={s['seq_len']}")
        if not 2 * (s["num_kv"] + 2) <= s["vocab"] <= self.MAX_VOCAB:
            raise UserError(f"task mqar: vocab={s['vocab']} must be between 2*(num_kv+2) = {2 * (s['num_kv'] + 2)} "
                            f"and {self.MAX_VOCAB}")
        if not s["num_kv"] <= s["key_pool"] <= s["vocab"] // 2 - 2:
            raise UserError(f"task mqar: key_pool={s['key_pool']} must be between num_kv and vocab/2-2 "
                            f"({s['vocab'] // 2 - 2})")

    def input_spec(self) -> TaskSpec:
        """The spec with this scale's vocabulary: token ids and classes are both 0..vocab-1."""
        vocab = self.sizes(self.scale)["vocab"]
        return dataclasses.replace(self.spec, vocab_size=vocab, num_classes=vocab)

    def build(self, split: str) -> TaskData:
        s = self.sizes(self.scale)
        return self.pack(*mqar_examples(self.rng(split), s[split], s["seq_len"], s["num_kv"], s["key_pool"],
                                        vocab=s["vocab"]))

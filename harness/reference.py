"""Reference rows: a majority-class model and a linear model, fitted on the very splits the models saw.

statistics.md ("Reference rows"): every accuracy table shows what needs no sequence model at all,
so that a short run that learned less than a logistic regression on the raw input says so. Two
accuracy records per (task, scale, data seed), model family "reference", mode "fit":

- `ref:majority`: the most frequent training label (ties: the smallest id), scored on validation and
  test. For per-token tasks the label counts are taken over the scored positions.
- `ref:linear`: L2-regularised logistic regression (scikit-learn, lbfgs), the inverse strength C
  chosen by validation accuracy from C_GRID (ties: the smaller C), then scored on test. Features,
  on the raw input:
  * real-valued inputs: the normalised values (v * real_scale - real_mean) / real_std of the spec
    the models embed with, padding positions 0;
  * token inputs: the bag of token counts (ids 1..V-1, pad 0 left out) plus the length, each column
    standardised on the fitted training rows (an affine change of features: still a linear model on
    the counts, with a penalty that treats the columns alike);
  * two-document inputs (spec.dual): both documents' bags and lengths and their absolute difference;
  * per-token targets: no linear row (status "unavailable"): a bag of the whole sequence cannot say
    which position is asked.
  Large tasks fit on a seeded subsample of at most MAX_TRAIN training rows and at most MAX_VALUES
  feature values; `metrics.n_train` is what was fitted, `metrics.subsampled` says whether it was less
  than the training split.

A fault (a missing split, scikit-learn absent, a single-class training split) becomes a record with
status "error" or "unavailable", never an exception.
"""

from __future__ import annotations

import importlib.util
import time
import warnings

import numpy as np

from harness.errors import short_error
from harness.store import cell_key, config_hash, make_record
from harness.task import IGNORE_INDEX, TaskData, TaskSpec

REFERENCE_FAMILY = "reference"
MAJORITY, LINEAR = "ref:majority", "ref:linear"
C_GRID = (0.01, 0.1, 1.0, 10.0)  # inverse L2 strength, chosen on validation
MAX_TRAIN = 20_000  # training rows fitted at most (a seeded subsample beyond)
MAX_VALUES = 20_000_000  # training rows x features at most (Path-X: 16,384 pixels -> 1,220 rows)
MIN_TRAIN = 1_000  # the feature budget never cuts the subsample below this
MAX_ITER = 1000  # lbfgs iterations per fit; `metrics.converged` says whether that sufficed
CHUNK = 1024  # rows per feature block (bounds memory on long token sequences)


def fit_reference_rows(task_name: str, spec: TaskSpec, splits: dict[str, TaskData], *, scale: str,
                       data_seed: int, seq_len: int | None = None) -> list[dict]:
    """The `ref:majority` and `ref:linear` records (plain dicts from `make_record`) for one task's
    splits {"train", "val", "test"}. `spec` is the spec the models were built with (its pixel
    statistics normalise real inputs); `seq_len` defaults to the training inputs' width."""
    train = splits.get("train")
    if seq_len is None and train is not None:
        seq_len = int(train.inputs.shape[1])
    base = dict(kind="accuracy", model_family=REFERENCE_FAMILY, mode="fit", task=task_name,
                task_version=spec.version, seq_len=seq_len, seed=data_seed, scale=scale, device="cpu",
                provenance=train.provenance if train is not None else None,
                higher_is_better={"accuracy": True, "val_accuracy": True})
    return [_row(MAJORITY, _majority, spec, splits, data_seed, base),
            _row(LINEAR, _linear, spec, splits, data_seed, base)]


def _row(model: str, fit, spec: TaskSpec, splits: dict, data_seed: int, base: dict) -> dict:
    """One record: `fit` returns (status, error, model_config, metrics, n_params); faults are caught."""
    started = time.perf_counter()
    config = {}
    try:
        missing = [s for s in ("train", "val", "test") if s not in splits]
        if missing:
            raise ValueError(f"missing split(s) {', '.join(missing)}")
        status, error, config, metrics, n_params = fit(spec, splits, data_seed)
    except Exception as exc:  # a reference row never stops a run
        status, error, metrics, n_params = "error", short_error(exc), {}, None
    if status == "ok":
        metrics["fit_seconds"] = round(time.perf_counter() - started, 3)
    chash = config_hash(config) if config else None
    key = cell_key(kind="accuracy", model=model, model_config_hash=chash, task=base["task"],
                   task_version=base["task_version"], scale=base["scale"], seed=data_seed,
                   provenance=base["provenance"].to_dict() if base["provenance"] is not None else None)
    return make_record(model=model, status=status, error=error, model_config=config, model_config_hash=chash,
                       metrics=metrics, n_params=n_params, cell_key=key, **base)


# -- majority class --------------------------------------------------------------------------------
def _scored(labels) -> np.ndarray:
    """Labels as a flat int64 array of the scored targets (per-token: positions not IGNORE_INDEX)."""
    y = labels.numpy().astype(np.int64).reshape(-1)
    return y[y != IGNORE_INDEX]


def _majority(spec: TaskSpec, splits: dict, data_seed: int):
    y_train = _scored(splits["train"].labels)
    if y_train.size == 0:
        raise ValueError("the training split has no scored labels")
    label = int(np.argmax(np.bincount(y_train)))  # argmax takes the first (smallest) id on ties
    y_val, y_test = _scored(splits["val"].labels), _scored(splits["test"].labels)
    metrics = dict(accuracy=_mean(y_test == label), val_accuracy=_mean(y_val == label), n_test=int(y_test.size),
                   n_val=int(y_val.size), n_train=int(y_train.size), label=label)
    config = dict(rule="most frequent training label", per_token=spec.target == "token")
    return "ok", None, config, metrics, 0


def _mean(hits: np.ndarray) -> float | None:
    return float(hits.mean()) if hits.size else None


# -- linear model ----------------------------------------------------------------------------------
def feature_kind(spec: TaskSpec) -> str:
    """Which features the linear model reads: 'pixels', 'token-counts' or 'token-counts-dual'."""
    if spec.input_kind == "real":
        return "pixels"
    return "token-counts-dual" if spec.dual else "token-counts"


def token_counts(inputs, lengths, vocab_size: int) -> np.ndarray:
    """(N, L) ids, (N,) lengths -> (N, vocab_size) float32: counts of ids 1..V-1 within each length,
    then the length (column 0, where pad 0 would be, holds the length instead)."""
    ids = inputs.numpy().astype(np.int64)
    n, width = ids.shape
    lens = lengths.numpy().astype(np.int64)
    inside = np.arange(width)[None, :] < lens[:, None]  # (N, L) True within the length
    kept = ids[inside]
    if kept.size and (kept.min() < 0 or kept.max() >= vocab_size):
        raise ValueError(f"token ids {kept.min()}..{kept.max()} outside the vocabulary 0..{vocab_size - 1}")
    rows = np.broadcast_to(np.arange(n)[:, None], ids.shape)[inside]
    counts = np.bincount(rows * vocab_size + kept, minlength=n * vocab_size).reshape(n, vocab_size)
    out = counts.astype(np.float32)
    out[:, 0] = lens  # pad is never counted (it is outside the length); its column carries the length
    return out


def features(spec: TaskSpec, data: TaskData, rows: np.ndarray) -> np.ndarray:
    """(len(rows), F) float32 raw features of the chosen rows (see the module docstring)."""
    index = np.asarray(rows)
    kind = feature_kind(spec)
    if kind == "pixels":
        x = data.inputs[index].numpy().astype(np.float32)
        x = (x * np.float32(spec.real_scale) - np.float32(spec.real_mean)) / np.float32(spec.real_std)
        inside = np.arange(x.shape[1])[None, :] < data.lengths[index].numpy()[:, None]
        return np.where(inside, x, np.float32(0.0))
    first = token_counts(data.inputs[index], data.lengths[index], spec.vocab_size)
    if kind == "token-counts":
        return first
    second = token_counts(data.inputs2[index], data.lengths2[index], spec.vocab_size)
    return np.concatenate([first, second, np.abs(first - second)], axis=1)


def _chunked(spec: TaskSpec, data: TaskData, rows: np.ndarray, fn) -> np.ndarray:
    """fn(features of a block of rows) for every block, concatenated (bounds memory)."""
    return np.concatenate([fn(features(spec, data, rows[i:i + CHUNK])) for i in range(0, len(rows), CHUNK)])


def _linear(spec: TaskSpec, splits: dict, data_seed: int):
    kind = feature_kind(spec)
    if spec.target == "token":
        return ("unavailable", "per-token targets: a linear model on the whole sequence's raw input cannot tell "
                "which position is asked", dict(features=kind), {}, None)
    if importlib.util.find_spec("sklearn") is None:
        return ("unavailable", "scikit-learn is not installed (pip install scikit-learn)", dict(features=kind), {},
                None)
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    # One BLAS/OpenMP thread: on a busy 2-core machine (or beside torch's own thread pool) more threads
    # made one fit 15x slower here, waiting on each other.
    with threadpool_limits(limits=1):
        return _fit_linear(spec, splits, data_seed, kind)


def _fit_linear(spec: TaskSpec, splits: dict, data_seed: int, kind: str):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train, val, test = splits["train"], splits["val"], splits["test"]
    empty = [name for name, data in (("train", train), ("val", val), ("test", test)) if len(data) == 0]
    if empty:
        raise ValueError(f"empty split(s) {', '.join(empty)}: C is chosen on val and scored on test")
    n_total = len(train)
    n_features = features(spec, train, np.arange(1)).shape[1]
    limit = min(MAX_TRAIN, max(MIN_TRAIN, MAX_VALUES // max(n_features, 1)))
    rows = np.arange(n_total)
    if n_total > limit:  # a seeded subsample, kept in split order
        rows = np.sort(np.random.default_rng(data_seed).choice(n_total, size=limit, replace=False))
    x_train = _chunked(spec, train, rows, lambda f: f)
    y_train = train.labels.numpy().astype(np.int64)[rows]
    if np.unique(y_train).size < 2:
        raise ValueError("the training split holds a single class")
    scaler = StandardScaler().fit(x_train) if kind != "pixels" else None  # pixels are already normalised
    scale = (lambda f: scaler.transform(f).astype(np.float32)) if scaler is not None else (lambda f: f)
    x_train = scale(x_train)
    x_val = _chunked(spec, val, np.arange(len(val)), scale)
    y_val = val.labels.numpy().astype(np.int64)
    best = None
    val_by_c = {}
    for c in C_GRID:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = LogisticRegression(C=c, max_iter=MAX_ITER).fit(x_train, y_train)
        acc = float((model.predict(x_val) == y_val).mean())
        val_by_c[str(c)] = acc
        if best is None or acc > best[0]:  # ties keep the smaller C (the stronger penalty)
            best = (acc, c, model)
    val_acc, c, model = best
    y_test = test.labels.numpy().astype(np.int64)
    predicted = _chunked(spec, test, np.arange(len(test)), lambda f: model.predict(scale(f)))
    metrics = dict(accuracy=_mean(predicted == y_test), val_accuracy=val_acc,
                   n_test=int(len(test)), n_val=int(len(val)), n_train=int(len(rows)),
                   subsampled=bool(len(rows) < n_total), C=c, val_accuracy_by_C=val_by_c,
                   converged=bool(np.all(np.asarray(model.n_iter_) < MAX_ITER)))
    config = dict(model="logistic regression (L2, lbfgs)", features=kind, n_features=int(n_features),
                  C_grid=list(C_GRID), max_train=MAX_TRAIN, max_values=MAX_VALUES, max_iter=MAX_ITER,
                  standardised=scaler is not None)
    n_params = int(model.coef_.size + model.intercept_.size)
    return "ok", None, config, metrics, n_params

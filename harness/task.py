"""The task contract: what a task plugin declares and returns.

A task is a class registered with `@register_task("name")` that subclasses `Task`:

    @register_task("my_task")
    class MyTask(Task):
        spec = TaskSpec(seq_len=1024, input_kind="tokens", vocab_size=20, num_classes=2, ...)

        def sizes(self, scale):            # examples per split (and optional seq_len) per scale
            ...
        def build(self, split) -> TaskData:  # load or generate one split
            ...

The harness caches built splits (`Task.load`), derives padding masks from lengths (never from token
value 0, so a black pixel is not padding), and records `provenance` on every result: a typed
`harness.records.Provenance` (kind official | user | regenerated | stand-in, source, subset,
parameters). Only a paper-scale run on the whole of an official or regenerated data set enters an
LRA average (`Record.lra_eligible`); a subset says so in `subset`.
"""

from __future__ import annotations

import abc
import hashlib
import json
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import torch

from harness.errors import UserError
from harness.files import atomic_path
from harness.records import Provenance

PAD_ID = 0  # token id 0 is padding in every token task
IGNORE_INDEX = -100  # per-token targets that are not scored


@dataclass(frozen=True)
class TaskSpec:
    """Static metadata of a task (shown by `ls`, stored with every record)."""

    seq_len: int  # input length L of the paper's setting (per document for dual tasks)
    input_kind: str  # "tokens" (int ids, 0 = pad) or "real" (one real value per position)
    vocab_size: int  # number of token ids including pad 0 (0 for "real" inputs)
    num_classes: int
    target: str = "sequence"  # "sequence": one label per example; "token": a label per position
    dual: bool = False  # two documents per example (Retrieval): shared encoder, pooled pair
    metric: str = "accuracy"
    splits: dict = field(default_factory=dict)  # paper split sizes, e.g. {"train": 96000, ...}
    lra: bool = False  # one of the six LRA tasks (eligible for the LRA average)
    label: str = ""  # name in tables and reports (e.g. "Path-X"); the registered name when empty
    order: int = 100  # column order in tables (the six LRA tasks: 1-6, in LRA's own order)
    version: str = "1"  # bump when the data or its preprocessing changes
    real_mean: float = 0.0  # "real" inputs are embedded as (value - mean) / std
    real_std: float = 1.0
    real_scale: float = 1.0  # stored value -> [0, 1] (e.g. 1/255 for 8-bit pixels)
    description: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


INTERACTIONS = ("concat", "nli")  # how a dual task's two pooled documents meet (harness/heads.py)


@dataclass(frozen=True)
class TaskOptions:
    """Settings of a task instance that a user may change (`--task-option TASK.KEY=VALUE`); each task
    family subclasses it with its own fields, each default written once with a comment. The fields
    here shape the classifier head, which belongs to the task."""

    interaction: typing.Literal[INTERACTIONS] = "concat"  # dual tasks: how the two pooled documents meet
    head_dropout: float | None = None  # dropout inside the classifier head; None = the model's dropout

    HEAD = ("interaction", "head_dropout")  # (not a field) these shape the head, not the data

    def changed(self) -> dict:
        """The options that differ from their defaults (what identifies a non-default instance)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) != _default(f)}

    def data_changed(self) -> dict:
        """The changed options that shape the data (the head options left out)."""
        return {k: v for k, v in self.changed().items() if k not in self.HEAD}


def _default(f):
    return f.default_factory() if f.default is MISSING and f.default_factory is not MISSING else f.default


def _show(value) -> str:
    """A value as the command line spells it (none, true, 0.1)."""
    return "none" if value is None else json.dumps(value) if isinstance(value, bool) else str(value)


# -- options from user input (the CLI gives text, the Python API values) ------------------------------

_TRUE, _FALSE, _NONE = ("true", "yes", "on", "1"), ("false", "no", "off", "0"), ("none", "null")


def _type_name(hint) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(hint))
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if _optional(hint):
        return f"{_type_name(args[0])} or none"
    return {int: "an integer", float: "a number", bool: "true or false", str: "text"}.get(hint, str(hint))


def _optional(hint) -> bool:
    return (typing.get_origin(hint) in (typing.Union, types.UnionType)
            and type(None) in typing.get_args(hint))


def _coerce(value, hint):
    """`value` as type `hint` (int, float, bool, str, a Literal, or Optional of one of these); text
    is parsed, a value of the right type is kept. ValueError when it cannot be; TypeError for a
    field type outside that list (a mistake of the task, not of the user)."""
    if _optional(hint):
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            return None
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(value, inner[0] if len(inner) == 1 else typing.Union[tuple(inner)])
    if typing.get_origin(hint) is typing.Literal:
        choices = typing.get_args(hint)
        for choice in choices:
            if value == choice or (isinstance(value, str) and value.strip() == str(choice)):
                return choice
        raise ValueError
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            return int(value.strip().replace("_", ""))
        raise ValueError
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            return float(value.strip())
        raise ValueError
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError
    raise TypeError(f"option type {hint!r} is not supported (int, float, bool, str, Literal, Optional)")


def describe_options(options_cls: type) -> dict:
    """{name: "type (default VALUE)"} of an options dataclass, for `python -m harness ls`."""
    hints = typing.get_type_hints(options_cls)
    return {f.name: f"{_type_name(hints[f.name])} (default {_show(_default(f))})" for f in fields(options_cls)}


def make_options(options_cls: type, given, task: str, dual: bool = False):
    """`given` (None, a dict of values or text, or an `options_cls` instance) as a checked
    `options_cls` instance. An unknown key, a value of the wrong type or an `nli` interaction on a
    task with one document is a UserError naming `--task-option TASK.KEY`."""
    if isinstance(given, options_cls):
        options = given
    else:
        if given is None:
            given = {}
        elif isinstance(given, TaskOptions) or not isinstance(given, dict):
            raise UserError(f"task {task}: options must be a dict or a {options_cls.__name__}, "
                            f"not {type(given).__name__}")
        hints = typing.get_type_hints(options_cls)
        known = {f.name: f for f in fields(options_cls)}
        values = {}
        for key, value in given.items():
            flag = f"--task-option {task}.{key}={value}"
            if key not in known:
                raise UserError(f"{flag}: task {task} has no option '{key}' (its options: "
                                f"{', '.join(known)}); check the spelling")
            try:
                values[key] = _coerce(value, hints[key])
            except ValueError:
                default = _default(known[key])
                hint = (f"give e.g. --task-option {task}.{key}={_show(default)} (the default)" if default is not None
                        else f"give {_type_name(hints[key]).removesuffix(' or none')}, or none for the default")
                raise UserError(f"{flag}: expected {_type_name(hints[key])}; {hint}") from None
        options = options_cls(**values)
    if options.interaction not in INTERACTIONS:
        raise UserError(f"--task-option {task}.interaction={options.interaction}: expected one of "
                        f"{', '.join(INTERACTIONS)}")
    if options.interaction != "concat" and not dual:
        raise UserError(f"--task-option {task}.interaction={options.interaction}: task {task} has one "
                        f"document per example; the interaction applies to dual tasks (e.g. retrieval)")
    if options.head_dropout is not None and not 0 <= options.head_dropout < 1:
        raise UserError(f"--task-option {task}.head_dropout={options.head_dropout}: expected a "
                        f"probability in [0, 1), or none for the model's dropout")
    return options


@dataclass
class TaskData:
    """One split. Positions at or beyond `lengths[i]` are padding (True in the padding mask)."""

    inputs: torch.Tensor  # (N, L) integer ids, or stored real values (e.g. uint8 pixels)
    lengths: torch.Tensor  # (N,) int64, true lengths
    labels: torch.Tensor  # (N,) int64 class ids, or (N, L) int64 with IGNORE_INDEX where unscored
    provenance: Provenance  # where the split came from (see module docstring)
    inputs2: torch.Tensor | None = None  # second document of dual tasks, (N, L2)
    lengths2: torch.Tensor | None = None

    def __post_init__(self):
        self.provenance = Provenance.from_value(self.provenance)  # the cache stores it as a dict

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def validate(self, spec: TaskSpec, where: str) -> None:
        n = len(self)
        if self.inputs.dim() != 2 or self.inputs.shape[0] != n or self.lengths.shape != (n,):
            raise UserError(f"{where}: inconsistent shapes inputs {tuple(self.inputs.shape)}, "
                            f"lengths {tuple(self.lengths.shape)}, labels {tuple(self.labels.shape)}",
                            exit_code=1)
        if spec.dual and (self.inputs2 is None or self.lengths2 is None):
            raise UserError(f"{where}: a dual task needs inputs2 and lengths2", exit_code=1)

    def batch(self, index: torch.Tensor, trim: bool = True) -> dict:
        """A batch dict {x, mask, y[, x2, mask2]}; `trim` cuts padding beyond the longest example."""
        out = {}
        for suffix, inputs, lengths in (("", self.inputs, self.lengths),
                                        ("2", self.inputs2, self.lengths2)):
            if inputs is None:
                continue
            lens = lengths[index]
            width = int(lens.max()) if trim and len(index) else inputs.shape[1]
            x = inputs[index, :width]
            out["x" + suffix] = x
            out["mask" + suffix] = torch.arange(width)[None, :] >= lens[:, None]  # True = pad
        y = self.labels[index]
        if y.dim() == 2 and trim:
            y = y[:, : out["x"].shape[1]]
        out["y"] = y
        return out


class Task(abc.ABC):
    """Base class of task plugins. Subclasses set `spec` and implement `sizes` and `build`."""

    name: str = ""  # set by @register_task
    spec: TaskSpec
    needs_data: bool = False  # True when real data must come from --data-dir (else stand-in)
    Options: type = TaskOptions  # the family's options dataclass (a TaskOptions subclass)
    generatable: bool = False  # True when `generate` can write this task's files (`data generate`)

    def __init__(self, *, scale: str = "smoke", seed: int = 0, data_dir: str | Path | None = None,
                 cache_dir: str | Path | None = None, options: "TaskOptions | dict | None" = None):
        self.scale = scale
        self.seed = seed
        self.data_dir = Path(data_dir) if data_dir else None
        self.cache_dir = Path(cache_dir) if cache_dir else None
        # a dict (text from the CLI, or values) is checked and typed against the family's fields
        self.options = make_options(self.Options, options, self.name or type(self).__name__, self.spec.dual)

    # -- to implement ---------------------------------------------------------------------------
    @abc.abstractmethod
    def sizes(self, scale: str) -> dict:
        """{'train': n, 'val': n, 'test': n} for a scale, plus optional 'seq_len', and optional
        'batch_size' / 'total_steps' caps on the training settings at that scale."""

    @abc.abstractmethod
    def build(self, split: str) -> TaskData:
        """Read or generate one split ('train', 'val' or 'test')."""

    def check(self, data_dir: Path) -> list[str]:
        """Problems of this task's files under `data_dir` (`data check`); [] = OK. A task that reads
        files overrides this."""
        raise UserError(f"task {self.name} reads no data files, so there is nothing to check")

    def generate(self, out_dir: Path, n: int | None = None, seed: int = 0, workers: int = 1,
                 progress: typing.Callable[[int], None] | None = None) -> dict:
        """Write the task's data into `out_dir` in the layout its reader accepts, with manifest.json
        (seed, counts, files -> sha256); returns that manifest plus its `path`. Tasks with
        `generatable = True` override this."""
        raise UserError(f"task {self.name} cannot be generated")

    # -- provided ------------------------------------------------------------------------------
    def input_spec(self) -> TaskSpec:
        """The spec the model is built with for this instance's data (e.g. the pixel statistics of
        the data set actually read, or a scale's vocabulary); the class spec by default."""
        return self.spec

    @property
    def seq_len(self) -> int:
        return int(self.sizes(self.scale).get("seq_len", self.spec.seq_len))

    def cache_key(self, split: str) -> str:
        """Identity of a built split; anything that changes the data must be in it (the options
        that differ from their defaults, so a default instance keeps `options={}`)."""
        ident = dict(task=self.name, version=self.spec.version, split=split, scale=self.scale,
                     seed=self.seed, sizes=self.sizes(self.scale), options=self.options.data_changed(),
                     data_dir=str(self.data_dir.resolve()) if self.data_dir else None)
        return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def load(self, split: str) -> TaskData:
        """`build(split)` through an on-disk cache, so a second run neither regenerates nor re-tokenises."""
        path = None
        if self.cache_dir is not None:
            path = self.cache_dir / self.name / f"{split}-{self.cache_key(split)}.pt"
            if path.exists():
                try:
                    data = TaskData(**torch.load(path, weights_only=True))
                    data.validate(self.spec, f"cache {path}")
                    return data
                except Exception:
                    path.unlink(missing_ok=True)  # a torn or stale cache entry is rebuilt
        data = self.build(split)
        data.validate(self.spec, f"task {self.name} split {split}")
        if path is not None:
            saved = dict(data.__dict__, provenance=data.provenance.to_dict())  # weights_only loads plain data
            with atomic_path(path) as tmp:
                torch.save(saved, tmp)
        return data

    def random_batch(self, batch_size: int, seq_len: int, generator: torch.Generator) -> dict:
        """Inputs of the task's shape for speed/memory cells (no data needed)."""
        spec = self.spec

        def one(prefix: str) -> dict:
            if spec.input_kind == "tokens":
                x = torch.randint(1, max(spec.vocab_size, 2), (batch_size, seq_len), generator=generator)
            else:
                x = torch.randint(0, 256, (batch_size, seq_len), generator=generator).to(torch.uint8)
            return {"x" + prefix: x, "mask" + prefix: torch.zeros(batch_size, seq_len, dtype=torch.bool)}

        out = one("")
        if spec.dual:
            out.update(one("2"))
        if spec.target == "token":
            out["y"] = torch.randint(0, spec.num_classes, (batch_size, seq_len), generator=generator)
        else:
            out["y"] = torch.randint(0, spec.num_classes, (batch_size,), generator=generator)
        return out

"""Typed result records (schema_version 2): what one measured cell says, and where it came from.

A `Record` is one line of a run's `records.jsonl`. Its parts are typed so that tables, plots and
`compare` read fields, never display strings:
- `Provenance`: where the data came from (`kind` official | user | regenerated | stand-in |
  random-inputs, its `source`, the `subset` taken when not the whole published split, and the
  generator or reader `parameters`);
- `Timing` and `Memory`: the speed/memory measurement (measurement.md);
- `Hardware`: the device the cell ran on (GPU or CPU model) and the host, per record, because the
  cells of one table may come from several machines;
- the architecture config (`model_config`, hashed: the model's identity) apart from the runtime
  settings (`runtime_config`: implementation, compilation, kernels; recorded, shown, compared, but
  not part of the identity), and `variant`: the settings the user changed from the registered
  configuration, which label the row (`mega_chunk [compile=true]`);
- `plugins`: which plugin supplied the model and the task (distribution and version, or file);
- `task_options`: the task options changed from their defaults (`--task-option text.seq_len=1000`),
  empty for a default task; they are part of the cell key and label the row too
  (`mega [text.seq_len=1000]`).

`Record.from_dict` reads both schema versions: a schema-1 line (written before typed records)
is upgraded — its provenance string is parsed once, here, into a `Provenance`, its runtime
settings are split out of the architecture config, and its hardware comes from the run manifest.
Nothing downstream parses strings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field

SCHEMA_VERSION = 2
# Bumped when what a number means changes. speed 2: the timed step no longer waits for the device
# (no accuracy count, no `.item()`); accuracy 2: a cell stopped by a time budget or timeout
# evaluates its best weights instead of being discarded.
PROTOCOL_VERSIONS = {"speed": 2, "accuracy": 2}
STATUSES = ("ok", "oom", "error", "skipped", "unavailable")
KINDS = ("speed", "accuracy")
PROVENANCE_KINDS = ("official", "user", "regenerated", "stand-in", "random-inputs")
# Kinds whose data is the LRA task's own: official release files (or the published data set an LRA
# task is built from) and faithful regenerations. User data of unknown origin and stand-ins never are.
LRA_KINDS = ("official", "regenerated")

# Execution settings that schema-1 records kept inside the architecture config, with the value that
# meant "the default way of running". They do not change what the model computes.
LEGACY_RUNTIME_DEFAULTS = {"impl": "fast", "compile": False, "compile_mode": "default",
                           "softmax_kernel": "auto", "scan": "auto"}


class RecordError(ValueError):
    """A stored line that is not a valid record (the store skips it with a warning)."""


@dataclass(frozen=True)
class Provenance:
    """Where a cell's data came from."""

    kind: str  # one of PROVENANCE_KINDS
    source: str  # the data set or generator, e.g. "lra-release", "fashion-mnist", "listops-generator"
    subset: str | None = None  # e.g. "n=2000/250/250, pool=2 (16x16)"; None = the task's full splits
    parameters: dict = field(default_factory=dict)  # seed, generator and reader settings

    def __post_init__(self):
        if self.kind not in PROVENANCE_KINDS:
            raise RecordError(f"provenance kind must be one of {PROVENANCE_KINDS}, got {self.kind!r}")
        if not isinstance(self.source, str) or not self.source:
            raise RecordError("provenance source must be non-empty text")
        if self.subset is not None and not isinstance(self.subset, str):
            raise RecordError("provenance subset must be text or null")
        if not isinstance(self.parameters, dict):
            raise RecordError("provenance parameters must be an object")

    @property
    def lra_data(self) -> bool:
        """The whole of an LRA task's own data (official or faithfully regenerated)."""
        return self.kind in LRA_KINDS and self.subset is None

    @property
    def label(self) -> str:
        """Human text, e.g. 'stand-in: fashion-mnist (n=2000/250/250)'."""
        text = f"{self.kind}: {self.source}"
        return f"{text} ({self.subset})" if self.subset else text

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_value(cls, value) -> "Provenance | None":
        if value is None or isinstance(value, Provenance):
            return value
        if isinstance(value, dict):
            try:
                return cls(**value)
            except TypeError as exc:
                raise RecordError(f"provenance: {exc}") from None
        if isinstance(value, str):
            return cls.from_legacy(value)
        raise RecordError("provenance must be an object")

    @classmethod
    def from_legacy(cls, text: str) -> "Provenance":
        """A schema-1 provenance string: `official-release`, `official-release(subset ...)`,
        `user-data(...)`, `regenerated(...)`, `stand-in(name; ...)`, `synthetic-inputs(...)`."""
        match = re.match(r"^\s*([\w-]+)\s*(?:\((.*)\))?\s*$", text, re.S)
        head, inner = (match.group(1), (match.group(2) or "").strip()) if match else (text.strip(), "")
        if head == "official-release":
            subset = inner[len("subset"):].strip() if inner.startswith("subset") else (inner or None)
            return cls("official", "lra-release", subset=subset)
        if head == "user-data":
            source, _, rest = inner.partition(";")
            return cls("user", source.strip() or "user data", subset=rest.strip() or None)
        if head == "regenerated":
            seed = re.search(r"seed=(\d+)", inner)
            sizes = re.search(r"n=([\d/]+)", inner)
            return cls("regenerated", "generator", subset=f"n={sizes.group(1)}" if sizes else None,
                       parameters={"seed": int(seed.group(1))} if seed else {}, )
        if head == "stand-in":
            source, _, rest = inner.partition(";")
            return cls("stand-in", source.strip() or "unnamed", subset=rest.strip() or None)
        if head == "synthetic-inputs":
            return cls("random-inputs", inner or "random tokens")
        return cls("user", text.strip() or "unknown")


@dataclass(frozen=True)
class Timing:
    """Per-iteration time of a speed cell, in milliseconds (measurement.md)."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    mean_ms: float | None = None
    n_warmup: int | None = None
    n_iters: int | None = None
    samples_ms: list = field(default_factory=list)
    timer: str | None = None  # cuda-events | perf_counter
    threads: int | None = None  # torch CPU threads (CPU cells)

    @property
    def spread(self) -> float | None:
        """p80 / p20: above 1.5 the cell is noisy (statistics.md)."""
        return self.p80_ms / self.p20_ms if self.p20_ms and self.p20_ms > 0 else None


@dataclass(frozen=True)
class Memory:
    """Peak memory of a speed cell, in bytes (which fields exist depends on the device)."""

    peak_allocated_bytes: int | None = None  # CUDA: model + optimiser state + activations + grads
    peak_increase_bytes: int | None = None  # CUDA: growth over what was allocated before timing
    peak_reserved_bytes: int | None = None
    footprint_bytes: int | None = None  # NVML device-wide "used"
    peak_rss_increase_bytes: int | None = None  # CPU: rise of the process peak RSS
    peak_rss_bytes: int | None = None


@dataclass(frozen=True)
class Hardware:
    """The machine and software a cell ran on, per record: the cells of one run may run on different
    machines (--executor pool or ray), so the run manifest's environment is not enough."""

    device_name: str | None = None  # e.g. "NVIDIA H100 80GB HBM3", or the CPU model for CPU cells
    host: str | None = None
    device_count: int | None = None  # GPUs visible (None on CPU)
    visible_devices: str | None = None  # CUDA_VISIBLE_DEVICES as the cell saw it (None: not set)
    python: str | None = None  # e.g. "3.11.2"
    torch: str | None = None  # e.g. "2.13.0+cpu"
    cuda: str | None = None  # the CUDA runtime torch was built with (None on a CPU build)
    harness: str | None = None  # the harness version


def _typed(cls, value, what: str):
    if value is None or isinstance(value, cls):
        return value
    if value == {}:  # "not measured" written as an empty object
        return None
    if not isinstance(value, dict):
        raise RecordError(f"{what} must be an object")
    known = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in value.items() if k in known})
    except TypeError as exc:
        raise RecordError(f"{what}: {exc}") from None


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def variant_label(variant: dict | None) -> str:
    """`{'compile': True, 'compile_mode': 'reduce-overhead'}` -> 'compile=true, compile_mode=reduce-overhead'."""
    if not variant:
        return ""
    return ", ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(variant.items()))


def task_options_label(task_options: dict | None, task: str | None) -> str:
    """`{'seq_len': 1000}` on text -> 'text.seq_len=1000' (as --task-option spells it)."""
    if not task_options:
        return ""
    prefix = f"{task}." if task else ""
    return variant_label({prefix + k: v for k, v in task_options.items()})


def row_label(model: str, variant: dict | None, task_options: dict | None = None, task: str | None = None) -> str:
    """The row name of a model variant: `mega_chunk [compile=true]`, or the bare model name; task
    options changed from their defaults join the label (`mega [text.seq_len=1000]`), so a cell of a
    non-default task never merges with the default one."""
    label = ", ".join(p for p in (variant_label(variant), task_options_label(task_options, task)) if p)
    return f"{model} [{label}]" if label else model


_TEXT = ("run_id", "cell_key", "kind", "model", "model_family", "complexity", "model_config_hash", "task", "task_version",
         "dtype", "device", "mode", "status", "error", "scale", "created")
_INT = ("seq_len", "batch_size", "seed", "n_params", "protocol_version")


@dataclass
class Record:
    """One measured cell. `status` says why a number is missing (null, never 0)."""

    kind: str  # speed | accuracy
    model: str
    status: str  # ok | oom | error | skipped | unavailable
    task: str | None = None
    schema_version: int = SCHEMA_VERSION
    run_id: str | None = None
    cell_key: str | None = None
    model_family: str | None = None
    complexity: str | None = None  # the registered complexity, e.g. "O(L^2)", beside the measured one
    model_config: dict = field(default_factory=dict)  # architecture: the model's identity (hashed)
    model_config_hash: str | None = None
    runtime_config: dict = field(default_factory=dict)  # execution settings: recorded, not hashed
    variant: dict = field(default_factory=dict)  # settings changed from the registered config
    runtime: dict | None = None  # what the backbone resolved at run time (e.g. which scan ran)
    task_version: str | None = None
    task_options: dict = field(default_factory=dict)  # task options changed from their defaults (--task-option)
    # Which plugin supplied the model and the task: {"model": "built-in lsm-harness 0.1.0",
    # "task": "file /home/me/my_task.py"} (distribution and version, or file); empty in older records.
    plugins: dict = field(default_factory=dict)
    seq_len: int | None = None
    batch_size: int | None = None
    dtype: str | None = None
    device: str | None = None  # cpu | cuda
    mode: str | None = None  # train_step | forward | train | fit
    error: str | None = None
    n_params: int | None = None
    seed: int | None = None
    scale: str | None = None  # smoke | small | paper (accuracy cells)
    provenance: Provenance | None = None
    metrics: dict = field(default_factory=dict)  # accuracy, val_accuracy, loss, n_test, steps, ...
    higher_is_better: dict = field(default_factory=dict)
    timing: Timing | None = None
    memory: Memory | None = None
    throughput_tokens_per_s: float | None = None
    train: dict | None = None  # resolved training settings (accuracy cells)
    hardware: Hardware | None = None
    protocol_version: int | None = None
    created: str | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise RecordError(f"kind is not one of {KINDS}: {self.kind!r}")
        if self.status not in STATUSES:
            raise RecordError(f"status is not one of {STATUSES}: {self.status!r}")
        for name in _TEXT:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise RecordError(f"{name} is not text")
        for name in _INT:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise RecordError(f"{name} is not an integer")
        for name in ("model_config", "runtime_config", "variant", "task_options", "plugins", "metrics",
                     "higher_is_better"):
            if not isinstance(getattr(self, name), dict):
                raise RecordError(f"{name} is not an object")
        self.provenance = Provenance.from_value(self.provenance)
        self.timing = _typed(Timing, self.timing, "timing")
        self.memory = _typed(Memory, self.memory, "memory")
        self.hardware = _typed(Hardware, self.hardware, "hardware")
        if self.protocol_version is None:
            self.protocol_version = PROTOCOL_VERSIONS[self.kind]
        if self.model_config_hash is None and self.model_config:
            self.model_config_hash = config_hash(self.model_config)

    @property
    def label(self) -> str:
        return row_label(self.model, self.variant, self.task_options, self.task)

    @property
    def lra_eligible(self) -> bool:
        """May enter an LRA average: a paper-scale run on the whole of the task's own data."""
        return self.scale == "paper" and self.provenance is not None and self.provenance.lra_data

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, manifest: dict | None = None) -> "Record":
        """A stored line (schema 1 or 2) as a Record; RecordError when it cannot be one.
        `manifest` (the run's run.json) supplies the hardware of schema-1 lines."""
        if not isinstance(data, dict):
            raise RecordError("not a JSON object")
        data = dict(data)
        if data.get("schema_version", 1) == 1:
            data = _upgrade_v1(data, manifest or {})
        known = {f.name for f in dataclasses.fields(cls)}
        if "kind" not in data or "model" not in data or "status" not in data:
            raise RecordError("kind, model or status missing")
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise RecordError(str(exc)) from None


def hardware_from_environment(environment: dict, device: str | None) -> Hardware | None:
    """The Hardware of a cell on `device` from a captured environment (harness.env.capture)."""
    if not isinstance(environment, dict) or not environment:
        return None
    gpus = environment.get("gpus") or []
    if device == "cuda" and gpus and isinstance(gpus[0], dict):
        return Hardware(device_name=gpus[0].get("name"), host=environment.get("hostname"), device_count=len(gpus))
    return Hardware(device_name=environment.get("cpu"), host=environment.get("hostname"))


def _upgrade_v1(data: dict, manifest: dict) -> dict:
    """Schema 1 -> 2: typed provenance, runtime settings apart, hardware and protocol from the manifest."""
    out = dict(data)
    kind = out.get("kind")
    if kind is None:  # the oldest lines had no kind: a timing means speed
        kind = "speed" if (out.get("timing") or {}).get("median_ms") is not None else "accuracy"
        out["kind"] = kind
    config = dict(out.get("model_config") or {}) if isinstance(out.get("model_config"), dict) else {}
    runtime = {k: config.pop(k) for k in list(config) if k in LEGACY_RUNTIME_DEFAULTS}
    out["model_config"] = config
    out["runtime_config"] = runtime
    out["variant"] = {k: v for k, v in runtime.items() if v != LEGACY_RUNTIME_DEFAULTS[k]}
    if runtime:  # the stored hash covered the runtime keys too: the identity is the architecture now
        out["model_config_hash"] = config_hash(config)
    for name in ("timing", "memory"):
        value = out.get(name)
        if isinstance(value, dict) and not value:
            out[name] = None
    timing = out.get("timing")
    if isinstance(timing, dict) and timing.get("median_ms") is None:
        out["timing"] = None
    if kind == "speed" and out.get("provenance") is None:  # schema-1 speed cells always timed random inputs
        out["provenance"] = "synthetic-inputs(random tokens)"
    out["hardware"] = hardware_from_environment(manifest.get("environment") or {}, out.get("device"))
    out["protocol_version"] = 1
    out["schema_version"] = SCHEMA_VERSION
    return out

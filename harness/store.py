"""Result store: `results/<run_id>/run.json` (manifest) + `records.jsonl` (one line per cell).

Guarantees:
- the manifest is replaced atomically (temporary file + rename);
- each record is one `write()` of one line on an O_APPEND descriptor under an exclusive `flock`,
  then flushed and fsync'ed: concurrent writers never interleave, a killed run loses at most the
  line being written, and that torn line is skipped on load with a warning naming file and line
  (the first few per file; the rest are counted in one more warning);
- a missing measurement is null with a status saying why, never 0.

Records are `harness.records.Record` (schema_version 2, typed provenance, timing, memory and
hardware); `load_records` upgrades schema-1 lines on reading and flattens nested fields with dots
for pandas, e.g. `timing.median_ms`, `provenance.kind`, `hardware.device_name`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import json
import os
import secrets
import warnings
from pathlib import Path

from harness.errors import UserError
from harness.records import SCHEMA_VERSION, STATUSES, Record, RecordError, config_hash  # noqa: F401

WARNED_LINES = 3  # damaged lines of one file warned one by one; a badly damaged file must not flood stderr
RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(Record))


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    """Sortable by start time (to the millisecond), unique across concurrent starts."""
    now = dt.datetime.now(dt.timezone.utc)
    return now.strftime("%Y%m%d-%H%M%S-") + f"{now.microsecond // 1000:03d}" + secrets.token_hex(2)


def cell_key(**identity) -> str:
    """What makes two cells 'the same measurement' (used by resume)."""
    return config_hash(identity)


def make_record(**fields) -> dict:
    """A new record, checked by `Record` (typed parts, statuses, field types), as the plain dict that
    travels between processes and into the store."""
    unknown = set(fields) - set(RECORD_FIELDS)
    if unknown:
        raise ValueError(f"unknown record fields: {sorted(unknown)}")
    fields.setdefault("created", utc_now())
    return Record(**fields).to_dict()


def _finite(value):
    """NaN/inf -> None, recursively: JSON has no NaN, and a missing number must read as null."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def atomic_write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(2)}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(path: Path):
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_jsonl(path: Path, warn=True, manifest: dict | None = None) -> list[dict]:
    """Records of one file, checked and upgraded to the current schema by `Record.from_dict`
    (`manifest`: the run's, for the hardware of schema-1 lines); a corrupt or torn line is skipped
    with a warning naming file and line (the first WARNED_LINES of them, then one warning counting
    the rest). A file that cannot be read at all (a folder, no permission) is a UserError."""
    out, damaged = [], 0
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return out
    except OSError as exc:
        raise UserError(f"{path}: cannot read the records ({exc.strerror or exc}); expected a file of "
                        f"JSON lines", exit_code=1)
    for line_no, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        reason = None
        try:
            record = Record.from_dict(json.loads(line), manifest).to_dict()
        except RecordError as exc:
            reason = str(exc)
        except ValueError:  # a torn write or binary garbage: the decoder's detail helps nobody
            reason = "not JSON"
        if reason:
            damaged += 1
            if warn and damaged <= WARNED_LINES:
                warnings.warn(f"{path}:{line_no}: skipped a corrupt record ({reason})", stacklevel=2)
            continue
        out.append(record)
    if warn and damaged > WARNED_LINES:
        warnings.warn(f"{path}: skipped {damaged - WARNED_LINES} more corrupt records", stacklevel=2)
    return out


# What readers of a manifest rely on; a damaged manifest is unreadable rather than a crash later.
MANIFEST_FIELD_TYPES = {"environment": dict, "config": dict, "command": (list, str), "run_id": str,
                        "status": str}


class Run:
    """One run folder. Use `RunStore.create` / `RunStore.open` to get one."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.run_id = directory.name
        self.manifest_path = directory / "run.json"
        self.records_path = directory / "records.jsonl"

    @property
    def manifest(self) -> dict:
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{self.manifest_path}: unreadable manifest ({exc})", exit_code=1)
        if not isinstance(manifest, dict):  # valid JSON, but every reader expects an object
            raise UserError(f"{self.manifest_path}: unreadable manifest (not a JSON object)", exit_code=1)
        wrong = [key for key, kind in MANIFEST_FIELD_TYPES.items()
                 if manifest.get(key) is not None and not isinstance(manifest[key], kind)]
        gpus = (manifest.get("environment") or {}).get("gpus") if "environment" not in wrong else None
        if gpus is not None and not (isinstance(gpus, list) and all(isinstance(g, dict) for g in gpus)):
            wrong.append("environment.gpus")
        if wrong:
            raise UserError(f"{self.manifest_path}: unreadable manifest ({', '.join(wrong)} of the wrong type)",
                            exit_code=1)
        return manifest

    def update_manifest(self, **fields) -> None:
        with _locked(self.dir / ".manifest.lock"):
            manifest = self.manifest
            manifest.update(fields)
            atomic_write_json(self.manifest_path, manifest)

    def append(self, record: dict | Record) -> None:
        if isinstance(record, Record):
            record = record.to_dict()
        record = _finite(Record.from_dict(dict(record, run_id=self.run_id)).to_dict())
        line = (json.dumps(record, default=str, allow_nan=False) + "\n").encode()
        with _locked(self.records_path) as fd:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":  # a line torn by a kill: end it first
                line = b"\n" + line
            os.write(fd, line)
            os.fsync(fd)

    def records(self, manifest: dict | None = None) -> list[dict]:
        return read_jsonl(self.records_path, manifest=manifest)

    def done_keys(self) -> set[str]:
        """Cells finished with a definitive status (errors and timeouts are retried on resume)."""
        return {r.get("cell_key") for r in self.records()
                if r.get("status") in ("ok", "oom", "skipped", "unavailable")
                and (r.get("metrics") or {}).get("stopped") != "timeout"}


class RunStore:
    def __init__(self, results_dir: str | Path):
        self.root = Path(results_dir)

    def _ensure_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise UserError(f"--results-dir {self.root}: not writable ({exc.strerror or exc}); "
                            f"choose a folder you can write to", exit_code=1)

    def create(self, command: list[str], config: dict, environment: dict) -> Run:
        self._ensure_writable()
        while True:
            run_id = new_run_id()
            directory = self.root / run_id
            try:
                directory.mkdir()
                break
            except FileExistsError:
                continue
        run = Run(directory)
        atomic_write_json(run.manifest_path, {
            "schema_version": SCHEMA_VERSION, "run_id": run_id, "status": "running",
            "started": utc_now(), "finished": None, "command": command, "config": config,
            "harness_version": environment.get("harness_version"),
            "git_sha": environment.get("git", {}).get("sha"),
            "git_dirty": environment.get("git", {}).get("dirty"),
            "environment": environment,
        })
        run.records_path.touch()
        return run

    def open(self, run_id: str) -> Run:
        directory = self.root / run_id
        if not (directory / "run.json").is_file():
            known = ", ".join(self.run_ids()[-5:]) or "none"
            raise UserError(f"run '{run_id}' not found in {self.root} (latest: {known})", exit_code=2)
        self._ensure_writable()
        return Run(directory)

    def run_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "run.json").is_file())

    def manifests(self, runs: list[str] | None = None, warn=True) -> list[dict]:
        """The readable manifests; an unreadable one is left out with a warning (`warn=False` when
        `load_records` already warned about these runs)."""
        out = []
        for run_id in runs or self.run_ids():
            try:
                out.append(Run(self.root / run_id).manifest)
            except UserError as exc:
                if warn:
                    warnings.warn(str(exc), stacklevel=2)
        return out


def load_records(results_dir: str | Path = "results", runs: list[str] | None = None):
    """Every record of every run (or of `runs`) as one pandas DataFrame, nested fields dotted.

    Columns include the RECORD_FIELDS plus e.g. `timing.median_ms`, `memory.peak_allocated_bytes`,
    `metrics.accuracy`, `provenance.kind`, `hardware.device_name`; `label` (the row name, model and
    variant) and `lra_eligible` are derived from the typed record; `run_started` and `git_sha` come
    from the manifests. Damage is warned about,
    never fatal: a corrupt line is skipped, an unreadable manifest leaves those two columns empty,
    and a run whose records file cannot be read at all is left out.
    """
    import pandas as pd

    store = RunStore(results_dir)
    available = store.run_ids()
    if runs:
        missing = [r for r in runs if r not in available]
        if missing:
            raise UserError(f"--runs: no run {', '.join(missing)} in {store.root} "
                            f"(available: {', '.join(available[-5:]) or 'none'})")
    rows = []
    for run_id in runs or available:
        run = Run(store.root / run_id)
        try:
            manifest = run.manifest
        except UserError as exc:
            warnings.warn(str(exc), stacklevel=2)
            manifest = {}
        try:
            records = run.records(manifest)
        except UserError as exc:  # one unreadable run must not hide the others
            warnings.warn(f"{exc}; run {run_id} skipped", stacklevel=2)
            continue
        for record in records:
            typed = Record.from_dict(record)
            if not record.get("run_id"):  # a line stored without its run id belongs to its folder's run
                record["run_id"] = run_id
            record["label"] = typed.label  # the row name: model [variant]
            record["lra_eligible"] = typed.lra_eligible
            record["run_started"] = manifest.get("started")
            record["git_sha"] = manifest.get("git_sha")
            rows.append(record)
    if not rows:
        return pd.DataFrame(columns=list(RECORD_FIELDS) + ["label", "lra_eligible"])
    frame = pd.json_normalize(rows, max_level=1)
    for column in RECORD_FIELDS:
        if column not in frame.columns:
            frame[column] = None
    return frame

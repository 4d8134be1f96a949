"""Result store: `results/<run_id>/run.json` (manifest) + `records.jsonl` (one line per cell).

Guarantees:
- the manifest is replaced atomically (temporary file + rename);
- each record is one `write()` of one line on an O_APPEND descriptor under an exclusive `flock`,
  then flushed and fsync'ed: concurrent writers never interleave, a killed run loses at most the
  line being written, and that torn line is skipped on load with a warning naming file and line
  (the first few per file; the rest are counted in one more warning);
- a record that cannot be written whole (disk full, a file-size limit) is cut back to the file's
  previous size, so the file never ends in a torn line, and the run stops with one UserError line;
- the manifest is never torn either: a failed replacement removes its temporary file and leaves
  the previous manifest in place (`Run.close` marks a run's end even when the disk is full, if it can);
- one driver at a time: `Run.hold()` takes an exclusive lock on `<run>/.driver.lock` (released by
  the OS if the driver dies), so two `--resume` of one run never measure the same cells twice;
- a run folder with records but no readable manifest still counts: its records are read with a
  warning (its start time and git sha unknown);
- a missing measurement is null with a status saying why, never 0.

Records are `harness.records.Record` (schema_version 2, typed provenance, timing, memory and
hardware); `load_records` upgrades schema-1 lines on reading and flattens nested fields with dots
for pandas, e.g. `timing.median_ms`, `provenance.kind`, `hardware.device_name`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import fcntl
import json
import logging
import os
import secrets
import socket
from pathlib import Path

from harness.errors import UserError
from harness.files import atomic_write_text
from harness.records import SCHEMA_VERSION, Record, RecordError, config_hash  # noqa: F401 (re-exported)
from harness.registry import plugin_sources

WARNED_LINES = 3  # damaged lines of one file warned one by one; a badly damaged file must not flood stderr
RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(Record))

log = logging.getLogger(__name__)


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
    fields.setdefault("plugins", plugin_sources(fields.get("model"), fields.get("task")))
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
    """Replace `path` with `data` all at once: readers see the old file or the new one, never a torn
    one. When writing fails (disk full) the temporary file is removed and the OSError raised."""
    text = json.dumps(data, indent=2, sort_keys=False, default=str)  # a bad value fails before any file
    atomic_write_text(path, text)


@contextlib.contextmanager
def _locked(path: Path):
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_jsonl(path: Path, warn=True, manifest: dict | None = None) -> list[Record]:
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
            record = Record.from_dict(json.loads(line), manifest)
        except RecordError as exc:
            reason = str(exc)
        except ValueError:  # a torn write or binary garbage: the decoder's detail helps nobody
            reason = "not JSON"
        if reason:
            damaged += 1
            if warn and damaged <= WARNED_LINES:
                log.warning(f"{path}:{line_no}: skipped a corrupt record ({reason})")
            continue
        out.append(record)
    if warn and damaged > WARNED_LINES:
        log.warning(f"{path}: skipped {damaged - WARNED_LINES} more corrupt records")
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
        except FileNotFoundError:
            raise UserError(f"{self.manifest_path}: missing manifest", exit_code=1) from None
        except OSError as exc:  # e.g. a folder in its place, or no permission
            raise UserError(f"{self.manifest_path}: unreadable manifest ({exc.strerror or exc})",
                            exit_code=1) from None
        except ValueError as exc:
            raise UserError(f"{self.manifest_path}: unreadable manifest ({exc})", exit_code=1) from None
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

    def _gone(self) -> UserError:
        return UserError(f"{self.dir}: the run folder is gone (deleted while the run was writing); "
                         f"nothing more can be stored", exit_code=1)

    def _check_folder(self, exc: OSError) -> None:
        """A write that failed because the run folder was deleted is the user's one-line error."""
        if isinstance(exc, FileNotFoundError) or not self.dir.is_dir():
            raise self._gone() from None

    def update_manifest(self, **fields) -> None:
        """Change fields of the manifest (atomically; a failed write leaves the previous one)."""
        try:
            with _locked(self.dir / ".manifest.lock"):
                manifest = self.manifest
                manifest.update(fields)
                atomic_write_json(self.manifest_path, manifest)
        except OSError as exc:
            self._check_folder(exc)
            raise UserError(f"{self.manifest_path}: cannot write the manifest ({exc.strerror or exc}); "
                            f"free space and continue with --resume {self.run_id}", exit_code=1) from None

    def close(self, status: str, reason: str | None = None) -> bool:
        """Mark the run's end (`finished`, `interrupted`, `failed`) with why, if it can: False, and the
        previous manifest intact, when even that cannot be written (a full disk, a deleted folder).
        Never raises for the store's sake: it runs while another error is on its way to the user."""
        try:
            self.update_manifest(status=status, finished=utc_now(), reason=reason)
        except UserError:
            return False
        return True

    def hold(self) -> "RunHold":
        """Hold this run for the calling driver until the returned hold is released (or used as a
        context manager and left): a second driver gets a UserError naming the holder."""
        return RunHold(self)

    def append(self, record: dict | Record) -> None:
        """Store one record as one whole line: on a failed or short write the file is cut back to
        its previous size (never a torn line) and the run stops with one UserError line."""
        if isinstance(record, Record):
            record = record.to_dict()
        record = _finite(Record.from_dict(dict(record, run_id=self.run_id)).to_dict())
        line = (json.dumps(record, default=str, allow_nan=False) + "\n").encode()
        try:
            with _locked(self.records_path) as fd:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":  # a line torn by a kill: end it first
                    line = b"\n" + line
                try:
                    written = 0
                    while written < len(line):  # a short write (disk full, a size limit): the next
                        n = os.write(fd, line[written:])  # one raises the real reason
                        if n <= 0:
                            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                        written += n
                    os.fsync(fd)
                except OSError:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, size)  # back to the last whole line
                    raise
        except OSError as exc:
            self._check_folder(exc)
            raise UserError(f"{self.records_path}: cannot write a record ({exc.strerror or exc}); "
                            f"free space and continue with --resume {self.run_id}", exit_code=1) from None

    def typed_records(self, manifest: dict | None = None) -> list[Record]:
        return read_jsonl(self.records_path, manifest=manifest)

    def records(self, manifest: dict | None = None) -> list[dict]:
        return [record.to_dict() for record in self.typed_records(manifest)]

    def done_keys(self) -> set[str]:
        """Cells finished with a definitive status (errors and timeouts are retried on resume)."""
        return {r.get("cell_key") for r in self.records()
                if r.get("status") in ("ok", "oom", "skipped", "unavailable")
                and (r.get("metrics") or {}).get("stopped") != "timeout"}


class RunHold:
    """An exclusive, non-blocking `flock` on `<run>/.driver.lock`, taken when made (`Run.hold()`),
    with the holder's pid, host and start time written into the file for the refusal message.
    The OS drops the lock when the holder's process dies, however it dies (SIGKILL included), so a
    stale lock never needs cleaning up. A process forked from the holder shares the lock while it
    lives (the cells of a driver still running count as the driver)."""

    def __init__(self, run: Run):
        self.run = run
        self.path = run.dir / ".driver.lock"
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            run._check_folder(exc)
            raise UserError(f"{self.path}: cannot lock the run ({exc.strerror or exc})", exit_code=1) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError: another driver holds it
            holder = self._holder(fd)
            os.close(fd)
            raise UserError(f"run {run.run_id} is held by pid {holder.get('pid', '?')} on host "
                            f"{holder.get('host', '?')} (started {holder.get('started', '?')}); "
                            f"wait for it, or stop it first", exit_code=1) from None
        self.fd = fd
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": utc_now()}).encode()
        with contextlib.suppress(OSError):  # the lock is what counts; the text only names the holder
            os.ftruncate(fd, 0)
            os.pwrite(fd, info + b"\n", 0)

    @staticmethod
    def _holder(fd: int) -> dict:
        try:
            holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except (OSError, ValueError):  # the holder is between taking the lock and writing its name
            return {}
        return holder if isinstance(holder, dict) else {}

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # the file stays (deleting it would race with a new holder)
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> "RunHold":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _is_run_folder(path: Path) -> bool:
    """A folder with a manifest or a records file (even when the other one is missing or damaged)."""
    return path.is_dir() and ((path / "run.json").exists() or (path / "records.jsonl").exists())


def _subfolders(path: Path) -> list[Path]:
    """The folders directly in `path`, by name; an unreadable `path` has none (said in a warning)."""
    try:
        return sorted((p for p in path.iterdir() if p.is_dir()), key=lambda p: p.name)
    except OSError as exc:
        log.warning(f"{path}: cannot list the folder ({exc.strerror or exc}); its runs are left out")
        return []


def run_folders(results_dir: str | Path) -> dict[str, Path]:
    """Run id -> run folder of a results folder. The run folders directly in it; when it holds none,
    those one level down (a folder of run folders' folders, such as results/reference, whose
    subfolders each hold one machine's runs): the user's own runs are never mixed with folders kept
    below them. A run id found in two subfolders is read from the first (by name), with a warning."""
    root = Path(results_dir)
    if not root.is_dir():
        return {}
    direct = {p.name: p for p in root.iterdir() if _is_run_folder(p)}
    if direct:
        return direct
    nested: dict[str, Path] = {}
    for sub in _subfolders(root):
        for folder in _subfolders(sub):
            if not _is_run_folder(folder):
                continue
            if folder.name in nested:
                log.warning(f"run {folder.name} is in both {nested[folder.name].parent} and {sub}; "
                            f"the copy in {nested[folder.name].parent} is read")
                continue
            nested[folder.name] = folder
    return nested


def folders_with_runs(results_dir: str | Path, depth: int = 3) -> list[Path]:
    """The folders below `results_dir` (up to `depth` levels) that hold run folders, for a message
    that says where the runs are when `results_dir` itself has none to read."""
    root, found = Path(results_dir), []
    level = [root] if root.is_dir() else []
    for _ in range(depth):
        deeper = []
        for folder in level:
            subs = _subfolders(folder)
            if folder != root and any(_is_run_folder(p) for p in subs):
                found.append(folder)
                continue
            deeper += [p for p in subs if not p.name.startswith(".") and not _is_run_folder(p)]
        level = deeper
    return found


def reference_results() -> Path | None:
    """The committed reference results of this repository (results/reference), when present."""
    folder = Path(__file__).resolve().parent.parent / "results" / "reference"
    return folder if folder.is_dir() and folders_with_runs(folder, depth=2) else None


def find_run(results_dir: str | Path, ref: str) -> Path:
    """The folder of run `ref`: a run id in `results_dir` (or in its subfolders, as `run_folders`
    finds them), or the path of a run folder anywhere, so that runs kept in two results folders can
    be compared. Neither: a UserError naming the available runs."""
    folders = run_folders(results_dir)
    if ref in folders:
        return folders[ref]
    if _is_run_folder(Path(ref)):
        return Path(ref)
    available = sorted(folders)
    shown = ", ".join(available[-20:]) + (f" (and {len(available) - 20} earlier)" if len(available) > 20 else "")
    raise UserError(f"run {ref} not found in {results_dir} (nor a run folder at that path); available "
                    f"runs: {shown or 'none'}; give a run id of --results-dir or the path of a run folder",
                    exit_code=2)


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
            if _is_run_folder(directory):
                raise UserError(f"run '{run_id}' in {self.root} has no readable run.json, so its options are "
                                f"unknown and it cannot be resumed; start a new run", exit_code=1)
            known = ", ".join(self.run_ids()[-5:]) or "none"
            raise UserError(f"run '{run_id}' not found in {self.root} (latest: {known})", exit_code=2)
        self._ensure_writable()
        return Run(directory)

    def run_ids(self) -> list[str]:
        """Every run folder, also one whose manifest was deleted (its records still count); in a
        folder of run folders' folders, the runs of its subfolders (`run_folders`)."""
        return sorted(run_folders(self.root))

    def run_dir(self, run_id: str) -> Path:
        """The folder of run `run_id` (in a subfolder when the results folder holds run folders'
        folders)."""
        return run_folders(self.root).get(run_id, self.root / run_id)

    def manifests(self, runs: list[str] | None = None, warn=True) -> list[dict]:
        """The readable manifests; an unreadable one is left out with a warning (`warn=False` when
        `load_records` already warned about these runs)."""
        out, folders = [], run_folders(self.root)
        for run_id in runs or sorted(folders):
            try:
                out.append(Run(folders.get(run_id, self.root / run_id)).manifest)
            except UserError as exc:
                if warn:
                    log.warning(str(exc))
        return out


def load_records(results_dir: str | Path = "results", runs: list[str] | None = None):
    """Every record of every run (or of `runs`) as one pandas DataFrame, nested fields dotted; the
    runs of a folder of run folders' folders are found in its subfolders (`run_folders`).

    Columns include the RECORD_FIELDS plus e.g. `timing.median_ms`, `memory.peak_allocated_bytes`,
    `metrics.accuracy`, `provenance.kind`, `hardware.device_name`; `label` (the row name, model and
    variant) and `lra_eligible` are derived from the typed record; `run_started` and `git_sha` come
    from the manifests. Damage is warned about,
    never fatal: a corrupt line is skipped, an unreadable manifest leaves those two columns empty,
    and a run whose records file cannot be read at all is left out.
    """
    import pandas as pd

    store = RunStore(results_dir)
    folders = run_folders(store.root)
    available = sorted(folders)
    if runs:
        missing = [r for r in runs if r not in available]
        if missing:
            raise UserError(f"--runs: no run {', '.join(missing)} in {store.root} "
                            f"(available: {', '.join(available[-5:]) or 'none'})")
    rows = []
    for run_id in runs or available:
        run = Run(folders.get(run_id, store.root / run_id))
        try:
            manifest = run.manifest
        except UserError as exc:  # e.g. run.json deleted: the records still count, their origin unknown
            log.warning(f"{exc}; the records of run {run_id} are read without it")
            manifest = {}
        try:
            records = run.typed_records(manifest)
        except UserError as exc:  # one unreadable run must not hide the others
            log.warning(f"{exc}; run {run_id} skipped")
            continue
        for typed in records:
            record = typed.to_dict()
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

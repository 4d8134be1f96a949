"""Where the units of a plan run: here (`local`), in worker processes on this machine (`pool`), or
as tasks on a Ray cluster (`ray`). Whatever runs them, records come back to the driver, which is
the only writer of the store (harness/runner.py), and they are the same records.

- `run_unit(job)` executes one unit in the current process and yields its records.
- `UnitWorker` is a spawned worker process that runs units one at a time and sends their records
  back through a pipe. A fault inside a model (a segfault, `os._exit`, `sys.exit`, a forward pass
  that never returns) ends only the worker: the driver sees the pipe close, or the unit's deadline
  pass, and the unit is lost (`UnitLost`), never the run. A worker dies with its driver.
- `LocalExecutor` (`--executor local`): one unit at a time; accuracy cells in a `UnitWorker`
  (unless `--isolation inprocess`), speed cells each in a fresh subprocess (harness/bench.py). A
  lost cell is an `error` record at once.
- `PoolExecutor` (`--executor pool`): one `UnitWorker` per slot; a slot is a GPU (the worker sees
  only it, through `CUDA_VISIBLE_DEVICES`) or, on CPU, a share of the cores. A unit whose worker is
  lost is retried once on a fresh worker (a killed worker, a lost machine), then recorded as an
  `error`; a timeout is not retried.
- `RayExecutor` (`--executor ray`): each unit a Ray task (`num_gpus=1` for CUDA cells) that runs it
  exactly as the local executor would (an accuracy cell inside its own `UnitWorker`), so a model's
  crash is that cell's `error` record; only the loss of the Ray worker or node itself is retried
  (Ray's `max_retries`), then recorded as an `error` ("worker lost").
Executors yield `Event`s in the driver's thread; they never write to the store.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from harness.errors import UserError, last_line, short_error

# How long a cell may overrun --cell-timeout before it is killed from outside: the trainer stops at the
# deadline itself and then still validates and tests the best weights, which takes time of its own.
TIMEOUT_GRACE_FRACTION = 0.25
TIMEOUT_GRACE_MIN_SECONDS = 60.0
RETRIES = 1  # how often a unit whose worker was lost is run again before its cells become errors


def outside_deadline(cell_timeout: float | None) -> float | None:
    """Seconds after which a cell's worker is killed (None: never)."""
    if not cell_timeout:
        return None
    return cell_timeout + max(TIMEOUT_GRACE_MIN_SECONDS, TIMEOUT_GRACE_FRACTION * cell_timeout)


@dataclass
class Event:
    """What an executor reports: `start` (a unit begins; `text`: where), `submitted` (handed to a
    scheduler that starts it when resources allow), `record` (a finished cell), `progress` (a training
    step, `text`), `note` (a line for the user, `text`). The runner adds `opened` (the run, `text`)."""

    kind: str
    unit: object = None  # the plan.Unit
    record: dict | None = None
    text: str = ""


class UnitLost(RuntimeError):
    """The worker running a unit died or was killed (the message says how); `timeout` when it was
    killed because the unit ran past its deadline."""

    def __init__(self, message: str, timeout: bool = False):
        super().__init__(message)
        self.timeout = timeout


def lost_records(unit, reason: str, received: set) -> list[dict]:
    """An `error` record for each cell of a lost unit that sent no record of its own."""
    from harness.store import make_record

    return [make_record(**{**fields, "status": "error", "error": reason})
            for fields in unit.lost_records if fields.get("cell_key") not in received]


# -- one unit, in this process -------------------------------------------------------------------------

def run_unit(job: dict, *, run_dir: str | None = None, threads: int | None = None,
             on_progress=None) -> Iterator[dict]:
    """Execute one unit here and yield its records. `threads` overrides the torch CPU threads (a
    worker's share of the cores); `run_dir` is where checkpoints go, when that folder is reachable."""
    from harness.config import RunConfig
    from harness.registry import include_file

    for path in job.get("includes") or ():  # the plugin files the driver imported (idempotent)
        include_file(path)
    if job["kind"] == "speed":
        yield from _sweep(job, threads)
        return
    config = RunConfig(**job["config"])
    if threads:
        config.threads = threads
    if job["kind"] == "reference":
        yield from _reference_rows(job, config)
        return
    from harness.store import Run
    from harness.train import train_cell

    run = Run(Path(run_dir)) if run_dir and Path(run_dir).is_dir() else None
    yield train_cell(job["model"], job["task"], job["seed"], config, device=job["device"], dtype=job["dtype"],
                     run=run, on_progress=on_progress, lr_multiplier=job["lr_multiplier"])


def _reference_rows(job: dict, config) -> Iterator[dict]:
    """The reference rows of one task, fitted on the very splits the models see; no rows when the
    data cannot be read (the models' cells record that error)."""
    from harness.reference import fit_reference_rows

    task = config.build_task(job["task"], read=True)
    try:
        splits = {s: task.load(s) for s in ("train", "val", "test")}
    except UserError:
        raise
    except Exception:
        return
    for record in fit_reference_rows(job["task"], task.input_spec(), splits, scale=config.scale,
                                     data_seed=config.data_seed, seq_len=task.seq_len):
        record["cell_key"] = job["key"]  # both rows of a task are one unit of work for --resume
        record["task_options"] = task.options.data_changed()  # the head options do not shape these rows
        yield record


def _sweep(job: dict, threads: int | None) -> Iterator[dict]:
    """One model's lengths, ascending; after an `oom` the longer lengths are `skipped`."""
    from harness.bench import Cell, bare_record, measure_cell, measure_in_subprocess
    from harness.store import make_record

    done = set(job.get("done_keys") or ())
    oom_at = None
    for fields in sorted(job["cells"], key=lambda c: c["seq_len"]):
        cell = Cell(**fields)
        if threads:
            cell.threads = threads
        bare = bare_record(cell)
        if bare["cell_key"] in done:
            continue
        if oom_at is not None:
            record = make_record(status="skipped", error=f"oom at the shorter length {oom_at}", **bare)
        elif job["isolation"] != "inprocess" or job["timeout"]:  # a timeout needs a process boundary
            record = measure_in_subprocess(cell, job["timeout"])
        else:
            record = measure_cell(cell)
        if record["status"] == "oom":
            oom_at = cell.seq_len
        yield record


# -- a worker process ----------------------------------------------------------------------------------

def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the cell's process was killed by {name}"
    return f"the cell's process exited with code {code}"


def _serve(conn, gpu: str | None, threads: int | None, log_quiet: bool | None = None) -> None:
    """Worker loop: receive (job, run dir), send ("progress", text) and ("record", dict) messages,
    then ("done", None) — or ("user-error", (message, exit code)) for a mistake the user must fix;
    `None` ends the worker. `log_quiet`: the driver's `logs.install_handler` setting (None: none),
    repeated here so a warning logged in the worker reaches the user's terminal (the worker shares
    the driver's stderr) as the same one line."""
    if gpu is not None:  # before anything initialises CUDA: this worker sees only its GPU
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    if log_quiet is not None:
        from harness.logs import install_handler

        install_handler(quiet=log_quiet)
    from harness.bench import die_with_parent

    die_with_parent()  # a SIGKILLed driver leaves no cell running
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver stops the worker; Ctrl-C is the driver's
    if threads:
        import torch

        torch.set_num_threads(threads)
    while True:
        message = conn.recv()
        if message is None:
            return
        job, run_dir = message
        try:
            for record in run_unit(job, run_dir=run_dir, threads=threads,
                                   on_progress=lambda text: conn.send(("progress", text))):
                conn.send(("record", record))
        except UserError as exc:
            conn.send(("user-error", (str(exc), exc.exit_code)))
            continue
        conn.send(("done", None))


class UnitWorker:
    """A worker process that runs units one at a time (`with UnitWorker(...) as w:`); started on
    first use and again after it was lost. `gpu`: the only GPU it sees; `threads`: its torch threads."""

    def __init__(self, gpu: str | None = None, threads: int | None = None):
        self.gpu, self.threads = gpu, threads
        self._context = multiprocessing.get_context("spawn")  # no fork of a threaded torch process
        self._process = None
        self._conn = None
        self._busy = False  # a unit is in flight

    def __enter__(self) -> "UnitWorker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _start(self) -> None:
        from harness.logs import installed_quiet

        parent, child = self._context.Pipe()
        self._process = self._context.Process(target=_serve,
                                              args=(child, self.gpu, self.threads, installed_quiet()),
                                              daemon=True, name="harness-unit-worker")
        self._process.start()
        child.close()  # the driver keeps only its end, so a dead worker reads as end-of-file
        self._conn = parent

    def run(self, job: dict, run_dir: str | None, deadline: float | None) -> Iterator[tuple[str, object]]:
        """Yield ("progress", text) and ("record", dict) as the unit runs; UnitLost when the worker
        dies or the unit runs past `deadline` seconds; UserError for a user mistake found in the worker."""
        if self._process is None or not self._process.is_alive():
            self._start()
        self._conn.send((job, run_dir))
        self._busy = True
        ends = time.monotonic() + deadline if deadline else None
        while True:
            wait = None if ends is None else max(0.0, ends - time.monotonic())
            if not self._conn.poll(wait):
                self._kill()
                raise UnitLost(f"timeout: the cell did not stop within {deadline:g} s of --cell-timeout and its "
                               f"grace period; it was killed from outside", timeout=True)
            try:
                kind, payload = self._conn.recv()
            except (EOFError, OSError):
                self._process.join(timeout=10)
                code = self._process.exitcode
                self._discard()
                raise UnitLost(_describe_exit(code)) from None
            if kind == "done":
                self._busy = False
                return
            if kind == "user-error":
                self._busy = False
                raise UserError(*payload)
            yield kind, payload

    def _kill(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=10)
        self._discard()

    def _discard(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._process = self._conn = None
        self._busy = False

    def close(self) -> None:
        """Stop the worker: politely when it is idle, at once when a unit is in flight (Ctrl-C)."""
        if self._process is None:
            return
        if not self._busy:
            try:
                self._conn.send(None)
                self._process.join(timeout=10)
            except OSError:  # already gone
                pass
        self._kill()


# -- executors -------------------------------------------------------------------------------------------

class LocalExecutor:
    """One unit at a time on this machine (the default); see the module docstring."""

    name = "local"

    def __init__(self, isolation: str = "auto"):
        self.isolation = isolation

    def execute(self, units: list, run_dir: str | None) -> Iterator[Event]:
        with UnitWorker() as worker:
            for unit in units:
                yield Event("start", unit)
                if unit.kind == "accuracy" and self.isolation != "inprocess" and unit.keys:
                    received = set()
                    try:
                        for kind, payload in worker.run(unit.job, run_dir, unit.deadline):
                            if kind == "record":
                                received.add(payload.get("cell_key"))
                                yield Event("record", unit, record=payload)
                            else:
                                yield Event("progress", unit, text=payload)
                    except UnitLost as lost:
                        for record in lost_records(unit, str(lost), received):
                            yield Event("record", unit, record=record)
                    continue
                for record in run_unit(unit.job, run_dir=run_dir):  # in this process: no step events
                    yield Event("record", unit, record=record)


@dataclass
class Slot:
    """One place a pool worker runs: a GPU it alone sees, and/or a number of CPU threads."""

    name: str
    gpu: str | None = None
    threads: int | None = None


def pool_slots(gpus: str | None, workers: int | None, threads: int | None, device: str) -> list[Slot]:
    """The pool's slots: one per GPU in `gpus` ("0,1,2,3"; default every visible GPU on CUDA), else
    `workers` CPU workers sharing the cores (each gets `threads`, or cores // workers)."""
    if gpus:
        ids = [g.strip() for g in str(gpus).split(",") if g.strip()]
        if not ids or len(set(ids)) != len(ids):
            raise UserError(f"--gpus {gpus!r}: expected distinct GPU indices, e.g. 0,1,2,3")
        return [Slot(f"GPU {g}", gpu=g, threads=threads) for g in ids]
    if device == "cuda" and not workers:
        import torch

        count = torch.cuda.device_count()
        return [Slot(f"GPU {i}", gpu=str(i), threads=threads) for i in range(count)]
    n = workers or 2
    cores = os.cpu_count() or 1
    share = threads or max(1, cores // n)
    return [Slot(f"worker {i}", threads=share) for i in range(n)]


class PoolExecutor:
    """Units spread over worker processes on this machine, one per slot; see the module docstring."""

    name = "pool"

    def __init__(self, slots: list[Slot], retries: int = RETRIES):
        if not slots:
            raise UserError("--executor pool: no slots (no GPU visible and no --workers); give --workers N "
                            "or --gpus 0,1")
        self.slots, self.retries = slots, retries

    def execute(self, units: list, run_dir: str | None) -> Iterator[Event]:
        pending: queue.Queue = queue.Queue()
        for unit in units:
            pending.put((unit, 0, frozenset()))  # (unit, attempts so far, keys already received)
        events: queue.Queue = queue.Queue()
        stop = threading.Event()
        workers = [UnitWorker(gpu=slot.gpu, threads=slot.threads) for slot in self.slots]

        def serve(slot: Slot, worker: UnitWorker) -> None:
            while not stop.is_set():
                try:
                    unit, attempts, received = pending.get_nowait()
                except queue.Empty:
                    return
                job = unit.job
                if received and unit.kind == "speed":  # a retry measures only what is still missing
                    job = {**job, "done_keys": sorted(set(job.get("done_keys") or ()) | received)}
                events.put(Event("start", unit, text=slot.name))
                got = set(received)
                try:
                    for kind, payload in worker.run(job, run_dir, unit.deadline):
                        if kind == "record":
                            got.add(payload.get("cell_key"))
                            events.put(Event("record", unit, record=payload))
                        else:
                            events.put(Event("progress", unit, text=payload))
                except UnitLost as lost:
                    if stop.is_set():
                        return
                    if not lost.timeout and attempts < self.retries:
                        events.put(Event("note", unit, text=f"{unit.label}: {lost} on {slot.name}; retrying"))
                        pending.put((unit, attempts + 1, frozenset(got)))
                        continue
                    reason = str(lost) if lost.timeout else f"worker lost ({attempts + 1} attempts): {lost}"
                    for record in lost_records(unit, reason, got):
                        events.put(Event("record", unit, record=record))
                except UserError as exc:
                    events.put(Event("user-error", unit, text=str(exc), record={"exit_code": exc.exit_code}))
                    return
                except BaseException as exc:  # a driver-side fault: report it rather than lose the thread
                    events.put(Event("user-error", unit, text=f"pool worker: {type(exc).__name__}: {exc}",
                                     record={"exit_code": 1}))
                    return

        threads = [threading.Thread(target=serve, args=(slot, worker), daemon=True, name=f"pool-{slot.name}")
                   for slot, worker in zip(self.slots, workers)]
        for thread in threads:
            thread.start()
        try:
            while any(t.is_alive() for t in threads) or not events.empty():
                try:
                    event = events.get(timeout=0.2)
                except queue.Empty:
                    continue
                if event.kind == "user-error":
                    raise UserError(event.text, event.record["exit_code"])
                yield event
        finally:
            stop.set()
            for worker in workers:
                worker.close()
            for thread in threads:
                thread.join(timeout=30)


# -- Ray -------------------------------------------------------------------------------------------------

def _ray_run_unit(job: dict, kind: str, deadline: float | None, run_dir: str | None, threads: int | None) -> dict:
    """Body of one Ray task: run the unit as the local executor would and return its records
    ({"records": [...]}, with "lost": why when its cell process died, or {"user_error": (message, exit code)})."""
    records = []
    try:
        if kind == "accuracy":
            with UnitWorker(threads=threads) as worker:
                try:
                    for what, payload in worker.run(job, run_dir, deadline):
                        if what == "record":
                            records.append(payload)
                except UnitLost as lost:
                    return {"lost": str(lost), "records": records}
        else:
            records = list(run_unit(job, run_dir=run_dir, threads=threads))
    except UserError as exc:
        return {"user_error": (str(exc), exc.exit_code)}
    return {"records": records}


def ray_unavailable_reason() -> str | None:
    try:
        importlib.import_module("ray")
    except Exception as exc:
        return f"Ray does not import ({type(exc).__name__}: {exc}); install it with pip install 'lsm-harness[ray]'"
    return None


class RayExecutor:
    """Each unit a Ray task on an existing cluster (`address`: "auto" or host:port) or on a local
    one started here (`init_options`, e.g. num_cpus, num_gpus, _temp_dir); see the module docstring."""

    name = "ray"

    def __init__(self, address: str | None = None, retries: int = RETRIES,
                 threads: int | None = None, gpus_per_unit: float | None = None, init_options: dict | None = None):
        reason = ray_unavailable_reason()
        if reason:
            raise UserError(f"--executor ray: {reason}", exit_code=1)
        self.address, self.retries = address, retries
        self.threads, self.gpus_per_unit = threads, gpus_per_unit
        self.init_options = dict(init_options or {})

    def execute(self, units: list, run_dir: str | None) -> Iterator[Event]:
        import ray

        started_here = not ray.is_initialized()
        if started_here:
            try:
                options = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
                ray.init(address=self.address, **{**options, **self.init_options})
            except Exception as exc:
                raise UserError(f"--ray-address {self.address or '(local)'}: cannot start or join a Ray cluster "
                                f"({short_error(exc)})",
                                exit_code=1) from None
        try:
            resources = ray.cluster_resources()
            yield Event("note", text=f"Ray cluster: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs "
                                     f"on {len(ray.nodes())} node(s)")
            remote = ray.remote(_ray_run_unit)
            cpus = self.threads or 1
            refs = {}
            for unit in units:
                gpus = self.gpus_per_unit if self.gpus_per_unit is not None else (1 if unit.gpu else 0)
                if gpus and not resources.get("GPU"):
                    raise UserError("--executor ray: the cells need GPUs but the Ray cluster has none; "
                                    "use --device cpu or join a cluster with GPUs", exit_code=1)
                ref = remote.options(num_cpus=cpus, num_gpus=gpus, max_retries=self.retries,
                                     retry_exceptions=False).remote(unit.job, unit.kind, unit.deadline,
                                                                    run_dir, self.threads)
                refs[ref] = unit
                yield Event("submitted", unit)
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)
                for ref in ready:
                    unit = refs.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:  # a fault in the harness code itself
                        result = {"lost": f"Ray task failed: {last_line(str(exc))[:300]}", "records": []}
                    except ray.exceptions.RayError as exc:  # the worker or its node is gone, retries spent
                        result = {"lost": f"worker lost ({self.retries + 1} attempts): {type(exc).__name__}",
                                  "records": []}
                    if "user_error" in result:
                        raise UserError(*result["user_error"])
                    received = set()
                    for record in result["records"]:
                        received.add(record.get("cell_key"))
                        yield Event("record", unit, record=record)
                    if "lost" in result:
                        for record in lost_records(unit, result["lost"], received):
                            yield Event("record", unit, record=record)
        finally:
            for ref in list(locals().get("refs", {})):
                try:
                    ray.cancel(ref, force=True)
                except Exception:
                    pass
            if started_here:
                ray.shutdown()


def make_executor(config, plan) -> object:
    """The executor `--executor` names, with its options."""
    if config.executor == "local":
        return LocalExecutor(config.isolation)
    if config.executor == "pool":
        return PoolExecutor(pool_slots(config.gpus, config.workers, config.threads, plan.device))
    return RayExecutor(address=config.ray_address, threads=config.threads)


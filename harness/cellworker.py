"""Accuracy cells in a worker process, so that a fault inside a model never ends the run.

A plugin model can segfault, call `os._exit` or `sys.exit`, or hang inside a forward pass that
`--cell-timeout` (checked between training steps) never gets to see. Run in the driver's process, any
of these ends or freezes the whole run. `CellWorker` runs the cells one after another in a worker
process (spawned once, so torch and the registry load once): the worker trains a cell and sends its
record back; the driver stays the only writer of the store. When the worker dies, or outlives the
cell's deadline and is killed, the cell in flight becomes an `error` record saying why, and a fresh
worker takes the next cell. Checkpoints are written by the worker into the run folder as before, so a
killed cell resumes from its last checkpoint with `--resume`.
"""

from __future__ import annotations

import multiprocessing
import signal
from pathlib import Path

# How long a cell may overrun --cell-timeout before it is killed from outside: the trainer stops at the
# deadline itself and then still validates and tests the best weights, which takes time of its own.
TIMEOUT_GRACE_FRACTION = 0.25
TIMEOUT_GRACE_MIN_SECONDS = 60.0


class CellLost(RuntimeError):
    """The worker died or was killed while it trained a cell (the message says how)."""


def outside_deadline(cell_timeout: float | None) -> float | None:
    """Seconds after which a cell's worker is killed (None: never)."""
    if not cell_timeout:
        return None
    return cell_timeout + max(TIMEOUT_GRACE_MIN_SECONDS, TIMEOUT_GRACE_FRACTION * cell_timeout)


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the cell's process was killed by {name}"
    return f"the cell's process exited with code {code}"


def _serve(conn, includes: list[str]) -> None:
    """Worker loop: receive (model, task, seed, config, device, dtype, run dir, lr multiplier), train,
    send the record back; `None` ends the worker."""
    from harness.bench import die_with_parent
    from harness.registry import include_file
    from harness.store import Run
    from harness.train import train_cell

    die_with_parent()  # a SIGKILLed driver leaves no cell running
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver stops the worker; Ctrl-C is the driver's
    for path in includes:
        include_file(path)
    while True:
        job = conn.recv()
        if job is None:
            return
        run = Run(Path(job["run_dir"])) if job["run_dir"] else None
        record = train_cell(job["model"], job["task"], job["seed"], job["config"], device=job["device"],
                            dtype=job["dtype"], run=run, lr_multiplier=job["lr_multiplier"])
        conn.send(record)


class CellWorker:
    """A worker process that trains accuracy cells one at a time (`with CellWorker(...) as w:`)."""

    def __init__(self, includes: list[str] | None = None):
        self.includes = list(includes or [])
        self._context = multiprocessing.get_context("spawn")  # no fork of a threaded torch process
        self._process = None
        self._conn = None
        self._busy = False  # a cell is in flight

    def __enter__(self) -> "CellWorker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        parent, child = self._context.Pipe()
        self._process = self._context.Process(target=_serve, args=(child, self.includes), daemon=True,
                                              name="harness-cell-worker")
        self._process.start()
        child.close()  # the driver keeps only its end, so a dead worker reads as end-of-file
        self._conn = parent

    def train(self, job: dict, deadline: float | None) -> dict:
        """The record of one cell; CellLost when the worker dies or runs past `deadline` seconds."""
        if self._process is None or not self._process.is_alive():
            self._start()
        self._conn.send(job)
        self._busy = True
        if not self._conn.poll(deadline):
            self._kill()
            raise CellLost(f"timeout: the cell did not stop within {deadline:g} s of --cell-timeout and its "
                           f"grace period; it was killed from outside")
        try:
            record = self._conn.recv()
            self._busy = False
            return record
        except (EOFError, OSError):
            self._process.join(timeout=10)
            code = self._process.exitcode
            self._discard()
            raise CellLost(_describe_exit(code)) from None

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
        """Stop the worker: politely when it is idle, at once when a cell is in flight (Ctrl-C)."""
        if self._process is None:
            return
        if not self._busy:
            try:
                self._conn.send(None)
                self._process.join(timeout=10)
            except OSError:  # already gone
                pass
        self._kill()

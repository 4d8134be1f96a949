"""Where the harness's messages go. Library code logs through `logging` (`log = logging.getLogger(__name__)`,
`log.warning(...)`); the CLI, and each worker process it spawns, call `install_handler` once, which
prints every message of the harness, its models and its tasks as one line on stderr:

    warning: results/x/records.jsonl:3: skipped a corrupt record (not JSON)
    error: ...
    an informational line, as it is

Only those three logger trees are touched: a third-party logger, and Python's own `warnings`, keep
their defaults. Used as a library (no `install_handler`), the messages reach logging's last-resort
handler or whatever the caller configured.
"""

from __future__ import annotations

import logging
import sys

LOGGERS = ("harness", "harness_models", "harness_tasks")  # the package names of harness/, models/, tasks/


class LineFormatter(logging.Formatter):
    """`warning: ...` / `error: ...` lines; informational messages as they are."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"


class _OncePerMessage(logging.Filter):
    """Each distinct warning or error once: the same damaged file read twice in one command (a resumed
    run's records, then its summary and report) is one line, as Python's `warnings` made it."""

    def __init__(self):
        super().__init__()
        self.seen: set[tuple[int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.levelno, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


class _StderrHandler(logging.StreamHandler):
    """A StreamHandler on whatever `sys.stderr` is when a message is written, so a stream replaced
    after installation (a test's capture, a re-encoded terminal) still receives the lines."""

    def __init__(self):
        super().__init__()
        self.setFormatter(LineFormatter())
        self.once = _OncePerMessage()
        self.addFilter(self.once)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # StreamHandler assigns it; the current sys.stderr always wins
        pass


_HANDLER = _StderrHandler()


def install_handler(quiet: bool = False) -> None:
    """Print the harness's messages as one line each on stderr: informational lines and warnings,
    or (`quiet`) errors only; a repeated warning is printed once per call (one command). Calling it
    again sets `quiet` anew and forgets the warnings printed. `quiet` is the handler's level, not the
    loggers': they pass INFO and up and still propagate, so a caller's own root handlers (pytest's
    `caplog`) see every message, whatever an earlier call chose."""
    _HANDLER.once.seen.clear()
    _HANDLER.setLevel(logging.ERROR if quiet else logging.INFO)
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if _HANDLER not in logger.handlers:
            logger.addHandler(_HANDLER)
        logger.setLevel(logging.INFO)


def installed_quiet() -> bool | None:
    """How `install_handler` was last called in this process (its `quiet`), or None when it was not:
    what a worker process repeats, so its messages look like the driver's."""
    if _HANDLER not in logging.getLogger(LOGGERS[0]).handlers:
        return None
    return _HANDLER.level >= logging.ERROR

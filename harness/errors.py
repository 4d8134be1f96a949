"""One exception type for mistakes a user can fix; the CLI prints it as one line and exits."""

from __future__ import annotations


class UserError(Exception):
    """A bad argument, name, file or directory: shown as `error: <message>` with a non-zero exit.

    The message says which input is wrong, what was expected and what to do. `exit_code` is 2 for
    usage mistakes (unknown names, malformed options) and 1 for environment problems (unwritable
    directories, corrupt data).
    """

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def is_oom(exc: BaseException) -> bool:
    """An out-of-memory failure (CUDA allocator, host allocator, or a library saying so)."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text


def first_line(text: str) -> str:
    """The first line of `text` once surrounding blank space is stripped ('' for an empty text): a
    long message shown on one line."""
    lines = str(text).strip().splitlines()
    return lines[0] if lines else ""


def last_line(text: str) -> str:
    """The last line of `text` once surrounding blank space is stripped ('' for an empty text): what
    a traceback or a process's stderr ends with, the exception itself."""
    lines = str(text).strip().splitlines()
    return lines[-1] if lines else ""


def short_error(exc: BaseException) -> str:
    """`Type: first line of the message`, at most 500 characters: what a record's `error` holds, and
    how a one-line message quotes a library's exception."""
    return f"{type(exc).__name__}: {first_line(str(exc))}"[:500]

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

"""User-facing errors: the CLI prints these as one line (no traceback) and exits non-zero.

Any other exception is a bug and keeps its traceback.
"""
import re


class LitError(Exception):
    """A problem with the user's input or files, with a message that names the problem and the fix (exit 1)."""

    exit_code = 1


class CheckpointError(LitError):
    """A checkpoint that cannot be read or does not fit the model."""


class UsageError(LitError):
    """A bad command-line value (exit code 2, like Typer's own usage errors)."""

    exit_code = 2


def one_line(message: str) -> str:
    """The message to show for an error. An exception raised in a DataLoader worker reaches the main process
    re-created with the worker's whole traceback in its message ("Caught LitError in DataLoader worker process 0.
    Original Traceback ..."); its last line holds the original message."""
    if 'Original Traceback' in message:
        last = [line for line in message.strip().splitlines() if line.strip()][-1]
        message = re.sub(r'^[\w.]+: ', '', last.strip())  # 'litcli.core.errors.LitError: unreadable image ...'
    return message


class WriteError(LitError):
    """A file could not be written: a full disk, a quota, a read-only or forbidden place (``litcli.core.io``
    raises it; the message names the file, the problem and the fix, and the existing file is unchanged)."""

    def __init__(self, message: str, path=None, errno: int = None):
        super().__init__(message)
        self.path = path
        self.errno = errno


class Interrupted(LitError):
    """SIGINT / SIGTERM stopped a command after it cleaned up (the message says what is left); exit code 130 for
    SIGINT and 143 for SIGTERM (128 + the signal number, the shell convention)."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code

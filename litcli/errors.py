"""User-facing errors: the CLI prints these as one line (no traceback) and exits non-zero."""


class LitError(Exception):
    """A problem with the user's input or files, with a message that names the problem and the fix."""

    exit_code = 1


class CheckpointError(LitError):
    """A checkpoint that cannot be read or does not fit the model."""


class UsageError(LitError):
    """A bad command-line value (exit code 2, like Typer's own usage errors)."""

    exit_code = 2

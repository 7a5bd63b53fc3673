"""User-facing errors: the CLI prints these as one line (no traceback) and exits non-zero."""


class LitError(Exception):
    """A problem with the user's input or files, with a message that names the problem and the fix."""

    exit_code = 1


class CheckpointError(LitError):
    """A checkpoint that cannot be read or does not fit the model."""

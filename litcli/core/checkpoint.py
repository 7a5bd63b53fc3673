"""Alias kept for code written against lit <= 0.1 (the README showed ``litcli.core.checkpoint.load_weights``):
checkpoint reading now lives in :mod:`litcli.core.modelio.checkpoint`, writing in :mod:`litcli.core.io`."""
from litcli.core.modelio.checkpoint import load_weights, read_checkpoint, save_checkpoint  # noqa: F401


def atomic_write(path, write):
    """The old signature: ``write(name)`` fills the temporary file by its path (``litcli.core.io.atomic_write``
    hands its callback a file object instead)."""
    from litcli.core import io

    return io.atomic_write(path, lambda f: write(f.name))

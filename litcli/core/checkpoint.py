"""Alias kept for code written against lit <= 0.1 (the README showed ``litcli.core.checkpoint.load_weights``):
checkpoint reading now lives in :mod:`litcli.core.modelio.checkpoint`, writing in :mod:`litcli.core.io`."""
from litcli.core.io import atomic_write  # noqa: F401
from litcli.core.modelio.checkpoint import load_weights, read_checkpoint, save_checkpoint  # noqa: F401

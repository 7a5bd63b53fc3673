"""Alias kept for code written against lit <= 0.1 (the README showed ``litcli.core.factory.load_model``): the
model factory now lives in :mod:`litcli.core.modelio.factory`."""
from litcli.core.modelio.factory import LoadedModel, create_model, load_model  # noqa: F401

"""The shared work behind the commands: config, runtime, the model factory, checkpoints, data, the loops.

Nothing here imports ``litcli.commands`` or ``litcli.cli`` (an import-linter contract in pyproject.toml checks it).
Importing ``litcli.core`` itself is cheap: each module imports torch only where it needs it.
"""

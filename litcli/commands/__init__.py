"""One module per ``lit`` command, named like it; each has a ``run(...)`` with typed arguments. Only ``litcli.cli``
imports these (an import-linter contract checks it): shared work belongs in ``litcli.core``."""

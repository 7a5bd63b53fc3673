"""The shared work behind the commands, grouped by what it does (an import-linter contract keeps the direction):

- ``analysis/``  evaluation metrics, FLOPs, benchmarks, the paper's figures, Grad-CAM
- ``training/``  loops, optimizer, run folders, checkpoint saver and resumable state, trackers
- ``modelio/``   the model factory, checkpoint reading, released weights, averaging
- ``data/``      datasets, images, tars, shards, transforms, loaders
- base modules beside them, imported by every group: ``errors``, ``io`` (the one atomic writer), ``config``,
  ``runtime`` (device, AMP, distributed, signals), ``seeding``, ``progress``, ``report``, ``envinfo``.

Nothing here imports ``litcli.commands`` or ``litcli.cli``. Importing ``litcli.core`` itself is cheap: each module
imports torch only where it needs it.
"""

"""Data: datasets (image folders, tars, WebDataset shards, the built-in sets), image reading, transforms, loaders,
``lit data pack`` and ``lit data bench``. Imports only the core's base modules (errors, config, runtime, seeding)."""

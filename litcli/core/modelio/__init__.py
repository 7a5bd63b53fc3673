"""Model I/O: the one model factory (a model from a name or from any checkpoint), reading and applying
checkpoints, the released weights (download, cache, verify) and checkpoint averaging. May import ``core.data``."""

"""Training: the loops (engine), optimizer and schedule, run folders and metrics files, the checkpoint saver and
resumable state, experiment trackers. May import ``core.modelio`` and ``core.data``."""

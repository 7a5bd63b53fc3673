"""Imported once by the DataLoader workers' forkserver (``loaders.WORKER_PRELOAD``), and nowhere else, before it forks
any worker: workers whose start fails because the main process is gone stay quiet. The main process's pid comes in
the environment the server was started with (``loaders.worker_context``): by the time the server imports this, a
Ctrl-C may already have ended the main process, and the server's parent is then another process."""
import os

from litcli.core.data.loaders import MAIN_PID_ENV, quiet_orphaned_worker_starts

if os.environ.get(MAIN_PID_ENV, '').isdigit():
    quiet_orphaned_worker_starts(main_pid=int(os.environ[MAIN_PID_ENV]))

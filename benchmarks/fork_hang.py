"""How often a DataLoader worker start hangs when the process has C threads that call into Python: torch's default
fork against lit's loader settings (workers of a forkserver, ``litcli.core.data.loaders.worker_context``).

A C thread that calls a Python function creates and deletes a CPython thread state each time, under the runtime's
thread-state lock and without the GIL (torch's C++ threads do this when they drop a tensor that a Python object
owns). A fork() at that instant copies the lock held, and on CPython < 3.11.10 the child blocks on it before running
any Python (gh-112275): the hang seen in CI's two-node test. This script starts ``--threads`` such C threads (a tiny
C library compiled with ``cc``), then builds a 2-worker DataLoader ``--rounds`` times per mode and counts the
starts that produce no batch within ``--timeout`` seconds.

    python benchmarks/fork_hang.py --rounds 200 --threads 8

Measured on the 2-core CI-like VM, Python 3.11.7, torch 2.14: fork 2 of 200 starts hung, lit 0 of 600.
"""
import argparse
import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HAMMER_C = r'''
#include <pthread.h>
typedef void (*callback_t)(void);
static callback_t callback;
static volatile int stopping;
static void *loop(void *unused) { while (!stopping) callback(); return 0; }
void start_hammer(callback_t f) { pthread_t t; callback = f; pthread_create(&t, 0, loop, 0); }
void stop_hammer(void) { stopping = 1; }
'''


def build_hammer(folder: Path) -> ctypes.CDLL:
    compiler = shutil.which('cc') or shutil.which('gcc')
    if compiler is None:
        raise SystemExit('fork_hang.py needs a C compiler (cc or gcc) for its C threads; install one (apt-get install '
                         'gcc)')
    source, library = folder / 'hammer.c', folder / 'libhammer.so'
    source.write_text(HAMMER_C)
    subprocess.run([compiler, '-O2', '-shared', '-fPIC', '-o', str(library), str(source), '-lpthread'], check=True)
    return ctypes.CDLL(str(library))


def run_mode(mode: str, rounds: int, timeout: float) -> int:
    """Worker starts (of ``rounds``) that gave no batch within ``timeout`` seconds."""
    import torch
    from torch.utils.data import DataLoader

    if mode == 'lit':
        from litcli.core.data.loaders import loader_kwargs
        kwargs = {**loader_kwargs(2, torch.device('cpu'), None), 'persistent_workers': False}
    else:
        kwargs = dict(num_workers=2)
    hung = 0
    for _ in range(rounds):
        try:
            assert len(list(DataLoader(list(range(8)), batch_size=4, timeout=timeout, **kwargs))) == 2
        except RuntimeError:  # "DataLoader timed out after N seconds"
            hung += 1
    return hung


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rounds', type=int, default=200, help='DataLoader starts per mode')
    parser.add_argument('--threads', type=int, default=8, help='C threads calling into Python')
    parser.add_argument('--timeout', type=float, default=20.0, help='seconds a start may take before it counts as hung')
    parser.add_argument('--modes', default='fork,lit')
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        hammer = build_hammer(Path(tmp))
        noop = ctypes.CFUNCTYPE(None)(lambda: None)  # kept referenced while the threads run
        for _ in range(args.threads):
            hammer.start_hammer(noop)
        for mode in args.modes.split(','):
            start = time.time()
            hung = run_mode(mode, args.rounds, args.timeout)
            print(f'{mode}: {hung} of {args.rounds} worker starts hung ({time.time() - start:.0f} s; Python '
                  f'{sys.version.split()[0]}, {args.threads} C threads)', flush=True)
        hammer.stop_hammer()
    sys.stdout.flush()
    os._exit(0)  # the hung children and the C threads: do not wait for them


if __name__ == '__main__':
    main()

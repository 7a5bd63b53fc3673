"""Shared test helpers: the CLI runner, a tiny ImageFolder maker, a tiny LIT configuration, `lit train` args and
`lit` in a subprocess stopped by a signal at a given step."""
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from litcli.cli import app
from litcli.core.data.synthetic import write_image_folder

# A 4-stage LIT-Ti layout small enough to train in a second on a CPU.
TINY = dict(embed_dims=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], mlp_ratios=[2, 2, 2, 2])


def lit(*args):
    """Run the CLI in-process; a traceback in its output is always a test failure."""
    result = CliRunner().invoke(app, [str(a) for a in args], env={'COLUMNS': '160'}, prog_name='lit')
    assert 'Traceback' not in result.output, result.output
    return result


def make_folder(root: Path, classes=('cat', 'dog'), n_train=8, n_val=4) -> Path:
    """An ImageFolder tree of random 32x32 PNGs with a learnable colour cue per class."""
    return write_image_folder(root, classes, n_train, n_val)


def train_args(data, config, output, *extra):
    return ('train', '--variant', 'ti', '--data', data, '--config', config, '--img-size', 32, '-b', 4, '-j', 0,
            '--epochs', 1, '--output', output, '--log-interval', 1, *extra)


def lit_cmd(*args):
    """``lit ARGS`` as a subprocess command line (this interpreter, so the test's install)."""
    return [sys.executable, '-m', 'litcli', *[str(a) for a in args]]


def run_until_step(args, step: int, env: dict, timeout: float, rng: random.Random = random.Random(0),
                   sig=signal.SIGKILL, process_group: bool = False):
    """Start ``lit ARGS``, send ``sig`` 0-5 ms after it logs optimizer step >= ``step`` (a tiny step takes a few ms,
    so the signal lands anywhere in the next step or two, checkpoint writes included); return (rc, output, sent).
    ``process_group``: signal the main process and its DataLoader workers together, as a node failure would."""
    proc = subprocess.Popen(lit_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=process_group)
    lines, sent = [], False
    deadline = time.monotonic() + timeout
    try:
        for line in proc.stdout:
            lines.append(line)
            m = re.search(r'\] step (\d+) loss', line)
            if not sent and m and int(m.group(1)) >= step:
                time.sleep(rng.uniform(0, 0.005))
                if process_group:
                    os.killpg(proc.pid, sig)
                else:
                    proc.send_signal(sig)
                sent = True
            assert time.monotonic() < deadline, 'training did not finish in time'
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            if process_group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
    return rc, ''.join(lines), sent

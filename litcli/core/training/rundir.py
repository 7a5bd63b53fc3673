"""Run directories: a fresh folder per run (never overwriting), what a run writes there (config, env, metrics,
curves) and the set-up shared by all ranks of a launch.

``runs/<command>/<name>`` or ``<name>-2``, ``-3``...; ``--exist-ok`` reuses ``<name>`` and moves an earlier run's
files aside into ``replaced-<time>/`` (never mixing, never deleting).
"""
import csv
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Union

from litcli.core.errors import LitError

METRIC_FIELDS = ('epoch', 'step', 'train_loss', 'eval_loss', 'eval_top1', 'eval_top5', 'lr', 'img_per_s',
                 'epoch_time_s', 'img_per_s_device', 'data_s', 'compute_s', 'data_share')
RUN_FILES = ('checkpoints', 'metrics.csv', 'metrics.jsonl', 'curves.png', 'config.yaml', 'env.json',
             'tensorboard', 'wandb')  # the last two: lit train --log


def new_run_dir(base: Union[str, Path], name: str, exist_ok: bool = False) -> Path:
    """Create and return a fresh run directory (or reuse ``base/name`` when ``exist_ok``).

    Raises LitError with the fix when the location is not writable.
    """
    base = Path(base)
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LitError(f'cannot create output folder {base} ({e.strerror}); pass a writable --output')
    if not os.access(base, os.W_OK):
        raise LitError(f'output folder {base} is not writable; pass a writable --output')
    candidate, n = base / name, 1
    if exist_ok:
        candidate.mkdir(exist_ok=True)
        return candidate
    while True:
        try:
            candidate.mkdir()  # atomic claim: two runs never get the same folder
            return candidate
        except FileExistsError:
            n += 1
            candidate = base / f'{name}-{n}'


def move_earlier_run_aside(run_dir: Path) -> Optional[Path]:
    """Move the files of an earlier run in ``run_dir`` (checkpoints, metrics, curves, config) into
    ``run_dir/replaced-<time>/`` so a new run there never mixes with them (checkpoint pruning, ``best.pt``,
    ``--resume auto``) and nothing is deleted. Returns that folder, or None when there was nothing to move."""
    run_dir = Path(run_dir)
    present = [run_dir / n for n in RUN_FILES if (run_dir / n).exists() and
               not ((run_dir / n).is_dir() and not any((run_dir / n).iterdir()))]
    if not present:
        return None
    stamp = time.strftime('%Y%m%d-%H%M%S')
    aside, n = run_dir / f'replaced-{stamp}', 1
    while True:
        try:
            aside.mkdir()
            break
        except FileExistsError:
            n += 1
            aside = run_dir / f'replaced-{stamp}-{n}'
    for path in present:
        os.replace(path, aside / path.name)
    return aside


def git_commit() -> Optional[str]:
    """The commit of the source tree lit runs from, if it is a git checkout."""
    try:
        out = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def write_metrics(run_dir: Path, row: Dict):
    """Append one epoch to metrics.csv and metrics.jsonl."""
    csv_path = run_dir / 'metrics.csv'
    new = not csv_path.exists()
    if not new:  # a run resumed from an older lit: its file gets the new columns (empty in its earlier rows)
        with open(csv_path, newline='') as f:
            reader = csv.DictReader(f)
            fields, rows = tuple(reader.fieldnames or ()), list(reader)
        if fields != METRIC_FIELDS:
            tmp = csv_path.with_name('.metrics.csv.tmp')
            with open(tmp, 'w', newline='') as f:
                writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS, extrasaction='ignore')
                writer.writeheader()
                writer.writerows(rows)
            os.replace(tmp, csv_path)
    with open(csv_path, 'a', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k) for k in METRIC_FIELDS})
    with open(run_dir / 'metrics.jsonl', 'a') as f:
        f.write(json.dumps({k: row.get(k) for k in METRIC_FIELDS}) + '\n')


def read_metrics(run_dir: Path):
    path = run_dir / 'metrics.jsonl'
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(run_dir: Path):
    """curves.png: train/eval loss, eval top-1/top-5 and lr against epoch (written atomically)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    if not rows:
        return
    epochs = [r['epoch'] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [r['train_loss'] for r in rows], 'o-', label='train')
    axes[0].plot(epochs, [r['eval_loss'] for r in rows], 'o-', label='eval')
    axes[0].set(title='loss', xlabel='epoch')
    axes[1].plot(epochs, [r['eval_top1'] for r in rows], 'o-', label='top-1')
    axes[1].plot(epochs, [r['eval_top5'] for r in rows], 'o-', label='top-5')
    axes[1].set(title='eval accuracy (%)', xlabel='epoch')
    axes[2].plot(epochs, [r['lr'] for r in rows], 'o-')
    axes[2].set(title='learning rate (end of epoch)', xlabel='epoch',
                yscale='log' if all(r['lr'] > 0 for r in rows) else 'linear')
    for ax in axes[:2]:
        ax.legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = run_dir / '.curves.png.tmp'
    fig.savefig(tmp, dpi=110, format='png')
    plt.close(fig)
    os.replace(tmp, run_dir / 'curves.png')


def truncate_metrics(run_dir: Path, before_epoch: int):
    """Drop metric rows of epochs >= ``before_epoch`` (written after the checkpoint a run resumes from)."""
    jsonl = Path(run_dir) / 'metrics.jsonl'
    if not jsonl.exists():
        return
    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    kept = [r for r in rows if r['epoch'] < before_epoch]
    if len(kept) == len(rows):
        return
    tmp = jsonl.with_name('.metrics.jsonl.tmp')
    tmp.write_text(''.join(json.dumps(r) + '\n' for r in kept))
    os.replace(tmp, jsonl)
    csv_path = Path(run_dir) / 'metrics.csv'
    if csv_path.exists():
        with open(csv_path, newline='') as f:
            reader = csv.DictReader(f)
            fields, csv_rows = reader.fieldnames, [r for r in reader if int(r['epoch']) < before_epoch]
        tmp = csv_path.with_name('.metrics.csv.tmp')
        with open(tmp, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(csv_rows)
        os.replace(tmp, csv_path)


def prepare_run_dir(world, log: Callable[[str], None], *, output: Path, name: Optional[str], default_name: str,
                    exist_ok: bool, resumed_dir: Optional[Path], start_epoch: int, config: Dict, env: Dict) -> Path:
    """The run directory, the same on every rank: rank 0 continues the folder of a resumed checkpoint (when it is a
    run of ``name``) or makes a new one, writes ``config.yaml`` and ``env.json``, and broadcasts the path (or the
    one-line error every rank then raises)."""
    import yaml

    from litcli.core.modelio.checkpoint import is_run_of, plain
    from litcli.core.runtime import broadcast_object

    run_dir, setup_error = None, None
    if world.is_main:
        try:
            if resumed_dir is not None and (resumed_dir / 'config.yaml').exists() and \
                    (name is None or is_run_of(resumed_dir.name, name)):
                run_dir = resumed_dir
                truncate_metrics(run_dir, start_epoch)  # rows of epochs the checkpoint had not finished go again
            else:
                run_dir = new_run_dir(output, name or default_name, exist_ok=exist_ok)
                moved = move_earlier_run_aside(run_dir)  # --exist-ok on a used name: never mix, never delete
                if moved is not None:
                    log(f'--exist-ok: {run_dir} held an earlier run; its files were moved to {moved}')
            (run_dir / 'config.yaml').write_text(yaml.safe_dump(plain(config), sort_keys=False))
            (run_dir / 'env.json').write_text(json.dumps(env, indent=2) + '\n')
        except (LitError, OSError) as e:
            setup_error = str(e) if isinstance(e, LitError) else f'cannot write the run directory ({e})'
    run_dir, setup_error = broadcast_object((run_dir, setup_error), world)
    if setup_error:
        raise LitError(setup_error)
    return run_dir


def load_run(run_dir: Path):
    """(metrics rows, config or None) of a ``lit train`` run folder; a one-line LitError when it has no metrics."""
    import yaml

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise LitError(f'{run_dir}: no such run folder; give lit train run directories (runs/train/NAME)')
    try:
        rows = read_metrics(run_dir)
    except (json.JSONDecodeError, OSError) as e:
        raise LitError(f'{run_dir / "metrics.jsonl"} is not readable ({e}); is it a lit train run folder?')
    if not rows:
        raise LitError(f'{run_dir} has no metrics (metrics.jsonl): not a lit train run folder, or no epoch has '
                       f'finished yet')
    bad = next((i for i, row in enumerate(rows, 1)
                if not isinstance(row, dict) or not isinstance(row.get('epoch'), int)), None)
    if bad is not None:
        raise LitError(f'{run_dir / "metrics.jsonl"} line {bad} is not a metrics row (a JSON object with an integer '
                       f'"epoch"); is it a lit train run folder? (the file was edited or written by another tool)')
    try:
        config = yaml.safe_load((run_dir / 'config.yaml').read_text())
    except (OSError, yaml.YAMLError):
        config = None
    return rows, config if isinstance(config, dict) else None

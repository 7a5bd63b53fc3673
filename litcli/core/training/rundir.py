"""Run directories: a fresh folder per run (never overwriting), what a run writes there (config, env, metrics,
curves) and the set-up shared by all ranks of a launch.

``runs/<command>/<name>`` or ``<name>-2``, ``-3``...; ``--exist-ok`` reuses ``<name>`` and moves an earlier run's
files aside into ``replaced-<time>/`` (never mixing, never deleting).
"""
import csv
import io
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

from litcli.core.errors import LitError, WriteError
from litcli.core.io import save_figure, write_json, write_text

METRIC_FIELDS = ('epoch', 'step', 'train_loss', 'eval_loss', 'eval_top1', 'eval_top5', 'lr', 'img_per_s',
                 'epoch_time_s', 'img_per_s_device', 'data_s', 'compute_s', 'data_share')
# The accuracy columns a run's curves show, whichever its task writes: classification's, the detectors' COCO AP
# (box, mask), Semantic FPN's mIoU and pixel accuracies.
ACCURACY_FIELDS = ('eval_top1', 'eval_top5', 'bbox_AP', 'bbox_AP50', 'segm_AP', 'segm_AP50', 'mIoU', 'mAcc', 'aAcc')


def dense_metric_fields(task_metrics: Sequence[str]) -> Tuple[str, ...]:
    """The columns of a dense run's metrics files, around the task's metric columns."""
    return ('epoch', 'step', 'train_loss', *task_metrics, 'lr', 'img_per_s', 'epoch_time_s', 'img_per_s_device',
            'data_s', 'compute_s', 'data_share')


RUN_FILES = ('checkpoints', 'metrics.csv', 'metrics.jsonl', 'curves.png', 'config.yaml', 'env.json',
             'tensorboard', 'wandb')  # the last two: lit train --log
RUN_ELSEWHERE = 'choose another --output'  # the way out of a failed write into a run folder


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


def _csv_text(rows, fields) -> str:
    """``rows`` (dicts) under a ``fields`` header, as ``csv.DictWriter`` writes them (a missing value is empty)."""
    text = io.StringIO(newline='')
    writer = csv.DictWriter(text, fieldnames=fields, extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def _read_csv(path: Path):
    with open(path, newline='') as f:
        reader = csv.DictReader(f)
        return tuple(reader.fieldnames or ()), list(reader)


def write_metrics(run_dir: Path, row: Dict, fields: Sequence[str] = METRIC_FIELDS):
    """Add one epoch to metrics.jsonl and metrics.csv, each rewritten atomically (old or new, never a partial
    row; a full disk is one WriteError and leaves both files as they were). ``fields``: the columns (a dense
    task's: ``dense_metric_fields``)."""
    record = {k: row.get(k) for k in fields}
    jsonl = run_dir / 'metrics.jsonl'
    old = jsonl.read_text() if jsonl.exists() else ''
    write_text(jsonl, old + ('\n' if old and not old.endswith('\n') else '') + json.dumps(record) + '\n',
               RUN_ELSEWHERE)
    csv_path = run_dir / 'metrics.csv'
    # a run resumed from an older lit: its file gets the new columns (empty in its earlier rows)
    rows = _read_csv(csv_path)[1] if csv_path.exists() else []
    write_text(csv_path, _csv_text(rows + [record], fields), RUN_ELSEWHERE)


def read_metrics(run_dir: Path):
    path = run_dir / 'metrics.jsonl'
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(run_dir: Path):
    """curves.png: train (and eval) loss, the accuracy columns present (top-1/top-5, COCO AP, mIoU) and lr against
    epoch (written atomically)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    if not rows:
        return
    epochs = [r['epoch'] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [r['train_loss'] for r in rows], 'o-', label='train')
    if rows[0].get('eval_loss') is not None:
        axes[0].plot(epochs, [r['eval_loss'] for r in rows], 'o-', label='eval')
    axes[0].set(title='loss', xlabel='epoch')
    labels = {'eval_top1': 'top-1', 'eval_top5': 'top-5'}
    for key in (k for k in ACCURACY_FIELDS if rows[0].get(k) is not None):
        axes[1].plot(epochs, [r.get(key) for r in rows], 'o-', label=labels.get(key, key))
    axes[1].set(title='eval accuracy (%)', xlabel='epoch')
    axes[2].plot(epochs, [r['lr'] for r in rows], 'o-')
    axes[2].set(title='learning rate (end of epoch)', xlabel='epoch',
                yscale='log' if all(r['lr'] > 0 for r in rows) else 'linear')
    for ax in axes[:2]:
        ax.legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, run_dir / 'curves.png', RUN_ELSEWHERE, dpi=110)


def truncate_metrics(run_dir: Path, before_epoch: int):
    """Drop metric rows of epochs >= ``before_epoch`` (written after the checkpoint a run resumes from) from
    metrics.jsonl and metrics.csv, each only when it holds such rows."""
    jsonl = Path(run_dir) / 'metrics.jsonl'
    if jsonl.exists():
        lines = [line for line in jsonl.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line)['epoch'] < before_epoch]
        if len(kept) < len(lines):
            write_text(jsonl, ''.join(line + '\n' for line in kept), RUN_ELSEWHERE)
    csv_path = Path(run_dir) / 'metrics.csv'
    if csv_path.exists():
        fields, rows = _read_csv(csv_path)
        kept = [r for r in rows if int(r['epoch']) < before_epoch]
        if len(kept) < len(rows):
            write_text(csv_path, _csv_text(kept, fields), RUN_ELSEWHERE)


def record_epoch(run_dir: Path, saver, row: Dict, state: Dict, is_best: bool, metric: Optional[float] = None,
                 fields: Sequence[str] = METRIC_FIELDS):
    """An epoch end on rank 0: its metrics row (metrics.jsonl, .csv), its checkpoints (``saver.save_epoch``:
    last.pt first), then curves.png. The row goes first, so a kill before last.pt is saved leaves a row the resume
    drops again; a write that fails (full disk) before last.pt holds the epoch takes the row out again, so the
    metrics never hold an epoch the checkpoint lacks, and the one-line WriteError says what was kept and how to
    resume."""
    epoch, saved = int(row['epoch']), False
    try:
        write_metrics(run_dir, row, fields)
        saver.save_epoch(state, is_best, metric=metric)
        saved = True
        plot_curves(run_dir)
    except WriteError as e:
        failed = Path(e.path) if e.path is not None else None
        if saved or (failed is not None and failed.parent == saver.dir and failed != saver.last):
            kept = f'epoch {epoch} is saved in {saver.last}'
        else:  # last.pt lacks this epoch: so do the metrics
            try:
                truncate_metrics(run_dir, epoch)
                kept = f'epoch {epoch} is not saved (its metrics row was taken out again)'
            except (LitError, OSError):
                kept = f'epoch {epoch} is not saved (metrics.csv still lists it; a --resume drops it)'
        raise WriteError(f'{e}; {kept}; {saver.resume_note()}', path=e.path, errno=e.errno) from None


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
            write_text(run_dir / 'config.yaml', yaml.safe_dump(plain(config), sort_keys=False), RUN_ELSEWHERE)
            write_json(run_dir / 'env.json', env, RUN_ELSEWHERE)
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

"""Checkpoint files of a run directory for fault tolerance: step checkpoints, ``last.pt``, ``--resume auto``.

Layout of ``<run>/checkpoints``: ``last.pt`` (the newest state, rewritten at every save), ``best.pt`` (best eval
top-1, at epoch ends) and, with ``--save-interval N``, ``step-XXXXXXX.pt`` every N optimizer steps, of which the
newest ``--keep-last K`` are kept. Every file is written atomically (``checkpoint.save_checkpoint``), so a kill
at any instant leaves only complete files (and at worst a ``.*.tmp`` leftover, removed at the next start).
"""
import os
import re
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from litcli.errors import CheckpointError, LitError

STEP_FILE = re.compile(r'^step-(\d+)\.pt$')


def step_checkpoint_name(step: int) -> str:
    return f'step-{step:07d}.pt'


def step_checkpoints(ckpt_dir: Path) -> List[Path]:
    """``step-*.pt`` files of ``ckpt_dir``, oldest step first."""
    found = [(int(m.group(1)), p) for p in Path(ckpt_dir).glob('step-*.pt') for m in [STEP_FILE.match(p.name)] if m]
    return [p for _, p in sorted(found)]


def _resumable_files(ckpt_dir: Path) -> List[Path]:
    """last.pt and the step checkpoints, newest first (modification time; last.pt first on a tie)."""
    files = [p for p in [Path(ckpt_dir) / 'last.pt', *step_checkpoints(ckpt_dir)] if p.is_file()]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name == 'last.pt'), reverse=True)


def find_run_dir(output: Path, name: Optional[str]) -> Path:
    """The run under ``output`` (named ``name`` or its -N copies, if given) with the most recent checkpoint."""
    output = Path(output)
    runs = [d for d in output.glob('*') if (d / 'checkpoints').is_dir() and _resumable_files(d / 'checkpoints')
            and (name is None or is_run_of(d.name, name))]
    if not runs:
        raise LitError(f'--resume auto found no checkpoints in {output}/{name or "*"}/checkpoints; '
                       f'pass --resume PATH, or the --output/--name of the run')
    return max(runs, key=lambda d: _resumable_files(d / 'checkpoints')[0].stat().st_mtime_ns)


def is_run_of(folder_name: str, name: str) -> bool:
    """Whether a run folder is ``name`` or one of its numbered copies ``name-2``, ``name-3``, ... (which
    ``new_run_dir`` makes), and nothing else: not another run whose whole name is digits, such as ``20241127``."""
    return re.fullmatch(re.escape(name) + r'(-[0-9]+)?', folder_name) is not None


def is_resumable_checkpoint(raw: Dict) -> bool:
    """A ``lit train`` checkpoint with its optimizer state (an export or a bare state dict cannot be resumed)."""
    return isinstance(raw.get('config'), dict) and 'optimizer' in raw


def newest_valid_checkpoint(ckpt_dir: Path, log: Callable[[str], None]) -> Tuple[Path, Dict]:
    """(path, contents) of the newest checkpoint in ``ckpt_dir`` that reads back completely.

    A truncated or corrupt newer file (e.g. a disk that filled up, a copy cut short) is reported and skipped,
    and the previous valid one is used.
    """
    from litcli.checkpoint import read_checkpoint

    bad = []
    for path in _resumable_files(ckpt_dir):
        try:
            raw = read_checkpoint(path)
        except CheckpointError as e:
            bad.append(path)
            log(f'warning: {e}; falling back to the previous checkpoint')
            continue
        if not is_resumable_checkpoint(raw):
            bad.append(path)
            log(f'warning: {path} is not a lit train checkpoint; falling back to the previous checkpoint')
            continue
        if bad:
            log(f'--resume auto: {", ".join(p.name for p in bad)} unreadable, resuming from {path} instead')
        return path, raw
    raise CheckpointError(f'no readable checkpoint in {ckpt_dir} (' + ', '.join(p.name for p in bad) +
                          ' are corrupt); start a new run or pass --resume with another file')


def remove_stale_temporaries(ckpt_dir: Path):
    """Delete ``.NAME.*.tmp`` files a killed save left behind (never a complete checkpoint)."""
    for p in Path(ckpt_dir).glob('.*.tmp'):
        p.unlink(missing_ok=True)


def save_step_checkpoint(obj: Dict, ckpt_dir: Path, step: int, keep_last: int) -> Path:
    """Write ``step-XXXXXXX.pt``, make ``last.pt`` the same file, and keep only the newest ``keep_last`` steps.

    ``last.pt`` becomes a hard link to the step file (swapped in atomically with a rename), so the state is
    written to disk once; where hard links are not supported it is written a second time.
    """
    from litcli.checkpoint import save_checkpoint

    ckpt_dir = Path(ckpt_dir)
    step_path = ckpt_dir / step_checkpoint_name(step)
    save_checkpoint(obj, step_path)
    last = ckpt_dir / 'last.pt'
    link = ckpt_dir / f'.last.pt.{os.getpid()}.link.tmp'
    try:
        link.unlink(missing_ok=True)
        os.link(step_path, link)
        os.replace(link, last)
    except OSError:
        link.unlink(missing_ok=True)
        save_checkpoint(obj, last)
    for old in step_checkpoints(ckpt_dir)[:-keep_last] if keep_last > 0 else []:
        old.unlink(missing_ok=True)
    return step_path


RUN_FILES = ('checkpoints', 'metrics.csv', 'metrics.jsonl', 'curves.png', 'config.yaml', 'env.json')


def move_earlier_run_aside(run_dir: Path) -> Optional[Path]:
    """Move the files of an earlier run in ``run_dir`` (checkpoints, metrics, curves, config) into
    ``run_dir/replaced-<time>/`` so a new run there never mixes with them (checkpoint pruning, ``best.pt``,
    ``--resume auto``) and nothing is deleted. Returns that folder, or None when there was nothing to move."""
    import time

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


def truncate_metrics(run_dir: Path, before_epoch: int):
    """Drop metric rows of epochs >= ``before_epoch`` (written after the checkpoint a run resumes from)."""
    import csv
    import json

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

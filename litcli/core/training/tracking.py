"""Experiment trackers for ``lit train --log tensorboard|wandb``: TensorBoard event files and Weights & Biases runs.

Both are optional extras (``pip install 'litcli[track]'`` / ``'litcli[wandb]'``), imported only when asked for;
a missing package is a one-line error naming the install command. Rank 0 alone writes. The events go under the
run directory (``<run>/tensorboard/``, ``<run>/wandb/``); the run's own files (metrics, curves, checkpoints) are
unchanged. W&B runs offline unless ``WANDB_MODE`` says otherwise, so it works without network; ``wandb sync``
uploads such a run later.

What is logged (x axis: the optimizer step):

- every ``--log-interval`` updates: ``train/loss``, ``train/img_per_s``, ``lr/<group>`` for each parameter group
  (``decay``, ``no_decay``, ``offset``: the DTM offset convs' own rate), the data time: ``time/data_s`` and
  ``time/compute_s`` (seconds per update waiting for the input pipeline / computing, averaged over the interval)
  and ``time/data_share``, and any other number the training loop reports per step;
- every epoch: ``eval/top1``, ``eval/top5``, ``eval/loss``, ``train/epoch_loss``, ``train/epoch_time_s`` and, for
  models with DTM, ``dtm/<module>_offset_px``: each DTM's mean |offset| in pixels on a fixed batch of validation
  images, the curve of how far the merging learns to look.
"""
import importlib.util
import json
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from litcli.core.errors import LitError, UsageError
from litcli.core.progress import DataTime
from litcli.core.training.optim import group_lrs

# --log name -> (module to import, pip extra that installs it)
TRACKERS = {'tensorboard': ('tensorboard', 'track'), 'wandb': ('wandb', 'wandb')}
# Keys of the training loop's per-step dict that are not per-step measurements (or are logged under own names).
STEP_META = ('epoch', 'step', 'batch', 'total', 'elapsed', 'loss', 'lr', 'lrs', 'img_per_s', 'loss_totals', 'images',
             'first', 'data_s', 'compute_s')
OFFSET_BATCH = 16  # validation images in the fixed batch whose DTM offsets are measured every epoch


def check_trackers(names: Optional[Sequence[str]]) -> List[str]:
    """The ``--log`` names, de-duplicated, each known and importable; a UsageError for an unknown name and a
    LitError naming ``pip install 'litcli[...]'`` for a missing package (checked before any work starts)."""
    chosen = []
    for name in names or ():
        name = name.strip().lower()
        if name not in TRACKERS:
            raise UsageError(f"unknown --log {name!r}; use {' or '.join(TRACKERS)} (repeat --log for both)")
        module, extra = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise LitError(f"--log {name} needs the {module} package, which is not installed: "
                           f"pip install 'litcli[{extra}]'")
        if name not in chosen:
            chosen.append(name)
    return chosen


class TensorBoardWriter:
    """Scalars into ``<run>/tensorboard/`` with torch's SummaryWriter (the tensorboard package writes the files)."""

    def __init__(self, run_dir: Path, config: Dict, purge_step: Optional[int] = None):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(run_dir) / 'tensorboard'
        # purge_step: a resumed run hides the events an interrupted run wrote after its checkpoint (TensorBoard
        # would otherwise draw those steps twice).
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)
        if purge_step is None:
            self.writer.add_text('config', '```\n' + json.dumps(config, indent=2, default=str) + '\n```', 0)

    def log(self, scalars: Dict[str, float], step: int):
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def flush(self):
        self.writer.flush()

    def close(self):
        self.writer.close()


class WandbWriter:
    """A W&B run in ``<run>/wandb/``: offline by default (no network, no account), ``WANDB_MODE=online`` to upload
    as it trains, or ``wandb sync <run>/wandb/offline-run-*`` afterwards."""

    def __init__(self, run_dir: Path, config: Dict):
        import wandb

        self.mode = os.environ.get('WANDB_MODE', 'offline')
        self.run = wandb.init(project=os.environ.get('WANDB_PROJECT', 'lit'), name=Path(run_dir).name,
                              dir=str(run_dir), config=config, mode=self.mode, reinit=True)
        self.log_dir = Path(run_dir) / 'wandb'

    def log(self, scalars: Dict[str, float], step: int):
        # wandb drops a step lower than one already logged (a resumed run's first steps): those go to its log.
        self.run.log(dict(scalars), step=step)

    def flush(self):
        pass

    def close(self):
        self.run.finish()


class TrainTracker:
    """What ``lit train`` sends to the chosen trackers (rank 0 only; see the module docstring)."""

    def __init__(self, writers: List, optimizer, log_interval: int):
        self.writers = writers
        self.optimizer = optimizer
        self.log_interval = max(1, log_interval)
        self.interval = DataTime()  # since the last log

    @property
    def locations(self) -> List[Path]:
        return [w.log_dir for w in self.writers]

    def log(self, scalars: Dict[str, float], step: int):
        for writer in self.writers:
            writer.log(scalars, step)

    def step(self, s: Dict):
        """The training loop's per-update report; logged every ``log_interval`` updates and at the epoch's end."""
        if 'data_s' in s:  # per update: summed over the interval
            self.interval.add(s['data_s'], s.get('compute_s', 0.0))
        if s['batch'] % self.log_interval and s['batch'] != s['total']:
            return
        scalars = {'train/loss': s['loss'], 'train/img_per_s': s['img_per_s']}
        t = self.interval.take()
        if t.updates:
            scalars.update({'time/data_s': t.data_s / t.updates, 'time/compute_s': t.compute_s / t.updates,
                            'time/data_share': t.share})
        lrs = s.get('lrs') or group_lrs(self.optimizer)  # the rates of the update just made
        scalars.update({f'lr/{name}': lr for name, lr in lrs.items()})
        for key, value in s.items():  # any other number the loop reports per update
            if key not in STEP_META and isinstance(value, (int, float)) and not isinstance(value, bool):
                scalars[f'train/{key}'] = float(value)
        self.log(scalars, s['step'])

    def epoch(self, row: Dict, offsets_px: Dict[str, float]):
        """An epoch's metrics row (``metrics.jsonl`` columns) and each DTM's mean |offset| in pixels."""
        scalars = {'train/epoch_loss': row['train_loss'], 'train/epoch_time_s': row['epoch_time_s'],
                   'train/epoch': row['epoch']}
        # classification's top-1/top-5/loss as eval/top1 ...; a dense task's columns (bbox_AP, mIoU ...) by name
        named = {'eval_top1': 'top1', 'eval_top5': 'top5', 'eval_loss': 'loss'}
        scalars.update({f'eval/{named.get(key, key)}': float(value) for key, value in row.items()
                        if (key in named or key.split('_')[0] in ('bbox', 'segm') or key in ('mIoU', 'mAcc', 'aAcc'))
                        and value is not None})
        scalars.update({f'dtm/{name}_offset_px': px for name, px in offsets_px.items()})
        self.log(scalars, row['step'])
        for writer in self.writers:
            writer.flush()

    def close(self):
        for writer in self.writers:
            writer.close()


def create_tracker(names: Sequence[str], run_dir: Path, config: Dict, optimizer, log_interval: int,
                   purge_step: Optional[int] = None) -> Optional[TrainTracker]:
    """The tracker of a run (None without ``--log``); call on rank 0 only."""
    writers = []
    try:
        for name in names:
            if name == 'tensorboard':
                writers.append(TensorBoardWriter(run_dir, config, purge_step))
            elif name == 'wandb':
                writers.append(WandbWriter(run_dir, config))
    except BaseException:
        for writer in writers:
            writer.close()
        raise
    return TrainTracker(writers, optimizer, log_interval) if writers else None


def fixed_batch(dataset, n: int = OFFSET_BATCH, batch_transform: Optional[Callable] = None):
    """The readable ones of the first ``n`` images of ``dataset`` as one model-ready batch (B, 3, H, W), or None;
    the same images every epoch, so the offset curve follows the model, not the data."""
    from litcli.core.data.datasets import collate_readable

    batch = collate_readable([dataset[i] for i in range(min(n, len(dataset)))])
    if batch is None:
        return None
    x = batch[0]
    return batch_transform(x) if batch_transform is not None else x


def dtm_offsets_px(model, x) -> Dict[str, float]:
    """Each DTM's mean |offset| in pixels on the batch ``x`` (empty for a model without DTM), eval mode, no grad."""
    import torch

    from litcli.models import capture_offsets, offset_lengths_px

    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            lengths = offset_lengths_px(model, capture_offsets(model, x.to(device)))
    finally:
        model.train(was_training)
    return {name.replace('.dconv.conv_offset', '').replace('.conv_offset', ''): float(px.mean())
            for name, px in lengths.items()}

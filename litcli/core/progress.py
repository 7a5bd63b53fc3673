"""Progress: the one rich progress bar set-up (``progress_bar``: training epochs, downloads, ``lit data pack``), the
one data-time accumulator (``DataTime``) and a training run's progress (``Reporter``): a rich bar per epoch on a
terminal, a plain log line every ``log_interval`` updates otherwise (CI, SLURM, ``> log.txt``), from rank 0 only.

Each line also says how the interval's wall time split into waiting for data and computing, and img/s per device
and in total; the first time the wait exceeds ``DATA_HINT_SHARE`` of the step (the epoch's first update, which
includes the workers' start-up, aside) one hint line says what to do about it.
"""
from dataclasses import dataclass
from typing import Dict, Optional

DATA_HINT_SHARE = 0.10


def progress_bar(console=None, *, label: str = '{task.description}', fields: str = '', transfer: bool = False,
                 enabled: bool = True):
    """A transient rich ``Progress`` on ``console`` (a new stdout console by default): ``label``, the bar, done/total
    (``transfer``: MB and MB/s), ``fields`` (e.g. ``'loss {task.fields[loss]:.4f}'``), elapsed and remaining time.
    It is disabled (every call a no-op, ``.disable`` True) unless ``enabled`` and the console writes to a terminal:
    callers then print plain lines instead. Start it with ``.start()`` or ``with``."""
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn, TransferSpeedColumn)

    console = console if console is not None else Console()
    counts = [DownloadColumn(), TransferSpeedColumn()] if transfer else [MofNCompleteColumn()]
    columns = ([TextColumn(label)] if label else []) + [BarColumn(), *counts] + \
        ([TextColumn(fields)] if fields else []) + [TimeElapsedColumn(), TimeRemainingColumn()]
    return Progress(*columns, console=console, transient=True, disable=not (enabled and console.file.isatty()))


@dataclass
class DataTime:
    """Seconds waiting for data and computing (``engine.DataTimer``'s split) summed over some updates (an interval
    between log lines, an epoch, a run) with their images: the one place the data share is accounted."""
    data_s: float = 0.0
    compute_s: float = 0.0
    images: int = 0
    updates: int = 0

    def add(self, data_s: float, compute_s: float, images: int = 0, updates: int = 1):
        self.data_s += data_s
        self.compute_s += compute_s
        self.images += images
        self.updates += updates

    @property
    def wall_s(self) -> float:
        return self.data_s + self.compute_s

    @property
    def share(self) -> float:
        """The fraction of the wall time spent waiting for data (0 before any time was added)."""
        return self.data_s / self.wall_s if self.wall_s > 0 else 0.0

    def take(self) -> 'DataTime':
        """The sums so far; starts a new interval."""
        taken = DataTime(self.data_s, self.compute_s, self.images, self.updates)
        self.data_s, self.compute_s, self.images, self.updates = 0.0, 0.0, 0, 0
        return taken


class Reporter:
    """Per-epoch progress: a rich bar on a terminal, a plain log line every ``log_interval`` updates otherwise."""

    def __init__(self, enabled: bool, log_interval: int, world_size: int = 1):
        from rich.console import Console

        self.console = Console()
        self.enabled = enabled
        self.log_interval = max(1, log_interval)
        self.world_size = max(1, world_size)
        self.progress, self.task = None, None
        self.data_hint: Optional[str] = None  # what to do when the step waits for data (set by the trainer)
        self.hinted = False
        self.interval = DataTime()  # since the last line
        self.steady = DataTime()  # the run without each epoch's first update (worker start-up), for the hint

    def data_line(self, t: DataTime) -> str:
        """'data 12% of 2.00s, 812.0 img/s/device, 1624.0 img/s total' for an interval."""
        per_device = t.images / t.wall_s if t.wall_s > 0 else 0.0
        return (f'data {100 * t.share:.0f}% of {t.wall_s:.2f}s, {per_device:.1f} img/s/device, '
                f'{per_device * self.world_size:.1f} img/s total')

    def _account(self, s: Dict):
        if 'data_s' not in s:
            return
        self.interval.add(s['data_s'], s['compute_s'], s.get('images', 0))
        if not s.get('first'):
            self.steady.add(s['data_s'], s['compute_s'])
        if not self.hinted and self.data_hint and self.steady.share > DATA_HINT_SHARE and s['step'] >= 2:
            self.hinted = True
            self.log(f'hint: the step waits for data {100 * self.steady.share:.0f}% of the time '
                     f'(> {100 * DATA_HINT_SHARE:.0f}%): {self.data_hint}')

    def log(self, message: str):
        if self.enabled:
            self.console.print(message, highlight=False, soft_wrap=True)

    def start_epoch(self, epoch: int, total: int):
        bar = progress_bar(self.console, label=f'epoch {epoch}', enabled=self.enabled,
                           fields='loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[ips]:.0f} img/s')
        if bar.disable:  # not a terminal: plain lines every log_interval updates
            return
        self.progress = bar
        self.progress.start()
        self.task = self.progress.add_task('train', total=total, loss=float('nan'), lr=0.0, ips=0.0)

    def step(self, s: Dict):
        self._account(s)
        if self.progress is not None:
            self.progress.update(self.task, completed=s['batch'], loss=s['loss'], lr=s['lr'], ips=s['img_per_s'])
        elif self.enabled and (s['batch'] % self.log_interval == 0 or s['batch'] == s['total']):
            eta = s['elapsed'] / s['batch'] * (s['total'] - s['batch'])
            interval = self.interval.take()
            data = f' | {self.data_line(interval)}' if 'data_s' in s else ''
            self.log(f'epoch {s["epoch"]} [{s["batch"]}/{s["total"]}] step {s["step"]} loss {s["loss"]:.4f} '
                     f'lr {s["lr"]:.3e} {s["img_per_s"]:.1f} img/s eta {eta:.0f}s{data}')

    def end_epoch(self):
        self.interval.take()
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

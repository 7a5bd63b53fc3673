"""Progress of a training run: a rich bar per epoch on a terminal, a plain log line every ``log_interval`` updates
otherwise (CI, SLURM, ``> log.txt``), and log lines from rank 0 only.

Each line also says how the interval's wall time split into waiting for data and computing, and img/s per device
and in total; the first time the wait exceeds ``DATA_HINT_SHARE`` of the step (the epoch's first update, which
includes the workers' start-up, aside) one hint line says what to do about it.
"""
import sys
from typing import Dict, Optional

DATA_HINT_SHARE = 0.10


class Reporter:
    """Per-epoch progress: a rich bar on a terminal, a plain log line every ``log_interval`` updates otherwise."""

    def __init__(self, enabled: bool, log_interval: int, world_size: int = 1):
        from rich.console import Console

        self.console = Console()
        self.enabled = enabled
        self.interactive = enabled and sys.stdout.isatty()
        self.log_interval = max(1, log_interval)
        self.world_size = max(1, world_size)
        self.progress, self.task = None, None
        self.data_hint: Optional[str] = None  # what to do when the step waits for data (set by the trainer)
        self.hinted = False
        self._interval = [0.0, 0.0, 0]  # data s, compute s, images since the last line
        self._steady = [0.0, 0.0]  # the same without each epoch's first update, for the hint

    def data_line(self, data_s: float, compute_s: float, images: int) -> str:
        """'data 12% (0.031 s/step) 812 img/s/device, 1624 img/s total' for an interval."""
        wall = data_s + compute_s
        share = data_s / wall if wall > 0 else 0.0
        per_device = images / wall if wall > 0 else 0.0
        return (f'data {100 * share:.0f}% of {wall:.2f}s, {per_device:.1f} img/s/device, '
                f'{per_device * self.world_size:.1f} img/s total')

    def _account(self, s: Dict):
        if 'data_s' not in s:
            return
        self._interval[0] += s['data_s']
        self._interval[1] += s['compute_s']
        self._interval[2] += s.get('images', 0)
        if not s.get('first'):
            self._steady[0] += s['data_s']
            self._steady[1] += s['compute_s']
        steady_wall = sum(self._steady)
        if not self.hinted and self.data_hint and steady_wall > 0 and \
                self._steady[0] / steady_wall > DATA_HINT_SHARE and s['step'] >= 2:
            self.hinted = True
            self.log(f'hint: the step waits for data {100 * self._steady[0] / steady_wall:.0f}% of the time '
                     f'(> {100 * DATA_HINT_SHARE:.0f}%): {self.data_hint}')

    def log(self, message: str):
        if self.enabled:
            self.console.print(message, highlight=False, soft_wrap=True)

    def start_epoch(self, epoch: int, total: int):
        if not self.interactive:
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)
        self.progress = Progress(
            TextColumn(f'epoch {epoch}'), BarColumn(), MofNCompleteColumn(),
            TextColumn('loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[ips]:.0f} img/s'),
            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=True)
        self.progress.start()
        self.task = self.progress.add_task('train', total=total, loss=float('nan'), lr=0.0, ips=0.0)

    def step(self, s: Dict):
        self._account(s)
        if self.progress is not None:
            self.progress.update(self.task, completed=s['batch'], loss=s['loss'], lr=s['lr'], ips=s['img_per_s'])
        elif self.enabled and (s['batch'] % self.log_interval == 0 or s['batch'] == s['total']):
            eta = s['elapsed'] / s['batch'] * (s['total'] - s['batch'])
            data = f' {self.data_line(*self._interval)}' if 'data_s' in s else ''
            self.log(f'epoch {s["epoch"]} [{s["batch"]}/{s["total"]}] step {s["step"]} loss {s["loss"]:.4f} '
                     f'lr {s["lr"]:.3e} {s["img_per_s"]:.1f} img/s eta {eta:.0f}s' + (f' |{data}' if data else ''))
            self._interval = [0.0, 0.0, 0]

    def end_epoch(self):
        self._interval = [0.0, 0.0, 0]
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

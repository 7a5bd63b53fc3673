"""Progress of a training run: a rich bar per epoch on a terminal, a plain log line every ``log_interval`` updates
otherwise (CI, SLURM, ``> log.txt``), and log lines from rank 0 only."""
import sys
from typing import Dict


class Reporter:
    """Per-epoch progress: a rich bar on a terminal, a plain log line every ``log_interval`` updates otherwise."""

    def __init__(self, enabled: bool, log_interval: int):
        from rich.console import Console

        self.console = Console()
        self.enabled = enabled
        self.interactive = enabled and sys.stdout.isatty()
        self.log_interval = max(1, log_interval)
        self.progress, self.task = None, None

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
        if self.progress is not None:
            self.progress.update(self.task, completed=s['batch'], loss=s['loss'], lr=s['lr'], ips=s['img_per_s'])
        elif self.enabled and (s['batch'] % self.log_interval == 0 or s['batch'] == s['total']):
            eta = s['elapsed'] / s['batch'] * (s['total'] - s['batch'])
            self.log(f'epoch {s["epoch"]} [{s["batch"]}/{s["total"]}] step {s["step"]} loss {s["loss"]:.4f} '
                     f'lr {s["lr"]:.3e} {s["img_per_s"]:.1f} img/s eta {eta:.0f}s')

    def end_epoch(self):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

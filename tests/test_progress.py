"""core/progress.py: the one progress-bar set-up and the one data-time accumulator (the reporter's lines and the
tracker's scalars both read it)."""
import io

import pytest
from rich.console import Console
from rich.progress import DownloadColumn, MofNCompleteColumn, TextColumn, TransferSpeedColumn

from litcli.core.progress import DataTime, Reporter, progress_bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_data_time_sums_shares_and_starts_a_new_interval():
    t = DataTime()
    assert t.share == 0.0 and t.wall_s == 0.0  # nothing measured yet: no division by zero
    t.add(0.5, 1.5, images=8)
    t.add(1.0, 1.0, images=8)
    assert (t.data_s, t.compute_s, t.images, t.updates) == (1.5, 2.5, 16, 2)
    assert t.wall_s == 4.0 and t.share == pytest.approx(1.5 / 4)
    taken = t.take()
    assert (taken.data_s, taken.updates, taken.share) == (1.5, 2, pytest.approx(0.375))
    assert (t.data_s, t.compute_s, t.images, t.updates) == (0.0, 0.0, 0, 0)


def test_progress_bar_is_live_only_on_a_terminal():
    assert progress_bar(Console(file=io.StringIO())).disable  # a log file, CI, a pipe: the caller prints lines
    assert progress_bar(Console(file=Terminal()), enabled=False).disable  # e.g. not rank 0
    bar = progress_bar(Console(file=Terminal()), label='epoch 3', fields='loss {task.fields[loss]:.4f}')
    assert not bar.disable
    texts = [c.text_format for c in bar.columns if isinstance(c, TextColumn)]
    assert texts == ['epoch 3', 'loss {task.fields[loss]:.4f}']
    assert any(isinstance(c, MofNCompleteColumn) for c in bar.columns)
    download = progress_bar(Console(file=Terminal()), label='', transfer=True)
    kinds = {type(c) for c in download.columns}
    assert {DownloadColumn, TransferSpeedColumn} <= kinds and MofNCompleteColumn not in kinds
    assert not any(isinstance(c, TextColumn) for c in download.columns)


def test_reporter_draws_a_bar_on_a_terminal_and_lines_elsewhere():
    on_terminal = Reporter(True, 2)
    on_terminal.console = Console(file=Terminal())
    on_terminal.start_epoch(0, 4)
    assert on_terminal.progress is not None
    on_terminal.end_epoch()
    assert on_terminal.progress is None
    piped = Reporter(True, 2)
    piped.console = Console(file=io.StringIO())
    piped.start_epoch(0, 4)
    assert piped.progress is None


def test_tracker_logs_the_interval_mean_data_time():
    from litcli.core.training.tracking import TrainTracker

    class Writer:
        def __init__(self):
            self.logged = []

        def log(self, scalars, step):
            self.logged.append((step, scalars))

    writer = Writer()
    tracker = TrainTracker([writer], optimizer=None, log_interval=2)
    for batch, (data_s, compute_s) in enumerate([(0.1, 0.3), (0.3, 0.3), (0.0, 0.5), (0.0, 0.5)], start=1):
        tracker.step(dict(epoch=0, step=batch, batch=batch, total=4, loss=1.0, img_per_s=8.0, lrs={'decay': 1e-3},
                          data_s=data_s, compute_s=compute_s))
    assert [step for step, _ in writer.logged] == [2, 4]
    first, second = writer.logged[0][1], writer.logged[1][1]
    assert first['time/data_s'] == pytest.approx(0.2) and first['time/compute_s'] == pytest.approx(0.3)
    assert first['time/data_share'] == pytest.approx(0.4)
    assert second['time/data_s'] == 0.0 and second['time/data_share'] == 0.0  # a new interval each log

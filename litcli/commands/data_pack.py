"""``lit data pack``: an image folder -> WebDataset shards + index.json, with a progress bar (the work is
``core.pack``'s)."""
import contextlib
import signal
import threading
from pathlib import Path
from typing import Dict, Sequence

from litcli.core.errors import UsageError


def run(src: Path, out: Path, shard_size: int, splits: Sequence[str], seed: int = 0, strict: bool = False) -> Dict:
    """Pack ``src`` into ``out`` and return the summary (per split: images, shards, bytes, skipped, pattern)."""
    from rich.console import Console

    from litcli.core.data.pack import pack
    from litcli.core.errors import Interrupted
    from litcli.core.progress import progress_bar

    if not splits:
        raise UsageError('--split needs at least one split name, e.g. train,val')
    console = Console()
    progress = progress_bar(console)
    tasks, last_line = {}, {}

    def on_file(split: str, done: int, total: int):
        if split not in tasks:
            tasks[split] = progress.add_task(f'packing {split}', total=total)
        progress.update(tasks[split], completed=done)
        if progress.disable:  # plain lines off a terminal: every 10% and at the end
            step = max(1, total // 10)
            if done == total or done // step != last_line.get(split, -1):
                last_line[split] = done // step
                console.print(f'packing {split}: {done}/{total} images', highlight=False)

    try:
        with progress, sigterm_interrupts():
            return pack(src, out, shard_size, splits, seed=seed, strict=strict, on_file=on_file,
                        log=lambda m: console.print(m, highlight=False, soft_wrap=True))
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: one line saying what the pack left (nothing, normally)
        signum = getattr(e, 'signum', signal.SIGINT)
        left = getattr(e, 'cleanup', None)
        if left is None:  # stopped before it wrote anything
            left = 'nothing was written'
        raise Interrupted(f'lit data pack interrupted ({signal.Signals(signum).name}); {left}', 128 + signum) \
            from None


class SignalInterrupt(KeyboardInterrupt):
    """SIGTERM as Ctrl-C is: the pack stops where it is and removes what it wrote (``signum`` sets the exit code)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def sigterm_interrupts():
    """While packing, SIGTERM (``kill``, ``timeout``, a batch system) raises ``SignalInterrupt`` as SIGINT raises
    KeyboardInterrupt, so the pack cleans up instead of dying with its partial shards on disk (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise SignalInterrupt(signum)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def print_result(result: Dict, as_json: bool = False):
    import json

    from rich.console import Console

    if as_json:
        print(json.dumps(result, indent=2))
        return
    console = Console()
    for split, s in result['splits'].items():
        console.print(f'{split}: {s["images"]} images in {s["shards"]} shard(s), {s["bytes"] / 1e6:.1f} MB'
                      + (f', {len(s["skipped"])} unreadable file(s) left out' if s['skipped'] else ''),
                      highlight=False)
    console.print(f'index: {result["index"]}', highlight=False)
    train = result['splits'].get('train')
    if train:
        val = 'validation from the val shards beside them' if len(result['splits']) > 1 else \
            'pack a val split too (--split train,val) to evaluate'
        console.print(f"train with: lit train --data '{train['pattern']}' ... ({val})", highlight=False,
                      soft_wrap=True)

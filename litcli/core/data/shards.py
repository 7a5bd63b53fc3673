"""WebDataset shards: ``--data wds:/data/in1k/train-{000000..000127}.tar`` (or the folder ``lit data pack`` wrote).

A shard set is the tar files ``lit data pack`` writes (``litcli.core.data.pack``) plus its ``index.json``: the class
names and, per split, each shard's name, sample count and size. Each sample is ``KEY.jpg`` (the original file's
bytes; ``.png`` ... as the source had it) and ``KEY.cls`` (the class index as text), the WebDataset convention timm
reads too. The index gives the epoch length without opening a shard, and is how a missing, truncated or replaced
shard is told at start (its size differs).

How an epoch is read (``ShardDataset``), so that every sample is read exactly once across ranks and DataLoader
workers:

- the shard order is shuffled by (seed, epoch), the same on every rank, and the shards are seen as one stream of
  N samples in that order;
- training: rank r of W takes the r-th of W equal contiguous parts (N // W samples each; the N mod W samples at the
  end of the shuffled stream are left for this epoch, like DistributedSampler's drop_last), and its part is cut into
  whole batches dealt to its workers in turn (worker w gets batches w, w + J, ...), so the DataLoader's round robin
  over workers yields them in a fixed order and every rank makes the same number of steps; a rank's last partial
  batch (< batch size samples) is not read, as the folder path drops it;
- evaluation: rank r takes samples [N r / W, N (r + 1) / W) split evenly over its workers, all of them (batches of
  a worker may be partial), so an evaluation counts every image once;
- a worker reads its contiguous range with WebDataset's tar iterator, starting inside a shard by seeking to the
  header of its first sample (found by reading only headers), passes training samples through a shuffle buffer
  (``shuffle_buffer`` samples, seeded by (seed, epoch, rank, worker)) and decodes + augments after it, each sample
  seeded by (seed, epoch, key).

So an epoch's order is a function of (seed, epoch, processes, batch size, workers, buffer): a run resumed part-way
into an epoch with the same ones skips exactly the batches it had trained on (each worker drops its first batches'
samples after the shuffle buffer, before decoding) and is bit-identical to an uninterrupted run. With another
worker count the order differs, so that resume is refused; an epoch-end checkpoint resumes under any.

Unreadable images and samples without an image are replaced in training by the worker's next readable image (the
batch keeps its size, every rank its step count) and left out of an evaluation, and are counted per epoch like the
folder path's (``--strict-data`` stops); a label outside the index's classes stops with a one-line error.

``LIT_DATA_LOG=FILE`` (a debugging aid, documented in the README): every worker appends one line per sample it
yields, ``split epoch rank worker key``, so the samples an epoch saw can be audited (the multi-node tests do).
"""
import io
import itertools
import json
import os
import random
import tarfile
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from torch.utils.data import IterableDataset

from litcli.core.errors import LitError
from litcli.core.data.images import load_image
from litcli.core.seeding import sample_seed, seeded_rng
from litcli.core.data.transforms import apply_transform

PREFIX = 'wds:'
INDEX_NAME = 'index.json'
INDEX_FORMAT = 'lit-shards'
IMAGE_EXTENSIONS = ('jpg', 'jpeg', 'png', 'webp', 'bmp', 'gif', 'tif', 'tiff', 'ppm', 'pgm')
INSTALL_HINT = "pip install 'litcli[shards]'"
LOG_ENV = 'LIT_DATA_LOG'
_ORDER, _SHUFFLE, _SAMPLE = 0x0D3E, 0x5B0F, 0x5A3E  # separate random streams


def webdataset():
    """The ``webdataset`` package, or a one-line error saying how to install it."""
    try:
        import webdataset as wds
    except ImportError:
        raise LitError(f'reading or writing WebDataset shards needs the webdataset package: {INSTALL_HINT}') from None
    return wds


def is_shard_spec(data: Optional[str]) -> bool:
    return isinstance(data, str) and data.startswith(PREFIX)


def is_shard_folder(path: Path) -> bool:
    """A folder ``lit data pack`` wrote (it holds a lit shard index)."""
    index = Path(path) / INDEX_NAME
    if not index.is_file():
        return False
    try:
        return json.loads(index.read_text()).get('format') == INDEX_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_index(folder: Path) -> Dict:
    path = Path(folder) / INDEX_NAME
    if not path.is_file():
        raise LitError(f'no {INDEX_NAME} beside the shards in {folder}: lit reads the epoch length and class names '
                       f'from it; write the shards with lit data pack DIR OUT (README "Data")')
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise LitError(f'{path} cannot be read ({e}); run lit data pack again') from None
    if not isinstance(index, dict) or index.get('format') != INDEX_FORMAT or not isinstance(index.get('splits'), dict) \
            or not isinstance(index.get('classes'), list):
        raise LitError(f'{path} is not a lit shard index (format {INDEX_FORMAT!r}); write the shards with lit data '
                       f'pack')
    return index


@dataclass
class ShardSource:
    """Shards of one split of a shard set, as resolved from ``--data``."""
    folder: Path
    split: str
    names: List[str]  # shard file names, in the index's order
    counts: List[int]
    sizes: List[int]
    classes: List[str]
    pattern: str  # what to record in a run's config (absolute)
    index: Dict = field(repr=False, default_factory=dict)

    @property
    def paths(self) -> List[Path]:
        return [self.folder / n for n in self.names]

    @property
    def total(self) -> int:
        return sum(self.counts)

    def check_files(self):
        """Every shard present with the size the index gives (a cut copy or a replaced file is told here)."""
        for path, size in zip(self.paths, self.sizes):
            if not path.is_file():
                raise LitError(f'missing shard {path} (listed in {self.folder / INDEX_NAME}); restore it or pack the '
                               f'data again')
            actual = path.stat().st_size
            if actual != size:
                what = 'truncated' if actual < size else 'changed'
                raise LitError(f'shard {path} is {actual} bytes but the index says {size}: {what} since lit data '
                               f'pack; restore it or pack the data again')
        return self

    def other_split(self, name: str) -> 'ShardSource':
        """All shards of split ``name`` of the same set (validation for a training pattern)."""
        split = self.index['splits'].get(name) or {}
        shards = split.get('shards') or []
        if not shards or not split.get('count'):
            raise LitError(f'the shard set in {self.folder} has no {name} split (empty or not packed); pack it with '
                           f'lit data pack DIR OUT --split train,val')
        return _source(self.folder, self.index, name, [s['name'] for s in shards],
                       os.path.join(str(self.folder), f'{name}-*.tar ({_all_shards(len(shards))})'))


def _all_shards(n: int) -> str:
    """'all 3 shards', 'its one shard'."""
    return 'its one shard' if n == 1 else f'all {n} shards'


def _source(folder: Path, index: Dict, split: str, names: List[str], pattern: str) -> ShardSource:
    by_name = {s['name']: s for s in (index['splits'].get(split) or {}).get('shards') or []}
    return ShardSource(folder, split, names, [int(by_name[n]['count']) for n in names],
                       [int(by_name[n]['bytes']) for n in names], list(index['classes']), pattern, index)


def resolve_shards(data: str) -> ShardSource:
    """``wds:PATTERN`` (brace-expanded: ``train-{000000..000127}.tar``) or a folder ``lit data pack`` wrote (its
    train split) -> the shards, checked against the index: a pattern that matches nothing, a missing shard, one not
    in the index or of another size is a one-line error."""
    if not is_shard_spec(data):
        folder = Path(data).expanduser().resolve()
        index = read_index(folder)
        # its train split; a set packed with --split val alone stands for its validation split (lit eval)
        split = next((name for name in ('train', 'val', 'validation')
                      if (index['splits'].get(name) or {}).get('count')), 'train')
        return _source(folder, index, split, [], '').other_split(split).check_files()
    if not data[len(PREFIX):].strip():  # abspath('') would be the current folder
        raise LitError(f'{data!r}: the shard pattern after wds: is empty; give the shards, e.g. '
                       f'wds:/data/in1k/train-{{000000..000127}}.tar, or the folder lit data pack wrote')
    pattern = os.path.abspath(os.path.expanduser(data[len(PREFIX):]))
    webdataset()
    import braceexpand

    try:
        paths = [Path(p) for p in braceexpand.braceexpand(pattern)]
    except Exception as e:  # an unbalanced brace
        raise LitError(f'bad shard pattern {data!r} ({e}); use e.g. wds:/data/in1k/train-{{000000..000127}}.tar')
    found = [p for p in paths if p.is_file()]
    if not found:
        raise LitError(f'no shard matches {pattern} ({len(paths)} name(s) expanded, none exists); check the path and '
                       f'the {{first..last}} range, e.g. wds:/data/in1k/train-{{000000..000127}}.tar')
    folders = {p.parent for p in paths}
    if len(folders) != 1:
        raise LitError(f'the shards of {pattern} are in {len(folders)} folders; keep a shard set in one folder with '
                       f'its {INDEX_NAME}')
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise LitError(f'missing shard {missing[0]}' + (f' and {len(missing) - 1} more' if len(missing) > 1 else '') +
                       f' of {pattern}; restore it or fix the range')
    folder = found[0].parent
    index = read_index(folder)
    names = [p.name for p in paths]
    split = next((s for s, v in index['splits'].items()
                  if set(names) <= {x['name'] for x in (v or {}).get('shards', [])}), None)
    if split is None:
        known = {x['name'] for v in index['splits'].values() for x in (v or {}).get('shards', [])}
        strange = [n for n in names if n not in known]
        if strange:
            raise LitError(f'shard {folder / strange[0]} is not in {folder / INDEX_NAME}; give the pattern of '
                           f'one split of the shard set (e.g. train-{{000000..000127}}.tar)')
        raise LitError(f'{pattern} mixes shards of several splits; give one split\'s pattern')
    return _source(folder, index, split, names, PREFIX + pattern).check_files()


def _key_of(name: str) -> Tuple[Optional[str], str]:
    wds = webdataset()
    return wds.tariterators.base_plus_ext(name)


def sample_offset(path: Path, k: int) -> int:
    """Byte offset of the header of sample ``k`` (0-based, samples = consecutive members sharing a key) in a shard,
    reading only member headers."""
    with tarfile.open(path, 'r:') as tf:
        seen, last = -1, object()
        while True:
            ti = tf.next()
            if ti is None:
                break
            tf.members = []
            if not ti.isreg():
                continue
            key, _ = _key_of(ti.name)
            if key is None or key == last:
                continue
            last, seen = key, seen + 1
            if seen == k:
                return ti.offset
    raise LitError(f'shard {path} has fewer samples than its index says ({k + 1} wanted); pack the data again')


def _pieces(order: List[int], counts: List[int], start: int, stop: int) -> List[Tuple[int, int, int]]:
    """Samples [start, stop) of the stream of shards ``order`` -> [(shard, first, end)] within shards."""
    out, offset = [], 0
    for shard in order:
        n = counts[shard]
        lo, hi = max(start, offset), min(stop, offset + n)
        if lo < hi:
            out.append((shard, lo - offset, hi - offset))
        offset += n
        if offset >= stop:
            break
    return out


class ShardDataset(IterableDataset):
    """One split of a shard set, streamed (see the module docstring for the split across ranks and workers).

    ``configure(rank, world_size, batch_size, num_workers, training)`` before the DataLoader is built;
    ``set_epoch(epoch, skip_batches)`` before each pass (shared memory, so persistent workers see it). Yields
    (image, label) with ``transform`` applied (uint8 tensors for the training/eval loaders). Unreadable samples:
    ``skipped``, ``skipped_message()``, ``reset_skipped()`` as ``litcli.core.data.datasets.SkipUnreadable``.
    """

    def __init__(self, source: ShardSource, transform=None, seed: int = 0, strict: bool = False,
                 shuffle_buffer: int = 1000):
        webdataset()
        self.source = source
        self.paths = [str(p) for p in source.paths]
        self.counts = list(source.counts)
        self.classes = list(source.classes)
        self.root = str(source.folder)
        self.transform = transform
        self.seed, self.strict, self.shuffle_buffer = seed, strict, max(1, int(shuffle_buffer))
        self.rank, self.world_size, self.batch_size, self.num_workers, self.training = 0, 1, 1, 0, False
        self.first = list(itertools.accumulate([0] + self.counts[:-1]))  # global index of each shard's sample 0
        self._state = torch.zeros(2, dtype=torch.int64).share_memory_()  # epoch, batches to skip
        self._unreadable = torch.zeros(max(1, source.total), dtype=torch.bool).share_memory_()
        self._warned = set()
        self.log_path = os.environ.get(LOG_ENV)  # read here: a forkserver's workers have the server's environment

    # ---- configuration ----
    def configure(self, rank: int, world_size: int, batch_size: int, num_workers: int, training: bool):
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.num_workers, self.training = num_workers, training

    def set_epoch(self, epoch: int, skip_batches: int = 0):
        self._state[0], self._state[1] = int(epoch), int(skip_batches)

    @property
    def total(self) -> int:
        return sum(self.counts)

    def _rank_batches(self) -> int:
        return (self.total // self.world_size) // self.batch_size

    def __len__(self):
        """Samples this rank yields per epoch: whole batches in training, its whole share in evaluation."""
        if self.training:
            return self._rank_batches() * self.batch_size
        n, w, r = self.total, self.world_size, self.rank
        return n * (r + 1) // w - n * r // w

    def shard_order(self, epoch: int) -> List[int]:
        order = list(range(len(self.counts)))
        if self.training:
            random.Random(sample_seed(self.seed, epoch, _ORDER)).shuffle(order)
        return order

    def worker_range(self, worker: int, workers: int) -> Tuple[int, int]:
        """[start, stop) of this rank's worker ``worker`` of ``workers`` in the epoch's stream."""
        if self.training:
            per_rank = self.total // self.world_size
            base, batches = self.rank * per_rank, self._rank_batches()
            # worker w: the epoch's batches w, w + J, w + 2J ...
            counts = [batches // workers + (w < batches % workers) for w in range(workers)]
            start = base + sum(counts[:worker]) * self.batch_size
            return start, start + counts[worker] * self.batch_size
        n, w, r = self.total, self.world_size, self.rank
        lo, hi = n * r // w, n * (r + 1) // w
        # whole batches per worker too, the share's last (partial) batch to the worker that reaches ``hi``: the
        # loader then yields exactly ceil(share / batch) batches, its len()
        batches = -(-(hi - lo) // self.batch_size)
        counts = [batches // workers + (k < batches % workers) for k in range(workers)]
        start = lo + sum(counts[:worker]) * self.batch_size
        return min(start, hi), min(start + counts[worker] * self.batch_size, hi)

    def head(self, n: int) -> list:
        """The first ``n`` readable samples of the first shard, transformed (a fixed probe batch), as a list."""
        out = []
        for index, shard, sample in self._raw(_pieces([0], self.counts, 0, min(n, self.counts[0]) if self.counts
                                                       else 0)):
            img, name = self._image(index, shard, sample)
            if img is not None:
                out.append((apply_transform(self.transform, img, name) if self.transform is not None else img,
                            self._label(sample, name)))
        return out

    # ---- unreadable samples ----
    @property
    def skipped(self) -> int:
        return int(self._unreadable.sum())

    def reset_skipped(self):
        self._unreadable.zero_()

    def _where(self, index: int) -> str:
        shard = max(s for s in range(len(self.first)) if self.first[s] <= index)
        return f'{Path(self.paths[shard]).name} sample #{index - self.first[shard]}'

    def skipped_message(self) -> Optional[str]:
        n = self.skipped
        if not n:
            return None
        shown = ', '.join(self._where(i) for i in self._unreadable.nonzero().flatten()[:3].tolist())
        what = 'replaced by the next readable image' if self.training else 'left out of the evaluation'
        return (f'skipped {n} unreadable sample(s) in the shards of {self.root} ({what}): {shown}' +
                (' ...' if n > 3 else '') + '; pack the data again from fixed images, or pass --strict-data to stop '
                                            'at the first one')

    # ---- reading ----
    def _raw(self, pieces):
        """(global index, shard, sample dict) of the pieces, read with WebDataset's tar iterator."""
        wds = webdataset()
        for shard, lo, hi in pieces:
            path = self.paths[shard]
            try:
                with open(path, 'rb') as f:
                    if lo:
                        f.seek(sample_offset(Path(path), lo))
                    files = wds.tariterators.tar_file_expander([dict(url=path, stream=f)])
                    n = 0
                    for sample in itertools.islice(wds.tariterators.group_by_keys(files), hi - lo):
                        yield self.first[shard] + lo + n, shard, sample
                        n += 1
            except LitError:
                raise
            except (OSError, EOFError, ValueError, tarfile.TarError) as e:
                raise LitError(f'cannot read shard {path} ({type(e).__name__}: {e}); it is truncated or corrupt: '
                               f'restore it or pack the data again') from None
            if n < hi - lo:
                raise LitError(f'shard {path} ends after {lo + n} samples but its index says {self.counts[shard]}: '
                               f'truncated; restore it or pack the data again')

    def _label(self, sample, where: str) -> int:
        raw = sample.get('cls')
        try:
            label = int(raw.decode().strip()) if isinstance(raw, bytes) else None
        except (UnicodeDecodeError, ValueError):
            label = None
        if label is None or not 0 <= label < len(self.classes):
            shown = raw[:20] if isinstance(raw, bytes) else 'none'
            raise LitError(f'{where}: label {shown!r} is not one of the {len(self.classes)} classes of '
                           f'{self.root}/{INDEX_NAME}; pack the data again with lit data pack')
        return label

    def _image(self, index: int, shard: int, sample) -> Tuple[Optional[object], str]:
        """(decoded image or None when unreadable, its name)."""
        key = sample.get('__key__', '?')
        ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
        where = f'{self.paths[shard]}:{key}'
        if ext is None:
            problem = f'no image member (has {", ".join(k for k in sample if not k.startswith("__")) or "nothing"})'
        else:
            try:
                return load_image(io.BytesIO(sample[ext]), name=f'{where}.{ext}'), f'{where}.{ext}'
            except LitError as e:
                problem = str(e)
        if self.strict:
            raise LitError(f'unreadable sample {where} ({problem}); fix the data and pack it again, or run without '
                           f'--strict-data to skip such samples')
        self._unreadable[index] = True
        if where not in self._warned:
            self._warned.add(where)
            warnings.warn(f'skipping unreadable sample {where}: {problem}', RuntimeWarning, stacklevel=2)
        return None, where

    def _transformed(self, img, name: str, seed: int):
        if self.transform is None:
            return img
        if not self.training:
            return apply_transform(self.transform, img, name)
        with seeded_rng(seed):
            return apply_transform(self.transform, img, name)

    def __iter__(self):
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, skip = (int(v) for v in self._state.tolist())
        if self.training:
            # The epoch's batch i is worker (i mod J)'s. A loader restarted after `skip` batches asks its worker 0
            # first, so worker p plays the part of worker (p + skip) mod J: the same batches in the same order.
            worker = (worker + skip) % workers
        start, stop = self.worker_range(worker, workers)
        raw = iter(self._raw(_pieces(self.shard_order(epoch), self.counts, start, stop)))
        if self.training and self.shuffle_buffer > 1:
            rng = random.Random(sample_seed(self.seed, epoch, self.rank, worker, _SHUFFLE))
            raw = iter(webdataset().filters._shuffle(raw, self.shuffle_buffer, min(100, self.shuffle_buffer), rng))
        if self.training and skip:  # resume: drop this worker's batches among the epoch's first `skip`
            raw = itertools.islice(raw, (skip - worker + workers - 1) // workers * self.batch_size, None)
        log = _SampleLog(self.log_path, self.source.split, epoch, self.rank, worker)
        try:
            yield from self._samples(raw, epoch, log)
        finally:
            log.close()

    def _samples(self, raw, epoch: int, log):
        pending: List[int] = []  # seeds of unreadable training samples waiting for a readable image
        last = None
        for index, shard, sample in raw:
            key = sample.get('__key__')
            seed = sample_seed(self.seed, epoch, zlib.crc32(str(key).encode()), _SAMPLE)
            img, name = self._image(index, shard, sample)
            if img is None:
                if self.training:
                    pending.append(seed)
                continue
            last = (img, name, self._label(sample, name), key)
            for s in [seed] + pending:
                log.write(key)
                yield self._transformed(img, name, s), last[2]
            pending = []
        if pending:
            if last is None:
                raise LitError(f'no readable image in this worker\'s share of the shards of {self.root}; pack the '
                               f'data again from readable images')
            for s in pending:
                log.write(last[3])
                yield self._transformed(last[0], last[1], s), last[2]


class _SampleLog:
    """The ``LIT_DATA_LOG`` audit lines of one worker and pass (nothing when the variable is unset)."""

    def __init__(self, path: Optional[str], split: str, epoch: int, rank: int, worker: int):
        self.prefix = f'{split} {epoch} {rank} {worker} '
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if path else None

    def write(self, key):
        if self.fd is not None:  # one write per line with O_APPEND: lines of several processes never interleave
            os.write(self.fd, (self.prefix + str(key) + '\n').encode())

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

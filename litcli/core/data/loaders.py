"""DataLoaders of ``lit train`` / ``lit eval``: uint8 images from the workers, finished on the device.

The workers decode and augment (timm's transforms in their ``use_prefetcher`` form, ending in a uint8 (3, S, S)
tensor); the batch crosses to the device as uint8 (a quarter of float32's bytes) from pinned memory with a
non-blocking copy, and ``DeviceLoader`` converts, normalises, randomly erases (training) and casts it to the
step's dtype there, optionally in channels_last. timm's ``create_loader(use_prefetcher=True)`` / ``PrefetchLoader``
is the technique; ``DeviceLoader`` is written here because (1) PrefetchLoader erases with the global random
streams one batch ahead of the step, so a run resumed part-way into an epoch would not repeat the draws (here each
batch's erasing is seeded by (seed, epoch, rank, batch)); (2) it normalises in the image dtype against
``mean * 255`` and ours is torchvision's ToTensor + Normalize to the bit (``x / 255 - mean) / std`` in float32, then
cast), so a model sees the same pixels as through ``lit predict``/``export``'s eval transform; (3) no
channels_last; (4) evaluation batches whose images were all unreadable (None) must pass through. On a CPU the same
steps run in the main process, in the step's dtype too.

Training samples of map-style datasets (image folders, tars, the built-ins' PIL path) carry a seed per sample
(``SeedingSampler`` -> ``SeededSamples``): see ``litcli.core.seeding``.
"""
import multiprocessing
import os
import signal
from functools import partial
from typing import Any, Dict, Optional

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from litcli.core.data.datasets import collate_readable
from litcli.core.runtime import ResumableSampler, ShardSampler, World, init_worker, train_sampler
from litcli.core.seeding import sample_seed, seeded_rng

ERASE_STREAM = 0x5EED_E4A5  # separates the erasing seeds from the per-sample ones


class SeedingSampler(Sampler):
    """A ``ResumableSampler`` whose items are ``(index, seed)``: the seed of the k-th sample this rank draws in an
    epoch is ``sample_seed(seed, epoch, rank, k)`` (k counts from the epoch's start, also after a mid-epoch resume;
    repeated augmentation's repeats of an image are different k, so they get different augmentations)."""

    def __init__(self, sampler: ResumableSampler, seed: int, rank: int):
        self.sampler, self.seed, self.rank = sampler, seed, rank
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0):
        self.sampler.set_epoch(epoch, skip_batches)
        self.epoch, self.start = epoch, skip_batches * self.sampler.batch_size

    def __iter__(self):
        for k, index in enumerate(self.sampler, start=self.start):
            yield index, sample_seed(self.seed, self.epoch, self.rank, k)

    def __len__(self):
        return len(self.sampler)


class SeededSamples(Dataset):
    """``dataset[index]`` computed under ``seeded_rng(seed)`` for the ``(index, seed)`` items of a
    ``SeedingSampler``: the sample's random transform draws depend on its seed alone."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getattr__(self, name):  # classes, skipped counts ... of the wrapped dataset
        if name == 'dataset':
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, item):
        index, seed = item
        with seeded_rng(seed):
            return self.dataset[index]


class DeviceLoader:
    """Batches of uint8 images moved to ``device`` and finished there (see the module docstring): float32
    ``(x / 255 - mean) / std``, timm's ``RandomErasing`` seeded per batch, cast to ``dtype``, channels_last.

    ``normalize=False`` only moves the batch (the built-in sets' tensor path normalises in the training step).
    On CUDA the next batch is copied and prepared on a side stream while the current one is consumed (timm's
    PrefetchLoader scheme). ``set_epoch(epoch, skip_batches)`` is passed on to the sampler or iterable dataset.
    """

    def __init__(self, loader: DataLoader, device: torch.device, mean=None, std=None, dtype=None,
                 channels_last: bool = False, normalize: bool = True, reprob: float = 0.0, remode: str = 'pixel',
                 recount: int = 1, seed: int = 0, rank: int = 0, epoch_target: Any = None):
        self.loader, self.device, self.normalize = loader, device, normalize
        self.dtype = dtype or torch.float32
        self.channels_last = channels_last
        self.seed, self.rank = seed, rank
        self.epoch, self.start_batch = 0, 0
        self.epoch_target = epoch_target
        if normalize:
            self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
            self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.erase = None
        if normalize and reprob > 0:
            from timm.data.random_erasing import RandomErasing
            self.erase = RandomErasing(probability=reprob, mode=remode, max_count=recount, device=device)
        self.is_cuda = device.type == 'cuda'
        self.stream = None

    @property
    def dataset(self):
        return self.loader.dataset

    def set_epoch(self, epoch: int, skip_batches: int = 0):
        self.epoch, self.start_batch = epoch, skip_batches
        if self.epoch_target is not None:
            self.epoch_target.set_epoch(epoch, skip_batches)

    def __len__(self):
        return len(self.loader)

    def prepare(self, x, batch_idx: int):
        """A uint8 batch already on the device -> the model's input."""
        if not self.normalize:
            return x
        # (x / 255 - mean) / std in float32: torchvision's ToTensor + Normalize, bit for bit
        x = x.to(torch.float32).div_(255).sub_(self.mean).div_(self.std)
        if self.erase is not None:
            with seeded_rng(sample_seed(self.seed, self.epoch, self.rank, batch_idx, ERASE_STREAM), self.device):
                x = self.erase(x)
        if self.dtype != torch.float32:
            x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _to_device(self, batch, batch_idx):
        """(images, labels, *extras): every tensor moved, the images prepared."""
        if batch is None:  # every image of an evaluation batch was unreadable (collate_readable)
            return None
        x, *rest = batch
        rest = [t.to(self.device, non_blocking=True) if torch.is_tensor(t) else t for t in rest]
        return (self.prepare(x.to(self.device, non_blocking=True), batch_idx), *rest)

    def __iter__(self):
        if not self.is_cuda:
            for i, batch in enumerate(self.loader, start=self.start_batch):
                yield self._to_device(batch, i)
            return
        if self.stream is None:  # one stream for the loader's life (the allocator caches blocks per stream)
            self.stream = torch.cuda.Stream(device=self.device)
        pending, first = None, True
        for i, batch in enumerate(self.loader, start=self.start_batch):
            consumer = torch.cuda.current_stream(self.device)
            self.stream.wait_stream(consumer)  # blocks the consumer freed may be reused below
            with torch.cuda.stream(self.stream):
                ready = self._to_device(batch, i)
            if not first:
                yield pending
            first = False
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
            if ready is not None:  # tell the allocator the consumer's stream uses these tensors now
                for t in ready:
                    if torch.is_tensor(t):
                        t.record_stream(torch.cuda.current_stream(self.device))
            pending = ready
        if not first:
            yield pending


# What a worker needs imported, loaded once by the forkserver instead of by every worker: the datasets, timm's
# transforms (imported lazily elsewhere) and webdataset (a missing one is skipped). Not the main module: each worker
# imports it as spawn's do, so an unguarded script fails there with multiprocessing's own message, not in the server.
MAIN_PID_ENV = 'LIT_WORKERS_MAIN_PID'  # the main process of the workers, as the forkserver is started for it
WORKER_PRELOAD = ['litcli.core.data.datasets', 'litcli.core.data.loaders', 'litcli.core.data.forkserver_init',
                  'timm.data', 'webdataset']


def quiet_orphaned_worker_starts(main_pid: int):
    """In the workers' forkserver (``forkserver_init``): a worker whose start fails because the main process is
    gone exits without a word. A Ctrl-C of the whole job ends the main process while a worker may still be
    unpickling its loader's queues and semaphores, which the exiting main process has just removed; the worker's
    FileNotFoundError (or EOFError, a reset pipe) then reached multiprocessing's start-up handler, which prints a
    15-line traceback through ``sys.excepthook``, after the user's Ctrl-C. A start failure while the main process
    lives (after up to 2 s: it may be exiting) prints as before."""
    import sys

    from litcli.core.runtime import process_exited

    default = sys.excepthook

    def hook(kind, value, tb):
        if issubclass(kind, (OSError, EOFError)) and process_exited(main_pid, timeout=2.0):
            return  # nobody is left to read it
        default(kind, value, tb)

    sys.excepthook = hook


def worker_context():
    """The multiprocessing context of DataLoader workers: a forkserver where the platform has one (Linux, macOS).

    Why not torch's default, fork: when a loader starts its workers this process already runs other threads (gloo
    or NCCL, the training loader's queue feeders, torch's C++ threads), and fork() copies whatever lock one of them
    holds at that instant. CPython 3.8-3.11 before their 2024 fix (gh-112275; 3.11.10) then deadlock the child in
    their own thread-state lock: CI's two-node test hung that way (Python 3.11.7, torch 2.14), and
    ``benchmarks/fork_hang.py`` hangs 1% of fork starts. Python 3.14 made forkserver the Linux default, for fork's
    dangers in threaded processes in general. The server is a fresh, single-threaded process that imports the data
    stack once, so a worker is a fork of it plus the unpickled dataset (which must therefore pickle).

    The server is started with SIGTERM and SIGINT blocked (and keeps them so; its workers unblock what they handle,
    ``ignore_stop_signals``): a SIGTERM sent to the whole job would otherwise kill it, and torch's workers exit when
    their parent dies, before the main process could save. ``multiprocessing.resource_tracker`` starts its helper the
    same way. A forkserver some other code started first is used as it is (its signals are its own). Windows has no
    forkserver: its default, spawn, is used.
    """
    if 'forkserver' not in multiprocessing.get_all_start_methods():
        return None
    from multiprocessing import forkserver, resource_tracker

    context = multiprocessing.get_context('forkserver')
    context.set_forkserver_preload(WORKER_PRELOAD)
    resource_tracker.ensure_running()  # first: up to 3.13 it unblocks SIGINT and SIGTERM after starting its helper
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    saved = os.environ.get(MAIN_PID_ENV)
    os.environ[MAIN_PID_ENV] = str(os.getpid())  # for forkserver_init in the server (its parent may be gone by then)
    try:
        forkserver.ensure_running()  # a no-op once it runs
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # a signal that came meanwhile is delivered now
        if saved is None:
            os.environ.pop(MAIN_PID_ENV, None)
        else:
            os.environ[MAIN_PID_ENV] = saved
    return context


def loader_kwargs(workers: int, device: torch.device, prefetch_factor: Optional[int]) -> Dict:
    # A private generator: each iter(DataLoader) draws its workers' base seed from it, which would otherwise advance
    # the global torch stream (restored by a resume) at every epoch start and evaluation.
    kwargs = dict(num_workers=workers, pin_memory=device.type == 'cuda', persistent_workers=workers > 0,
                  generator=torch.Generator().manual_seed(0))
    if workers > 0:
        kwargs.update(multiprocessing_context=worker_context(),
                      worker_init_fn=partial(init_worker, main_pid=os.getpid()))
        if prefetch_factor:
            kwargs['prefetch_factor'] = prefetch_factor
    return kwargs


def input_dtype(amp_dtype) -> torch.dtype:
    """The dtype a step feeds the model: its autocast dtype, else float32."""
    return amp_dtype or torch.float32


def build_train_loader(dataset, cfg: Dict, world: World, device: torch.device, data_config: Dict,
                       amp_dtype=None, fast: bool = False) -> DeviceLoader:
    """The training loader of a run: per-sample seeded transforms in ``cfg['workers']`` persistent workers, the
    run's sampler (DistributedSampler / RepeatAugSampler, resumable) or a shard set's own rank/worker split, full
    batches only, finished on ``device`` (random erasing ``cfg['reprob']`` there). ``fast``: the built-ins' tensor
    path (moved only; the step augments and normalises the batch)."""
    workers, batch = cfg['workers'], cfg['batch_size']
    kwargs = loader_kwargs(workers, device, cfg.get('prefetch_factor'))
    if isinstance(dataset, IterableDataset):  # shards: the dataset splits itself across ranks and workers
        dataset.configure(world.rank, world.world_size, batch, workers, training=True)
        loader = DataLoader(dataset, batch_size=batch, drop_last=True, **kwargs)
        target = dataset
    else:
        sampler = ResumableSampler(train_sampler(dataset, world, cfg['seed'], cfg['aug_repeats']), batch)
        if not fast:  # per-image random transforms: seed each sample
            sampler, dataset = SeedingSampler(sampler, cfg['seed'], world.rank), SeededSamples(dataset)
        loader = DataLoader(dataset, sampler=sampler, batch_size=batch, drop_last=True, **kwargs)
        target = sampler
    return DeviceLoader(loader, device, data_config['mean'], data_config['std'], dtype=input_dtype(amp_dtype),
                        channels_last=cfg['channels_last'], normalize=not fast,
                        reprob=0.0 if fast else cfg['reprob'], remode=cfg['remode'], recount=cfg['recount'],
                        seed=cfg['seed'], rank=world.rank, epoch_target=target)


def build_eval_loader(dataset, batch_size: int, workers: int, world: World, device: torch.device,
                      data_config: Optional[Dict], amp_dtype=None, channels_last: bool = False,
                      normalize: bool = True, prefetch_factor: Optional[int] = None) -> DeviceLoader:
    """An evaluation loader over this rank's disjoint share of ``dataset`` (every image once across ranks and
    workers, no padding), unreadable images left out, finished on ``device``."""
    kwargs = loader_kwargs(workers, device, prefetch_factor)
    target = None
    if isinstance(dataset, IterableDataset):
        dataset.configure(world.rank, world.world_size, batch_size, workers, training=False)
        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_readable, **kwargs)
        target = dataset  # its epoch only labels the LIT_DATA_LOG lines (evaluation reads in order)
    else:
        loader = DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), world.rank,
                                                                                 world.world_size),
                            collate_fn=collate_readable, **kwargs)
    mean, std = (data_config['mean'], data_config['std']) if normalize else (None, None)
    return DeviceLoader(loader, device, mean, std, dtype=input_dtype(amp_dtype), channels_last=channels_last,
                        normalize=normalize, epoch_target=target)


def normalizer(data_config: Dict, device=None):
    """uint8 (B, 3, S, S) -> the model's float input, as ``DeviceLoader`` does it (for code holding a few samples
    of a dataset rather than a loader)."""
    loader = DeviceLoader(None, torch.device(device or 'cpu'), data_config['mean'], data_config['std'])
    return partial(loader.prepare, batch_idx=0)


def data_hint(kind: str, workers: int, data: Optional[str]) -> str:
    """What to do when training waits for data (the trainer's one hint line)."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    steps = [f'raise -j (now {workers} worker(s) per process; {cores} CPU cores here)']
    if kind in ('folder', 'tar'):
        steps.append('pack the images into WebDataset shards once (lit data pack DIR OUT) and train from '
                     'wds:OUT/train-{000000..N}.tar: sequential reads instead of one file open per image')
    shown = data if data and kind not in ('fashion-mnist', 'fashion-mnist-mini') else 'DATA'
    steps.append(f'lit data bench --data {shown} --workers 0,1,2,4 shows the images/s the input pipeline alone '
                 f'reaches; the time goes to reading, decoding and the recipe\'s augmentation in the workers')
    return '; '.join(steps)

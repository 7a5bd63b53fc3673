"""Where and how a job runs: the device, autocast (AMP), the torchrun/SLURM process group, samplers, reductions
and stop signals.

Launch with PyTorch's own launcher (``torchrun`` = ``python -m torch.distributed.run``), single or multi node, or
under SLURM (``srun``: SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID, read by timm's ``world_info_from_env``, with
MASTER_ADDR/MASTER_PORT set by the job script). Backend: NCCL for CUDA devices (one device per process, chosen
by LOCAL_RANK), gloo on CPU.
"""
import contextlib
import itertools
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Union

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from litcli.core.errors import LitError


AMP_DTYPES = {'bfloat16': torch.bfloat16, 'bf16': torch.bfloat16, 'float16': torch.float16, 'fp16': torch.float16}


def resolve_device(name: Optional[str] = None) -> torch.device:
    """``cpu`` | ``cuda`` | ``cuda:N``; None: CUDA when available, else the CPU."""
    name = name or ('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LitError(f'unknown device {name!r}; use cpu, cuda or cuda:N')
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise LitError('--device cuda was asked for but no CUDA device is available; use --device cpu')
    return device


def cpu_has_native_bf16() -> bool:
    """True on x86 CPUs whose matrix units compute bfloat16 natively (AVX512-BF16 or AMX: Zen 4, Cooper Lake,
    Sapphire Rapids and later), where bf16 autocast is 1.5-2.5x faster than fp32; elsewhere bf16 is emulated and
    slower. torch exposes the check only privately (torch.cpu._is_*), hence the getattr."""
    checks = ('_is_avx512_bf16_supported', '_is_amx_tile_supported')
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_amp(device: torch.device, enabled: Union[bool, str, None] = None,
                dtype: Optional[str] = None) -> Optional[torch.dtype]:
    """The autocast dtype, or None for full precision. ``enabled`` None: on for CUDA, off on the CPU; ``'auto'``:
    on for CUDA and for CPUs with native bf16 (``cpu_has_native_bf16``), off on other CPUs. ``dtype`` None:
    bfloat16 where supported (every CPU; CUDA from Ampere on), else float16 (with a grad scaler)."""
    if enabled not in (None, True, False, 'auto'):
        raise LitError(f'amp: {enabled!r} is not one of true, false, auto (or unset: on for CUDA only)')
    if enabled == 'auto':
        enabled = device.type == 'cuda' or (device.type == 'cpu' and cpu_has_native_bf16())
    if not (device.type == 'cuda' if enabled is None else enabled):
        return None
    name = dtype or ('bfloat16' if device.type != 'cuda' or torch.cuda.is_bf16_supported() else 'float16')
    if name not in AMP_DTYPES:
        raise LitError(f'unknown --amp-dtype {name!r}; use bfloat16 or float16')
    if AMP_DTYPES[name] is torch.float16 and device.type != 'cuda':
        raise LitError('float16 autocast needs a CUDA device; on the CPU use --amp-dtype bfloat16 or full '
                       'precision')
    return AMP_DTYPES[name]


def eval_amp_dtype(device: torch.device, amp_dtype: Optional[torch.dtype]) -> Optional[torch.dtype]:
    """The precision a training run evaluates in: its own on CUDA; fp32 on the CPU, as ``lit eval`` and
    ``lit predict`` run there, so the metrics a run logs are the ones those commands reproduce (bf16 autocast on a
    CPU, ``amp: auto``, serves the training step, where the time goes)."""
    return amp_dtype if device.type == 'cuda' else None


def autocast_context(device: torch.device, amp_dtype: Optional[torch.dtype]):
    """A factory of ``torch.autocast`` contexts for ``amp_dtype``, or of no-op contexts for full precision."""
    if amp_dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=amp_dtype)


def dtype_name(dtype: Optional[torch.dtype]) -> Optional[str]:
    return str(dtype).removeprefix('torch.') if dtype is not None else None


@dataclass
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    distributed: bool = False  # a process group is up (also for a 1-process torchrun launch)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def as_dict(self):
        return dict(rank=self.rank, world_size=self.world_size, local_rank=self.local_rank)


def launched_distributed() -> bool:
    """True under torchrun (even with one process, so `--nproc_per_node 1` exercises NCCL/DDP) or a multi-task
    SLURM step."""
    from timm.utils.distributed import is_distributed_env
    return is_distributed_env() or 'TORCHELASTIC_RUN_ID' in os.environ


def init_distributed(device: torch.device) -> World:
    """Join the process group of a torchrun/SLURM launch (a no-op World for a plain single process).

    timm's ``init_distributed_device_so`` would do most of this, but it only starts a group when WORLD_SIZE > 1
    (we also want one for a 1-process torchrun launch) and asserts instead of explaining; the env parsing is
    timm's. A group the caller already initialised (e.g. a test with a file:// store) is used as it is.
    """
    from timm.utils.distributed import world_info_from_env

    if dist.is_available() and dist.is_initialized():
        local_rank = world_info_from_env()[0]
        world = World(dist.get_rank(), dist.get_world_size(), local_rank, True)
    elif not launched_distributed():
        return World()
    else:
        local_rank, rank, world_size = world_info_from_env()
        if 'SLURM_PROCID' in os.environ and 'RANK' not in os.environ:  # srun without torchrun: env:// wants these
            os.environ.update(LOCAL_RANK=str(local_rank), RANK=str(rank), WORLD_SIZE=str(world_size))
            if 'MASTER_ADDR' not in os.environ or 'MASTER_PORT' not in os.environ:
                raise LitError('a SLURM multi-task step needs MASTER_ADDR and MASTER_PORT in the environment; '
                               'export them in the job script (or launch with torchrun)')
        if device.type == 'cuda':
            if local_rank >= torch.cuda.device_count():
                raise LitError(f'LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s); '
                               f'use --nproc_per_node <= the number of GPUs per node')
            torch.cuda.set_device(local_rank)  # before NCCL init, so its communicator uses this device
        backend = 'nccl' if device.type == 'cuda' else 'gloo'
        dist.init_process_group(backend=backend, init_method='env://', rank=rank, world_size=world_size)
        world = World(dist.get_rank(), dist.get_world_size(), local_rank, True)
    return world


def process_device(device: torch.device, world: World) -> torch.device:
    """The device of this process: cuda:LOCAL_RANK under a launch (an explicit index is overridden), else as given."""
    if world.distributed and device.type == 'cuda':
        return torch.device('cuda', world.local_rank)
    return device


def shutdown():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed_session(device: torch.device):
    """The ``World`` of this process for the duration of a job: joins the torchrun/SLURM process group if launched
    so (and leaves it afterwards, unless the caller had already joined one)."""
    owns_group = not (dist.is_available() and dist.is_initialized())
    world = init_distributed(device)
    try:
        yield world
    finally:
        if owns_group:
            shutdown()


def broadcast_object(obj: Any, world: World, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (pickled; small objects only: paths, messages)."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any, world: World) -> List[Any]:
    if not world.distributed:
        return [obj]
    out = [None] * world.world_size
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, world: World, device: torch.device) -> bool:
    """True on every rank when ``flag`` is True on at least one (so all ranks stop at the same step)."""
    if not world.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_reduce_sum(values: List[float], world: World, device: torch.device) -> List[float]:
    """Element-wise sum over ranks, in float64 so counts stay exact (below 2**53)."""
    if not world.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


class ShardSampler(Sampler):
    """Rank r of W takes indices r, r + W, r + 2W, ... : disjoint shards that cover the dataset exactly once.

    Hand-written because torch's DistributedSampler (and timm's OrderedDistributedSampler) pad the last shard
    with repeated samples (or drop some), which would count images twice (or not at all) in an evaluation.
    Shards differ in size by at most one; the metric sums are all-reduced, so that does not matter.
    """

    def __init__(self, length: int, rank: int = 0, world_size: int = 1):
        self.indices = range(rank, length, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class ResumableSampler(Sampler):
    """A per-epoch training sampler (DistributedSampler / RepeatAugSampler) that can start part-way into an epoch.

    The wrapped sampler's order depends only on its seed and epoch, so after ``set_epoch(epoch, skip)`` the
    remaining indices are exactly those an uninterrupted run would still draw, without loading the skipped ones.
    """

    def __init__(self, sampler, batch_size: int):
        self.sampler = sampler
        self.batch_size = batch_size
        self.skip = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0):
        self.sampler.set_epoch(epoch)
        self.skip = skip_batches * self.batch_size

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


def train_sampler(dataset, world: World, seed: int, aug_repeats: float):
    """DistributedSampler (shuffled by seed + epoch, drop_last) on any world size, or timm's RepeatAugSampler for
    repeated augmentation on several processes. One process uses the same sampler with 1 replica, so a run's
    order does not depend on how it was launched."""
    from torch.utils.data import DistributedSampler

    if aug_repeats and world.world_size > 1:
        from timm.data.distributed_sampler import RepeatAugSampler
        return _SeededRepeatAug(RepeatAugSampler(dataset, num_replicas=world.world_size, rank=world.rank,
                                                 num_repeats=aug_repeats), seed)
    return DistributedSampler(dataset, num_replicas=world.world_size, rank=world.rank, shuffle=True, seed=seed,
                              drop_last=True)


class _SeededRepeatAug(Sampler):
    """timm's RepeatAugSampler shuffles by the epoch alone; fold the run's seed in, as DistributedSampler does."""

    def __init__(self, sampler, seed: int):
        self.sampler, self.seed = sampler, seed

    def set_epoch(self, epoch: int):
        self.sampler.set_epoch(self.seed + epoch)

    def __iter__(self):
        return iter(self.sampler)

    def __len__(self):
        return len(self.sampler)


# ---------------------------------------------------------------------------------------------------------------
# Stop signals


class TrainingStopped(LitError):
    """SIGTERM/SIGINT: a checkpoint was saved at a step boundary and the run stopped (the message says how to
    resume). Exit code 143 for SIGTERM and 130 for SIGINT (128 + signal number), so a job script can tell a
    preempted run (resume it) from a finished one (0)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def resume_hint(path) -> str:
    """The command that continues a run from ``path``, for the launch this process is part of."""
    nproc = os.environ.get('LOCAL_WORLD_SIZE')
    if 'TORCHELASTIC_RUN_ID' in os.environ and nproc:
        nodes = int(os.environ.get('WORLD_SIZE', nproc)) // max(int(nproc), 1)
        launcher = f'torchrun --nproc_per_node={nproc} -m litcli train' if nodes == 1 else \
            f'torchrun --nnodes={nodes} --nproc_per_node={nproc} --rdzv_endpoint=HOST:PORT -m litcli train'
    else:
        launcher = 'lit train'
    return f'{launcher} --resume {path}'


class StopRequest:
    """SIGTERM / SIGINT set a flag; the trainer saves at the next step boundary and exits (see ``exit_code``).

    A second signal of the same kind restores the default handler's behaviour (a second Ctrl-C interrupts at
    once). Handlers are installed only in the main thread (Python's rule) and restored by ``restore()``.
    """

    EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}  # 128 + signal number, the shell convention

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous = {}

    def install(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in self.EXIT_CODES:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # second signal: stop now
            self.restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.raise_signal(signum)
            return
        self.signum = signum

    def restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ''

    @property
    def exit_code(self) -> int:
        return self.EXIT_CODES.get(self.signum, 1)


def relaunch_with_torchrun(nproc_per_node: int, argv):
    """``lit train --nproc-per-node N ...`` -> ``python -m torch.distributed.run --standalone --nproc_per_node N
    -m litcli train ...`` (the same arguments without --nproc-per-node), replacing this process so signals reach
    torchrun directly. ``argv`` is sys.argv; returns only on a usage error (raises LitError)."""
    import sys

    args, i, found = [], 1, False
    while i < len(argv):
        a = argv[i]
        if a == '--nproc-per-node':
            found, i = True, i + 2
            continue
        if a.startswith('--nproc-per-node='):
            found, i = True, i + 1
            continue
        args.append(a)
        i += 1
    if not found:
        raise LitError('--nproc-per-node works from the command line only; launch with '
                       'torchrun --nproc_per_node N -m litcli train ... instead')
    if 'TORCHELASTIC_RUN_ID' in os.environ or int(os.environ.get('WORLD_SIZE', '1')) > 1:
        raise LitError('--nproc-per-node inside a torchrun/SLURM launch; drop it (the launcher sets the processes)')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc_per_node}',
           '-m', 'litcli', *args]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, cmd)


def ignore_stop_signals(worker_id: int = 0, main_pid: Optional[int] = None):
    """DataLoader ``worker_init_fn``: a worker leaves SIGTERM/SIGINT sent to the whole job to the main process.

    SLURM preemption, ``timeout``, systemd and Ctrl-C signal every process of the job. A worker killed by SIGTERM
    makes the main process raise "DataLoader worker ... is killed by signal" before it can save, so workers must
    survive it; the main process saves at the next step and then stops its workers itself. But SIGTERM is also how
    the main process stops a worker (``multiprocessing``'s ``terminate()``, used by torch's shutdown and at exit), so
    a worker that ignored every SIGTERM could hang the exit. Hence: SIGINT is ignored, and SIGTERM is blocked and
    read by a thread (``sigwaitinfo``) that exits the worker when the sender is the main process (``main_pid``; the
    parent when not given, which a forkserver's worker must give) and drops it otherwise. Without ``sigwaitinfo``
    (macOS) only SIGINT is ignored. Workers exit when the main process dies: see ``exit_with_main_process``.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, 'pthread_sigmask'):  # Windows
        return
    # a worker of the forkserver (litcli.core.data.loaders.worker_context) starts with both blocked, as the server runs
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if not hasattr(signal, 'sigwaitinfo'):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        return
    main_pid = main_pid or os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started from here on inherit the mask
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # sigwaitinfo wants a signal that is not ignored

    def sort_sigterm():
        while True:
            info = signal.sigwaitinfo({signal.SIGTERM})
            if info.si_pid == main_pid:  # terminate() from the main process: stop now
                os._exit(0)
            # else: a signal to the whole job; the main process decides (it saves, then shuts us down)

    threading.Thread(target=sort_sigterm, name='lit-sigterm', daemon=True).start()


def exit_with_main_process(main_pid: int):
    """In a DataLoader worker of a forkserver: exit as soon as the main process has (a SIGKILL, the OOM killer).

    torch's worker loop watches its parent, which for a forkserver's worker is the server, and the server lives as
    long as any of its workers holds its pipe: after ``kill -9`` of the main process the server and the workers stayed
    (measured: all there 20 s later, for good). A thread waits on a pidfd of the main process (Linux >= 5.3: readable
    once it has exited, zombie or not), else checks it once a second. A worker whose parent is the main process (fork,
    or spawn on Windows, where ``os.kill(pid, 0)`` would send a Ctrl-C) is left to torch's own watch.
    """
    if os.getppid() == main_pid:
        return

    def watch():
        process_exited(main_pid)
        os._exit(0)

    threading.Thread(target=watch, name='lit-main-watch', daemon=True).start()


def process_exited(pid: int, timeout: Optional[float] = None) -> bool:
    """Whether process ``pid`` has exited (a zombie counts), waiting up to ``timeout`` seconds for it (None: as long
    as it takes). A pidfd where Linux has one (>= 5.3: readable once the process has exited), else a check every
    second (every 50 ms with a timeout)."""
    import select
    import time

    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (macOS, an old kernel), or already gone
        pidfd = None
    if pidfd is not None:
        try:
            poller = select.poll()  # not select(): a descriptor number may exceed FD_SETSIZE
            poller.register(pidfd, select.POLLIN)
            return bool(poller.poll(None if timeout is None else int(timeout * 1000)))
        finally:
            os.close(pidfd)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):  # gone (or its pid reused by another user's process)
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(1.0 if deadline is None else 0.05)


def init_worker(worker_id: int, main_pid: int):
    """lit's DataLoader ``worker_init_fn``: signals sent to the whole job left to the main process, and an exit
    together with it."""
    ignore_stop_signals(worker_id, main_pid)
    exit_with_main_process(main_pid)

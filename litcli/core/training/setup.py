"""The set-up of a training run, one piece per job, each callable (and tested) alone; ``commands/train.py`` calls
them in order and then runs the epoch loop. Nothing here assumes a task: the data, the model's head, the loss and
the metric are the command's; this is the process, the options, the weights a run starts from, the model's
placement and wrapping, the optimizer state, the resume position and what every checkpoint holds.
"""
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from litcli.core.errors import CheckpointError, LitError, UsageError
from litcli.core.modelio.checkpoint import CheckpointSaver, TrainPosition, TrainState, plain, rng_state
from litcli.core.runtime import World

Log = Callable[[str], None]


@dataclass
class RunOptions:
    """How a run saves and logs, recorded in its checkpoints (``run_options``) so a resume keeps them."""
    save_interval: int = 0  # a checkpoint every N optimizer steps (0: at epoch ends only)
    keep_last: int = 3  # step checkpoints kept
    keep_best: int = 0  # the K best epochs' checkpoints kept
    log: List[str] = field(default_factory=list)  # experiment trackers: 'tensorboard', 'wandb'
    sync_bn: bool = False  # SyncBatchNorm (CUDA only)

    def as_dict(self) -> Dict:
        return asdict(self)


def run_options(saved: Optional[Dict], device: torch.device, *, save_interval: Optional[int] = None,
                keep_last: Optional[int] = None, keep_best: Optional[int] = None, log: Optional[List[str]] = None,
                sync_bn: Optional[bool] = None) -> RunOptions:
    """Each option as given, else the resumed run's (``saved``: its checkpoint's ``run_options``), else the default.
    The trackers must be importable and SyncBatchNorm needs CUDA (a resumed run's is dropped on CPU): checked here,
    before any work."""
    from litcli.core.training.tracking import check_trackers

    saved = saved or {}
    default = RunOptions()

    def chosen(name, value):
        return saved.get(name, getattr(default, name)) if value is None else value

    if sync_bn is None:  # as the resumed run did, where it can (SyncBatchNorm does not run on CPU)
        sync_bn = saved.get('sync_bn', False) and device.type == 'cuda'
    if sync_bn and device.type != 'cuda':
        raise LitError('--sync-bn needs CUDA devices (SyncBatchNorm cannot run on CPU); drop --sync-bn: on CPU the '
                       'BatchNorm statistics are averaged across processes before each evaluation instead')
    return RunOptions(save_interval=chosen('save_interval', save_interval), keep_last=chosen('keep_last', keep_last),
                      keep_best=chosen('keep_best', keep_best), log=check_trackers(chosen('log', log)),
                      sync_bn=bool(sync_bn))


def check_start_weights(cfg: Dict, *, pretrained: bool, initial_checkpoint: Optional[Path], resuming: bool):
    """Refuse, before any work, start weights that cannot be had: both sources at once, or ``--pretrained`` for a
    model without released weights (the built-in demo model, an ablation). A resumed run has its own weights."""
    if pretrained and initial_checkpoint is not None:
        raise UsageError('--pretrained and --initial-checkpoint both give the initial weights; pass one')
    if not pretrained or resuming:
        return
    if cfg.get('demo_config'):
        raise UsageError('--pretrained needs --variant ti|s|m|b (and --data): the built-in demo model, a small '
                         'LIT-Ti layout, has no released weights')
    from litcli.core.modelio.weights import release
    release(cfg['variant'])  # a UsageError for a model without a release


def start_weights_file(variant: str, world: World, log: Log, *, pretrained: bool, initial_checkpoint: Optional[Path],
                       resuming: bool) -> Optional[Path]:
    """The file a run's weights start from: none when resuming (the checkpoint has them), the released weights of
    ``variant`` for ``pretrained``, else ``initial_checkpoint`` (None: random initialisation)."""
    if resuming:
        return None
    if pretrained:
        return released_weights(variant, world, log)
    return Path(initial_checkpoint) if initial_checkpoint is not None else None


def released_weights(variant: str, world: World, log: Log) -> Path:
    """The cached file of ``variant``'s released weights for ``--pretrained``. One process per node downloads it
    first (every process fetching the same file at once would multiply the traffic), the others then find it in the
    cache; a download error on any process stops all of them with its one-line message."""
    from litcli.core.modelio.factory import pretrained_file
    from litcli.core.runtime import all_gather_object

    path, error = None, None
    if world.local_rank == 0:
        try:
            path = pretrained_file(variant, log)
        except LitError as e:
            error = str(e)
    errors = [e for e in all_gather_object(error, world) if e]
    if errors:
        raise LitError(errors[0])
    return path if path is not None else pretrained_file(variant, log)


def prepare_process(cfg: Dict, world: World, device: torch.device) -> Tuple[torch.device, Optional[torch.dtype]]:
    """This process's device (its own GPU under torchrun), CPU threads (``threads``), random streams seeded by
    ``seed`` and the rank (torch, numpy and python: timm's transforms and Mixup use the latter) and the autocast
    dtype (None: fp32)."""
    from timm.utils import random_seed

    from litcli.core.runtime import process_device, resolve_amp

    device = process_device(device, world)
    if device.type == 'cpu' and cfg.get('threads'):
        torch.set_num_threads(cfg['threads'])
    random_seed(cfg['seed'], world.rank)
    return device, resolve_amp(device, cfg['amp'], cfg['amp_dtype'])


def place_model(model: nn.Module, cfg: Dict, device: torch.device, sync_bn: bool, world: World, log: Log) -> nn.Module:
    """The model as it trains in this process: gradient checkpointing, on ``device``, channels-last memory and
    SyncBatchNorm as the config and options say (returns the converted module)."""
    if cfg['grad_checkpointing']:  # a classifier's, or a dense model's LIT backbone (the detectors wrap it: body)
        backbone = getattr(model, 'backbone', model)
        getattr(backbone, 'body', backbone).set_grad_checkpointing(True)
    model.to(device)
    if cfg['channels_last']:
        model.to(memory_format=torch.channels_last)
    if sync_bn and hasattr(model, 'decode_head'):  # Semantic FPN: the head's BN only, as mmseg's norm_cfg SyncBN
        model.decode_head = nn.SyncBatchNorm.convert_sync_batchnorm(model.decode_head)
    elif sync_bn:  # CUDA only (run_options checks); the DTM BatchNorms then normalise over the global batch
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if not world.distributed:
            log('--sync-bn: a single process, so SyncBatchNorm acts as plain BatchNorm')
    return model


def build_train_state(model: nn.Module, cfg: Dict, lrs: Optional[Dict[str, float]], updates_per_epoch: int,
                      amp_dtype: Optional[torch.dtype], device: torch.device, dense: bool = False) -> TrainState:
    """The optimizer, the schedule, the fp16 loss scaler and the EMA of ``model``. Classification: the DTM offsets'
    own rate, the learning rates already scaled to the global batch (``core.config.scaled_lrs``); ``dense``: the
    official mmdet/mmseg recipe's groups and per-update schedule (``lrs`` unused)."""
    from litcli.core.training import optim

    if dense:
        optimizer = optim.create_dense_optimizer(model, cfg)
        scheduler = optim.create_dense_scheduler(optimizer, cfg, updates_per_epoch)
    else:
        optimizer = optim.create_optimizer(model, lr=lrs['lr'], weight_decay=cfg['weight_decay'],
                                           offset_lr=lrs['offset_lr'], opt=cfg['opt'], eps=cfg['opt_eps'],
                                           betas=cfg['opt_betas'])
        scheduler = optim.create_scheduler(optimizer, cfg['epochs'], cfg['warmup_epochs'], lrs['warmup_lr'],
                                           lrs['min_lr'], updates_per_epoch, step_on_epochs=cfg['sched_on_epochs'],
                                           sched=cfg['sched'])
    state = TrainState(model, optimizer, scheduler)
    if amp_dtype is torch.float16:
        from timm.utils import NativeScaler
        state.loss_scaler = NativeScaler(device=device.type)
    if cfg['model_ema']:
        from timm.utils import ModelEmaV3
        state.ema = ModelEmaV3(model, decay=cfg['model_ema_decay'], use_warmup=cfg['model_ema_warmup'])
    return state


def resume_position(state: TrainState, checkpoint: Optional[Dict], cfg: Dict, world: World, source: Optional[Path],
                    data_kind: str, log: Log) -> TrainPosition:
    """Where the run starts: the beginning, or the checkpoint's position with every state restored into ``state``.
    A checkpoint taken part-way into an epoch of a shard stream resumes only with the same reading order."""
    if checkpoint is None:
        return TrainPosition()
    position = state.restore(checkpoint, cfg, world.world_size, world.rank, source, log)
    saved = checkpoint['config']
    if position.batch and data_kind == 'shards' and (saved.get('workers'), saved.get('shuffle_buffer', 1000)) != \
            (cfg['workers'], cfg.get('shuffle_buffer', 1000)):
        raise CheckpointError(f'{source} was saved part-way into epoch {position.epoch} of a shard stream '
                              f'read by {saved.get("workers")} worker(s) per process; the order depends on it: '
                              f'resume with -j {saved.get("workers")}, or resume an epoch-end checkpoint')
    return position


def wrap_for_training(model: nn.Module, world: World, device: torch.device, compile_model: bool) -> nn.Module:
    """The module the training steps call: DistributedDataParallel across processes (after the weights are final: it
    broadcasts rank 0's parameters and buffers at construction) and/or ``torch.compile``. The unwrapped model is what
    is saved, evaluated and averaged into the EMA."""
    wrapped = model
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda' else None,
                                          find_unused_parameters=False)
    if compile_model:
        wrapped = torch.compile(wrapped)
    return wrapped


def start_run_dir(cfg: Dict, world: World, device: torch.device, amp_dtype: Optional[torch.dtype], log: Log, *,
                  output: Path, name: Optional[str], default_name: str, exist_ok: bool,
                  resumed_from: Optional[Path], start_epoch: int) -> Path:
    """The run directory, the same on every rank (``rundir.prepare_run_dir``): a resumed checkpoint's run goes on in
    its folder (``resumed_from``: the checkpoint file), a new run gets a fresh one; ``config.yaml`` holds ``cfg``,
    ``env.json`` the software, processes, device and precision."""
    from litcli.core.envinfo import collect_env
    from litcli.core.runtime import dtype_name
    from litcli.core.training.rundir import git_commit, prepare_run_dir

    env = {**collect_env(), **world.as_dict(), 'git_commit': git_commit(), 'device': str(device),
           'amp_dtype': dtype_name(amp_dtype)}
    return prepare_run_dir(world, log, output=output, name=name, exist_ok=exist_ok, default_name=default_name,
                           config=cfg, env=env, start_epoch=start_epoch,
                           resumed_dir=Path(resumed_from).parent.parent if resumed_from is not None else None)


class RunCheckpoints:
    """What a run saves and when: the full training state (``state``, the position, the config, each rank's random
    streams and the task's ``metadata``: variant, classes, data config...): into rank 0's ``saver`` every
    ``save_interval`` optimizer steps and on a stop signal; each epoch end's state for the command to record.
    Collective: every rank calls it."""

    def __init__(self, state: TrainState, position: TrainPosition, cfg: Dict, options: RunOptions, metadata: Dict,
                 world: World, device: torch.device, saver: Optional[CheckpointSaver], stop):
        self.state, self.position, self.options, self.world, self.device = state, position, options, world, device
        self.saver, self.stop = saver, stop  # saver: rank 0's (None elsewhere); stop: a runtime.StopRequest
        self.fixed = dict(config=plain(cfg), **plain(metadata), run_options=options.as_dict(),
                          eval_weights='ema' if state.ema is not None else 'model', world_size=world.world_size)

    def training_state(self, epoch_done: int, resume_epoch: int, resume_batch: int, totals) -> Optional[Dict]:
        """The checkpoint of this moment (rank 0; None elsewhere): ``epoch_done`` the last finished epoch, the run
        goes on at (``resume_epoch``, ``resume_batch``) with the epoch's (loss sum, count) ``totals`` so far."""
        from litcli.core.runtime import all_gather_object

        rngs = all_gather_object(rng_state(), self.world)  # each rank's random streams, for an exact resume
        if not self.world.is_main:
            return None
        return dict(**self.state.state_dicts(), epoch=epoch_done, step=self.position.step, resume_epoch=resume_epoch,
                    resume_batch=resume_batch, epoch_loss_totals=[float(totals[0]), int(totals[1])],
                    best_metric=self.position.best_metric, rng=rngs[0],
                    rng_ranks=rngs if self.world.world_size > 1 else None, **self.fixed)

    def on_update(self, progress: Dict) -> bool:
        """After each optimizer step (``engine.train_one_epoch``'s ``on_update``): save every ``save_interval`` steps,
        and save + return True (stop) on a signal, on every rank at the same step."""
        from litcli.core.runtime import any_rank

        self.position.step = progress['step']
        stopping = any_rank(self.stop.requested, self.world, self.device)
        periodic = bool(self.options.save_interval) and self.position.step % self.options.save_interval == 0
        if periodic or stopping:
            obj = self.training_state(progress['epoch'] - 1, progress['epoch'], progress['batch'],
                                      progress['loss_totals'])
            if obj is not None and periodic:
                self.saver.save_step(obj, self.position.step)
            elif obj is not None:
                self.saver.save_last(obj)
        return stopping

    def epoch_state(self, epoch: int, metric: float, metric_name: str = 'eval_top1') -> Optional[Dict]:
        """The checkpoint of epoch ``epoch``'s end (rank 0; None elsewhere), with the epoch's own ``metric``
        (classification's top-1, which lit avg-checkpoints --top ranks by; a dense task's box AP or mIoU)."""
        obj = self.training_state(epoch, epoch + 1, 0, (0.0, 0))
        if obj is not None:
            obj[metric_name] = metric
        return obj

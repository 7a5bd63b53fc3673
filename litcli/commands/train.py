"""``lit train``: one training run, as set-up plus the epoch loop (ConvNeXt's ``main.py`` is the model).

``task`` (retinanet, mask_rcnn, semantic_fpn) trains a dense model instead of a classifier, on the same machinery:
its recipe (``core.config.new_dense_run_config``), data (``core.data.dense``), loss and evaluation
(``core.training.dense``) replace the classification ones.

Under torchrun (or SLURM) every process trains a DistributedDataParallel replica on its shard of each batch; only
rank 0 writes files or prints. Checkpoints are written every epoch, every ``save_interval`` optimizer steps and on
SIGTERM/SIGINT, with the position inside the epoch, so a resumed run continues exactly where it was taken. The
task-neutral set-up pieces are ``core.training.setup``'s, the loops ``core.training.engine``'s, the config merge
``core.config``'s; what is classification here is the data (``_training_data``), the model's head and loss, the
metric (top-1) and the checkpoint's class names.
"""
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from litcli.core.config import checked_img_size, new_run_config, resolve_config, scaled_lrs
from litcli.core.errors import CheckpointError, LitError, UsageError
from litcli.core.progress import DataTime
from litcli.core.report import counted


def run(variant: Optional[str] = None, config_file: Optional[Path] = None, overrides: Optional[Dict] = None,
        resume: Optional[str] = None, initial_checkpoint: Optional[Path] = None, pretrained: bool = False,
        name: Optional[str] = None, output: Path = Path('runs/train'), exist_ok: bool = False,
        save_interval: Optional[int] = None, keep_last: Optional[int] = None, sync_bn: Optional[bool] = None,
        keep_best: Optional[int] = None, log: Optional[List[str]] = None, task: Optional[str] = None) -> Path:
    """Run one training and return its run directory. ``overrides`` are the explicit flags (None = not given),
    with timm's names (``lr``, ``epochs``, ``batch_size``...).

    ``resume``: a checkpoint path or 'auto'. ``initial_checkpoint`` / ``pretrained``: start from that file's weights
    / from the released ImageNet-1k weights of the variant (fine-tuning; a resumed run has its own).
    ``save_interval``/``keep_last``/``sync_bn`` (None: the resumed run's, else 0 / 3 / off): a checkpoint every N
    optimizer steps (0: epoch ends only), how many step checkpoints to keep, SyncBatchNorm (CUDA only).
    ``keep_best`` (None: the resumed run's, else 0): also keep the K best epochs' checkpoints. ``log``: experiment
    trackers, 'tensorboard' and/or 'wandb' (None: the resumed run's, else none).
    ``task``: a dense model ('retinanet', 'mask-rcnn', 'semantic-fpn') with ``variant`` ti or s; ``pretrained``
    then means the ImageNet weights of its backbone, ``initial_checkpoint`` a dense model's name (its released
    weights) or any dense or classification checkpoint file. A resumed dense run keeps its task.
    Raises TrainingStopped after SIGTERM/SIGINT (a checkpoint was saved).
    """
    from timm.utils.distributed import world_info_from_env

    from litcli.core.progress import Reporter
    from litcli.core.runtime import distributed_session, resolve_device
    from litcli.core.training.setup import check_start_weights, run_options

    reporter = Reporter(world_info_from_env()[1] == 0, (overrides or {}).get('log_interval') or 50)
    cfg, checkpoint, resume_file = _run_config(variant, config_file, overrides, resume, Path(output), name,
                                               reporter.log, task)
    # a dense run's --pretrained is its backbone's ImageNet weights (LIT-Ti and LIT-S both have them)
    check_start_weights(cfg, pretrained=pretrained and not cfg.get('task'), initial_checkpoint=initial_checkpoint,
                        resuming=checkpoint is not None)
    if pretrained and initial_checkpoint is not None:
        raise UsageError('--pretrained and --initial-checkpoint both give the initial weights; pass one')
    device = resolve_device(cfg['device'])
    if cfg.get('task') == 'semantic_fpn' and sync_bn is None and checkpoint is None and device.type == 'cuda':
        sync_bn = True  # mmseg's FPN head normalises with SyncBN across the GPUs (the backbone's BN stays local)
    options = run_options((checkpoint or {}).get('run_options'), device, save_interval=save_interval,
                          keep_last=keep_last, keep_best=keep_best, log=log, sync_bn=sync_bn)
    with distributed_session(device) as world:
        return _train(cfg, world, device, reporter, checkpoint=checkpoint, resume_file=resume_file,
                      initial_checkpoint=initial_checkpoint, output=Path(output), name=name, exist_ok=exist_ok,
                      options=options, pretrained=pretrained)


def _run_config(variant: Optional[str], config_file: Optional[Path], overrides: Optional[Dict],
                resume: Optional[str], output: Path, name: Optional[str], log,
                task: Optional[str] = None) -> Tuple[Dict, Optional[Dict], Optional[Path]]:
    """(config, checkpoint to resume or None, its path): recipe < YAML < flags, where a resumed run's own config
    replaces the recipe as the lowest layer (and its variant and task cannot change)."""
    from litcli.core.config import dense_task_name, new_dense_run_config
    from litcli.core.modelio.checkpoint import resume_source

    overrides = dict(overrides or {}, **({'variant': variant} if variant else {}))
    checkpoint, resume_file = None, None
    task = dense_task_name(task) if task else None
    if resume is not None:
        resume_file, checkpoint = resume_source(resume, output, name, log)
        saved = checkpoint['config']
        if (saved.get('task') or None) != task and task is not None:
            kind = (saved.get('task') or 'classification').replace('_', '-')
            raise CheckpointError(f'{resume_file} is a {kind} run, not {task.replace("_", "-")}; drop --task or '
                                  f'resume another run')
        if saved.get('task'):
            if overrides.get('variant') and overrides['variant'] != saved['variant']:
                raise CheckpointError(f'{resume_file} is a {saved["variant"]} run, not {overrides["variant"]}; '
                                      f'drop --variant or resume another run')
            overrides.pop('variant', None)
            return (new_dense_run_config(saved['task'], saved['variant'], config_file, overrides, base=saved),
                    checkpoint, resume_file)
        if overrides.get('variant') and overrides['variant'] != saved['variant']:
            raise CheckpointError(f'{resume_file} is a {saved["variant"]} run, not {overrides["variant"]}; '
                                  f'drop --variant or resume another run')
        cfg = resolve_config(config_file=config_file, overrides=overrides, base=saved)
        cfg['variant'] = saved['variant']
    elif task is not None:
        return new_dense_run_config(task, overrides.pop('variant', None), config_file, overrides), None, None
    else:
        cfg = new_run_config(config_file, overrides)
    checked_img_size(cfg['img_size'], patch_size=(cfg['model_kwargs'] or {}).get('patch_size', 4))
    return cfg, checkpoint, resume_file


@dataclass
class TrainingData:
    """What the data section of a run built: datasets, loaders and what follows from them."""
    kind: str  # 'builtin', 'folder', 'tar' or 'shards'
    spec: Any  # core.data.DataSpec: class names, sizes, description
    train_ds: Any
    val_ds: Any
    train_loader: Any
    eval_loader: Any
    eval_data_config: Dict  # the eval preprocessing recorded in every checkpoint
    train_batch_tf: Optional[Callable]  # on the device, on the whole batch (built-in sets); None elsewhere
    eval_batch_tf: Optional[Callable]
    probe_tf: Callable  # uint8 samples -> what the model takes, for code that batches a few samples itself
    updates_per_epoch: int


def _training_data(cfg: Dict, world, device, amp_dtype, checkpoint: Optional[Dict], reporter) -> TrainingData:
    """Resolve ``cfg['data']``, build the datasets and loaders, and check what depends on them (class count against
    the checkpoint, Mixup's even batch, at least one update per epoch). Records the data as absolute paths and the
    class count in ``cfg``."""
    from litcli.core.data.datasets import (batch_transforms, build_datasets, dataset_name, recorded_data, resolve_data,
                                  run_data_config, run_transforms, uses_fast_tensors)
    from litcli.core.data.loaders import build_eval_loader, build_train_loader, data_hint, normalizer
    from litcli.core.runtime import eval_amp_dtype

    log = reporter.log
    requested_data, requested_dir = cfg['data'], cfg['data_dir']
    kind, root = resolve_data(requested_data, requested_dir)
    # Recorded as absolute paths (a built-in by its name), so lit eval/--resume work from any folder.
    cfg['data'] = recorded_data(kind, root)
    cfg['data_dir'] = str(Path(cfg['data_dir']).resolve()) if cfg['data_dir'] else None
    fast = uses_fast_tensors(cfg, kind)
    train_tf, eval_tf = run_transforms(cfg, kind, uint8=True)
    train_ds, val_ds, spec = build_datasets(requested_data, data_dir=requested_dir, train_transform=train_tf,
                                            eval_transform=eval_tf, strict_data=cfg['strict_data'],
                                            fast_tensors=fast, img_size=cfg['img_size'], seed=cfg['seed'],
                                            shuffle_buffer=cfg.get('shuffle_buffer', 1000))
    train_batch_tf, eval_batch_tf = batch_transforms(cfg, fast)
    eval_data_config = run_data_config(cfg, kind)
    # uint8 samples: what the loaders do on the device, for code that batches a few samples itself
    probe_tf = eval_batch_tf if fast else normalizer(eval_data_config)
    if fast:
        log('built-in data as in-memory tensors: ' + ('random crop and ' if cfg.get('crop_padding') else '') +
            'random horizontal flip on the batch; --aa/--reprob unused' +
            (f'; -j {cfg["workers"]} unused (read in this process)' if cfg['workers'] else ''))
        # a worker would only index the tensors and copy each batch back through shared memory, and its dataset
        # (the whole set) would be moved to /dev/shm first, more than Docker's default 64 MB for Fashion-MNIST
        cfg['workers'] = 0
    num_classes = spec.num_classes
    if cfg['num_classes'] is not None and cfg['num_classes'] != num_classes:
        raise LitError(f'--num-classes {cfg["num_classes"]} but the dataset {dataset_name(spec)} has '
                       f'{num_classes} classes; drop --num-classes or use matching data')
    cfg['num_classes'] = num_classes
    if checkpoint is not None and checkpoint.get('num_classes') not in (None, num_classes):
        raise CheckpointError(f'the checkpoint has {checkpoint["num_classes"]} classes but {dataset_name(spec)} '
                              f'has {num_classes}; resume with the data it was trained on')
    if (cfg['mixup'] > 0 or cfg['cutmix'] > 0) and cfg['batch_size'] % 2:
        raise LitError(f'Mixup/CutMix needs an even --batch-size (got {cfg["batch_size"]}); '
                       f'change it or pass --mixup 0 --cutmix 0')
    if cfg['aug_repeats'] and world.world_size == 1:
        log(f'repeated augmentation ({cfg["aug_repeats"]} repeats) needs several processes; off for this run')
    elif cfg['aug_repeats'] and kind == 'shards':
        log('repeated augmentation needs random access to the images; off for shards (streamed)')
        cfg['aug_repeats'] = 0
    # The order of an epoch depends only on seed + epoch (+ workers for shards), and every sample's augmentation on
    # (seed, epoch, position), so a resumed run can skip exactly the batches its checkpoint had consumed and repeat
    # the rest bit for bit. Evaluation: disjoint shares, no padding.
    train_loader = build_train_loader(train_ds, cfg, world, device, eval_data_config, amp_dtype, fast=fast)
    eval_loader = build_eval_loader(val_ds, cfg['batch_size'], cfg['workers'], world, device, eval_data_config,
                                    eval_amp_dtype(device, amp_dtype), channels_last=cfg['channels_last'],
                                    normalize=not fast)
    reporter.world_size = world.world_size
    reporter.data_hint = data_hint(kind, cfg['workers'], cfg.get('data'))
    updates_per_epoch = len(train_loader) // cfg['grad_accum_steps']
    if updates_per_epoch == 0:
        raise LitError(f'the training set ({spec.train_size} images) is smaller than one update of '
                       f'{cfg["batch_size"]} x {world.world_size} process(es) x {cfg["grad_accum_steps"]} images; '
                       f'lower --batch-size or --grad-accum-steps')
    return TrainingData(kind, spec, train_ds, val_ds, train_loader, eval_loader, eval_data_config, train_batch_tf,
                        eval_batch_tf, probe_tf, updates_per_epoch)


def _dense_training_data(cfg: Dict, world, device, checkpoint: Optional[Dict], reporter) -> TrainingData:
    """A dense run's data: ``cfg['data']`` (coco:ROOT, ade20k:ROOT or the built-in scenes) with the recipe's
    training transform, grouped (detection) or iteration-based (segmentation) batches, the validation split for
    every rank's share; records the data by absolute path and the class count in ``cfg``."""
    from litcli.core.data.dense import build_dense_datasets, build_dense_eval_loader, build_dense_train_loader

    if cfg['task'] != 'semantic_fpn':  # each epoch's COCO AP: refused now rather than after the first epoch
        from litcli.core.training.dense_metrics import check_pycocotools
        check_pycocotools()
    train_ds, val_ds, spec = build_dense_datasets(cfg['data'], cfg['task'], cfg, strict_data=cfg['strict_data'])
    cfg['data'] = spec.recorded
    if cfg['num_classes'] is not None and cfg['num_classes'] != spec.num_classes:
        raise LitError(f'--num-classes {cfg["num_classes"]} but {spec.recorded} has {spec.num_classes} classes; '
                       f'drop --num-classes or use matching data')
    cfg['num_classes'] = spec.num_classes
    if checkpoint is not None and checkpoint.get('num_classes') not in (None, spec.num_classes):
        raise CheckpointError(f'the checkpoint has {checkpoint["num_classes"]} classes but {spec.recorded} has '
                              f'{spec.num_classes}; resume with the data it was trained on')
    train_loader = build_dense_train_loader(train_ds, spec.kind, cfg, world, device, cfg.get('updates_per_epoch'))
    eval_loader = build_dense_eval_loader(val_ds, spec.kind, cfg['eval_batch_size'], cfg['workers'], world, device)
    reporter.world_size = world.world_size
    dropped = getattr(train_ds, 'dropped_boxes', 0)
    if dropped:  # as mmdet's CocoDataset (the evaluation scores against the annotation file as it is)
        reporter.log(f'{counted(dropped, "degenerate training box")} (width or height under 1 px, or no area) '
                     f'left out of the targets')
    updates_per_epoch = len(train_loader) // cfg['grad_accum_steps']
    if updates_per_epoch == 0:
        raise LitError(f'the training set ({spec.train_size} images) is smaller than one update of '
                       f'{cfg["batch_size"]} x {world.world_size} process(es) x {cfg["grad_accum_steps"]} images; '
                       f'lower --batch-size or --grad-accum-steps')
    return TrainingData(spec.name, spec, train_ds, val_ds, train_loader, eval_loader, {}, None, None, None,
                        updates_per_epoch)


def _dense_model(cfg: Dict, spec, world, log, *, pretrained: bool, initial_checkpoint: Optional[Path],
                 resuming: bool):
    """A dense run's model with the data's classes, from ImageNet backbone weights (``pretrained``), a dense or
    classification checkpoint or a released dense model's name (``initial_checkpoint``), or random (a resumed run
    loads its own weights after)."""
    from litcli.core.modelio.factory import create_dense_model, load_backbone_weights, load_dense_start_weights
    from litcli.core.modelio.checkpoint import read_checkpoint
    from litcli.core.config import dense_model_name
    from litcli.core.training.setup import released_weights

    name = dense_model_name(cfg['task'], cfg['variant'])
    kwargs = dict(drop_path_rate=cfg['drop_path'], **cfg['model_kwargs'])
    if spec.kind == 'detection':  # the detectors resize inside: the recipe's (or the scenes') scale
        kwargs['img_scale'] = tuple(cfg['img_scale'])
    model = create_dense_model(name, spec.num_classes, **kwargs)
    if resuming:
        return model
    if pretrained:
        path = released_weights(f'lit_{cfg["variant"]}', world, log)
        load_backbone_weights(model, name, read_checkpoint(path), path)
        log(f'start: {name} with the ImageNet-1k LIT-{cfg["variant"].capitalize()} backbone ({path}); neck and heads '
            f'random')
    elif initial_checkpoint is not None:
        from litcli.models.dense_zoo import DENSE_MODEL_NAMES
        source = initial_checkpoint
        if str(source) in DENSE_MODEL_NAMES and not Path(source).is_file():  # one download per node, as --pretrained
            source = released_weights(str(source), world, log)
        log('start: ' + load_dense_start_weights(model, name, source, log))
    return model


def _dense_metadata(cfg: Dict, spec) -> Dict:
    """What a dense checkpoint says about its model (``load_dense_model``, lit detect/segment/eval read it)."""
    from litcli.core.config import dense_model_name

    return dict(variant=dense_model_name(cfg['task'], cfg['variant']), task=cfg['task'],
                num_classes=spec.num_classes, class_names=list(spec.class_names),
                category_ids=list(spec.category_ids), img_scale=list(cfg['img_scale']), data=spec.recorded,
                model_kwargs=dict(cfg['model_kwargs']))


@dataclass
class Run:
    """What the epoch loop works with, built by ``_set_up``."""
    cfg: Dict
    world: Any  # core.runtime.World
    device: Any
    reporter: Any  # core.progress.Reporter
    options: Any  # core.training.setup.RunOptions
    data: TrainingData
    state: Any  # core.modelio.checkpoint.TrainState: the unwrapped model, optimizer, schedule, scaler, EMA
    position: Any  # core.modelio.checkpoint.TrainPosition: epoch, batch, step, best metric
    setup: Any  # core.training.engine.TrainSetup: the wrapped module and the options of each update
    eval_autocast: Callable
    run_dir: Path
    saver: Any  # core.modelio.checkpoint.CheckpointSaver on rank 0, None elsewhere
    checkpoints: Any  # core.training.setup.RunCheckpoints
    size_note: Optional[str] = None  # the model's size differs from the variant's (said once, summarised)
    tracker: Any = None  # core.training.tracking.TrainTracker (rank 0, --log)
    probe: Any = None  # the fixed batch whose DTM offsets the tracker follows
    on_step: Optional[Callable[[Dict], None]] = None  # after each update: progress (and tracker)
    data_time: DataTime = field(default_factory=DataTime)  # this process, this run

    @property
    def eval_model(self):
        """The weights evaluated and saved as the run's result: the EMA's when there is one."""
        return self.state.ema.module if self.state.ema is not None else self.state.model


def _train(cfg: Dict, world, device, reporter, *, checkpoint, resume_file, initial_checkpoint, output, name,
           exist_ok, options, pretrained: bool = False) -> Path:
    """The run itself, once the config is resolved and the process group is up: set-up, epochs, summary."""
    run = _set_up(cfg, world, device, reporter, checkpoint=checkpoint, resume_file=resume_file,
                  initial_checkpoint=initial_checkpoint, output=output, name=name, exist_ok=exist_ok,
                  options=options, pretrained=pretrained)
    start_epoch, run_start = run.position.epoch, time.perf_counter()
    _train_epochs(run)
    if world.is_main:
        _print_summary(run, start_epoch, time.perf_counter() - run_start)
    return run.run_dir


def _set_up(cfg: Dict, world, device, reporter, *, checkpoint, resume_file, initial_checkpoint, output, name,
            exist_ok, options, pretrained: bool) -> Run:
    """Process, data, model and weights, optimizer state, resume position, run directory and checkpoints, trackers:
    in this order (the model's initialisation draws from the random streams after the data set-up)."""
    from litcli.core.data.datasets import dataset_name
    from litcli.core.modelio.checkpoint import CheckpointSaver
    from litcli.core.modelio.factory import load_initial_weights
    from litcli.core.runtime import StopRequest, autocast_context, eval_amp_dtype
    from litcli.core.training import engine
    from litcli.core.training.setup import (RunCheckpoints, build_train_state, place_model, prepare_process,
                                            resume_position, start_run_dir, start_weights_file, wrap_for_training)

    log = reporter.log
    device, amp_dtype = prepare_process(cfg, world, device)
    task, resuming = cfg.get('task'), checkpoint is not None
    if task:  # a dense model: its data, model and start weights, recipe optimizer and schedule, loss
        from litcli.core.training.dense import forward_loss
        data = _dense_training_data(cfg, world, device, checkpoint, reporter)
        lrs, size_note = None, None
        model = _dense_model(cfg, data.spec, world, log, pretrained=pretrained, initial_checkpoint=initial_checkpoint,
                             resuming=resuming)
        loss_fn, mixup, step_loss = None, None, forward_loss(task)
        metadata = _dense_metadata(cfg, data.spec)
        default_name = f'{task.replace("_", "-")}-{cfg["variant"]}-{data.spec.name}'
    else:
        data = _training_data(cfg, world, device, amp_dtype, checkpoint, reporter)
        lrs = scaled_lrs(cfg, world.world_size)  # lr, offset_lr, warmup_lr, min_lr, global_batch
        model, size_note = _classifier(cfg, data.spec.num_classes, log)
        start_file = start_weights_file(cfg['variant'], world, log, pretrained=pretrained,
                                        initial_checkpoint=initial_checkpoint, resuming=resuming)
        if start_file is not None:
            load_initial_weights(model, start_file, log)
        (loss_fn, mixup), step_loss = engine.build_loss(cfg, data.spec.num_classes), None
        metadata = _checkpoint_metadata(cfg, data)
        default_name = f'{cfg["variant"]}-{dataset_name(data.spec)}'
    model = place_model(model, cfg, device, options.sync_bn, world, log)
    state = build_train_state(model, cfg, lrs, data.updates_per_epoch, amp_dtype, device, dense=bool(task))
    position = resume_position(state, checkpoint, cfg, world, resume_file, data.kind, log)
    setup = engine.TrainSetup(wrap_for_training(model, world, device, cfg['torchcompile']), state.optimizer, loss_fn,
                              device, scheduler=state.scheduler, per_update_schedule=not cfg.get('sched_on_epochs'),
                              mixup=mixup, autocast=autocast_context(device, amp_dtype),
                              loss_scaler=state.loss_scaler, clip_grad=cfg['clip_grad'] or None,
                              accum_steps=cfg['grad_accum_steps'], ema=state.ema, channels_last=cfg['channels_last'],
                              batch_transform=data.train_batch_tf, forward_loss=step_loss)
    run_dir = start_run_dir(cfg, world, device, amp_dtype, log, output=output, name=name, exist_ok=exist_ok,
                            default_name=default_name, resumed_from=resume_file if resuming else None,
                            start_epoch=position.epoch)
    saver = CheckpointSaver(run_dir / 'checkpoints', options.keep_last, options.keep_best) if world.is_main else None
    checkpoints = RunCheckpoints(state, position, cfg, options, metadata, world, device, saver, StopRequest())
    run = Run(cfg, world, device, reporter, options, data, state, position, setup,
              autocast_context(device, eval_amp_dtype(device, amp_dtype)), run_dir, saver, checkpoints, size_note,
              on_step=reporter.step)
    _log_set_up(run, lrs, amp_dtype, resuming=checkpoint is not None)
    _start_tracker(run, resuming=checkpoint is not None)
    if options.keep_best:
        log(f'keeping the checkpoints of the {options.keep_best} best epochs by {_ranking_metric(cfg)} '
            f'(checkpoints/top-epochNNNN.pt, ranked in checkpoints/top.json)')
    return run


def _ranking_metric(cfg: Dict) -> str:
    """What a run's epochs are ranked by (best.pt, --keep-best): top-1, or a dense task's box AP / mIoU."""
    from litcli.core.training.dense import main_metric
    return main_metric(cfg['task']) if cfg.get('task') else 'eval top-1'


def _classifier(cfg: Dict, num_classes: int, log) -> Tuple[Any, Optional[str]]:
    """The run's model with a ``num_classes`` head (randomly initialised), and the note when its size is not the
    variant's."""
    from litcli.core.modelio.factory import create_model, model_size_note

    model = create_model(cfg['variant'], num_classes=num_classes, drop_path_rate=cfg['drop_path'],
                         **{'img_size': cfg['img_size'], **(cfg['model_kwargs'] or {})})
    size_note = model_size_note(cfg, model)
    if size_note:
        log(size_note)
    return model, size_note


def _checkpoint_metadata(cfg: Dict, data: TrainingData) -> Dict:
    """What a classification checkpoint says about its model and data (read by lit eval, predict, export...)."""
    return dict(variant=cfg['variant'], model_kwargs={**(cfg['model_kwargs'] or {}), 'img_size': cfg['img_size']},
                class_names=list(data.spec.class_names), num_classes=data.spec.num_classes,
                data_config=data.eval_data_config)


def _log_set_up(run: Run, lrs: Dict, amp_dtype, resuming: bool):
    """The run's set-up in a few lines: where, what data, the batch and rates, the model, device and precision."""
    import torch

    from litcli.core.data.datasets import dataset_name
    from litcli.core.runtime import dtype_name

    cfg, world, spec, position, log = run.cfg, run.world, run.data.spec, run.position, run.reporter.log
    log(f'run directory: {run.run_dir}')
    log(f'data: {spec.description}')
    if cfg.get('task'):
        _log_dense_set_up(run, amp_dtype, resuming)
        return
    backend = f', {torch.distributed.get_backend()}' if world.distributed else ''
    log(f'{world.world_size} process(es){backend}: per-device batch {cfg["batch_size"]} x {world.world_size} '
        f'process(es) x {cfg["grad_accum_steps"]} accumulation = global batch {lrs["global_batch"]}; '
        f'scaled lr {lrs["lr"]:.3g} (offset group {lrs["offset_lr"]:.3g}), warmup lr {lrs["warmup_lr"]:.3g}, '
        f'min lr {lrs["min_lr"]:.3g}' + ('; SyncBatchNorm' if run.options.sync_bn else ''))
    precision = f' {dtype_name(amp_dtype)} autocast' if amp_dtype else ' fp32'
    resuming = (f'; resuming at epoch {position.epoch}, step {position.step}' +
                (f', batch {position.batch}' if position.batch else '')) if resuming else ''
    threads = f' ({torch.get_num_threads()} thread(s))' if run.device.type == 'cpu' else ''
    log(f'{cfg["variant"]} on {dataset_name(spec)} ({spec.train_size} train / {spec.val_size} val images, '
        f'{spec.num_classes} classes), {run.device}{threads}{precision}; global batch {lrs["global_batch"]}, '
        f'lr {lrs["lr"]:.3g} (offset {lrs["offset_lr"]:.3g}), warmup lr {lrs["warmup_lr"]:.3g}, min lr '
        f'{lrs["min_lr"]:.3g}, {counted(cfg["epochs"], "epoch")} x {run.data.updates_per_epoch} updates{resuming}')
    if run.options.save_interval:
        log(f'checkpoints every {run.options.save_interval} steps (the newest {run.options.keep_last} kept) and '
            f'every epoch')


def _log_dense_set_up(run: Run, amp_dtype, resuming: bool):
    """A dense run's batch, recipe, model, device and precision in a few lines."""
    import torch

    from litcli.core.runtime import dtype_name
    from litcli.core.config import dense_model_name

    cfg, world, spec, position, log = run.cfg, run.world, run.data.spec, run.position, run.reporter.log
    global_batch = cfg['batch_size'] * world.world_size * cfg['grad_accum_steps']
    schedule = (f'step x{cfg["decay_rate"]} after epochs {", ".join(map(str, cfg["decay_epochs"]))}'
                if cfg['sched'] == 'multistep' else f'poly {cfg["poly_power"]} to {cfg["min_lr"]:.0e}')
    warmup = f', linear warmup {cfg["warmup_iters"]} updates from {cfg["warmup_ratio"]}x' if cfg['warmup_iters'] else ''
    threads = f' ({torch.get_num_threads()} thread(s))' if run.device.type == 'cpu' else ''
    precision = f' {dtype_name(amp_dtype)} autocast' if amp_dtype else ' fp32'
    where = (f'; resuming at epoch {position.epoch}, step {position.step}' +
             (f', batch {position.batch}' if position.batch else '')) if resuming else ''
    log(f'{dense_model_name(cfg["task"], cfg["variant"])} on {spec.recorded} ({spec.train_size} train / '
        f'{spec.val_size} val images, {spec.num_classes} classes), {run.device}{threads}{precision}; batch '
        f'{cfg["batch_size"]} x {world.world_size} process(es) x {cfg["grad_accum_steps"]} = {global_batch}; '
        f'{cfg["opt"]} lr {cfg["lr"]:.3g}, weight decay {cfg["weight_decay"]:.3g}, {schedule}{warmup}; '
        f'{counted(cfg["epochs"], "epoch")} x {run.data.updates_per_epoch} updates, images resized to fit '
        f'{cfg["img_scale"][0]}x{cfg["img_scale"][1]}{where}')
    if cfg['model_kwargs']:
        log('model settings other than the official ones: ' + ', '.join(f'{k}={v}' for k, v in
                                                                       cfg['model_kwargs'].items()))
    if run.options.save_interval:
        log(f'checkpoints every {run.options.save_interval} steps (the newest {run.options.keep_last} kept) and '
            f'every epoch')


def _start_tracker(run: Run, resuming: bool):
    """``--log``'s experiment trackers (rank 0): TensorBoard / W&B event files under the run directory, fed after
    every update and every epoch, with the DTM offsets of a fixed validation batch (shards cannot be indexed:
    their first samples)."""
    from litcli.core.modelio.checkpoint import plain
    from litcli.core.training.tracking import create_tracker, fixed_batch

    if not (run.world.is_main and run.options.log):
        return
    run.tracker = tracker = create_tracker(run.options.log, run.run_dir, plain(run.cfg), run.state.optimizer,
                                           run.cfg['log_interval'],
                                           purge_step=run.position.step + 1 if resuming else None)
    val_ds = run.data.val_ds
    if not run.cfg.get('task'):  # the DTM offsets of a fixed classification batch (dense runs: none followed)
        run.probe = fixed_batch(val_ds.head(8) if hasattr(val_ds, 'head') else val_ds,
                                batch_transform=run.data.probe_tf)
    run.reporter.log('logging to ' + ', '.join(str(p) for p in tracker.locations))

    def step_and_track(progress: Dict):
        run.reporter.step(progress)
        tracker.step(progress)
    run.on_step = step_and_track


def _train_epochs(run: Run):
    """The loop of ConvNeXt's ``main()``: each epoch trains, evaluates and records; SIGTERM/SIGINT save and stop."""
    cfg, stop = run.cfg, run.checkpoints.stop
    start_epoch = run.position.epoch
    if start_epoch >= cfg['epochs']:
        run.reporter.log(f'nothing to do: the checkpoint already finished {counted(cfg["epochs"], "epoch")} '
                         f'(raise --epochs to go on)')
    stop.install()
    try:
        for epoch in range(start_epoch, cfg['epochs']):
            epoch_start = time.perf_counter()
            stats = _train_one_epoch(run, epoch, skip=run.position.batch if epoch == start_epoch else 0)
            run.state.scheduler.step(epoch + 1)  # per-epoch schedules advance here; per-update ones ignore it
            metrics = _evaluate(run, epoch)
            _record_epoch(run, epoch, stats, metrics, time.perf_counter() - epoch_start)
    finally:
        stop.restore()
        if run.tracker is not None:
            run.tracker.close()


def _train_one_epoch(run: Run, epoch: int, skip: int) -> Dict:
    """One epoch of updates from batch ``skip`` (a mid-epoch resume), the loss over every rank's samples. A stop
    signal ends it with a checkpoint (TrainingStopped); a NaN loss or Ctrl-C says where the run stands."""
    from litcli.core.runtime import TrainingStopped, all_reduce_sum, resume_hint
    from litcli.core.training import engine

    cfg, world, data, position, log = run.cfg, run.world, run.data, run.position, run.reporter.log
    data.train_loader.set_epoch(epoch, skip)
    for dataset in (data.train_ds, data.val_ds):  # unreadable files are counted per epoch
        getattr(dataset, 'reset_skipped', lambda: None)()
    run.reporter.start_epoch(epoch, data.updates_per_epoch)
    try:
        stats = engine.train_one_epoch(run.setup, data.train_loader, epoch, position.step, start_batch=skip,
                                       loss_totals=position.loss_totals if skip else (0.0, 0),
                                       on_update=run.checkpoints.on_update, on_step=run.on_step)
    except (engine.NonFiniteLossError, KeyboardInterrupt):
        run.reporter.end_epoch()
        kept = run.saver.last if run.saver is not None else run.run_dir / 'checkpoints' / 'last.pt'
        kept = f'continue with --resume {kept}' if kept.exists() else 'no checkpoint yet'
        log(f'stopped in epoch {epoch}; run directory: {run.run_dir} ({kept})')
        raise
    finally:
        run.reporter.end_epoch()
    position.step = stats['num_updates']
    if world.distributed:  # the epoch's train loss over every rank's samples
        loss_sum, loss_count = all_reduce_sum(list(stats['loss_totals']), world, run.device)
        stats['train_loss'] = loss_sum / max(loss_count, 1)
    if stats['stopped']:
        stop = run.checkpoints.stop
        last = (run.run_dir / 'checkpoints' / 'last.pt').resolve()
        message = (f'{stop.name} received: saved {last} at step {position.step} (epoch {epoch}, '
                   f'{stats["batch"] // cfg["grad_accum_steps"]}/{data.updates_per_epoch} updates); resume with: '
                   f'{resume_hint(last)}')
        log(message)
        raise TrainingStopped(message, stop.exit_code)
    run.data_time.add(stats['data_s'], stats['compute_s'])
    return stats


def _evaluate(run: Run, epoch: int) -> Dict:
    """The epoch's evaluation of the EMA (else the model) over the whole validation set, every rank its share;
    unreadable files of the epoch are reported, summed over the processes."""
    from litcli.core.runtime import all_reduce_sum
    from litcli.core.training import engine

    world, data = run.world, run.data
    # each replica's BatchNorm statistics -> their mean (a dense run syncs its head's BN at most: the backbone's too)
    if world.distributed and (not run.options.sync_bn or run.cfg.get('task')):
        from timm.utils import distribute_bn
        distribute_bn(run.state.model, world.world_size, reduce=True)
        if run.state.ema is not None:
            distribute_bn(run.state.ema.module, world.world_size, reduce=True)
    data.eval_loader.set_epoch(epoch)
    if run.cfg.get('task'):
        from litcli.core.training.dense import evaluate_dense
        metrics = evaluate_dense(run.eval_model, data.eval_loader, run.device, task=run.cfg['task'],
                                 dataset=data.val_ds, img_scale=run.cfg['img_scale'], world=world,
                                 autocast=run.eval_autocast)
    else:
        metrics = engine.evaluate(run.eval_model, data.eval_loader, run.device, run.eval_autocast,
                                  channels_last=run.cfg['channels_last'], batch_transform=data.eval_batch_tf,
                                  world=world)
    for dataset in (data.train_ds, data.val_ds):
        skipped = int(all_reduce_sum([getattr(dataset, 'skipped', 0)], world, run.device)[0])
        if skipped:
            message = dataset.skipped_message() or f'skipped {skipped} unreadable image file(s)'
            run.reporter.log(f'warning (epoch {epoch}, all processes: {skipped}): {message}')
    return metrics


def _record_epoch(run: Run, epoch: int, stats: Dict, metrics: Dict, epoch_time_s: float):
    """The epoch's row (metrics files, curves), its checkpoints, the trackers and the log line."""
    from litcli.core.training.rundir import record_epoch
    from litcli.core.training.tracking import dtm_offsets_px

    if run.cfg.get('task'):
        _record_dense_epoch(run, epoch, stats, metrics, epoch_time_s)
        return
    position, world = run.position, run.world
    is_best = position.best_metric is None or metrics['top1'] > position.best_metric
    position.best_metric = max(position.best_metric or 0.0, metrics['top1'])
    epoch_data_time = DataTime(stats['data_s'], stats['compute_s'])
    row = dict(epoch=epoch, step=position.step, train_loss=stats['train_loss'], eval_loss=metrics['loss'],
               eval_top1=metrics['top1'], eval_top5=metrics['top5'], lr=stats['lr'],
               img_per_s=stats['img_per_s'] * world.world_size, epoch_time_s=epoch_time_s,
               img_per_s_device=stats['img_per_s'], data_s=stats['data_s'], compute_s=stats['compute_s'],
               data_share=epoch_data_time.share)
    obj = run.checkpoints.epoch_state(epoch, metrics['top1'])  # collective
    if not world.is_main:
        return
    record_epoch(run.run_dir, run.saver, row, obj, is_best, metric=metrics['top1'])  # metrics, curves, checkpoints
    if run.tracker is not None:
        run.tracker.epoch(row, dtm_offsets_px(run.eval_model, run.probe) if run.probe is not None else {})
    run.reporter.log(f'epoch {epoch}: train loss {row["train_loss"]:.4f}, eval loss {row["eval_loss"]:.4f}, '
                     f'top-1 {row["eval_top1"]:.2f}%, top-5 {row["eval_top5"]:.2f}%, lr {row["lr"]:.3e}, '
                     f'{row["img_per_s"]:.1f} img/s, {row["epoch_time_s"]:.1f}s' + (' (best)' if is_best else '') +
                     f'; {100 * row["data_share"]:.0f}% of the training time waiting for data')


def _record_dense_epoch(run: Run, epoch: int, stats: Dict, metrics: Dict, epoch_time_s: float):
    """A dense epoch's row (its task's metric columns), checkpoints ranked by box AP / mIoU, trackers, log line."""
    from litcli.core.training.dense import main_metric, metric_fields
    from litcli.core.training.rundir import dense_metric_fields, record_epoch

    position, world, task = run.position, run.world, run.cfg['task']
    key, fields = main_metric(task), metric_fields(task)
    score = metrics[key]  # nan when nothing could be scored (e.g. a split without annotations): never the best
    is_best = score == score and (position.best_metric is None or position.best_metric != position.best_metric or
                                  score > position.best_metric)
    position.best_metric = score if is_best else position.best_metric
    epoch_data_time = DataTime(stats['data_s'], stats['compute_s'])
    row = dict(epoch=epoch, step=position.step, train_loss=stats['train_loss'], **{f: metrics[f] for f in fields},
               lr=stats['lr'], img_per_s=stats['img_per_s'] * world.world_size, epoch_time_s=epoch_time_s,
               img_per_s_device=stats['img_per_s'], data_s=stats['data_s'], compute_s=stats['compute_s'],
               data_share=epoch_data_time.share)
    obj = run.checkpoints.epoch_state(epoch, score, metric_name=f'eval_{key}')  # collective
    if not world.is_main:
        return
    record_epoch(run.run_dir, run.saver, row, obj, is_best, metric=score, fields=dense_metric_fields(fields))
    if run.tracker is not None:
        run.tracker.epoch(row, {})
    shown = ', '.join(f'{f.replace("_", " ")} {row[f]:.1f}' for f in fields if f.endswith(('AP', 'AP50', 'mIoU',
                                                                                              'aAcc')))
    run.reporter.log(f'epoch {epoch}: train loss {row["train_loss"]:.4f}, {shown}, lr {row["lr"]:.3e}, '
                     f'{row["img_per_s"]:.1f} img/s, {row["epoch_time_s"]:.1f}s' + (' (best)' if is_best else '') +
                     f'; {100 * row["data_share"]:.0f}% of the training time waiting for data')


def _print_summary(run: Run, start_epoch: int, seconds: float):
    """The table at the end of a run (rank 0)."""
    from rich.table import Table

    from litcli.core.data.datasets import dataset_name

    cfg, position, spec, data_time = run.cfg, run.position, run.data.spec, run.data_time
    table = Table(title='lit train summary', show_header=False)
    best = f'{position.best_metric:.2f}' if position.best_metric is not None else '-'
    if cfg.get('task'):
        from litcli.core.config import dense_model_name
        from litcli.core.training.dense import main_metric
        table.add_row('model', f'{dense_model_name(cfg["task"], cfg["variant"])} ({spec.num_classes} classes, '
                               f'images fit into {cfg["img_scale"][0]}x{cfg["img_scale"][1]})')
        table.add_row('data', spec.recorded)
        table.add_row(f'best {main_metric(cfg["task"]).replace("_", " ")}', best)
    else:
        size = ' demo size' if cfg.get('demo_config') else ' custom size' if run.size_note else ''
        table.add_row('model', f'{cfg["variant"]}{size} ({spec.num_classes} classes, {cfg["img_size"]} px)')
        table.add_row('data', dataset_name(spec))
        table.add_row('best top-1', f'{best}%' if position.best_metric is not None else '-')
    table.add_row('epochs', f'{cfg["epochs"]} ({cfg["epochs"] - start_epoch} this run, step {position.step})')
    table.add_row('processes', str(run.world.world_size))
    if data_time.wall_s > 0:
        table.add_row('data wait', f'{100 * data_time.share:.0f}% of the training time ({data_time.data_s:.1f}s of '
                                   f'{data_time.wall_s:.1f}s, {cfg["workers"]} worker(s) per process)')
    table.add_row('time', f'{seconds:.1f}s')
    table.add_row('run directory', str(run.run_dir))
    run.reporter.console.print(table)
    run.reporter.log(f'run directory: {run.run_dir}')

"""``lit train``: one training run, as set-up plus the epoch loop (ConvNeXt's ``main.py`` is the model).

Under torchrun (or SLURM) every process trains a DistributedDataParallel replica on its shard of each batch; only
rank 0 writes files or prints. Checkpoints are written every epoch, every ``save_interval`` optimizer steps and on
SIGTERM/SIGINT, with the position inside the epoch, so a resumed run continues exactly where it was taken. The
loops are ``core.engine``'s; the config merge ``core.config``'s; restoring ``core.checkpoint.TrainState``'s.
"""
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from litcli.core.modelio.checkpoint import plain
from litcli.core.config import checked_img_size, new_run_config, resolve_config, scaled_lrs
from litcli.core.errors import CheckpointError, LitError, UsageError


def run(variant: Optional[str] = None, config_file: Optional[Path] = None, overrides: Optional[Dict] = None,
        resume: Optional[str] = None, initial_checkpoint: Optional[Path] = None, pretrained: bool = False,
        name: Optional[str] = None, output: Path = Path('runs/train'), exist_ok: bool = False,
        save_interval: Optional[int] = None, keep_last: Optional[int] = None, sync_bn: Optional[bool] = None,
        keep_best: Optional[int] = None, log: Optional[List[str]] = None) -> Path:
    """Run one training and return its run directory. ``overrides`` are the explicit flags (None = not given),
    with timm's names (``lr``, ``epochs``, ``batch_size``...).

    ``resume``: a checkpoint path or 'auto'. ``initial_checkpoint`` / ``pretrained``: start from that file's weights
    / from the released ImageNet-1k weights of the variant (fine-tuning; a resumed run has its own).
    ``save_interval``/``keep_last``/``sync_bn`` (None: the resumed run's, else 0 / 3 / off): a checkpoint every N
    optimizer steps (0: epoch ends only), how many step checkpoints to keep, SyncBatchNorm (CUDA only).
    ``keep_best`` (None: the resumed run's, else 0): also keep the K best epochs' checkpoints. ``log``: experiment
    trackers, 'tensorboard' and/or 'wandb' (None: the resumed run's, else none).
    Raises TrainingStopped after SIGTERM/SIGINT (a checkpoint was saved).
    """
    from timm.utils.distributed import world_info_from_env

    from litcli.core.modelio.checkpoint import resume_source
    from litcli.core.progress import Reporter
    from litcli.core.runtime import distributed_session, resolve_device

    if pretrained and initial_checkpoint is not None:
        raise UsageError('--pretrained and --initial-checkpoint both give the initial weights; pass one')
    reporter = Reporter(world_info_from_env()[1] == 0, (overrides or {}).get('log_interval') or 50)
    overrides = dict(overrides or {}, **({'variant': variant} if variant else {}))
    checkpoint, resume_file = None, None
    if resume is not None:  # the checkpoint's config replaces the recipe as the lowest layer
        resume_file, checkpoint = resume_source(resume, Path(output), name, reporter.log)
        saved = checkpoint['config']
        if overrides.get('variant') and overrides['variant'] != saved['variant']:
            raise CheckpointError(f'{resume_file} is a {saved["variant"]} run, not {overrides["variant"]}; '
                                  f'drop --variant or resume another run')
        cfg = resolve_config(config_file=config_file, overrides=overrides, base=saved)
        cfg['variant'] = saved['variant']
    else:
        cfg = new_run_config(config_file, overrides)
    checked_img_size(cfg['img_size'], patch_size=(cfg['model_kwargs'] or {}).get('patch_size', 4))
    if pretrained and checkpoint is None:
        if cfg.get('demo_config'):
            raise UsageError('--pretrained needs --variant ti|s|m|b (and --data): the built-in demo model, a small '
                             'LIT-Ti layout, has no released weights')
        from litcli.core.modelio.weights import release
        release(cfg['variant'])  # an ablation model has none either: refused before any work
    saved_options = (checkpoint or {}).get('run_options') or {}
    options = dict(save_interval=saved_options.get('save_interval', 0) if save_interval is None else save_interval,
                   keep_last=saved_options.get('keep_last', 3) if keep_last is None else keep_last,
                   keep_best=saved_options.get('keep_best', 0) if keep_best is None else keep_best)
    from litcli.core.training.tracking import check_trackers
    options['log'] = check_trackers(saved_options.get('log', []) if log is None else log)  # before any work
    device = resolve_device(cfg['device'])
    if sync_bn is None:  # as the resumed run did, where it can (SyncBatchNorm does not run on CPU)
        sync_bn = saved_options.get('sync_bn', False) and device.type == 'cuda'
    if sync_bn and device.type != 'cuda':
        raise LitError('--sync-bn needs CUDA devices (SyncBatchNorm cannot run on CPU); drop --sync-bn: on CPU the '
                       'BatchNorm statistics are averaged across processes before each evaluation instead')
    options['sync_bn'] = bool(sync_bn)
    with distributed_session(device) as world:
        return _train(cfg, world, device, reporter, checkpoint=checkpoint, resume_file=resume_file,
                      initial_checkpoint=initial_checkpoint, output=Path(output), name=name, exist_ok=exist_ok,
                      options=options, pretrained=pretrained)


def released_weights(variant: str, world, log) -> Path:
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


def _train(cfg: Dict, world, device, reporter, *, checkpoint, resume_file, initial_checkpoint, output, name,
           exist_ok, options, pretrained: bool = False) -> Path:
    """The run itself, once the config is resolved and the process group is up."""
    import torch
    from timm.utils import random_seed

    from litcli.core.training import engine
    from litcli.core.modelio.checkpoint import CheckpointSaver, TrainPosition, TrainState, rng_state
    from litcli.core.data.datasets import dataset_name
    from litcli.core.envinfo import collect_env
    from litcli.core.modelio.factory import create_model, load_initial_weights, model_size_note
    from litcli.core.training.optim import create_optimizer, create_scheduler
    from litcli.core.training.rundir import git_commit, plot_curves, prepare_run_dir, write_metrics
    from litcli.core.training.tracking import create_tracker, dtm_offsets_px, fixed_batch
    from litcli.core.runtime import (StopRequest, TrainingStopped, all_gather_object, all_reduce_sum, any_rank,
                                     autocast_context, dtype_name, eval_amp_dtype, process_device, resolve_amp,
                                     resume_hint)

    log = reporter.log
    device = process_device(device, world)
    if device.type == 'cpu' and cfg.get('threads'):
        torch.set_num_threads(cfg['threads'])
    random_seed(cfg['seed'], world.rank)  # torch, numpy and python RNGs (timm transforms/Mixup use the latter)
    amp_dtype = resolve_amp(device, cfg['amp'], cfg['amp_dtype'])

    # ---- data: folders/tars/shards through timm transforms to uint8, finished on the device; built-ins as batched
    # in-memory tensors ----
    data = _training_data(cfg, world, device, amp_dtype, checkpoint, reporter)
    kind, spec, num_classes = data.kind, data.spec, data.spec.num_classes
    lrs = scaled_lrs(cfg, world.world_size)  # lr, offset_lr, warmup_lr, min_lr, global_batch
    train_ds, val_ds, train_loader, eval_loader = data.train_ds, data.val_ds, data.train_loader, data.eval_loader
    eval_data_config, eval_batch_tf = data.eval_data_config, data.eval_batch_tf
    updates_per_epoch = data.updates_per_epoch

    # ---- model, optimizer, schedule, AMP, EMA ----
    model = create_model(cfg['variant'], num_classes=num_classes, drop_path_rate=cfg['drop_path'],
                         **{'img_size': cfg['img_size'], **(cfg['model_kwargs'] or {})})
    size_note = model_size_note(cfg, model)
    if size_note:
        log(size_note)
    if pretrained and checkpoint is None:
        initial_checkpoint = released_weights(cfg['variant'], world, log)
    if initial_checkpoint is not None and checkpoint is None:
        load_initial_weights(model, initial_checkpoint, log)
    if cfg['grad_checkpointing']:
        model.set_grad_checkpointing(True)
    model.to(device)
    if cfg['channels_last']:
        model.to(memory_format=torch.channels_last)
    if options['sync_bn']:  # CUDA only (checked in run); the DTM BatchNorms then normalise over the global batch
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if not world.distributed:
            log('--sync-bn: a single process, so SyncBatchNorm acts as plain BatchNorm')
    optimizer = create_optimizer(model, lr=lrs['lr'], weight_decay=cfg['weight_decay'], offset_lr=lrs['offset_lr'],
                                 opt=cfg['opt'], eps=cfg['opt_eps'], betas=cfg['opt_betas'])
    scheduler = create_scheduler(optimizer, cfg['epochs'], cfg['warmup_epochs'], lrs['warmup_lr'], lrs['min_lr'],
                                 updates_per_epoch, step_on_epochs=cfg['sched_on_epochs'], sched=cfg['sched'])
    state = TrainState(model, optimizer, scheduler)
    if amp_dtype is torch.float16:
        from timm.utils import NativeScaler
        state.loss_scaler = NativeScaler(device=device.type)
    if cfg['model_ema']:
        from timm.utils import ModelEmaV3
        state.ema = ModelEmaV3(model, decay=cfg['model_ema_decay'], use_warmup=cfg['model_ema_warmup'])
    loss_fn, mixup = engine.build_loss(cfg, num_classes)
    position = TrainPosition()
    if checkpoint is not None:
        position = state.restore(checkpoint, cfg, world.world_size, world.rank, resume_file, log)
        saved = checkpoint['config']
        if position.batch and kind == 'shards' and (saved.get('workers'), saved.get('shuffle_buffer', 1000)) != \
                (cfg['workers'], cfg.get('shuffle_buffer', 1000)):
            raise CheckpointError(f'{resume_file} was saved part-way into epoch {position.epoch} of a shard stream '
                                  f'read by {saved.get("workers")} worker(s) per process; the order depends on it: '
                                  f'resume with -j {saved.get("workers")}, or resume an epoch-end checkpoint')

    # DDP after the weights are final (it broadcasts rank 0's parameters and buffers at construction). The
    # unwrapped model is what is saved, evaluated and averaged into the EMA.
    train_model = model
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda' else None,
                                              find_unused_parameters=False)
    if cfg['torchcompile']:
        train_model = torch.compile(train_model)
    autocast = autocast_context(device, amp_dtype)
    eval_autocast = autocast_context(device, eval_amp_dtype(device, amp_dtype))
    setup = engine.TrainSetup(train_model, optimizer, loss_fn, device, scheduler=scheduler,
                              per_update_schedule=not cfg['sched_on_epochs'], mixup=mixup, autocast=autocast,
                              loss_scaler=state.loss_scaler, clip_grad=cfg['clip_grad'] or None,
                              accum_steps=cfg['grad_accum_steps'], ema=state.ema, channels_last=cfg['channels_last'],
                              batch_transform=data.train_batch_tf)

    # ---- run directory (rank 0 writes; every rank learns its path) ----
    env = {**collect_env(), **world.as_dict(), 'git_commit': git_commit(), 'device': str(device),
           'amp_dtype': dtype_name(amp_dtype)}
    run_dir = prepare_run_dir(world, log, output=output, name=name, exist_ok=exist_ok,
                              default_name=f'{cfg["variant"]}-{dataset_name(spec)}', config=cfg, env=env,
                              resumed_dir=resume_file.parent.parent if checkpoint is not None else None,
                              start_epoch=position.epoch)
    saver = CheckpointSaver(run_dir / 'checkpoints', options['keep_last'], options['keep_best']) \
        if world.is_main else None
    log(f'run directory: {run_dir}')
    log(f'data: {spec.description}')
    backend = f', {torch.distributed.get_backend()}' if world.distributed else ''
    log(f'{world.world_size} process(es){backend}: per-device batch {cfg["batch_size"]} x {world.world_size} '
        f'process(es) x {cfg["grad_accum_steps"]} accumulation = global batch {lrs["global_batch"]}; '
        f'scaled lr {lrs["lr"]:.3g} (offset group {lrs["offset_lr"]:.3g}), warmup lr {lrs["warmup_lr"]:.3g}, '
        f'min lr {lrs["min_lr"]:.3g}' + ('; SyncBatchNorm' if options['sync_bn'] else ''))
    precision = f' {dtype_name(amp_dtype)} autocast' if amp_dtype else ' fp32'
    resuming = (f'; resuming at epoch {position.epoch}, step {position.step}' +
                (f', batch {position.batch}' if position.batch else '')) if checkpoint is not None else ''
    threads = f' ({torch.get_num_threads()} thread(s))' if device.type == 'cpu' else ''
    log(f'{cfg["variant"]} on {dataset_name(spec)} ({spec.train_size} train / {spec.val_size} val images, '
        f'{num_classes} classes), {device}{threads}{precision}; global batch {lrs["global_batch"]}, lr {lrs["lr"]:.3g} '
        f'(offset {lrs["offset_lr"]:.3g}), warmup lr {lrs["warmup_lr"]:.3g}, min lr {lrs["min_lr"]:.3g}, '
        f'{cfg["epochs"]} epochs x {updates_per_epoch} updates{resuming}')
    if options['save_interval']:
        log(f'checkpoints every {options["save_interval"]} steps (the newest {options["keep_last"]} kept) and every '
            f'epoch')

    def checkpoint_state(epoch_done: int, resume_epoch: int, resume_batch: int, totals) -> Optional[Dict]:
        """The full training state (rank 0; None elsewhere). Collective: every rank must call it."""
        rngs = all_gather_object(rng_state(), world)  # each rank's random streams, for an exact resume
        if not world.is_main:
            return None
        return dict(
            **state.state_dicts(), epoch=epoch_done, step=position.step, resume_epoch=resume_epoch,
            resume_batch=resume_batch, epoch_loss_totals=[float(totals[0]), int(totals[1])],
            best_metric=position.best_metric, config=plain(cfg), variant=cfg['variant'],
            model_kwargs=plain({**(cfg['model_kwargs'] or {}), 'img_size': cfg['img_size']}),
            class_names=list(spec.class_names), num_classes=num_classes, data_config=plain(eval_data_config),
            eval_weights='ema' if state.ema is not None else 'model', rng=rngs[0],
            rng_ranks=rngs if world.world_size > 1 else None, world_size=world.world_size, run_options=options)

    # ---- experiment trackers (rank 0): TensorBoard / W&B event files under the run directory ----
    tracker, probe, on_step = None, None, reporter.step
    if world.is_main and options['log']:
        tracker = create_tracker(options['log'], run_dir, plain(cfg), optimizer, cfg['log_interval'],
                                 purge_step=position.step + 1 if checkpoint is not None else None)
        # DTM offsets measured on it every epoch (shards cannot be indexed: their first samples)
        probe = fixed_batch(val_ds.head(8) if hasattr(val_ds, 'head') else val_ds, batch_transform=data.probe_tf)
        log('logging to ' + ', '.join(str(p) for p in tracker.locations))

        def step_and_track(progress: Dict):
            reporter.step(progress)
            tracker.step(progress)
        on_step = step_and_track
    if options['keep_best']:
        log(f'keeping the checkpoints of the {options["keep_best"]} best epochs by eval top-1 '
            f'(checkpoints/top-epochNNNN.pt, ranked in checkpoints/top.json)')

    stop = StopRequest()

    def on_update(progress: Dict) -> bool:
        """After each optimizer step: save every ``save_interval`` steps, and save + stop on a signal."""
        position.step = progress['step']
        stopping = any_rank(stop.requested, world, device)  # every rank stops at the same step
        periodic = bool(options['save_interval']) and position.step % options['save_interval'] == 0
        if periodic or stopping:
            obj = checkpoint_state(progress['epoch'] - 1, progress['epoch'], progress['batch'],
                                   progress['loss_totals'])
            if obj is not None and periodic:
                saver.save_step(obj, position.step)
            elif obj is not None:
                saver.save_last(obj)
        return stopping

    run_start = time.perf_counter()
    data_total = (0.0, 0.0)  # seconds waiting for data, computing (this process, this run)
    start_epoch = position.epoch
    if start_epoch >= cfg['epochs']:
        log(f'nothing to do: the checkpoint already finished {cfg["epochs"]} epochs (raise --epochs to go on)')
    stop.install()
    try:
        for epoch in range(start_epoch, cfg['epochs']):
            skip = position.batch if epoch == start_epoch else 0
            train_loader.set_epoch(epoch, skip)
            for dataset in (train_ds, val_ds):  # unreadable files are counted per epoch
                getattr(dataset, 'reset_skipped', lambda: None)()
            epoch_start = time.perf_counter()
            reporter.start_epoch(epoch, updates_per_epoch)
            try:
                stats = engine.train_one_epoch(setup, train_loader, epoch, position.step, start_batch=skip,
                                               loss_totals=position.loss_totals if skip else (0.0, 0),
                                               on_update=on_update, on_step=on_step)
            except (engine.NonFiniteLossError, KeyboardInterrupt):
                reporter.end_epoch()
                kept = saver.last if saver is not None else run_dir / 'checkpoints' / 'last.pt'
                kept = f'continue with --resume {kept}' if kept.exists() else 'no checkpoint yet'
                log(f'stopped in epoch {epoch}; run directory: {run_dir} ({kept})')
                raise
            finally:
                reporter.end_epoch()
            position.step = stats['num_updates']
            if world.distributed:  # the epoch's train loss over every rank's samples
                loss_sum, loss_count = all_reduce_sum(list(stats['loss_totals']), world, device)
                stats['train_loss'] = loss_sum / max(loss_count, 1)
            if stats['stopped']:
                last = (run_dir / 'checkpoints' / 'last.pt').resolve()
                message = (f'{stop.name} received: saved {last} at step {position.step} (epoch {epoch}, '
                           f'{stats["batch"] // cfg["grad_accum_steps"]}/{updates_per_epoch} updates); resume with: '
                           f'{resume_hint(last)}')
                log(message)
                raise TrainingStopped(message, stop.exit_code)
            scheduler.step(epoch + 1)  # per-epoch schedules advance here; per-update ones ignore it
            if world.distributed and not options['sync_bn']:  # each replica's BatchNorm statistics -> their mean
                from timm.utils import distribute_bn
                distribute_bn(model, world.world_size, reduce=True)
                if state.ema is not None:
                    distribute_bn(state.ema.module, world.world_size, reduce=True)
            eval_loader.set_epoch(epoch)
            metrics = engine.evaluate(state.ema.module if state.ema is not None else model, eval_loader, device,
                                      eval_autocast, channels_last=cfg['channels_last'],
                                      batch_transform=eval_batch_tf, world=world)
            for dataset in (train_ds, val_ds):
                skipped = int(all_reduce_sum([getattr(dataset, 'skipped', 0)], world, device)[0])
                if skipped:
                    message = dataset.skipped_message() or f'skipped {skipped} unreadable image file(s)'
                    log(f'warning (epoch {epoch}, all processes: {skipped}): {message}')
            is_best = position.best_metric is None or metrics['top1'] > position.best_metric
            position.best_metric = max(position.best_metric or 0.0, metrics['top1'])
            row = dict(epoch=epoch, step=position.step, train_loss=stats['train_loss'], eval_loss=metrics['loss'],
                       eval_top1=metrics['top1'], eval_top5=metrics['top5'], lr=stats['lr'],
                       img_per_s=stats['img_per_s'] * world.world_size, epoch_time_s=time.perf_counter() - epoch_start,
                       img_per_s_device=stats['img_per_s'], data_s=stats['data_s'], compute_s=stats['compute_s'],
                       data_share=stats['data_s'] / max(stats['data_s'] + stats['compute_s'], 1e-9))
            data_total = (data_total[0] + stats['data_s'], data_total[1] + stats['compute_s'])
            obj = checkpoint_state(epoch, epoch + 1, 0, (0.0, 0))
            if world.is_main:
                obj['eval_top1'] = metrics['top1']  # this epoch's own metric (lit avg-checkpoints --top ranks by it)
                write_metrics(run_dir, row)  # a kill before last.pt is saved: the resume drops this row again
                plot_curves(run_dir)
                saver.save_epoch(obj, is_best, metric=metrics['top1'])
                if tracker is not None:
                    tracker.epoch(row, dtm_offsets_px(state.ema.module if state.ema is not None else model, probe)
                                  if probe is not None else {})
                log(f'epoch {epoch}: train loss {row["train_loss"]:.4f}, eval loss {row["eval_loss"]:.4f}, '
                    f'top-1 {row["eval_top1"]:.2f}%, top-5 {row["eval_top5"]:.2f}%, lr {row["lr"]:.3e}, '
                    f'{row["img_per_s"]:.1f} img/s, {row["epoch_time_s"]:.1f}s' + (' (best)' if is_best else '') +
                    f'; {100 * row["data_share"]:.0f}% of the training time waiting for data')
    finally:
        stop.restore()
        if tracker is not None:
            tracker.close()

    if world.is_main:
        from rich.table import Table
        table = Table(title='lit train summary', show_header=False)
        size = ' demo size' if cfg.get('demo_config') else ' custom size' if size_note else ''
        table.add_row('model', f'{cfg["variant"]}{size} ({num_classes} classes, {cfg["img_size"]} px)')
        table.add_row('data', dataset_name(spec))
        table.add_row('best top-1', f'{position.best_metric:.2f}%' if position.best_metric is not None else '-')
        table.add_row('epochs', f'{cfg["epochs"]} ({cfg["epochs"] - start_epoch} this run, step {position.step})')
        table.add_row('processes', str(world.world_size))
        if sum(data_total) > 0:
            table.add_row('data wait', f'{100 * data_total[0] / sum(data_total):.0f}% of the training time '
                                       f'({data_total[0]:.1f}s of {sum(data_total):.1f}s, {cfg["workers"]} worker(s) '
                                       f'per process)')
        table.add_row('time', f'{time.perf_counter() - run_start:.1f}s')
        table.add_row('run directory', str(run_dir))
        reporter.console.print(table)
        log(f'run directory: {run_dir}')
    return run_dir

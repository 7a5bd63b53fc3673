"""One ``lit train`` run: config, data, model, optimizer, run directory, resume, metrics, plots, checkpoints.

The loops themselves are in engine.py. Under torchrun (or SLURM) every process trains a DistributedDataParallel
replica on its shard of each batch (litcli/distributed.py); only rank 0 writes files or prints. Checkpoints are
written every epoch, every ``save_interval`` optimizer steps and on SIGTERM/SIGINT, with the position inside the
epoch, so a resumed run continues exactly where the checkpoint was taken (litcli/resume.py).
"""
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

from litcli.errors import CheckpointError, LitError
from litcli.recipes import resolve_config, scaled_lrs

METRIC_FIELDS = ('epoch', 'step', 'train_loss', 'eval_loss', 'eval_top1', 'eval_top5', 'lr', 'img_per_s',
                 'epoch_time_s')


def world_info() -> Dict[str, int]:
    """rank / world_size / local_rank from torchrun's (or SLURM's, via timm) environment (1 process when absent)."""
    from timm.utils.distributed import world_info_from_env

    local_rank, rank, world_size = world_info_from_env()
    return dict(rank=rank, world_size=world_size, local_rank=local_rank)


class TrainingStopped(LitError):
    """SIGTERM/SIGINT: a checkpoint was saved at a step boundary and the run stopped (the message says how to
    resume). Exit code 143 for SIGTERM and 130 for SIGINT (128 + signal number), so a job script can tell a
    preempted run (resume it) from a finished one (0)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def git_commit() -> Optional[str]:
    """The commit of the source tree lit runs from, if it is a git checkout."""
    try:
        out = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def data_config(cfg: Dict, mean=None, std=None) -> Dict:
    """timm data config of the variant's registered cfg (mean/std unless given) with the run's size and crop."""
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    import litcli.models  # noqa: F401  (registers lit_* in timm)

    pretrained_cfg = get_pretrained_cfg(cfg['variant'])
    data_cfg = resolve_data_config({}, pretrained_cfg=pretrained_cfg.to_dict() if pretrained_cfg else {})
    data_cfg['input_size'] = (3, cfg['img_size'], cfg['img_size'])
    data_cfg['crop_pct'] = cfg['crop_pct']
    data_cfg['interpolation'] = cfg['interpolation']
    if mean is not None:
        data_cfg['mean'], data_cfg['std'] = tuple(mean), tuple(std)
    return data_cfg


def uses_fast_tensors(cfg: Dict, kind: str) -> bool:
    """The built-in sets' in-memory tensor path (padded to size, augmented and normalised on the batch)."""
    return bool(cfg.get('fast_tensors')) and kind != 'folder'


def run_data_config(cfg: Dict, kind: str) -> Dict:
    """The evaluation preprocessing of a run, recorded in its checkpoints (``data_config``) and rebuilt from there
    by every command: the tensor path's pad-to-size for the built-in sets, else timm's resize + center crop."""
    from litcli.transforms import PAD_MODE, normalize_data_config

    dc = data_config(cfg, *data_statistics(kind))
    if uses_fast_tensors(cfg, kind):
        dc['crop_mode'] = PAD_MODE
    return normalize_data_config(dc)


def transforms(cfg: Dict, kind: str):
    """timm train transform (RandomResizedCrop, RandAugment, random erasing) and the run's eval transform."""
    from litcli.transforms import eval_transform, train_transform

    dc = run_data_config(cfg, kind)
    train_tf = train_transform(dc, cfg['aa'], cfg['hflip'], cfg['reprob'], cfg['remode'], cfg['recount'])
    return train_tf, eval_transform(dc)


def resolve_device(cfg: Dict):
    import torch

    name = cfg['device'] or ('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LitError(f'unknown device {name!r}; use cpu, cuda or cuda:N')
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise LitError('--device cuda was asked for but no CUDA device is available; use --device cpu')
    return device


def resolve_amp(cfg: Dict, device):
    """The autocast dtype (None: full precision). CUDA: bf16 where supported, else fp16; CPU: fp32 by default."""
    import torch

    amp = cfg['amp'] if cfg['amp'] is not None else device.type == 'cuda'
    if not amp:
        return None
    name = cfg['amp_dtype'] or ('bfloat16' if device.type != 'cuda' or torch.cuda.is_bf16_supported() else 'float16')
    dtypes = {'bfloat16': torch.bfloat16, 'bf16': torch.bfloat16, 'float16': torch.float16, 'fp16': torch.float16}
    if name not in dtypes:
        raise LitError(f'unknown --amp-dtype {name!r}; use bfloat16 or float16')
    if dtypes[name] is torch.float16 and device.type != 'cuda':
        raise LitError('float16 autocast needs a CUDA device; use --amp-dtype bfloat16 or --no-amp on CPU')
    return dtypes[name]


def is_builtin(data: Optional[str]) -> bool:
    from litcli.data import BUILTIN_DATASETS

    return data is None or str(data) in BUILTIN_DATASETS


def data_statistics(kind: str):
    """Normalisation mean/std: the built-in gray sets' own, None (the model's ImageNet cfg) for folders."""
    if kind == 'folder':
        return None, None
    from litcli.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD
    return (FASHION_MNIST_MEAN,) * 3, (FASHION_MNIST_STD,) * 3


def batch_transforms(cfg: Dict, fast: bool):
    """On-device batch augmentation/normalisation for the built-ins' tensor path (None: per-image transforms)."""
    if not fast:
        return None, None
    from litcli.data import augment_batch, normalize_batch

    return (lambda x: normalize_batch(augment_batch(x, hflip=cfg['hflip'] > 0))), normalize_batch


def dataset_label(spec) -> str:
    """Short name for run directories: the built-in's name, or the folder's own name."""
    return Path(spec.root).name if spec.name == 'folder' else spec.name


def small_base_config() -> Dict[str, Any]:
    """The built-in demo configuration: the official recipe of its variant, overridden by data.py's small config."""
    from litcli.data import default_small_config
    from litcli.recipes import CONFIG_KEYS, recipe

    small = dict(default_small_config())
    model_kwargs = dict(small.pop('model_kwargs', None) or small.pop('model', None) or {})
    variant = small.pop('variant', None) or model_kwargs.pop('variant', None) or 'lit_ti'
    base = recipe(variant)
    for key, value in small.items():
        if key in CONFIG_KEYS:
            base[key] = value
        else:  # anything else is a timm.create_model kwarg (embed_dims, depths, ...)
            model_kwargs[key] = value
    base['model_kwargs'] = model_kwargs
    return base


def new_run_config(config_file, overrides: Dict) -> Dict[str, Any]:
    """The config of a new run: recipe < --config file < flags, where the file's ``data``/``variant`` count exactly
    like the flags. The small built-in demo configuration is the base only when no variant is given anywhere and
    the data is built-in (or not given); an explicit variant always gets its own recipe and size."""
    from litcli.recipes import load_config_file

    file_cfg = load_config_file(config_file) if config_file is not None else {}
    data = overrides.get('data') or file_cfg.get('data')
    variant = overrides.get('variant') or file_cfg.get('variant')
    if variant and data is None:
        raise LitError(f'--variant {variant.removeprefix("lit_")} without --data would train the 300-epoch '
                       f'ImageNet recipe of {variant} on Fashion-MNIST upsampled to 224 px (weeks on a CPU); '
                       f'pass --data DIR (an ImageFolder with train/ and val/), or run lit train with no arguments '
                       f'for the fast built-in demo')
    demo = variant is None and is_builtin(data)
    cfg = resolve_config(overrides=overrides, base=small_base_config() if demo else None, file_cfg=file_cfg)
    cfg['demo_config'] = demo
    return cfg


def model_size_note(cfg: Dict, model) -> Optional[str]:
    """One line when the model is not the paper's size of its variant (the demo configuration, model_kwargs)."""
    kwargs = {k: v for k, v in (cfg.get('model_kwargs') or {}).items() if k != 'img_size'}
    if not kwargs:
        return None
    params = sum(p.numel() for p in model.parameters())
    shape = ', '.join(f'{k}={tuple(v) if isinstance(v, list) else v}' for k, v in kwargs.items())
    what = 'the built-in demo configuration' if cfg.get('demo_config') else 'model_kwargs of the config'
    return (f'model: {what}, the {cfg["variant"]} layout with {shape}: {params / 1e6:.2f}M parameters '
            f'(not the paper\'s {cfg["variant"]})')


def build_model(cfg: Dict, num_classes: int):
    import timm

    import litcli.models  # noqa: F401  (registers lit_* in timm)

    kwargs = dict(cfg['model_kwargs'] or {})
    kwargs.setdefault('img_size', cfg['img_size'])
    try:
        return timm.create_model(cfg['variant'], num_classes=num_classes, drop_path_rate=cfg['drop_path'], **kwargs)
    except RuntimeError as e:  # timm: unknown model name
        raise LitError(f'cannot build {cfg["variant"]}: {e}')


def load_initial_weights(model, path, num_classes: int, log):
    """Weights only (official .pth or a lit checkpoint); the classifier is dropped when the class count differs."""
    from litcli.checkpoint import load_checkpoint, read_checkpoint
    from litcli.models.lit import _unwrap_state_dict

    state_dict = _unwrap_state_dict(read_checkpoint(path))
    head = state_dict.get('head.weight')
    file_classes = head.shape[0] if head is not None and head.ndim == 2 else None
    if file_classes is not None and file_classes != num_classes:
        # Load strictly into a head of the file's size (every other key must fit), then start a new classifier.
        model.reset_classifier(file_classes)
        load_checkpoint(path, model, strict=True)
        model.reset_classifier(num_classes)
        log(f'initial weights from {path} (classifier of {file_classes} classes dropped, new head of {num_classes})')
    else:
        load_checkpoint(path, model, strict=True)
        log(f'initial weights from {path}')


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


def write_metrics(run_dir: Path, row: Dict):
    """Append one epoch to metrics.csv and metrics.jsonl."""
    csv_path = run_dir / 'metrics.csv'
    new = not csv_path.exists()
    with open(csv_path, 'a', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: row[k] for k in METRIC_FIELDS})
    with open(run_dir / 'metrics.jsonl', 'a') as f:
        f.write(json.dumps({k: row[k] for k in METRIC_FIELDS}) + '\n')


def read_metrics(run_dir: Path):
    path = run_dir / 'metrics.jsonl'
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(run_dir: Path):
    """curves.png: train/eval loss, eval top-1/top-5 and lr against epoch (written atomically)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    if not rows:
        return
    epochs = [r['epoch'] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [r['train_loss'] for r in rows], 'o-', label='train')
    axes[0].plot(epochs, [r['eval_loss'] for r in rows], 'o-', label='eval')
    axes[0].set(title='loss', xlabel='epoch')
    axes[1].plot(epochs, [r['eval_top1'] for r in rows], 'o-', label='top-1')
    axes[1].plot(epochs, [r['eval_top5'] for r in rows], 'o-', label='top-5')
    axes[1].set(title='eval accuracy (%)', xlabel='epoch')
    axes[2].plot(epochs, [r['lr'] for r in rows], 'o-')
    axes[2].set(title='learning rate (end of epoch)', xlabel='epoch',
                yscale='log' if all(r['lr'] > 0 for r in rows) else 'linear')
    for ax in axes[:2]:
        ax.legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = run_dir / '.curves.png.tmp'
    fig.savefig(tmp, dpi=110, format='png')
    plt.close(fig)
    os.replace(tmp, run_dir / 'curves.png')


SCHEDULE_KEYS = ('epochs', 'warmup_epochs', 'warmup_lr', 'min_lr', 'lr', 'lr_base', 'scale_lr_bounds', 'sched',
                 'sched_on_epochs', 'batch_size', 'grad_accum_steps')


def rng_state() -> Dict:
    """torch / numpy / python RNG states as tensors and plain types (weights_only-loadable), for exact resume."""
    import random

    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = dict(torch=torch.get_rng_state(), numpy=[kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                     cached], python=_plain(random.getstate()))
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state()  # the current device's (one device per process)
    return state


def set_rng_state(state: Dict):
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state['torch'])
    kind, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    if state.get('cuda') is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])


def _plain(obj):
    """Tuples -> lists, Paths -> str, so the config is plain YAML/JSON and safe under weights_only loading."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _resume_source(resume: str, output: Path, name: Optional[str], log):
    """(path, contents) to resume from: the given file, or for ``auto`` the newest valid checkpoint of the run
    under ``output`` (of ``name`` and its -N copies, if given) with the most recent checkpoint."""
    from litcli.checkpoint import read_checkpoint
    from litcli.resume import find_run_dir, is_resumable_checkpoint, newest_valid_checkpoint

    if resume == 'auto':
        return newest_valid_checkpoint(find_run_dir(output, name) / 'checkpoints', log)
    path = Path(resume)
    raw = read_checkpoint(path)
    if not is_resumable_checkpoint(raw):
        raise CheckpointError(f'{path} is not a lit train checkpoint (no config/optimizer state); '
                              f'use --initial-checkpoint to start from its weights')
    return path, raw


def resume_hint(path: Path) -> str:
    """The command that continues a run from ``path``, for the launch this process is part of."""
    nproc = os.environ.get('LOCAL_WORLD_SIZE')
    if 'TORCHELASTIC_RUN_ID' in os.environ and nproc:
        nodes = int(os.environ.get('WORLD_SIZE', nproc)) // max(int(nproc), 1)
        launcher = f'torchrun --nproc_per_node={nproc} -m litcli train' if nodes == 1 else \
            f'torchrun --nnodes={nodes} --nproc_per_node={nproc} --rdzv_endpoint=HOST:PORT -m litcli train'
    else:
        launcher = 'lit train'
    return f'{launcher} --resume {path}'


def train(variant: Optional[str] = None, config_file=None, overrides: Optional[Dict] = None,
          resume: Optional[str] = None, initial_checkpoint=None, name: Optional[str] = None,
          output='runs/train', exist_ok: bool = False, save_interval: Optional[int] = None,
          keep_last: Optional[int] = None, sync_bn: Optional[bool] = None) -> Path:
    """Run one training and return its run directory. ``overrides`` are the explicit CLI flags (None = not given).

    ``save_interval``/``keep_last``/``sync_bn`` (None: the resumed checkpoint's, else 0 / 3 / off): a checkpoint
    every N optimizer steps (0: epoch ends only), how many step checkpoints to keep, SyncBatchNorm (CUDA only).
    Raises TrainingStopped after a SIGTERM/SIGINT (a checkpoint was saved at the next step boundary).
    """
    import torch.distributed as dist

    from litcli.distributed import init_distributed, shutdown

    env_world = world_info()  # before the process group exists: decides who prints
    main_process = env_world['rank'] == 0
    reporter = Reporter(main_process, (overrides or {}).get('log_interval') or 50)
    log = reporter.log
    output = Path(output)
    overrides = dict(overrides or {})
    if variant is not None:
        overrides['variant'] = variant

    # ---- config: recipe < --config file < flags; on resume the checkpoint's config replaces the recipe ----
    checkpoint, resume_file = None, None
    if resume is not None:
        resume_file, checkpoint = _resume_source(resume, output, name, log)
        saved = checkpoint['config']
        if overrides.get('variant') and overrides['variant'] != saved['variant']:
            raise CheckpointError(f'{resume_file} is a {saved["variant"]} run, not {overrides["variant"]}; '
                                  f'drop --variant or resume another run')
        cfg = resolve_config(config_file=config_file, overrides=overrides, base=saved)
        cfg['variant'] = saved['variant']
    else:
        cfg = new_run_config(config_file, overrides)
    saved_options = (checkpoint or {}).get('run_options') or {}
    save_interval = saved_options.get('save_interval', 0) if save_interval is None else save_interval
    keep_last = saved_options.get('keep_last', 3) if keep_last is None else keep_last
    device = resolve_device(cfg)
    if sync_bn is None:  # as the resumed run did, where it can (SyncBatchNorm does not run on CPU)
        sync_bn = saved_options.get('sync_bn', False) and device.type == 'cuda'
    if sync_bn and device.type != 'cuda':
        raise LitError('--sync-bn needs CUDA devices (SyncBatchNorm cannot run on CPU); drop --sync-bn: on CPU the '
                       'BatchNorm statistics are averaged across processes before each evaluation instead')
    owns_group = not (dist.is_available() and dist.is_initialized())
    world = init_distributed(device)
    try:
        return _train(cfg=cfg, checkpoint=checkpoint, resume_file=resume_file, world=world, device=device,
                      reporter=reporter, output=output, name=name, exist_ok=exist_ok,
                      initial_checkpoint=initial_checkpoint, save_interval=save_interval, keep_last=keep_last,
                      sync_bn=sync_bn)
    finally:
        if owns_group:
            shutdown()


def _train(*, cfg, checkpoint, resume_file, world, device, reporter, output, name, exist_ok, initial_checkpoint,
           save_interval, keep_last, sync_bn):
    """The body of ``train`` once the config is resolved and the process group is up."""
    import torch
    from torch.utils.data import DataLoader

    from timm.utils import random_seed

    from litcli.checkpoint import save_checkpoint
    from litcli.data import build_datasets, collate_readable, resolve_data
    from litcli.distributed import (ResumableSampler, ShardSampler, StopRequest, all_gather_object, all_reduce_sum,
                                    any_rank, broadcast_object, ignore_stop_signals, process_device, train_sampler)
    from litcli.engine import NonFiniteLossError, autocast_context, evaluate, train_one_epoch
    from litcli.env import collect_env
    from litcli.optim import create_optimizer, create_scheduler
    from litcli.resume import (is_run_of, move_earlier_run_aside, remove_stale_temporaries, save_step_checkpoint,
                               truncate_metrics)
    from litcli.rundir import new_run_dir

    main_process = world.is_main
    log = reporter.log
    device = process_device(device, world)
    random_seed(cfg['seed'], world.rank)  # torch, numpy and python RNGs (timm transforms/Mixup use the latter)
    amp_dtype = resolve_amp(cfg, device)

    # ---- data: ImageFolder trees through timm transforms; built-ins optionally as batched tensors ----
    requested_data, requested_dir = cfg['data'], cfg['data_dir']
    kind, root = resolve_data(requested_data, requested_dir)
    # Recorded as absolute paths (a built-in by its name), so lit eval/--resume work from any folder.
    cfg['data'] = str(Path(root).resolve()) if kind == 'folder' else kind
    cfg['data_dir'] = str(Path(cfg['data_dir']).resolve()) if cfg['data_dir'] else None
    fast = uses_fast_tensors(cfg, kind)
    eval_data_config = run_data_config(cfg, kind)
    train_tf, eval_tf = transforms(cfg, kind)
    train_ds, val_ds, spec = build_datasets(requested_data, data_dir=requested_dir, train_transform=train_tf,
                                            eval_transform=eval_tf, strict_data=cfg['strict_data'],
                                            fast_tensors=fast, img_size=cfg['img_size'])
    train_batch_tf, eval_batch_tf = batch_transforms(cfg, fast)
    if fast:
        log('built-in data as in-memory tensors: random horizontal flip on the batch; --aa/--reprob unused')
    num_classes = spec.num_classes
    if cfg['num_classes'] is not None and cfg['num_classes'] != num_classes:
        raise LitError(f'--num-classes {cfg["num_classes"]} but the dataset {dataset_label(spec)} has '
                       f'{num_classes} classes; drop --num-classes or use matching data')
    cfg['num_classes'] = num_classes
    if checkpoint is not None and checkpoint.get('num_classes') not in (None, num_classes):
        raise CheckpointError(f'the checkpoint has {checkpoint["num_classes"]} classes but {dataset_label(spec)} has '
                              f'{num_classes}; resume with the data it was trained on')

    lrs = scaled_lrs(cfg, world.world_size)
    use_mixup = cfg['mixup'] > 0 or cfg['cutmix'] > 0
    if use_mixup and cfg['batch_size'] % 2:
        raise LitError(f'Mixup/CutMix needs an even --batch-size (got {cfg["batch_size"]}); '
                       f'change it or pass --mixup 0 --cutmix 0')
    if cfg['aug_repeats'] and world.world_size == 1:
        log(f'repeated augmentation ({cfg["aug_repeats"]} repeats) needs several processes; off for this run')
    # The order of an epoch depends only on seed + epoch (DistributedSampler, also for one process), so a resumed
    # run can skip exactly the batches its checkpoint had consumed. Evaluation: disjoint shards, no padding.
    sampler = ResumableSampler(train_sampler(train_ds, world, cfg['seed'], cfg['aug_repeats']), cfg['batch_size'])
    generator = torch.Generator()  # seeds the loader workers (reseeded every epoch)
    train_loader = DataLoader(train_ds, batch_size=cfg['batch_size'], sampler=sampler, drop_last=True,
                              num_workers=cfg['workers'], pin_memory=device.type == 'cuda', generator=generator,
                              persistent_workers=cfg['workers'] > 0, worker_init_fn=ignore_stop_signals)
    eval_loader = DataLoader(val_ds, batch_size=cfg['batch_size'], shuffle=False,
                             sampler=ShardSampler(len(val_ds), world.rank, world.world_size),
                             num_workers=cfg['workers'], pin_memory=device.type == 'cuda',
                             persistent_workers=cfg['workers'] > 0, worker_init_fn=ignore_stop_signals,
                             collate_fn=collate_readable)
    updates_per_epoch = len(train_loader) // cfg['grad_accum_steps']
    if updates_per_epoch == 0:
        raise LitError(f'the training set ({len(train_ds)} images) is smaller than one update of '
                       f'{cfg["batch_size"]} x {world.world_size} process(es) x {cfg["grad_accum_steps"]} images; '
                       f'lower --batch-size or --grad-accum-steps')

    # ---- model, optimizer, schedule, AMP, EMA ----
    model = build_model(cfg, num_classes)
    size_note = model_size_note(cfg, model)
    if size_note:
        log(size_note)
    if initial_checkpoint is not None and checkpoint is None:
        load_initial_weights(model, initial_checkpoint, num_classes, log)
    if cfg['grad_checkpointing']:
        model.set_grad_checkpointing(True)
    model.to(device)
    if cfg['channels_last']:
        model.to(memory_format=torch.channels_last)
    if sync_bn:  # CUDA only (checked in train); the DTM BatchNorms then normalise over the global batch
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if not world.distributed:
            log('--sync-bn: a single process, so SyncBatchNorm acts as plain BatchNorm')
    optimizer = create_optimizer(model, lr=lrs['lr'], weight_decay=cfg['weight_decay'], offset_lr=lrs['offset_lr'],
                                 opt=cfg['opt'], eps=cfg['opt_eps'], betas=cfg['opt_betas'])
    scheduler = create_scheduler(optimizer, cfg['epochs'], cfg['warmup_epochs'], lrs['warmup_lr'], lrs['min_lr'],
                                 updates_per_epoch, step_on_epochs=cfg['sched_on_epochs'], sched=cfg['sched'])
    loss_scaler = None
    if amp_dtype is torch.float16:
        from timm.utils import NativeScaler
        loss_scaler = NativeScaler(device=device.type)
    model_ema = None
    if cfg['model_ema']:
        from timm.utils import ModelEmaV3
        model_ema = ModelEmaV3(model, decay=cfg['model_ema_decay'], use_warmup=cfg['model_ema_warmup'])
    mixup_fn = None
    if use_mixup:
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy
        mixup_fn = Mixup(mixup_alpha=cfg['mixup'], cutmix_alpha=cfg['cutmix'], prob=cfg['mixup_prob'],
                         switch_prob=cfg['mixup_switch_prob'], mode=cfg['mixup_mode'],
                         label_smoothing=cfg['smoothing'], num_classes=num_classes)
        loss_fn = SoftTargetCrossEntropy()
    elif cfg['smoothing'] > 0:
        from timm.loss import LabelSmoothingCrossEntropy
        loss_fn = LabelSmoothingCrossEntropy(smoothing=cfg['smoothing'])
    else:
        loss_fn = torch.nn.CrossEntropyLoss()

    start_epoch, start_batch, num_updates, best_top1, loss_totals = 0, 0, 0, None, (0.0, 0)
    if checkpoint is not None:
        model.load_state_dict(checkpoint['model'])
        optimizer.load_state_dict(checkpoint['optimizer'])
        saved = checkpoint['config']
        if all(saved.get(k) == cfg[k] for k in SCHEDULE_KEYS):
            scheduler.load_state_dict(checkpoint['scheduler'])
        else:  # e.g. a larger --epochs: keep the new plan (timm's way), positioned at the saved epoch/step below
            log('schedule settings changed since the checkpoint: the LR schedule follows the new config')
        if loss_scaler is not None and checkpoint.get('scaler'):
            loss_scaler.load_state_dict(checkpoint['scaler'])
        if model_ema is not None and checkpoint.get('ema'):
            model_ema.load_state_dict(checkpoint['ema'])
        # resume_epoch/resume_batch: where the run goes on (a step checkpoint is part-way into an epoch)
        start_epoch = checkpoint.get('resume_epoch', checkpoint['epoch'] + 1)
        start_batch = checkpoint.get('resume_batch', 0)
        num_updates = checkpoint['step']
        best_top1 = checkpoint.get('best_metric')
        if start_batch:
            saved_world = checkpoint.get('world_size', 1)
            if (saved_world, saved['batch_size'], saved['grad_accum_steps']) != \
                    (world.world_size, cfg['batch_size'], cfg['grad_accum_steps']):
                raise CheckpointError(
                    f'{resume_file} was saved part-way into epoch {start_epoch} with {saved_world} process(es), '
                    f'batch {saved["batch_size"]} x {saved["grad_accum_steps"]} accumulation; resume it with the '
                    f'same, or resume an epoch-end checkpoint (best.pt, or last.pt after an epoch)')
            loss_totals = tuple(checkpoint.get('epoch_loss_totals') or (0.0, 0))
        scheduler.step(start_epoch)  # the optimizer state carried the old lr: set the lr of this position
        if not cfg['sched_on_epochs']:
            scheduler.step_update(num_updates=num_updates)
        rngs = checkpoint.get('rng_ranks') or [checkpoint.get('rng')]
        if len(rngs) == world.world_size and rngs[world.rank]:
            set_rng_state(rngs[world.rank])
        elif checkpoint.get('rng'):
            log(f'the checkpoint holds the random states of {len(rngs)} process(es), this run has '
                f'{world.world_size}: random streams are re-seeded (the run is not bit-identical to an '
                f'uninterrupted one)')

    # DDP after the weights are final (it broadcasts rank 0's parameters and buffers at construction). The
    # unwrapped model is what is saved, evaluated and averaged into the EMA.
    train_model = model
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda' else None,
                                              find_unused_parameters=False)
    if cfg['torchcompile']:
        train_model = torch.compile(train_model)

    # ---- run directory (rank 0; the others learn its path): resuming a run's checkpoint continues in its folder --
    run_dir, setup_error = None, None
    if main_process:
        try:
            resumed_dir = resume_file.parent.parent if checkpoint is not None else None
            if resumed_dir is not None and (resumed_dir / 'config.yaml').exists() and \
                    (name is None or is_run_of(resumed_dir.name, name)):
                run_dir = resumed_dir
            else:
                run_dir = new_run_dir(output, name or f'{cfg["variant"]}-{dataset_label(spec)}', exist_ok=exist_ok)
            if run_dir == resumed_dir:  # rows of epochs the resumed checkpoint had not finished are written again
                truncate_metrics(run_dir, start_epoch)
            else:  # --exist-ok on a used name: the earlier run's files go aside (never mixed, never deleted)
                moved = move_earlier_run_aside(run_dir)
                if moved is not None:
                    log(f'--exist-ok: {run_dir} held an earlier run; its files were moved to {moved}')
            (run_dir / 'checkpoints').mkdir(exist_ok=True)
            remove_stale_temporaries(run_dir / 'checkpoints')
            import yaml
            (run_dir / 'config.yaml').write_text(yaml.safe_dump(_plain(cfg), sort_keys=False))
            env = {**collect_env(), **world.as_dict(), 'git_commit': git_commit(), 'device': str(device),
                   'amp_dtype': str(amp_dtype).removeprefix('torch.') if amp_dtype else None}
            (run_dir / 'env.json').write_text(json.dumps(env, indent=2) + '\n')
        except (LitError, OSError) as e:
            setup_error = str(e) if isinstance(e, LitError) else f'cannot write the run directory ({e})'
    run_dir, setup_error = broadcast_object((run_dir, setup_error), world)
    if setup_error:
        raise LitError(setup_error)
    ckpt_dir = run_dir / 'checkpoints'
    log(f'run directory: {run_dir}')
    log(f'data: {spec.description}')
    backend = f', {torch.distributed.get_backend()}' if world.distributed else ''
    log(f'{world.world_size} process(es){backend}: per-device batch {cfg["batch_size"]} x {world.world_size} '
        f'process(es) x {cfg["grad_accum_steps"]} accumulation = global batch {lrs["global_batch"]}; '
        f'scaled lr {lrs["lr"]:.3g} (offset group {lrs["offset_lr"]:.3g}), warmup lr {lrs["warmup_lr"]:.3g}, '
        f'min lr {lrs["min_lr"]:.3g}' + ('; SyncBatchNorm' if sync_bn else ''))
    log(f'{cfg["variant"]} on {dataset_label(spec)} ({spec.train_size} train / {spec.val_size} val images, '
        f'{num_classes} classes), {device}{" " + str(amp_dtype).removeprefix("torch.") + " autocast" if amp_dtype else " fp32"}; '
        f'global batch {lrs["global_batch"]}, lr {lrs["lr"]:.3g} (offset {lrs["offset_lr"]:.3g}), '
        f'warmup lr {lrs["warmup_lr"]:.3g}, min lr {lrs["min_lr"]:.3g}, {cfg["epochs"]} epochs x '
        f'{updates_per_epoch} updates' + (f'; resuming at epoch {start_epoch}, step {num_updates}' +
                                           (f', batch {start_batch}' if start_batch else '')
                                           if checkpoint is not None else ''))
    if save_interval:
        log(f'checkpoints every {save_interval} steps (the newest {keep_last} kept) and every epoch')

    run_options = dict(save_interval=save_interval, keep_last=keep_last, sync_bn=bool(sync_bn))

    def checkpoint_state(epoch_done: int, resume_epoch: int, resume_batch: int, totals) -> Optional[Dict]:
        """The full training state (rank 0; None elsewhere). Collective: every rank must call it."""
        rngs = all_gather_object(rng_state(), world)  # each rank's random streams, for an exact resume
        if not main_process:
            return None
        return dict(
            model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=_plain(scheduler.state_dict()),
            scaler=loss_scaler.state_dict() if loss_scaler is not None else None,
            ema=model_ema.state_dict() if model_ema is not None else None,
            epoch=epoch_done, step=num_updates, resume_epoch=resume_epoch, resume_batch=resume_batch,
            epoch_loss_totals=[float(totals[0]), int(totals[1])], best_metric=best_top1, config=_plain(cfg),
            variant=cfg['variant'], model_kwargs=_plain({**(cfg['model_kwargs'] or {}), 'img_size': cfg['img_size']}),
            class_names=list(spec.class_names), num_classes=num_classes, data_config=_plain(eval_data_config),
            eval_weights='ema' if model_ema is not None else 'model', rng=rngs[0],
            rng_ranks=rngs if world.world_size > 1 else None, world_size=world.world_size, run_options=run_options)

    stop = StopRequest()

    def on_update(state: Dict) -> bool:
        """After each optimizer step: save every ``save_interval`` steps, and save + stop on a signal."""
        nonlocal num_updates
        num_updates = state['step']
        stopping = any_rank(stop.requested, world, device)  # every rank stops at the same step
        periodic = bool(save_interval) and num_updates % save_interval == 0
        if periodic or stopping:
            obj = checkpoint_state(state['epoch'] - 1, state['epoch'], state['batch'], state['loss_totals'])
            if obj is not None:
                if periodic:
                    save_step_checkpoint(obj, ckpt_dir, num_updates, keep_last)
                else:
                    save_checkpoint(obj, ckpt_dir / 'last.pt')
        return stopping

    amp_autocast = autocast_context(device, amp_dtype)
    run_start = time.perf_counter()
    if start_epoch >= cfg['epochs']:
        log(f'nothing to do: the checkpoint already finished {cfg["epochs"]} epochs (raise --epochs to go on)')
    stop.install()
    try:
        for epoch in range(start_epoch, cfg['epochs']):
            skip = start_batch if epoch == start_epoch else 0
            sampler.set_epoch(epoch, skip)
            generator.manual_seed(cfg['seed'] + epoch)
            for dataset in (train_ds, val_ds):  # unreadable files are counted per epoch
                getattr(dataset, 'reset_skipped', lambda: None)()
            epoch_start = time.perf_counter()
            reporter.start_epoch(epoch, updates_per_epoch)
            try:
                stats = train_one_epoch(
                    train_model, train_loader, optimizer, loss_fn, device, epoch, num_updates, scheduler=scheduler,
                    step_scheduler_per_update=not cfg['sched_on_epochs'], mixup_fn=mixup_fn,
                    amp_autocast=amp_autocast, loss_scaler=loss_scaler, clip_grad=cfg['clip_grad'] or None,
                    grad_accum_steps=cfg['grad_accum_steps'], model_ema=model_ema, channels_last=cfg['channels_last'],
                    batch_transform=train_batch_tf, on_step=reporter.step, start_batch=skip,
                    loss_totals=loss_totals if skip else (0.0, 0), on_update=on_update)
            except (NonFiniteLossError, KeyboardInterrupt):
                reporter.end_epoch()
                kept = ckpt_dir / 'last.pt'
                kept = f'continue with --resume {kept}' if kept.exists() else 'no checkpoint yet'
                log(f'stopped in epoch {epoch}; run directory: {run_dir} ({kept})')
                raise
            finally:
                reporter.end_epoch()
            num_updates = stats['num_updates']
            if world.distributed:  # the epoch's train loss over every rank's samples
                loss_sum, loss_count = all_reduce_sum(list(stats['loss_totals']), world, device)
                stats['train_loss'] = loss_sum / max(loss_count, 1)
            if stats['stopped']:
                last = (ckpt_dir / 'last.pt').resolve()
                message = (f'{stop.name} received: saved {last} at step {num_updates} (epoch {epoch}, '
                           f'{stats["batch"] // cfg["grad_accum_steps"]}/{updates_per_epoch} updates); resume with: '
                           f'{resume_hint(last)}')
                log(message)
                raise TrainingStopped(message, stop.exit_code)
            scheduler.step(epoch + 1)  # per-epoch schedules advance here; per-update ones ignore it
            if world.distributed and not sync_bn:  # each replica's BatchNorm statistics -> their average
                from timm.utils import distribute_bn
                distribute_bn(model, world.world_size, reduce=True)
                if model_ema is not None:
                    distribute_bn(model_ema.module, world.world_size, reduce=True)
            eval_model = model_ema.module if model_ema is not None else model
            metrics = evaluate(eval_model, eval_loader, device, amp_autocast, channels_last=cfg['channels_last'],
                               batch_transform=eval_batch_tf, world=world)
            for dataset in (train_ds, val_ds):
                skipped = int(all_reduce_sum([getattr(dataset, 'skipped', 0)], world, device)[0])
                if skipped and main_process:
                    message = dataset.skipped_message() or f'skipped {skipped} unreadable image file(s)'
                    log(f'warning (epoch {epoch}, all processes: {skipped}): {message}')
            is_best = best_top1 is None or metrics['top1'] > best_top1
            best_top1 = max(best_top1 or 0.0, metrics['top1'])
            row = dict(epoch=epoch, step=num_updates, train_loss=stats['train_loss'], eval_loss=metrics['loss'],
                       eval_top1=metrics['top1'], eval_top5=metrics['top5'], lr=stats['lr'],
                       img_per_s=stats['img_per_s'] * world.world_size, epoch_time_s=time.perf_counter() - epoch_start)
            state = checkpoint_state(epoch, epoch + 1, 0, (0.0, 0))
            if main_process:
                write_metrics(run_dir, row)  # a kill before last.pt is saved: the resume drops this row again
                plot_curves(run_dir)
                save_checkpoint(state, ckpt_dir / 'last.pt')
                if is_best:
                    save_checkpoint(state, ckpt_dir / 'best.pt')
                log(f'epoch {epoch}: train loss {row["train_loss"]:.4f}, eval loss {row["eval_loss"]:.4f}, '
                    f'top-1 {row["eval_top1"]:.2f}%, top-5 {row["eval_top5"]:.2f}%, lr {row["lr"]:.3e}, '
                    f'{row["img_per_s"]:.1f} img/s, {row["epoch_time_s"]:.1f}s' + (' (best)' if is_best else ''))
    finally:
        stop.restore()

    if main_process:
        from rich.table import Table
        table = Table(title='lit train summary', show_header=False)
        size = ' demo size' if cfg.get('demo_config') else ' custom size' if size_note else ''
        table.add_row('model', f'{cfg["variant"]}{size} ({num_classes} classes, {cfg["img_size"]} px)')
        table.add_row('data', dataset_label(spec))
        table.add_row('best top-1', f'{best_top1:.2f}%' if best_top1 is not None else '-')
        table.add_row('epochs', f'{cfg["epochs"]} ({cfg["epochs"] - start_epoch} this run, step {num_updates})')
        table.add_row('processes', str(world.world_size))
        table.add_row('time', f'{time.perf_counter() - run_start:.1f}s')
        table.add_row('run directory', str(run_dir))
        reporter.console.print(table)
        log(f'run directory: {run_dir}')
    return run_dir

"""``lit eval``: top-1/top-5/loss and throughput of a checkpoint (official ``.pth`` or ``lit train``) on a dataset."""
import json
import os
from pathlib import Path
from typing import Dict, Optional

from litcli.errors import CheckpointError, LitError
from litcli.sizes import check_img_size


def _file_num_classes(state_dict: Dict) -> Optional[int]:
    head = state_dict.get('head.weight')
    return int(head.shape[0]) if head is not None and head.ndim == 2 else None


def run_eval(checkpoint, variant: Optional[str] = None, data: Optional[str] = None, data_dir=None,
             img_size: Optional[int] = None, crop_pct: Optional[float] = None, batch_size: int = 64,
             workers: Optional[int] = None, device: Optional[str] = None, out=None, strict_data: bool = False,
             use_ema: Optional[bool] = None) -> Dict:
    """Evaluate ``checkpoint`` and write ``eval.json`` into ``out`` (default ``runs/eval/<name>``); returns the result.

    Under torchrun every process evaluates a disjoint shard and the sums are all-reduced (exact counts); rank 0
    writes eval.json and returns the result, the other ranks return None.

    A ``lit train`` checkpoint carries its variant, model kwargs, classes, data and eval preprocessing, so
    ``variant`` and ``data`` are optional; an official file needs both. The images go through the checkpoint's
    recorded eval transform (official files: the variant's resize by crop_pct, bicubic, center crop, ImageNet
    mean/std) at its size, with ``img_size``/``crop_pct`` overrides. ``use_ema``: the EMA or the raw weights of an
    EMA run (default: those its metrics came from). Unreadable images are left out and counted (``skipped``).
    """
    import torch
    from torch.utils.data import DataLoader

    from litcli.checkpoint import detect_variant, inference_data_config, load_checkpoint, read_checkpoint
    from litcli.data import build_eval_dataset, collate_readable, resolve_data
    from litcli.distributed import (ShardSampler, all_reduce_sum, ignore_stop_signals, init_distributed,
                                    process_device, shutdown)
    from litcli.engine import autocast_context, evaluate
    from litcli.info import param_counts
    from litcli.names import model_name
    from litcli.models.lit import _unwrap_state_dict
    from litcli.recipes import recipe
    from litcli.rundir import new_run_dir
    from litcli.train import batch_transforms, build_model, resolve_amp, resolve_device
    from litcli.transforms import PAD_MODE, eval_transform

    raw = read_checkpoint(checkpoint)
    own = isinstance(raw.get('config'), dict) and isinstance(raw.get('model'), dict) and 'variant' in raw
    wanted = None if variant is None else model_name(variant)
    if own:
        cfg = dict(raw['config'])
        if wanted is not None and wanted != raw['variant']:
            raise CheckpointError(f'{checkpoint} is a {raw["variant"]} checkpoint, not {wanted}; '
                                  f'drop --variant or pass --variant {raw["variant"].removeprefix("lit_")}')
        num_classes = raw['num_classes']
        class_names = raw.get('class_names')
    else:
        guess = raw.get('variant') or detect_variant(raw)  # a lit export of an official file records it
        if wanted is None and raw.get('variant'):
            wanted = raw['variant']
        elif wanted is not None and raw.get('variant') not in (None, wanted):
            raise CheckpointError(f'{checkpoint} is a {raw["variant"]} checkpoint, not {wanted}; '
                                  f'drop --variant or pass --variant {raw["variant"].removeprefix("lit_")}')
        if wanted is None:
            hint = f'it looks like {guess}: pass --variant {guess.removeprefix("lit_")}' if guess else \
                'pass --variant ti|s|m|b'
            raise LitError(f'{checkpoint} is an official-format file without its variant; {hint}')
        cfg = recipe(wanted)
        num_classes = _file_num_classes(_unwrap_state_dict(raw)) or 1000
        class_names = None
    cfg['drop_path'] = 0.0
    if img_size is not None:
        cfg['img_size'] = check_img_size(img_size, error=LitError)
    if data is None and not own:
        raise LitError('an official checkpoint needs --data (an ImageFolder with one subfolder per class)')
    recorded_data = data is None
    if recorded_data:
        data, data_dir = cfg.get('data'), data_dir or cfg.get('data_dir')
    try:
        kind, _ = resolve_data(data, data_dir)
    except LitError as e:
        if not recorded_data:
            raise
        raise LitError(f'the data {checkpoint} was trained on ({data}, recorded in the checkpoint) is not '
                       f'available here ({e}); pass --data with its location') from None

    # The model is built at the eval size; load_checkpoint resamples position tables trained at another size.
    model = build_model(cfg, num_classes)
    loaded = load_checkpoint(checkpoint, model, strict=True, use_ema=use_ema)
    data_cfg = inference_data_config(raw, model, img_size=img_size, crop_pct=crop_pct)
    # Built-in data for a padded run: its in-memory tensors, padded and normalised on the batch, are the same
    # pixels as data_cfg's PadOrResize on each image (tested), only faster.
    fast = kind != 'folder' and data_cfg['crop_mode'] == PAD_MODE
    _, batch_tf = batch_transforms(cfg, fast)
    ds, spec = build_eval_dataset(data, data_dir=data_dir, transform=eval_transform(data_cfg),
                                  strict_data=strict_data, fast_tensors=fast, img_size=data_cfg['input_size'][-1])
    if spec.num_classes != num_classes:
        raise CheckpointError(f'{checkpoint} has {num_classes} classes but {spec.root} has {spec.num_classes}; '
                              f'evaluate on the data it was trained for')
    if class_names is not None and list(class_names) != list(spec.class_names):
        raise CheckpointError(f'the class folders of {spec.root} differ from the classes {checkpoint} was trained '
                              f'on; evaluate on matching data')

    dev = resolve_device({'device': device})
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    world = init_distributed(dev)
    try:
        dev = process_device(dev, world)
        amp_dtype = resolve_amp({'amp': None, 'amp_dtype': None}, dev)
        model.to(dev)
        workers = min(4, os.cpu_count() or 1) if workers is None else workers
        loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                            sampler=ShardSampler(len(ds), world.rank, world.world_size), pin_memory=dev.type == 'cuda',
                            collate_fn=collate_readable, worker_init_fn=ignore_stop_signals)
        metrics = evaluate(model, loader, dev, autocast_context(dev, amp_dtype), batch_transform=batch_tf,
                           world=world)
        skipped = int(all_reduce_sum([getattr(ds, 'skipped', 0)], world, dev)[0])
    finally:
        if owns_group:
            shutdown()
    if not world.is_main:
        return None
    result = dict(top1=metrics['top1'], top5=metrics['top5'], loss=metrics['loss'], img_per_s=metrics['img_per_s'],
                  num_images=metrics['num_images'], top1_correct=metrics['top1_correct'],
                  top5_correct=metrics['top5_correct'], skipped=skipped, world_size=world.world_size,
                  img_size=data_cfg['input_size'][-1], crop_pct=data_cfg['crop_pct'],
                  crop_mode=data_cfg['crop_mode'], interpolation=data_cfg['interpolation'],
                  param_count=param_counts(model)['params'], weights=loaded['loaded_weights'],
                  checkpoint=str(checkpoint), variant=cfg['variant'], data=dataset_name(spec), device=str(dev),
                  amp_dtype=str(amp_dtype).removeprefix('torch.') if amp_dtype else None)
    if skipped:
        result['skipped_message'] = ds.skipped_message()
    out_dir = Path(out) if out is not None else new_run_dir('runs/eval', f'{cfg["variant"]}-{dataset_name(spec)}')
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / 'eval.json').write_text(json.dumps(result, indent=2) + '\n')
    except OSError as e:
        raise LitError(f'cannot write {out_dir / "eval.json"} ({e.strerror}); pass a writable --out')
    result['path'] = str(out_dir / 'eval.json')
    return result


def dataset_name(spec) -> str:
    """A built-in's name, else the dataset folder's own name: ``imagenet`` for ``/data/imagenet/val`` (the split
    folder is not the dataset)."""
    if spec.name != 'folder':
        return spec.name
    root = Path(spec.root)
    split_names = ('train', 'val', 'validation', 'test')
    return root.parent.name if root.name.lower() in split_names and root.parent.name else root.name


def print_eval(result: Dict):
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f'lit eval: {result["variant"]} on {result["data"]}', show_header=False)
    table.add_row('top-1', f'{result["top1"]:.2f}%')
    table.add_row('top-5', f'{result["top5"]:.2f}%')
    table.add_row('loss', f'{result["loss"]:.4f}')
    table.add_row('images/s', f'{result["img_per_s"]:.1f} ({result["num_images"]} images, {result["device"]})')
    if result.get('skipped'):
        table.add_row('skipped', f'{result["skipped"]} unreadable image file(s), not scored')
    table.add_row('input', f'{result["img_size"]} px, crop_pct {result["crop_pct"]}, {result["interpolation"]}')
    table.add_row('params', f'{result["param_count"]:,}' + (' (EMA weights)' if result.get('weights') == 'ema' else ''))
    table.add_row('written', result['path'])
    Console().print(table)

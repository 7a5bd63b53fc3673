"""``lit eval``: top-1/top-5, loss and throughput of a checkpoint (official ``.pth``, ``lit train``, export) on a
dataset, written to eval.json."""
import json
import os
from pathlib import Path
from typing import Dict, Optional

from litcli.core.errors import CheckpointError, LitError


def run(checkpoint: Path, variant: Optional[str] = None, data: Optional[str] = None, data_dir: Optional[str] = None,
        img_size: Optional[int] = None, crop_pct: Optional[float] = None, batch_size: int = 64,
        workers: Optional[int] = None, device: Optional[str] = None, out: Optional[Path] = None,
        strict_data: bool = False, use_ema: Optional[bool] = None) -> Optional[Dict]:
    """Evaluate ``checkpoint`` and write ``eval.json`` into ``out`` (default ``runs/eval/<variant>-<data>``).

    A ``lit train`` checkpoint carries its variant, classes, data and eval preprocessing, so ``variant`` and
    ``data`` are optional; an official file needs both. The images go through the checkpoint's recorded eval
    transform (official files: the variant's resize by crop_pct, bicubic, center crop, ImageNet mean/std) at its
    size, with ``img_size``/``crop_pct`` overrides; ``use_ema``: see ``core.factory.select_weights``. Unreadable
    images are left out and counted (``skipped``). Under torchrun every process evaluates a disjoint shard and the
    sums are all-reduced (exact counts); rank 0 writes eval.json and returns the result, the others return None.
    """
    from torch.utils.data import DataLoader

    from litcli.core.data import build_eval_dataset, collate_readable, dataset_name, normalize_batch, resolve_data
    from litcli.core.engine import evaluate
    from litcli.core.factory import load_model, param_counts
    from litcli.core.rundir import new_run_dir
    from litcli.core.runtime import (ShardSampler, all_reduce_sum, autocast_context, distributed_session, dtype_name,
                                     ignore_stop_signals, process_device, resolve_amp, resolve_device)
    from litcli.core.transforms import PAD_MODE, eval_transform

    loaded = load_model(checkpoint, variant, use_ema=use_ema, img_size=img_size, crop_pct=crop_pct,
                        require_variant=True)
    train_config = loaded.train_config
    if data is None and train_config is None:
        raise LitError('an official checkpoint needs --data (an ImageFolder with one subfolder per class)')
    recorded_data = data is None
    if recorded_data:
        data, data_dir = train_config.get('data'), data_dir or train_config.get('data_dir')
    try:
        kind, _ = resolve_data(data, data_dir)
    except LitError as e:
        if not recorded_data:
            raise
        raise LitError(f'the data {checkpoint} was trained on ({data}, recorded in the checkpoint) is not '
                       f'available here ({e}); pass --data with its location') from None
    data_cfg = loaded.data_config
    # Built-in data for a padded run: its in-memory tensors, padded and normalised on the batch, are the same
    # pixels as data_cfg's PadOrResize on each image (tested), only faster.
    fast = kind != 'folder' and data_cfg['crop_mode'] == PAD_MODE
    ds, spec = build_eval_dataset(data, data_dir=data_dir, transform=eval_transform(data_cfg),
                                  strict_data=strict_data, fast_tensors=fast, img_size=loaded.img_size)
    if spec.num_classes != loaded.num_classes:
        raise CheckpointError(f'{checkpoint} has {loaded.num_classes} classes but {spec.root} has '
                              f'{spec.num_classes}; evaluate on the data it was trained for')
    if train_config is not None and loaded.class_names is not None and \
            list(loaded.class_names) != list(spec.class_names):
        raise CheckpointError(f'the class folders of {spec.root} differ from the classes {checkpoint} was trained '
                              f'on; evaluate on matching data')

    dev = resolve_device(device)
    with distributed_session(dev) as world:
        dev = process_device(dev, world)
        amp_dtype = resolve_amp(dev)
        model = loaded.model.to(dev)
        workers = min(4, os.cpu_count() or 1) if workers is None else workers
        loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                            sampler=ShardSampler(len(ds), world.rank, world.world_size), pin_memory=dev.type == 'cuda',
                            collate_fn=collate_readable, worker_init_fn=ignore_stop_signals)
        metrics = evaluate(model, loader, dev, autocast_context(dev, amp_dtype),
                           batch_transform=normalize_batch if fast else None, world=world)
        skipped = int(all_reduce_sum([getattr(ds, 'skipped', 0)], world, dev)[0])
    if not world.is_main:
        return None
    result = dict(top1=metrics['top1'], top5=metrics['top5'], loss=metrics['loss'], img_per_s=metrics['img_per_s'],
                  num_images=metrics['num_images'], top1_correct=metrics['top1_correct'],
                  top5_correct=metrics['top5_correct'], skipped=skipped, world_size=world.world_size,
                  img_size=loaded.img_size, crop_pct=data_cfg['crop_pct'], crop_mode=data_cfg['crop_mode'],
                  interpolation=data_cfg['interpolation'], param_count=param_counts(model)['params'],
                  weights=loaded.weights, checkpoint=str(checkpoint), variant=loaded.variant,
                  data=dataset_name(spec), device=str(dev), amp_dtype=dtype_name(amp_dtype))
    if skipped:
        result['skipped_message'] = ds.skipped_message()
    out_dir = Path(out) if out is not None else new_run_dir('runs/eval', f'{loaded.variant}-{dataset_name(spec)}')
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / 'eval.json').write_text(json.dumps(result, indent=2) + '\n')
    except OSError as e:
        raise LitError(f'cannot write {out_dir / "eval.json"} ({e.strerror}); pass a writable --out')
    result['path'] = str(out_dir / 'eval.json')
    return result


def print_result(result: Dict):
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

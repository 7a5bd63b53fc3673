"""``lit data bench``: images/s of the input pipeline alone (read + decode + the recipe's training transforms, to
uint8 batches, no model), for several DataLoader worker counts, so ``-j`` can be sized before a long run.

Each worker count gets a fresh loader over the training split with the run's own sampler/split and per-sample
seeding (``litcli.core.data.loaders``); the first ``warmup`` batches (worker start-up, first file opens) are not timed.
"""
import itertools
import time
from typing import Dict, List, Optional, Sequence

from litcli.core.config import recipe
from litcli.core.data.datasets import build_datasets, resolve_data, run_data_config, run_transforms, uses_fast_tensors


def bench_pipeline(data: str, workers: Sequence[int], variant: str = 'lit_s', img_size: Optional[int] = None,
                   batch_size: int = 64, batches: int = 10, warmup: int = 2, data_dir: Optional[str] = None,
                   seed: int = 0, log=None) -> Dict:
    """{'rows': [{workers, img_per_s, ms_per_batch, images, speedup}], ...} for ``data``'s training split."""
    import torch

    from litcli.core.data.loaders import build_train_loader
    from litcli.core.runtime import World

    cfg = recipe(variant)
    cfg.update(data=data, data_dir=data_dir, seed=seed, batch_size=batch_size, channels_last=False)
    if img_size is not None:
        cfg['img_size'] = img_size
    kind, _ = resolve_data(data, data_dir)
    fast = uses_fast_tensors(cfg, kind)
    train_tf, _ = run_transforms(cfg, kind, uint8=True)
    train, _, spec = build_datasets(data, data_dir, train_transform=train_tf, strict_data=False, seed=seed,
                                    img_size=cfg['img_size'], shuffle_buffer=cfg.get('shuffle_buffer', 1000))
    data_config = run_data_config(cfg, kind)
    rows: List[Dict] = []
    for j in workers:
        cfg['workers'] = j
        device_loader = build_train_loader(train, cfg, World(), torch.device('cpu'), data_config, fast=fast)
        device_loader.set_epoch(0)
        loader = device_loader.loader  # the uint8 batches as the workers deliver them
        it = iter(loader)
        images, n, bytes_per_image = 0, 0, None
        for _ in range(warmup):  # worker start-up and first opens: not timed
            if next(it, None) is None:
                break
        start = time.perf_counter()
        for batch in itertools.islice(it, batches):
            x = batch[0]
            images, n = images + x.shape[0], n + 1
            bytes_per_image = x.element_size() * x[0].numel()
        elapsed = time.perf_counter() - start
        del it
        row = dict(workers=j, images=images, batches=n, seconds=elapsed,
                   img_per_s=images / elapsed if elapsed > 0 else 0.0,
                   ms_per_batch=1000 * elapsed / n if n else None, bytes_per_image=bytes_per_image)
        rows.append(row)
        if log:
            log(f'{j} worker(s): {row["img_per_s"]:.1f} img/s ({images} images in {elapsed:.2f} s)')
    base = rows[0]['img_per_s'] if rows and rows[0]['img_per_s'] else None
    for row in rows:
        row['speedup'] = row['img_per_s'] / base if base else None
    return dict(data=spec.description, kind=kind, variant=cfg['variant'], img_size=cfg['img_size'],
                batch_size=batch_size, batches=batches, warmup=warmup, aa=cfg['aa'], rows=rows,
                transforms=repr(train_tf).replace('\n', ' '))

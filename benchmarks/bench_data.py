"""Input-pipeline figures of issue 19 (README "Data" > "Loader speed"), measured side by side in one run.

1. ImageNet-like JPEGs: the photos in assets/photos re-encoded with random crops at 500x375 (or 375x500), quality
   90, in an image folder (``--images`` train + a tenth as val, 10 classes); the same tree as one tar file and as
   WebDataset shards (``lit data pack``).
2. Pipeline images/s (read + decode + LIT-S's training transforms at 224: RandomResizedCrop, flip, RandAugment;
   uint8 out) for folder / tar / shards at each ``--workers`` count, ``--rounds`` interleaved rounds (the median is
   printed, with each format's ratio to the folder at the same worker count).
3. Bytes per image sent to the device: float32 (the old loader) against uint8 (now), and the same for a batch.
4. The share of a CPU LIT-Ti training step spent waiting for data (``lit train``'s own data_s / compute_s, from
   metrics.jsonl) at -j 0 and -j N.
5. ``--gpu`` (a CUDA device): LIT-S bf16 channels_last training images/s from the image folder at several worker
   counts against synthetic in-memory uint8 batches (the data-free ceiling): is the step data-bound, and from how
   many workers on is it not.

    python benchmarks/bench_data.py --images 3000 --workers 0,1,2 [--out runs/bench-data] [--gpu]
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def make_jpegs(root: Path, n: int, classes: int = 10, seed: int = 0) -> Path:
    """``n`` training + n/10 validation JPEGs at 500x375 / 375x500 from random crops of the shipped photos."""
    from PIL import Image, ImageOps

    rng = random.Random(seed)
    photos = [Image.open(p).convert('RGB') for p in sorted((REPO / 'assets/photos').glob('*.jpg'))]
    for split, count in (('train', n), ('val', max(classes, n // 10))):
        for i in range(count):
            c = i % classes
            folder = root / split / f'class{c:02d}'
            folder.mkdir(parents=True, exist_ok=True)
            img = photos[rng.randrange(len(photos))]
            w, h = img.size
            s = rng.uniform(0.35, 1.0)
            cw, ch = int(w * s), int(h * s)
            x0, y0 = rng.randrange(w - cw + 1), rng.randrange(h - ch + 1)
            size = (500, 375) if rng.random() < 0.75 else (375, 500)
            out = img.crop((x0, y0, x0 + cw, y0 + ch)).resize(size, Image.BICUBIC)
            if rng.random() < 0.5:
                out = ImageOps.mirror(out)
            out.save(folder / f'{split}_{i:06d}.JPEG', quality=90)
    return root


def pipeline_rates(sources, workers, rounds: int, batches: int, batch_size: int):
    """{(format, workers): [img/s per round]} measured interleaved: every (format, workers) once per round."""
    from litcli.core.data.bench import bench_pipeline

    rates = {}
    for r in range(rounds):
        for name, data in sources.items():
            for j in workers:
                rep = bench_pipeline(data, [j], variant='lit_s', batch_size=batch_size, batches=batches, warmup=2)
                rates.setdefault((name, j), []).append(rep['rows'][0]['img_per_s'])
                print(f'round {r + 1}: {name:7s} -j {j}: {rep["rows"][0]["img_per_s"]:.1f} img/s', flush=True)
    return rates


def cpu_data_share(folder: Path, work: Path, workers, steps: int, batch: int):
    """lit train --variant ti at 224 on CPU for ``steps`` steps: the share of time waiting for data, per -j."""
    import yaml

    sub = work / 'ti-subset'
    n = steps * batch
    for split, count in (('train', n), ('val', max(batch, 10))):
        # by file name: image i is of class i mod 10, so every class is in both splits
        for f in sorted((folder / split).rglob('*.JPEG'), key=lambda p: p.name)[:count]:
            dst = sub / split / f.parent.name / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                os.link(f, dst)
    cfg = work / 'ti.yaml'
    cfg.write_text(yaml.safe_dump(dict(warmup_epochs=0, aug_repeats=0)))
    out = {}
    for j in workers:
        name = f'ti-j{j}'
        cmd = [sys.executable, '-m', 'litcli', 'train', '--variant', 'ti', '--data', str(sub), '--config', str(cfg),
               '-b', str(batch), '-j', str(j), '--epochs', '1', '--output', str(work / 'runs'), '--name', name,
               '--exist-ok', '--log-interval', str(max(1, steps // 2)), '--device', 'cpu']
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, 'PYTHONPATH': str(REPO)})
        if proc.returncode != 0:
            raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
        row = json.loads((work / 'runs' / name / 'metrics.jsonl').read_text().splitlines()[-1])
        out[j] = dict(data_share=row['data_share'], data_s=row['data_s'], compute_s=row['compute_s'],
                      img_per_s=row['img_per_s'], wall_s=time.perf_counter() - start,
                      hint='hint:' in proc.stdout)
        print(f'LIT-Ti CPU -j {j}: {100 * row["data_share"]:.1f}% of the step waiting for data '
              f'({row["data_s"]:.1f}s of {row["data_s"] + row["compute_s"]:.1f}s), {row["img_per_s"]:.2f} img/s',
              flush=True)
    return out


def gpu_rates(folder: Path, workers, steps: int, batch: int, device_name: str = 'cuda', variant: str = 'lit_s'):
    """LIT-S bf16 channels_last train img/s on CUDA: from the image folder at each -j, and from synthetic batches
    (``device_name='cpu'``, a small ``variant``: a dry run of this code)."""
    import torch

    from litcli.core.training import engine
    from litcli.core.config import recipe
    from litcli.core.data.datasets import build_datasets, run_data_config, run_transforms
    from litcli.core.modelio.factory import create_model
    from litcli.core.data.loaders import build_train_loader
    from litcli.core.training.optim import create_optimizer
    from litcli.core.runtime import World, autocast_context

    device = torch.device(device_name)
    cfg = recipe(variant)
    cfg.update(batch_size=batch, channels_last=True, data=str(folder), aug_repeats=0)
    dc = run_data_config(cfg, 'folder')
    train_tf, _ = run_transforms(cfg, 'folder', uint8=True)
    train_ds, _, _ = build_datasets(str(folder), train_transform=train_tf)
    model = create_model(variant, num_classes=10, drop_path_rate=0.2).to(device).to(memory_format=torch.channels_last)
    opt = create_optimizer(model, lr=1e-3, weight_decay=0.05, offset_lr=1e-5)
    loss_fn, mixup = engine.build_loss(cfg, 10)
    setup = engine.TrainSetup(model, opt, loss_fn, device, mixup=mixup,
                              autocast=autocast_context(device, torch.bfloat16), channels_last=True)

    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize()

    def timed(loader, n):
        it = iter(loader)
        for _ in range(3):  # warm-up: cudnn/allocator, worker start-up
            x, y = next(it)
            step(x, y)
        sync()
        start = time.perf_counter()
        for _ in range(n):
            x, y = next(it)
            step(x, y)
        sync()
        return n * batch / (time.perf_counter() - start)

    def step(x, y):
        x, y = mixup(x, y) if mixup is not None else (x, y)
        with setup.autocast():
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    out = {}
    for j in workers:
        cfg['workers'] = j
        loader = build_train_loader(train_ds, cfg, World(), device, dc, torch.bfloat16)
        loader.set_epoch(0)
        out[f'folder -j {j}'] = timed(loader, steps)
        print(f'GPU LIT-S bf16 from the folder, -j {j}: {out[f"folder -j {j}"]:.0f} img/s', flush=True)
    loader = build_train_loader(train_ds, {**cfg, 'workers': 0}, World(), device, dc, torch.bfloat16)
    x8 = torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    class Synthetic:
        def __iter__(self):
            while True:
                yield loader.prepare(x8.clone(), 0), y
    out['synthetic'] = timed(Synthetic(), steps)
    print(f'GPU LIT-S bf16 synthetic in-memory batches: {out["synthetic"]:.0f} img/s', flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--images', type=int, default=3000, help='training JPEGs to make (val: a tenth)')
    ap.add_argument('--workers', default='0,1,2')
    ap.add_argument('--rounds', type=int, default=2, help='interleaved rounds of the pipeline measurement')
    ap.add_argument('--batches', type=int, default=8, help='timed batches per measurement')
    ap.add_argument('-b', '--batch-size', type=int, default=32)
    ap.add_argument('--ti-steps', type=int, default=6, help='steps of the CPU LIT-Ti run (0: skip it)')
    ap.add_argument('--ti-batch', type=int, default=16)
    ap.add_argument('--gpu', action='store_true', help='also the CUDA LIT-S data-bound check')
    ap.add_argument('--gpu-workers', default='0,2,4,8,12')
    ap.add_argument('--gpu-steps', type=int, default=30)
    ap.add_argument('--gpu-batch', type=int, default=128)
    ap.add_argument('--gpu-device', default='cuda', help='cpu: a dry run of the --gpu part (with --gpu-variant)')
    ap.add_argument('--gpu-variant', default='lit_s')
    ap.add_argument('--out', type=Path, default=None, help='folder for the data and a JSON report (default: temp)')
    args = ap.parse_args()
    import torch

    # One intra-op thread in this process: -j 0 runs the pipeline here, and torch's thread pool, spinning between the
    # per-image tensor ops, halved its rate on a shared 2-core machine (the workers always run with one thread).
    torch.set_num_threads(1)
    workers = [int(w) for w in args.workers.split(',')]
    work = args.out or Path(tempfile.mkdtemp(prefix='lit-bench-data-'))
    work.mkdir(parents=True, exist_ok=True)
    folder = work / 'jpegs'
    if not (folder / 'train').exists():
        t = time.perf_counter()
        make_jpegs(folder, args.images)
        print(f'made {args.images} + {max(10, args.images // 10)} JPEGs in {time.perf_counter() - t:.0f}s', flush=True)
    files = sorted(folder.rglob('*.JPEG'))
    avg_kb = sum(f.stat().st_size for f in files) / len(files) / 1e3
    tar = work / 'jpegs.tar'
    if not tar.exists():
        with tarfile.open(tar, 'w') as tf:
            tf.add(folder, arcname='jpegs')
    shards = work / 'shards'
    if not (shards / 'index.json').exists():
        from litcli.core.data.pack import pack
        pack(folder, shards, shard_size=50 * 10 ** 6, log=print)
    index = json.loads((shards / 'index.json').read_text())
    n_train = len(index['splits']['train']['shards'])
    sources = {'folder': str(folder), 'tar': str(tar),
               'shards': f'wds:{shards}/train-{{000000..{n_train - 1:06d}}}.tar'}
    print(f'{len(files)} JPEGs, {avg_kb:.0f} kB on average; {n_train} train shard(s)', flush=True)

    rates = pipeline_rates(sources, workers, args.rounds, args.batches, args.batch_size)
    report = dict(images=len(files), avg_kb=avg_kb, cores=os.cpu_count(), workers=workers, rounds=args.rounds,
                  pipeline={f'{k[0]} -j {k[1]}': statistics.median(v) for k, v in rates.items()},
                  pipeline_rounds={f'{k[0]} -j {k[1]}': v for k, v in rates.items()})
    print(f'\npipeline images/s (median of {args.rounds} interleaved rounds; LIT-S recipe at 224, batch '
          f'{args.batch_size}, {os.cpu_count()} cores)')
    print(f'{"workers":>8s} ' + ' '.join(f'{n:>16s}' for n in sources))
    for j in workers:
        base = report['pipeline'][f'folder -j {j}']
        cells = [f'{report["pipeline"][f"{n} -j {j}"]:8.1f} ({report["pipeline"][f"{n} -j {j}"] / base:4.2f}x)'
                 for n in sources]
        print(f'{j:>8d} ' + ' '.join(f'{c:>16s}' for c in cells))

    per_float, per_uint8 = 3 * 224 * 224 * 4, 3 * 224 * 224
    report['bytes_per_image'] = dict(float32=per_float, uint8=per_uint8, ratio=per_float / per_uint8)
    print(f'\nbytes per 224x224 image sent to the device: float32 {per_float:,} -> uint8 {per_uint8:,} '
          f'({per_float / per_uint8:.0f}x less); a batch of 128: {128 * per_float / 2 ** 20:.1f} MiB -> '
          f'{128 * per_uint8 / 2 ** 20:.1f} MiB')

    if args.ti_steps:
        report['lit_ti_cpu'] = cpu_data_share(folder, work, [0, max(workers)], args.ti_steps, args.ti_batch)
    if args.gpu:
        report['gpu_lit_s_bf16'] = gpu_rates(folder, [int(w) for w in args.gpu_workers.split(',')], args.gpu_steps,
                                             args.gpu_batch, args.gpu_device, args.gpu_variant)
    (work / 'bench_data.json').write_text(json.dumps(report, indent=2) + '\n')
    print(f'\nreport: {work / "bench_data.json"}')


if __name__ == '__main__':
    main()

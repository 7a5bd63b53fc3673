"""The README's fine-tuning measurement: ``lit train --variant s --pretrained`` on a small folder, on a CPU, against the
same run from random weights, with no internet.

The real release files cannot be downloaded here, so a stand-in "release" is made first: LIT-S trained briefly on
five Fashion-MNIST classes (Sandal, Shirt, Sneaker, Bag, Ankle boot; from the shipped mini set), its classifier
widened to the release's 1000 classes (the trained rows first, the rest freshly initialised), saved in the
official layout ``{'model': state_dict}`` as ``lit_s.pth``. A local HTTP server on 127.0.0.1 serves it and
``LIT_WEIGHTS_URL`` points ``--pretrained`` at it, so the run goes through the same download, verification, cache
and loading as the real weights would, into a fresh ``TORCH_HOME``. The fine-tune set is the other five classes
(T-shirt/top, Trouser, Pullover, Dress, Coat): ``--train-per-class`` / ``--val-per-class`` images each, as PNGs.

    python benchmarks/finetune_pretrained.py [--workdir DIR] [--epochs 3] [--img-size 64] [--json FILE]

Prints per epoch the train loss, eval loss and top-1 of the fine-tune from the stand-in release and of the same
run from random weights.
"""
import argparse
import functools
import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MINI = REPO / 'assets' / 'datasets' / 'fashion-mnist-mini' / 'fashion-mnist-mini.npz'
PRETRAIN_CLASSES = (5, 6, 7, 8, 9)
FINETUNE_CLASSES = (0, 1, 2, 3, 4)


def write_folder(root: Path, classes, train_per_class: int, val_per_class: int):
    """An ImageFolder tree of Fashion-MNIST mini images (28x28 gray PNGs) of ``classes``."""
    import numpy as np
    from PIL import Image

    data = np.load(MINI)
    for split, key, n in (('train', 'train', train_per_class), ('val', 'test', val_per_class)):
        x, y = data[f'x_{key}'], data[f'y_{key}']
        for c in classes:
            folder = root / split / f'{c}-{data["classes"][c].replace("/", "-")}'
            folder.mkdir(parents=True, exist_ok=True)
            for i, j in enumerate(np.flatnonzero(y == c)[:n]):
                Image.fromarray(x[j]).save(folder / f'{i}.png')
    return root


def lit(*args, env=None) -> float:
    """Run ``python -m litcli ARGS`` (the command users run); its wall time."""
    start = time.perf_counter()
    subprocess.run([sys.executable, '-m', 'litcli', *map(str, args)], check=True, cwd=REPO,
                   env={**os.environ, 'PYTHONPATH': str(REPO), **(env or {})})
    return time.perf_counter() - start


def stand_in_release(checkpoint: Path, out: Path):
    """A ``lit train`` checkpoint as a release file: official layout, {'model': ...}, a 1000-class head."""
    import torch
    from timm.layers import trunc_normal_

    sd = dict(torch.load(checkpoint, map_location='cpu', weights_only=True)['model'])
    trained_w, trained_b = sd['head.weight'], sd['head.bias']  # (5, 768), (5,)
    weight = trunc_normal_(torch.empty(1000, trained_w.shape[1]), std=0.02)
    weight[:len(trained_w)] = trained_w
    bias = torch.zeros(1000)
    bias[:len(trained_b)] = trained_b
    sd['head.weight'], sd['head.bias'] = weight, bias
    torch.save({'model': sd}, out)


def metrics(run_dir: Path):
    return [json.loads(line) for line in (run_dir / 'metrics.jsonl').read_text().splitlines() if line.strip()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--workdir', type=Path, default=None, help='Default: a new temporary folder.')
    parser.add_argument('--img-size', type=int, default=64)
    parser.add_argument('--pretrain-epochs', type=int, default=3)
    parser.add_argument('--epochs', type=int, default=3, help='Fine-tuning epochs.')
    parser.add_argument('--train-per-class', type=int, default=60)
    parser.add_argument('--val-per-class', type=int, default=20)
    parser.add_argument('--lr', type=float, default=1e-4, help='Fine-tuning lr (the README recipe).')
    parser.add_argument('--json', type=Path, default=None, help='Also write the results here.')
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix='lit-finetune-'))
    work.mkdir(parents=True, exist_ok=True)
    common = ('--img-size', args.img_size, '-b', 32, '-j', 0, '--log-interval', 10, '--output', work / 'runs',
              '--exist-ok')

    # 1. the stand-in release: LIT-S trained briefly on the other five classes
    pre = write_folder(work / 'pretrain', PRETRAIN_CLASSES, 200, 50)
    pre_s = lit('train', '--variant', 's', '--data', pre, '--epochs', args.pretrain_epochs, '--lr', 1e-3,
                '--warmup-epochs', 1, '--mixup', 0, '--cutmix', 0, '--name', 'pretrain', *common)
    served = work / 'release'
    served.mkdir(exist_ok=True)
    stand_in_release(work / 'runs' / 'pretrain' / 'checkpoints' / 'best.pt', served / 'lit_s.pth')

    # 2. the fine-tune, from the stand-in release through --pretrained (download, verify, cache, load), and from
    # random weights with the same settings
    ft = write_folder(work / 'finetune', FINETUNE_CLASSES, args.train_per_class, args.val_per_class)
    recipe = ('--variant', 's', '--data', ft, '--epochs', args.epochs, '--lr', args.lr, '--warmup-epochs', 1,
              '--mixup', 0, '--cutmix', 0, '--drop-path', 0.1, *common)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {'LIT_WEIGHTS_URL': f'http://127.0.0.1:{server.server_address[1]}', 'TORCH_HOME': str(work / 'torch')}
    try:
        ft_s = lit('train', *recipe, '--pretrained', '--name', 'finetune', env=env)
    finally:
        server.shutdown()
    scratch_s = lit('train', *recipe, '--name', 'scratch')

    result = dict(workdir=str(work), img_size=args.img_size, pretrain_seconds=round(pre_s, 1),
                  pretrain=metrics(work / 'runs' / 'pretrain'),
                  finetune_seconds=round(ft_s, 1), finetune=metrics(work / 'runs' / 'finetune'),
                  scratch_seconds=round(scratch_s, 1), scratch=metrics(work / 'runs' / 'scratch'))
    print(f'\nfine-tune set: {len(FINETUNE_CLASSES)} classes x {args.train_per_class} train / {args.val_per_class} val '
          f'images, {args.img_size} px, LIT-S, lr {args.lr:g}, {args.epochs} epochs')
    print('epoch | from the stand-in release: train loss, eval loss, top-1 | from random weights: same')
    for a, b in zip(result['finetune'], result['scratch']):
        print(f'{a["epoch"]:5d} | {a["train_loss"]:.3f}, {a["eval_loss"]:.3f}, {a["eval_top1"]:.1f}% | '
              f'{b["train_loss"]:.3f}, {b["eval_loss"]:.3f}, {b["eval_top1"]:.1f}%')
    print(f'wall time: stand-in pretraining {pre_s:.0f} s, fine-tune {ft_s:.0f} s, from scratch {scratch_s:.0f} s')
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == '__main__':
    main()

#!/usr/bin/env python3
"""The proof that the dense loops learn (issue 30): RetinaNet, Mask R-CNN and Semantic FPN with a LIT-Ti backbone
trained from random weights on the built-in synthetic scenes with their presets (``lit train --task T`` and nothing
else), each about 15 minutes on 2 CPU cores; prints each run's wall time, updates and validation metrics (250 fixed
canvases) next to the target, then a table. A run's own log and files stay in its run folder.

    python benchmarks/dense_scenes.py                      # all three, one after the other (~45 min)
    python benchmarks/dense_scenes.py --tasks retinanet    # one
    python benchmarks/dense_scenes.py --threads 2 --output runs/dense-scenes

Targets: box AP50 >= 50 (RetinaNet, Mask R-CNN; also mask AP50 for Mask R-CNN), mIoU well above the all-background
baseline (every pixel called background: IoU of that class = its pixel share, the ten garment classes 0).
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

TASKS = {'retinanet': 'fashion-mnist-det', 'mask-rcnn': 'fashion-mnist-det', 'semantic-fpn': 'fashion-mnist-seg'}


def background_baseline() -> float:
    """mIoU (%) of calling every pixel of the validation scenes background, as mmseg averages (classes present)."""
    import torch

    from litcli.core.data.scenes import FashionScenes

    scenes = FashionScenes('val', 'segmentation')
    background, total, present = 0, 0, set()
    for i in range(len(scenes)):
        label = scenes[i][1]
        background += int((label == 0).sum())
        total += label.numel()
        present.update(torch.unique(label).tolist())
    return 100 * background / total / len(present)


def train(task: str, output: Path, threads: int, extra) -> dict:
    name = f'{task}-{time.strftime("%Y%m%d-%H%M%S")}'
    command = [sys.executable, '-m', 'litcli', 'train', '--task', task, '--data', TASKS[task], '--output',
               str(output), '--name', name, '--threads', str(threads), *extra]
    print('$', ' '.join(command[2:]), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f'{task}: lit train exited with {done.returncode}')
    rows = [json.loads(line) for line in (output / name / 'metrics.jsonl').read_text().splitlines()]
    return dict(task=task, wall_min=wall / 60, updates=rows[-1]['step'], last=rows[-1],
                best=max(rows, key=lambda r: r.get('mIoU', r.get('bbox_AP', 0))), run=str(output / name))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--tasks', default=','.join(TASKS), help='comma-separated: retinanet,mask-rcnn,semantic-fpn')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--output', type=Path, default=Path('runs/dense-scenes'))
    args, extra = parser.parse_known_args()  # anything else goes to lit train (e.g. --epochs 2)
    results = [train(task, args.output, args.threads, extra) for task in args.tasks.split(',')]
    baseline = background_baseline() if any(r['task'] == 'semantic-fpn' for r in results) else None
    print('\nlit train on the built-in scenes, LIT-Ti from random weights, '
          f'{args.threads} CPU thread(s), validation: 250 fixed canvases')
    print(f'{"task":<14}{"minutes":>8}{"updates":>9}  last epoch (best)')
    for r in results:
        last, best = r['last'], r['best']
        if r['task'] == 'semantic-fpn':
            shown = (f'mIoU {last["mIoU"]:.1f} ({best["mIoU"]:.1f}), aAcc {last["aAcc"]:.1f}; all-background '
                     f'baseline mIoU {baseline:.1f}')
        else:
            shown = f'box AP {last["bbox_AP"]:.1f} AP50 {last["bbox_AP50"]:.1f} ({best["bbox_AP50"]:.1f})'
            if 'segm_AP' in last:
                shown += f', mask AP {last["segm_AP"]:.1f} AP50 {last["segm_AP50"]:.1f}'
        print(f'{r["task"]:<14}{r["wall_min"]:>8.1f}{r["updates"]:>9}  {shown}')
    print('runs:', ', '.join(r['run'] for r in results))


if __name__ == '__main__':
    main()

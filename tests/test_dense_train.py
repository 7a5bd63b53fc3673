"""lit train --task / lit eval for the dense models as a user runs them (issue 30): tiny runs on the built-in scenes
learn (the loss falls), resume bit-identically after kill -9 mid-epoch, save and exit 143 on SIGTERM; lit eval agrees
with pycocotools called on its own results file, and under torchrun counts every image once; the evaluation loops
score a perfect model 100."""
import json
import os
import random
import re
import signal
import subprocess
import sys

import pytest
import torch

from helpers import lit_cmd, run_until_step
from litcli.core.config import SCENE_MODEL

TIMEOUT = 600
SMALL = dict(SCENE_MODEL, fpn_channels=128)  # the built-in scenes' small LIT-Ti layout: quick runs, small files
TASKS = {  # task -> (data, its tiny config): every detection kept (score threshold 0), for a non-trivial AP
    'retinanet': ('fashion-mnist-det', dict(img_scale=[80, 64], warmup_iters=2, decay_epochs=[1], lr=3e-4,
                                            model_kwargs=dict(SMALL, score_thresh=0.0))),
    'mask-rcnn': ('fashion-mnist-det', dict(img_scale=[80, 64], warmup_iters=2, decay_epochs=[1], lr=3e-4,
                                            model_kwargs=dict(SMALL, box_score_thresh=0.0, rpn_pre_nms_top_n_train=300,
                                                              rpn_post_nms_top_n_train=100,
                                                              box_batch_size_per_image=32,
                                                              rpn_post_nms_top_n_test=100))),
    'semantic-fpn': ('fashion-mnist-seg', dict(img_scale=[320, 64], crop_size=[64, 64], lr=3e-4,
                                               model_kwargs=dict(SCENE_MODEL))),
}
EPOCHS, UPDATES = 2, 3
STEPS = EPOCHS * UPDATES


def env():
    return {**os.environ, 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1', 'COLUMNS': '160'}


def run(*args):
    out = subprocess.run(lit_cmd(*args), capture_output=True, text=True, env=env(), timeout=TIMEOUT)
    assert 'Traceback' not in out.stdout + out.stderr, out.stdout + out.stderr
    return out


def config_file(path, task, **extra):
    import yaml
    data, settings = TASKS[task]
    cfg = dict(dict(epochs=EPOCHS, updates_per_epoch=UPDATES, train_scenes=2, val_scenes=5, batch_size=2,
                    eval_batch_size=5, seed=1, **settings), **extra)
    path.write_text(yaml.safe_dump(cfg))
    return path


def train_args(task, cfg, output, name, *extra):
    return ('train', '--task', task, '--data', TASKS[task][0], '--config', cfg, '-j', 0, '--threads', 1,
            '--output', output, '--name', name, '--log-interval', 1, *extra)


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
    """One uninterrupted tiny run per task."""
    work = tmp_path_factory.mktemp('dense-straight')
    runs = {}
    for task in TASKS:
        cfg = config_file(work / f'{task}.yaml', task)
        out = run(*train_args(task, cfg, work, task))
        assert out.returncode == 0, out.stdout + out.stderr
        runs[task] = (work / task, cfg)
    return runs


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / 'metrics.jsonl').read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize('task', list(TASKS))
def test_sigkill_mid_epoch_then_resume_auto_is_bit_identical(straight, tmp_path, task):
    """kill -9 inside epoch 0 (after step 1 of 3), then --resume auto: through the rest of epoch 0 and epoch 1 to
    the same weights, optimizer state and metrics rows as the uninterrupted run."""
    reference, cfg = straight[task]
    args = train_args(task, cfg, tmp_path, 'cut', '--save-interval', 1)
    rc, out, sent = run_until_step(args, 1, env(), TIMEOUT, random.Random(5))
    assert 'Traceback' not in out, out
    assert sent and rc == -signal.SIGKILL, out
    saved = torch.load(tmp_path / 'cut/checkpoints/last.pt', weights_only=True)
    assert saved['resume_epoch'] == 0 and 1 <= saved['resume_batch'] < UPDATES  # mid-epoch
    # no more step checkpoints (each is a few hundred MB): saving draws nothing from the random streams
    out = run('train', '--resume', 'auto', '--output', tmp_path, '--name', 'cut', '-j', 0, '--threads', 1,
              '--save-interval', 0)
    assert out.returncode == 0, out.stdout + out.stderr
    assert 'resuming at epoch 0' in out.stdout, out.stdout
    a = torch.load(reference / 'checkpoints/last.pt', weights_only=True)
    b = torch.load(tmp_path / 'cut/checkpoints/last.pt', weights_only=True)
    assert a['step'] == b['step'] == STEPS
    for key, value in a['model'].items():
        assert torch.equal(value, b['model'][key]), key
    for s1, s2 in zip(a['optimizer']['state'].values(), b['optimizer']['state'].values()):
        assert torch.equal(s1['exp_avg'], s2['exp_avg'])
    assert rows(tmp_path / 'cut') == [dict(r, **{k: rr[k] for k in ('img_per_s', 'epoch_time_s', 'img_per_s_device',
                                                                     'data_s', 'compute_s', 'data_share')})
                                      for r, rr in zip(rows(reference), rows(tmp_path / 'cut'))]


@pytest.mark.slow
@pytest.mark.parametrize('task', list(TASKS))
def test_the_loss_falls_and_each_epoch_is_scored(straight, task):
    """The tiny run's rows (two scenes seen again and again): its task's metric columns, and a lower train loss in
    the second epoch."""
    run_dir, _ = straight[task]
    metrics = rows(run_dir)
    assert [r['epoch'] for r in metrics] == list(range(EPOCHS))
    assert metrics[-1]['train_loss'] < metrics[0]['train_loss'], metrics
    keys = ('mIoU', 'mAcc', 'aAcc') if task == 'semantic-fpn' else ('bbox_AP', 'bbox_AP50', 'bbox_AP75')
    assert all(0 <= r[k] <= 100 for r in metrics for k in keys), metrics
    if task == 'mask-rcnn':
        assert all(0 <= r['segm_AP'] <= 100 for r in metrics)
    assert (run_dir / 'curves.png').stat().st_size > 0
    ckpt = torch.load(run_dir / 'checkpoints/best.pt', weights_only=True)
    assert ckpt['variant'] == f'{task.replace("-", "_")}_lit_ti' and ckpt['task'] == task.replace('-', '_')
    assert ckpt['num_classes'] == (11 if task == 'semantic-fpn' else 10)


@pytest.mark.slow
def test_sigterm_saves_at_a_step_and_exits_143(straight, tmp_path):
    _, cfg = straight['retinanet']
    rc, out, sent = run_until_step(train_args('retinanet', cfg, tmp_path, 'sig'), 1, env(), TIMEOUT,
                                   random.Random(0), signal.SIGTERM)
    assert sent and rc == 143, out
    assert 'Traceback' not in out and 'SIGTERM received: saved' in out, out
    ckpt = torch.load(tmp_path / 'sig/checkpoints/last.pt', weights_only=True)
    assert 1 <= ckpt['step'] < STEPS


def _pycocotools_ap(gt: dict, results_file, iou_type: str) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    evaluator = COCOeval(coco, coco.loadRes(str(results_file)), iou_type)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return 100 * evaluator.stats[0], 100 * evaluator.stats[1]


@pytest.mark.slow
@pytest.mark.parametrize('task', ['retinanet', 'mask-rcnn'])
def test_eval_agrees_with_pycocotools_on_its_results_file(straight, tmp_path, task):
    """lit eval of the run's checkpoint (every detection kept: score threshold 0) on its validation scenes; the
    results file scored by pycocotools directly gives the AP lit eval printed and wrote."""
    from litcli.core.data.scenes import FashionScenes

    run_dir, _ = straight[task]
    results = tmp_path / 'detections.json'
    out = run('eval', '--checkpoint', run_dir / 'checkpoints/last.pt', '--out', tmp_path / 'ev', '--results-file',
              results, '-j', 0)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r'box +\d+\.\d\d', out.stdout), out.stdout
    result = json.loads((tmp_path / 'ev/eval.json').read_text())
    assert result['num_images'] == 5 and result['data'] == 'fashion-mnist-det'
    detections = json.loads(results.read_text())
    assert {d['image_id'] for d in detections} == {1, 2, 3, 4, 5} and len(detections) > 20
    gt = FashionScenes('val', 'detection', masks=task == 'mask-rcnn', size=5).coco_gt()
    kinds = ('bbox', 'segm') if task == 'mask-rcnn' else ('bbox',)
    for kind in kinds:
        ap, ap50 = _pycocotools_ap(gt, results, kind)
        assert result[f'{kind}_AP'] == pytest.approx(ap, abs=1e-9) and result[f'{kind}_AP50'] == pytest.approx(ap50)
    if task == 'mask-rcnn':  # its proposals find a few garments already: not the trivial agreement of two zeros
        assert result['bbox_AP50'] > 0


@pytest.mark.slow
@pytest.mark.parametrize('task', ['retinanet', 'semantic-fpn'])
def test_torchrun_eval_counts_every_image_once(straight, tmp_path, task):
    """Two processes split the 5 validation scenes (3 + 2); the metrics equal one process's."""
    run_dir, _ = straight[task]
    ckpt = run_dir / 'checkpoints/last.pt'
    extra = ('--results-file', tmp_path / 'one.json') if task == 'retinanet' else ()
    single = run('eval', '--checkpoint', ckpt, '--out', tmp_path / 'one', '-j', 0, *extra)
    assert single.returncode == 0, single.stdout + single.stderr
    extra = ('--results-file', str(tmp_path / 'two.json')) if task == 'retinanet' else ()
    launched = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', '-m', 'litcli', 'eval',
         '--checkpoint', str(ckpt), '--out', str(tmp_path / 'two'), '-j', '0', *extra],
        capture_output=True, text=True, env=env(), timeout=TIMEOUT)
    assert launched.returncode == 0, launched.stdout + launched.stderr
    assert launched.stdout.count('lit eval:') == 1 + (task == 'retinanet')  # rank 0 prints (table + pairs)
    one = json.loads((tmp_path / 'one/eval.json').read_text())
    two = json.loads((tmp_path / 'two/eval.json').read_text())
    assert one['num_images'] == two['num_images'] == 5 and two['world_size'] == 2
    keys = ('mIoU', 'mAcc', 'aAcc') if task == 'semantic-fpn' else ('bbox_AP', 'bbox_AP50', 'bbox_AP75')
    for key in keys:
        assert two[key] == pytest.approx(one[key], abs=1e-6), key
    if task == 'retinanet':
        a, b = (json.loads((tmp_path / f).read_text()) for f in ('one.json', 'two.json'))
        assert sorted(map(json.dumps, a)) == sorted(map(json.dumps, b))  # each image's detections exactly once


class _PerfectDetector(torch.nn.Module):
    """Returns each image's ground truth (looked up by its pixels) as detections with score 1."""

    def __init__(self, dataset):
        super().__init__()
        self.truth = {}
        for i in range(len(dataset)):
            image, target = dataset[i]
            self.truth[self.key(image)] = target

    @staticmethod
    def key(image):
        return torch.round(image.double() * (255 if image.is_floating_point() else 1)).to(torch.uint8).numpy().tobytes()

    def forward(self, images):
        outputs = []
        for image in images:
            target = self.truth[self.key(image)]
            output = dict(boxes=target['boxes'], labels=target['labels'], scores=torch.ones(len(target['labels'])))
            if 'masks' in target:
                output['masks'] = target['masks'][:, None].bool()
            outputs.append(output)
        return outputs


@pytest.mark.parametrize('masks', [False, True])
def test_evaluate_detection_scores_the_ground_truth_100(masks):
    from litcli.core.data.dense import build_dense_eval_loader
    from litcli.core.runtime import World
    from litcli.core.data.scenes import FashionScenes
    from litcli.core.training.dense import evaluate_detection

    dataset = FashionScenes('val', 'detection', masks=masks, size=6)
    loader = build_dense_eval_loader(dataset, 'detection', 4, 0, World(), torch.device('cpu'))
    task = 'mask_rcnn' if masks else 'retinanet'
    result = evaluate_detection(_PerfectDetector(dataset), loader, torch.device('cpu'), task=task,
                                gt=dataset.coco_gt(), class_names=dataset.class_names,
                                category_ids=dataset.category_ids, per_class=True)
    assert result['num_images'] == 6
    for kind in (('bbox', 'segm') if masks else ('bbox',)):
        assert result[f'{kind}_AP'] == pytest.approx(100.0) and result[f'{kind}_AP50'] == pytest.approx(100.0)
        present = [v for v in result['per_class'][kind].values() if v == v]
        assert present and all(v == pytest.approx(100.0) for v in present)


class _PerfectSegmenter(torch.nn.Module):
    """Logits whose argmax is the label of the image (looked up by the image's normalised pixel sum)."""

    def __init__(self, labels, num_classes):
        super().__init__()
        self.labels, self.num_classes = labels, num_classes
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a device to be on

    def forward(self, x):
        label = self.labels[len(self.seen)]
        self.seen.append(1)
        return torch.nn.functional.one_hot(label, self.num_classes).permute(2, 0, 1)[None].float() * 10


def test_evaluate_segmentation_scores_the_ground_truth_100_and_a_blank_model_the_background_share():
    from litcli.core.data.dense import build_dense_eval_loader
    from litcli.core.runtime import World
    from litcli.core.data.scenes import FashionScenes
    from litcli.core.training.dense import evaluate_segmentation

    dataset = FashionScenes('val', 'segmentation', size=4)
    labels = [dataset[i][1] for i in range(len(dataset))]
    model = _PerfectSegmenter(labels, 11)
    model.seen = []
    loader = build_dense_eval_loader(dataset, 'segmentation', 2, 0, World(), torch.device('cpu'))
    # the canvases are 128x160 and img_scale (160, 128) keeps them: the logits are at the label's size
    result = evaluate_segmentation(model, loader, torch.device('cpu'), class_names=dataset.class_names,
                                   img_scale=(160, 128), per_class=True)
    assert result['mIoU'] == pytest.approx(100.0) and result['aAcc'] == pytest.approx(100.0)
    blank = _PerfectSegmenter([torch.zeros_like(label) for label in labels], 11)
    blank.seen = []
    result = evaluate_segmentation(blank, loader, torch.device('cpu'), class_names=dataset.class_names,
                                   img_scale=(160, 128), per_class=True)
    background = sum(int((label == 0).sum()) for label in labels) / sum(label.numel() for label in labels)
    present = len({int(c) for label in labels for c in label.unique()})
    # all background: IoU(background) = its pixel share, every garment class present scores 0
    assert result['aAcc'] == pytest.approx(100 * background)
    assert result['mIoU'] == pytest.approx(100 * background / present)


@pytest.mark.slow
def test_torchrun_two_processes_train_a_detector_over_whole_passes(tmp_path):
    """Two processes, one scene each per update, aspect-grouped batches over whole passes of 4 scenes
    (``updates_per_epoch: null``): 2 updates an epoch, every rank's loss in the row, the checkpoint says 2
    processes, and its evaluation counts the 5 validation scenes once."""
    cfg = config_file(tmp_path / 'ddp.yaml', 'retinanet', updates_per_epoch=None, train_scenes=4, batch_size=1)
    launched = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', '-m', 'litcli',
         *map(str, train_args('retinanet', cfg, tmp_path, 'ddp'))],
        capture_output=True, text=True, env=env(), timeout=TIMEOUT)
    assert launched.returncode == 0, launched.stdout + launched.stderr
    assert 'Traceback' not in launched.stdout + launched.stderr
    assert 'x 2 process(es) x 1 = 2' in launched.stdout, launched.stdout
    assert [(r['epoch'], r['step']) for r in rows(tmp_path / 'ddp')] == [(0, 2), (1, 4)]
    ckpt = torch.load(tmp_path / 'ddp/checkpoints/last.pt', weights_only=True)
    assert ckpt['world_size'] == 2 and len(ckpt['rng_ranks']) == 2


class _WithUnreadable(torch.utils.data.Dataset):
    """A validation set whose image ``bad`` cannot be read (None, as CocoDetection returns it in evaluation)."""

    def __init__(self, dataset, bad: int):
        self.dataset, self.bad = dataset, bad

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return None if index == self.bad else self.dataset[index]


def test_an_unreadable_validation_image_is_not_scored_as_missed():
    """Its objects are not counted as misses: the other images' perfect detections still score 100."""
    from litcli.core.data.dense import build_dense_eval_loader
    from litcli.core.data.scenes import FashionScenes
    from litcli.core.runtime import World
    from litcli.core.training.dense import evaluate_detection

    dataset = FashionScenes('val', 'detection', size=5)
    loader = build_dense_eval_loader(_WithUnreadable(dataset, 2), 'detection', 2, 0, World(), torch.device('cpu'))
    result = evaluate_detection(_PerfectDetector(dataset), loader, torch.device('cpu'), task='retinanet',
                                gt=dataset.coco_gt(), class_names=dataset.class_names,
                                category_ids=dataset.category_ids)
    assert result['num_images'] == 4 and result['bbox_AP'] == pytest.approx(100.0)

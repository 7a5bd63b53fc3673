"""`lit train --task` / `lit eval` for the dense models at their edges (issue 30): the training batch samplers
(orientation groups, rank shares, per-pass coverage, resume at any batch), every bad input as a one-line error,
the start weights of a dense run (a dense checkpoint, another class count, another architecture, a classifier's
backbone), `lit eval`'s table / eval.json / per_class.csv / --json of tiny runs' checkpoints, and `lit detect` /
`lit segment` on those checkpoints with the run's garment classes."""
import csv
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from helpers import lit, train_args
from litcli.core.data.datasets import FASHION_MNIST_CLASSES
from litcli.core.data.dense import GroupedBatchSampler, IterationBatchSampler
from litcli.core.errors import CheckpointError
from litcli.core.modelio.checkpoint import save_checkpoint
from litcli.core.modelio.factory import create_dense_model, create_model, dense_checkpoint, load_dense_start_weights
from litcli.core.runtime import World
from litcli.core.seeding import sample_seed

CAT = Path(__file__).parents[1] / 'assets' / 'photos' / 'chelsea.jpg'
DET_SCALE = [80, 64]
TINY_RUNS = {  # task -> (data, the settings of a one-update run on a few canvases)
    'retinanet': ('fashion-mnist-det', dict(img_scale=DET_SCALE, warmup_iters=1, decay_epochs=[1])),
    'semantic-fpn': ('fashion-mnist-seg', dict(img_scale=[320, 64], crop_size=[64, 64])),
}
GARMENTS = list(FASHION_MNIST_CLASSES)
AP_COLUMNS = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl')


# ---------------------------------------------------------------------------------------------------------------
# Samplers


def epoch_batches(sampler, epoch: int, skip: int = 0):
    """The sampler's items of ``epoch`` from batch ``skip`` on: [[(index, seed), ...], ...]."""
    sampler.set_epoch(epoch, skip)
    return list(sampler)


def indices(batches):
    return [[index for index, _ in batch] for batch in batches]


FLAGS = [0, 1, 0, 0, 1, 0, 1, 0]  # 5 images of orientation 0 (indices 0, 2, 3, 5, 7), 3 of orientation 1


def test_grouped_batches_hold_one_orientation_and_pad_each_group_to_whole_batches():
    sampler = GroupedBatchSampler(FLAGS, 2, World(), seed=0)
    for epoch in range(4):
        batches = indices(epoch_batches(sampler, epoch))
        # group 0: 5 -> 6 (one repeat), group 1: 3 -> 4 (one repeat): 5 batches of 2
        assert len(batches) == len(sampler) == 5 and all(len(b) == 2 for b in batches)
        assert all(len({FLAGS[i] for i in b}) == 1 for b in batches), batches
        counts = Counter(i for b in batches for i in b)
        assert set(counts) == set(range(8)) and sum(counts.values()) == 10
        assert sum(n - 1 for i, n in counts.items() if FLAGS[i] == 0) == 1
        assert sum(n - 1 for i, n in counts.items() if FLAGS[i] == 1) == 1


def test_grouped_rank_shares_are_equal_disjoint_positions_covering_every_image():
    """2 ranks, batch 2: each group padded to a multiple of 4 (5 -> 8, 3 -> 4), 6 batches, 3 per rank."""
    for epoch in range(3):
        shares = [indices(epoch_batches(GroupedBatchSampler(FLAGS, 2, World(rank, 2), seed=3), epoch))
                  for rank in range(2)]
        assert [len(s) for s in shares] == [3, 3]
        assert len(GroupedBatchSampler(FLAGS, 2, World(1, 2), seed=3)) == 3
        assert all(len({FLAGS[i] for i in b}) == 1 for s in shares for b in s)
        counts = Counter(i for s in shares for b in s for i in b)
        assert set(counts) == set(range(8)) and sum(counts.values()) == 12  # 4 padding repeats in all
        assert sum(counts[i] for i in range(8) if FLAGS[i] == 0) == 8
        assert shares[0] != shares[1]


def test_grouped_order_depends_on_the_epoch_only_and_seeds_follow_the_position():
    sampler = GroupedBatchSampler(FLAGS, 2, World(1, 2), seed=7)
    first = epoch_batches(sampler, 0)
    assert epoch_batches(GroupedBatchSampler(FLAGS, 2, World(1, 2), seed=7), 0) == first  # a fresh sampler too
    assert indices(epoch_batches(sampler, 1)) != indices(first)
    assert indices(epoch_batches(GroupedBatchSampler(FLAGS, 2, World(1, 2), seed=8), 0)) != indices(first)
    # the k-th sample of rank 1's epoch 0 has seed sample_seed(7, 0, 1, k)
    assert [s for batch in first for _, s in batch] == [sample_seed(7, 0, 1, k) for k in range(6)]


@pytest.mark.parametrize('world', [World(), World(1, 2)])
def test_grouped_skip_yields_the_tail_of_the_epoch_with_the_same_seeds(world):
    sampler = GroupedBatchSampler(FLAGS, 2, world, seed=5)
    full = epoch_batches(sampler, 2)
    for skip in range(len(full) + 1):
        tail = epoch_batches(sampler, 2, skip)
        assert tail == full[skip:] and len(sampler) == len(full) - skip
    assert epoch_batches(sampler, 2) == full  # set_epoch(e) again: from the start


def stream(length, batch_size, world_size, seed, updates, epochs):
    """The samples of ``epochs`` periods in update order, each update's ranks in rank order."""
    samplers = [IterationBatchSampler(length, batch_size, World(r, world_size), seed, updates)
                for r in range(world_size)]
    out = []
    for epoch in range(epochs):
        per_rank = [indices(epoch_batches(s, epoch)) for s in samplers]
        assert all(len(b) == updates for b in per_rank)
        for u in range(updates):
            out += [i for r in range(world_size) for i in per_rank[r][u]]
    return out


@pytest.mark.parametrize('world_size', [1, 2, 3])
def test_iteration_batches_cover_each_pass_once_and_continue_across_epochs(world_size):
    length, batch = 7, 2
    samples = stream(length, batch, world_size, seed=1, updates=3, epochs=5)
    assert len(samples) == 5 * 3 * batch * world_size
    passes = [samples[i:i + length] for i in range(0, len(samples) - length + 1, length)]
    assert len(passes) >= 4
    for p in passes:  # every whole pass is a permutation: no image twice before all were seen
        assert sorted(p) == list(range(length)), samples
    assert len({tuple(p) for p in passes}) == len(passes)  # each pass shuffled on its own
    # the stream is the data's, not the ranks': W ranks of batch B read what one process of batch B x W reads
    assert samples == stream(length, batch * world_size, 1, seed=1, updates=3, epochs=5)


def test_iteration_epoch_continues_where_the_previous_ended_and_skip_keeps_seeds():
    sampler = IterationBatchSampler(5, 2, World(0, 2), seed=4, updates_per_epoch=3)
    other = IterationBatchSampler(5, 2, World(1, 2), seed=4, updates_per_epoch=3)
    e0, e1 = epoch_batches(sampler, 0), epoch_batches(sampler, 1)
    # 12 samples per period: epoch 1 starts at stream position 12 = pass 2, offset 2
    pass2 = [sampler._sample(10 + k) for k in range(5)]
    assert sorted(pass2) == list(range(5))
    assert indices(e1)[0] == pass2[2:4]
    assert indices(epoch_batches(other, 1))[0] == [pass2[4], sampler._sample(15)]
    assert [s for batch in e1 for _, s in batch] == [sample_seed(4, 1, 0, k) for k in range(6)]
    for skip in range(4):
        assert epoch_batches(sampler, 1, skip) == e1[skip:] and len(sampler) == 3 - skip
    assert epoch_batches(sampler, 0) == e0  # going back (a resume) draws the same passes again


# ---------------------------------------------------------------------------------------------------------------
# Tiny runs, shared by the tests below


@dataclass
class TinyRun:
    run_dir: Path
    config: Path

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / 'checkpoints' / 'last.pt'


def tiny_config(path: Path, task: str, **extra) -> Path:
    cfg = dict(epochs=1, updates_per_epoch=1, train_scenes=2, val_scenes=2, batch_size=2, eval_batch_size=2,
               **TINY_RUNS[task][1], **extra)
    path.write_text(yaml.safe_dump(cfg))
    return path


def dense_train_args(task, config, output, name, *extra):
    return ('train', '--task', task, '--data', TINY_RUNS[task][0], '--config', config, '-j', 0, '--threads', 1,
            '--output', output, '--name', name, *extra)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """One tiny RetinaNet run and one tiny Semantic FPN run (one update each). In this process: two ``lit``
    subprocesses take twice as long on a 2-core machine (their imports), and each run still takes seconds (it
    saves two ~340 MB checkpoints of the full LIT-Ti model), so every test of these runs is marked slow."""
    work = tmp_path_factory.mktemp('dense-cli')
    found = {}
    for task in TINY_RUNS:
        config = tiny_config(work / f'{task}.yaml', task)
        result = lit(*dense_train_args(task, config, work, task))
        assert result.exit_code == 0, result.output
        found[task] = TinyRun(work / task, config)
    return found


def dense_file(folder: Path, name: str) -> Path:
    """A lit dense checkpoint (``dense_checkpoint``'s layout) of ``name`` for the garment classes, random weights."""
    path = folder / f'{name}.pt'
    model = create_dense_model(name, len(GARMENTS), img_scale=DET_SCALE)
    save_checkpoint(dense_checkpoint(model, name, GARMENTS, img_scale=DET_SCALE), path)
    return path


@pytest.fixture(scope='module')
def mask_rcnn_file(tmp_path_factory):
    return dense_file(tmp_path_factory.mktemp('mask-rcnn'), 'mask_rcnn_lit_ti')


@pytest.fixture(scope='module')
def retinanet_file(tmp_path_factory):
    return dense_file(tmp_path_factory.mktemp('retinanet'), 'retinanet_lit_ti')


@pytest.fixture(scope='module')
def classification_run(tiny_data, tiny_config, tmp_path_factory):
    output = tmp_path_factory.mktemp('cls')
    result = lit(*train_args(tiny_data, tiny_config, output, '--name', 'cls'))
    assert result.exit_code == 0, result.output
    return output / 'cls' / 'checkpoints' / 'last.pt'


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs: one line each


def one_line_error(result, *fragments, code=None):
    """A one-line ``Error: ...`` (no traceback) with a non-zero exit (``code`` if given) saying each fragment."""
    assert result.exit_code != 0 and (code is None or result.exit_code == code), result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith('Error: '), result.output
    for fragment in fragments:
        assert fragment in lines[0], result.output
    return lines[0]


def test_detection_task_refuses_segmentation_data(tmp_path):
    one_line_error(lit('train', '--task', 'retinanet', '--data', 'fashion-mnist-seg', '--output', tmp_path),
                   'fashion-mnist-seg', 'segmentation', 'retinanet', 'fashion-mnist-det')
    assert not any(tmp_path.iterdir())


def test_dense_task_refuses_a_variant_without_a_dense_backbone(tmp_path):
    one_line_error(lit('train', '--task', 'semantic-fpn', '--variant', 'm', '--output', tmp_path),
                   'LIT-M', 'choose ti or s')


def test_missing_coco_folder(tmp_path):
    one_line_error(lit('train', '--task', 'retinanet', '--data', 'coco:/nonexistent/folder', '--output', tmp_path),
                   '/nonexistent/folder', 'not found', 'COCO root')


def test_coco_folder_without_annotations_names_the_missing_file(tmp_path):
    root = tmp_path / 'coco'
    root.mkdir()
    line = one_line_error(lit('train', '--task', 'retinanet', '--data', f'coco:{root}', '--output', tmp_path / 'o'),
                          str(root / 'annotations' / 'instances_train2017.json'))
    assert 'val2017' in line  # the expected layout
    assert not (tmp_path / 'o').exists()


def test_classification_flag_is_refused_by_a_dense_run(tmp_path):
    one_line_error(lit('train', '--task', 'retinanet', '--mixup', 0.5, '--output', tmp_path),
                   '--mixup', 'classification setting', 'drop it')


def test_pretrained_and_initial_checkpoint_together(tmp_path):
    weights = tmp_path / 'x.pt'
    weights.write_bytes(b'')
    one_line_error(lit('train', '--task', 'retinanet', '--pretrained', '--initial-checkpoint', weights,
                       '--output', tmp_path), '--pretrained', '--initial-checkpoint', 'pass one')


def test_unknown_task_lists_the_choices(tmp_path):
    result = lit('train', '--task', 'wrongname', '--output', tmp_path)
    assert result.exit_code == 2, result.output
    assert all(name in result.output for name in ('wrongname', 'retinanet', 'mask-rcnn', 'semantic-fpn'))


def test_eval_model_name_needs_pretrained():
    one_line_error(lit('eval', 'retinanet_lit_ti'), 'retinanet_lit_ti', 'lit eval --pretrained retinanet_lit_ti',
                   '--checkpoint')


def test_eval_results_file_must_be_json_for_a_detector(retinanet_file, tmp_path):
    one_line_error(lit('eval', '--checkpoint', retinanet_file, '--results-file', tmp_path / 'r.csv',
                       '--out', tmp_path / 'out'), 'r.csv', '.json')
    assert not (tmp_path / 'out').exists()


def test_predict_refuses_a_detection_checkpoint(retinanet_file):
    one_line_error(lit('predict', CAT, '--checkpoint', retinanet_file), str(retinanet_file),
                   'retinanet_lit_ti', 'not an image classifier', f'lit detect --checkpoint {retinanet_file}')


def test_resume_classification_run_with_a_task(classification_run, tmp_path):
    one_line_error(lit('train', '--task', 'retinanet', '--resume', classification_run, '-j', 0),
                   str(classification_run), 'classification', 'not retinanet', 'drop --task')


@pytest.mark.slow
def test_eval_results_file_refused_for_a_segmenter(runs, tmp_path):
    one_line_error(lit('eval', '--checkpoint', runs['semantic-fpn'].checkpoint, '--results-file', tmp_path / 'r.json',
                       '--out', tmp_path / 'out'), '--results-file', 'segmentation', 'drop it')
    assert not (tmp_path / 'r.json').exists() and not (tmp_path / 'out').exists()


@pytest.mark.slow
def test_resume_dense_run_with_another_task(runs):
    ckpt = runs['retinanet'].checkpoint
    one_line_error(lit('train', '--task', 'semantic-fpn', '--resume', ckpt, '-j', 0), str(ckpt), 'retinanet run',
                   'not semantic-fpn', 'drop --task')


@pytest.mark.slow
@pytest.mark.parametrize('task, command', [('retinanet', 'lit detect'), ('semantic-fpn', 'lit segment')])
def test_predict_refuses_a_tiny_runs_checkpoint(runs, task, command):
    ckpt = runs[task].checkpoint
    one_line_error(lit('predict', CAT, '--checkpoint', ckpt), str(ckpt), 'not an image classifier',
                   f'{command} --checkpoint {ckpt}')


# ---------------------------------------------------------------------------------------------------------------
# Start weights

# load_dense_start_weights takes ``select_weights(raw)[0]`` (the whole checkpoint dict, weights under 'model') as
# the state dict, so every lit dense checkpoint fails with its metadata keys as "unexpected keys"

def saved_weights(path):
    return torch.load(path, map_location='cpu', weights_only=True)['model']


def check_full_load(model, source: Path):
    said = load_dense_start_weights(model, 'retinanet_lit_ti', source, print)
    assert said == f'retinanet_lit_ti weights from {source}'
    saved, loaded = saved_weights(source), model.state_dict()
    assert set(saved) == set(loaded)
    for key, value in saved.items():
        assert torch.equal(loaded[key], value), key


def test_same_classes_start_loads_every_tensor(retinanet_file):
    check_full_load(create_dense_model('retinanet_lit_ti', len(GARMENTS), img_scale=DET_SCALE), retinanet_file)


@pytest.mark.slow
def test_same_classes_start_from_a_tiny_run_loads_every_tensor(runs):
    layout = torch.load(runs['retinanet'].checkpoint, weights_only=True)['model_kwargs']  # the scenes' small one
    check_full_load(create_dense_model('retinanet_lit_ti', len(GARMENTS), img_scale=DET_SCALE, **layout),
                    runs['retinanet'].checkpoint)


@pytest.mark.slow
def test_a_checkpoint_of_another_layout_is_refused(runs):
    """The tiny run's small layout into the official one: refused naming the layout, not loaded in part."""
    model = create_dense_model('retinanet_lit_ti', len(GARMENTS), img_scale=DET_SCALE)
    with pytest.raises(CheckpointError, match='of another size .*embed_dims'):
        load_dense_start_weights(model, 'retinanet_lit_ti', runs['retinanet'].checkpoint, print)


def test_other_class_count_leaves_the_class_rows_random_and_says_so(retinanet_file):
    model = create_dense_model('retinanet_lit_ti', 3, img_scale=DET_SCALE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    said = load_dense_start_weights(model, 'retinanet_lit_ti', retinanet_file, print)
    class_rows = {'head.classification_head.cls_logits.weight', 'head.classification_head.cls_logits.bias'}
    assert 'class-specific head rows stay random' in said and 'cls_logits' in said, said
    saved, loaded = saved_weights(retinanet_file), model.state_dict()
    for key, value in loaded.items():
        if key in class_rows:  # 9 anchors x 3 classes: the fresh initialisation
            assert value.shape[0] == 27 and torch.equal(value, before[key]), key
        else:
            assert torch.equal(value, saved[key]), key


def test_mask_rcnn_checkpoint_refused_for_a_retinanet_run(mask_rcnn_file, tmp_path):
    model = create_dense_model('retinanet_lit_ti', len(GARMENTS), img_scale=DET_SCALE)
    with pytest.raises(CheckpointError, match='holds mask_rcnn_lit_ti weights, not retinanet_lit_ti'):
        load_dense_start_weights(model, 'retinanet_lit_ti', mask_rcnn_file, print)
    config = tiny_config(tmp_path / 'tiny.yaml', 'retinanet')
    result = lit(*dense_train_args('retinanet', config, tmp_path, 'start', '--initial-checkpoint', mask_rcnn_file))
    one_line_error(result, str(mask_rcnn_file), 'mask_rcnn_lit_ti', 'not retinanet_lit_ti', '--pretrained')
    assert not (tmp_path / 'start').exists()


def test_classification_checkpoint_initialises_the_backbone_only(tmp_path):
    classifier = create_model('lit_ti').state_dict()
    path = tmp_path / 'lit_ti.pth'
    torch.save({'model': classifier}, path)
    model = create_dense_model('retinanet_lit_ti', len(GARMENTS), img_scale=DET_SCALE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    said = load_dense_start_weights(model, 'retinanet_lit_ti', path, print)
    assert said == f'backbone from the classification weights {path}'
    body_prefix = 'backbone.body.'
    after = model.state_dict()
    body = {k[len(body_prefix):]: v for k, v in after.items() if k.startswith(body_prefix)}
    # every backbone tensor comes from the classifier, which has only its class token, final norm and head besides
    assert set(classifier) - set(body) == {'cls_token', 'norm.weight', 'norm.bias', 'head.weight', 'head.bias'}
    assert set(body) <= set(classifier)
    for key, value in body.items():
        assert torch.equal(value, classifier[key]), key
    neck_and_head = [k for k in after if not k.startswith(body_prefix)]
    assert {k.split('.')[0] for k in neck_and_head} == {'backbone', 'head'}, neck_and_head
    for key in neck_and_head:
        assert torch.equal(after[key], before[key]), key


@pytest.mark.slow
def test_initial_checkpoint_run_starts_from_its_weights(runs, tmp_path):
    """lit train --initial-checkpoint DET.pt at lr 0: the run logs the full load and its weights stay the file's."""
    ckpt = runs['retinanet'].checkpoint
    result = lit(*dense_train_args('retinanet', runs['retinanet'].config, tmp_path, 'start', '--initial-checkpoint',
                                   ckpt, '--lr', 0))
    assert result.exit_code == 0, result.output
    start = [line for line in result.output.splitlines() if line.startswith('start:')]
    assert start == [f'start: retinanet_lit_ti weights from {ckpt}'], result.output
    saved, trained = saved_weights(ckpt), saved_weights(tmp_path / 'start' / 'checkpoints' / 'last.pt')
    # lr 0 keeps every weight (AdamW's decay is lr x wd); the BatchNorm statistics of the offset patch embeddings
    # still follow the batches
    statistics = ('running_mean', 'running_var', 'num_batches_tracked')
    assert sum(key.endswith(statistics) for key in saved) > 0
    for key, value in saved.items():
        if not key.endswith(statistics):
            assert torch.equal(trained[key], value), key


# ---------------------------------------------------------------------------------------------------------------
# lit eval, lit detect and lit segment of the tiny runs' checkpoints


def in_range(value) -> bool:
    """A COCO / mmseg percentage (nan: no object of that size / class in the split)."""
    return isinstance(value, float) and (math.isnan(value) or 0 <= value <= 100)


@pytest.mark.slow
def test_eval_detection_prints_the_ap_table_and_writes_eval_json_and_per_class(runs, tmp_path):
    out = tmp_path / 'out'
    result = lit('eval', '--checkpoint', runs['retinanet'].checkpoint, '--out', out, '--per-class', '-j', 0)
    assert result.exit_code == 0, result.output
    text = result.output
    assert 'COCO AP' in text and all(c in text for c in AP_COLUMNS) and 'box' in text, text
    assert 'per class AP' in text and all(name in text for name in GARMENTS), text
    saved = json.loads((out / 'eval.json').read_text())
    assert saved['task'] == 'retinanet' and saved['model'] == 'retinanet_lit_ti'
    assert saved['data'] == 'fashion-mnist-det' and saved['num_images'] == 2  # the run's val_scenes
    assert all(in_range(saved[f'bbox_{c}']) for c in AP_COLUMNS), saved
    assert not any(k.startswith('segm_') for k in saved)
    rows = list(csv.reader(open(out / 'per_class.csv')))
    assert rows[0] == ['class', 'bbox_AP'] and [r[0] for r in rows[1:]] == GARMENTS


@pytest.mark.slow
def test_eval_detection_json_and_results_file(runs, tmp_path):
    results = tmp_path / 'detections.json'
    result = lit('eval', '--checkpoint', runs['retinanet'].checkpoint, '--out', tmp_path / 'out', '--json', '-j', 0,
                 '--results-file', results)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed == {**json.loads((tmp_path / 'out' / 'eval.json').read_text()), 'path': printed['path']}
    assert all(in_range(printed[f'bbox_{c}']) for c in AP_COLUMNS) and printed['results_file'] == str(results)
    detections = json.loads(results.read_text())
    assert isinstance(detections, list)
    assert all(set(d) >= {'image_id', 'category_id', 'bbox', 'score'} and 1 <= d['category_id'] <= 10
               for d in detections)


@pytest.mark.slow
def test_eval_segmentation_prints_miou_and_its_json(runs, tmp_path):
    ckpt = runs['semantic-fpn'].checkpoint
    result = lit('eval', '--checkpoint', ckpt, '--out', tmp_path / 'a', '--per-class', '-j', 0)
    assert result.exit_code == 0, result.output
    assert 'mIoU / mAcc / aAcc' in result.output and 'COCO AP' not in result.output, result.output
    rows = list(csv.reader(open(tmp_path / 'a' / 'per_class.csv')))
    assert rows[0] == ['class', 'IoU', 'Acc'] and [r[0] for r in rows[1:]] == ['background'] + GARMENTS
    result = lit('eval', '--checkpoint', ckpt, '--out', tmp_path / 'b', '--json', '-j', 0)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed['task'] == 'semantic_fpn' and printed['num_images'] == 2
    assert all(in_range(printed[k]) and not math.isnan(printed[k]) for k in ('mIoU', 'mAcc', 'aAcc')), printed
    assert not any(k.startswith('bbox_') for k in printed)


@pytest.mark.slow
def test_detect_uses_the_runs_classes(runs, tmp_path):
    result = lit('detect', CAT, '--checkpoint', runs['retinanet'].checkpoint, '--out', tmp_path, '--score-thr', 0,
                 '--json')
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed['model']['name'] == 'retinanet_lit_ti' and printed['model']['classes'] == 10
    found = printed['images'][0]['detections']
    assert found and {d['label'] for d in found} <= set(GARMENTS), found  # score >= 0: every kept detection
    assert all(d['category_id'] == GARMENTS.index(d['label']) + 1 for d in found)
    coco = json.loads((tmp_path / 'detections.json').read_text())
    assert len(coco) == len(found) and {d['category_id'] for d in coco} <= set(range(1, 11))
    assert (tmp_path / 'chelsea.png').stat().st_size > 0


@pytest.mark.slow
def test_segment_uses_the_runs_classes(runs, tmp_path):
    result = lit('segment', CAT, '--checkpoint', runs['semantic-fpn'].checkpoint, '--out', tmp_path, '--json')
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed['model']['name'] == 'semantic_fpn_lit_ti' and printed['model']['classes'] == 11
    legend = printed['images'][0]['classes']
    assert legend and all(c['name'] == (['background'] + GARMENTS)[c['index']] for c in legend), legend
    assert abs(sum(c['fraction'] for c in legend) - 1) < 0.01


# ---------------------------------------------------------------------------------------------------------------
# Review fixes: flags a dense model cannot use, averaging refused before writing, YAML numbers checked, gradient
# accumulation keeps the iteration schedule's length


def test_eval_refuses_classification_flags_for_a_dense_checkpoint(retinanet_file, tmp_path):
    one_line_error(lit('eval', '--checkpoint', retinanet_file, '--data', 'fashion-mnist-det', '--img-size', 512,
                       '--out', tmp_path / 'ev'), '--img-size', 'classification option', 'drop it')
    assert not (tmp_path / 'ev').exists()


def test_avg_checkpoints_refuses_dense_checkpoints_before_writing(retinanet_file, tmp_path):
    other = tmp_path / 'copy.pt'
    other.write_bytes(retinanet_file.read_bytes())
    one_line_error(lit('avg-checkpoints', retinanet_file, other, '--out', tmp_path / 'avg.pt'),
                   'detection/segmentation checkpoint', 'lit eval')
    assert not (tmp_path / 'avg.pt').exists()


@pytest.mark.parametrize('line,fragment', [('lr: 1e-4', 'write YAML floats with a dot'),
                                           ('batch_size: 0', 'batch_size must be a whole number >= 1'),
                                           ('model_kwargs: 3', 'model_kwargs must be a mapping')])
def test_dense_yaml_values_are_checked(tmp_path, line, fragment):
    (tmp_path / 'c.yaml').write_text(line + '\n')
    one_line_error(lit('train', '--task', 'retinanet', '--config', tmp_path / 'c.yaml', '--output', tmp_path / 'o'),
                   fragment)
    assert not (tmp_path / 'o').exists()


def test_gradient_accumulation_keeps_the_updates_of_an_iteration_period():
    import torch

    from litcli.core.data.dense import build_dense_train_loader
    from litcli.core.runtime import World

    cfg = dict(batch_size=2, seed=0, workers=0, grad_accum_steps=4)
    loader = build_dense_train_loader(list(range(10)), 'segmentation', cfg, World(), torch.device('cpu'), 3)
    assert len(loader) == 3 * 4  # 3 optimizer updates of 4 batches each

"""What a run needs around it (issue 20): `lit train --log tensorboard|wandb` and `--keep-best`, `lit eval
--per-class/--confusion-matrix/--results-file`, `lit avg-checkpoints`, `lit compare`, `lit cam`; on tiny runs made
here."""
import csv
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import litcli.models  # noqa: F401
from helpers import TINY, lit, train_args
from litcli.core.modelio.checkpoint import CheckpointSaver, read_checkpoint, read_top_index

EPOCHS = 3


@pytest.fixture(scope='module')
def run(tiny_data, tiny_config, tmp_path_factory):
    """A 3-epoch tiny LIT-Ti run that learns (lr 3e-3), with TensorBoard and the 2 best epochs kept."""
    pytest.importorskip('tensorboard')
    output = tmp_path_factory.mktemp('runs')
    result = lit(*train_args(tiny_data, tiny_config, output, '--name', 'tb', '--epochs', EPOCHS, '--lr', 3e-3,
                             '--warmup-epochs', 0, '--log-interval', 2, '--log', 'tensorboard', '--keep-best', 2))
    assert result.exit_code == 0, result.output
    return output / 'tb', result.output


def metrics_rows(run_dir: Path):
    return [json.loads(line) for line in (run_dir / 'metrics.jsonl').read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------------------
# lit train --log / --keep-best


def test_tensorboard_events_hold_steps_lrs_eval_and_dtm_offsets(run, tiny_data):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from litcli.core.modelio.factory import load_model
    from litcli.core.training.tracking import dtm_offsets_px, fixed_batch

    run_dir, out = run
    assert f'logging to {run_dir / "tensorboard"}' in out
    # the run directory is as before, plus the events folder
    assert {p.name for p in run_dir.iterdir()} == {'checkpoints', 'config.yaml', 'env.json', 'metrics.csv',
                                                   'metrics.jsonl', 'curves.png', 'tensorboard'}
    events = EventAccumulator(str(run_dir / 'tensorboard'))
    events.Reload()
    tags = set(events.Tags()['scalars'])
    assert {'train/loss', 'train/img_per_s', 'lr/decay', 'lr/no_decay', 'lr/offset', 'eval/top1', 'eval/top5',
            'eval/loss', 'train/epoch_loss', 'train/epoch_time_s'} <= tags
    # 16 images / batch 4 = 4 updates per epoch, logged every 2 updates
    assert [e.step for e in events.Scalars('train/loss')] == [2, 4, 6, 8, 10, 12]
    # the offset group's own rate: 0.01 x the others at the peak (no warmup here), then the shared cosine floor
    decay, offset = events.Scalars('lr/decay'), events.Scalars('lr/offset')
    assert decay[0].value == pytest.approx(3e-3) and offset[0].value == pytest.approx(3e-5)
    assert all(o.value < d.value for o, d in zip(offset, decay))
    rows = metrics_rows(run_dir)
    assert [e.step for e in events.Scalars('eval/top1')] == [r['step'] for r in rows] == [4, 8, 12]
    assert [e.value for e in events.Scalars('eval/top1')] == pytest.approx([r['eval_top1'] for r in rows])
    dtm_tags = sorted(t for t in tags if t.startswith('dtm/'))
    assert dtm_tags == ['dtm/patch_embed2_offset_px', 'dtm/patch_embed3_offset_px', 'dtm/patch_embed4_offset_px']
    # the last epoch's value is each DTM's mean |offset| (px) of the final weights on the first 16 val images
    loaded = load_model(run_dir / 'checkpoints' / 'last.pt')
    from litcli.core.data.datasets import build_eval_dataset
    from litcli.core.data.transforms import eval_transform
    ds, _ = build_eval_dataset(str(tiny_data), transform=eval_transform(loaded.data_config))
    expected = dtm_offsets_px(loaded.model, fixed_batch(ds))
    for name, px in expected.items():
        assert events.Scalars(f'dtm/{name}_offset_px')[-1].value == pytest.approx(px, rel=1e-4)
        assert px > 0  # trained offsets moved off zero
    assert 'config' in ' '.join(events.Tags()['tensors'])


@pytest.mark.parametrize('patch_size, strides', [(4, [4, 8, 16]), (2, [2, 4, 8])])
def test_dtm_offsets_in_pixels_by_hand(patch_size, strides):
    """A hand-set offset conv: every tap of the first DTM moved by (3, 4) grid cells = 5 cells of the stage-1 grid,
    one stem patch apart: 5 x 4 = 20 px (5 x 2 = 10 px for a 2x2 stem), in the tracker's curve and in viz-offsets'
    statistics alike; the other DTMs stay at 0."""
    import timm

    from litcli.core.analysis.offsets import offset_stats, trace_offsets
    from litcli.core.training.tracking import dtm_offsets_px
    model = timm.create_model('lit_ti', num_classes=2, img_size=64, patch_size=patch_size, **TINY).eval()
    conv = model.patch_embed2.dconv.conv_offset
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.copy_(torch.tensor([3.0, 4.0] * 4))
    expected = 5 * patch_size
    px = dtm_offsets_px(model, torch.randn(2, 3, 64, 64))
    assert px == pytest.approx({'patch_embed2': expected, 'patch_embed3': 0, 'patch_embed4': 0})
    assert model.training is False
    rows = offset_stats(trace_offsets(model, 'assets/photos/chelsea.jpg', img_size=64))
    assert [r['input_stride_px'] for r in rows] == strides
    assert [r['mean_abs_offset'] for r in rows] == pytest.approx([5, 0, 0])
    assert [r['mean_abs_offset_px'] for r in rows] == pytest.approx([expected, 0, 0])
    assert [r['max_abs_offset_px'] for r in rows] == pytest.approx([expected, 0, 0])


def test_keep_best_keeps_the_k_best_epochs_and_best_pt_stays_best(run):
    run_dir, out = run
    ckpt_dir = run_dir / 'checkpoints'
    rows = metrics_rows(run_dir)
    ranking = read_top_index(ckpt_dir)
    expected = sorted(rows, key=lambda r: (-r['eval_top1'], r['epoch']))[:2]
    assert [(e['epoch'], e['metric']) for e in ranking] == [(r['epoch'], r['eval_top1']) for r in expected]
    assert sorted(p.name for p in ckpt_dir.glob('top-*.pt')) == sorted(e['file'] for e in ranking)
    for entry in ranking:
        ckpt = read_checkpoint(ckpt_dir / entry['file'])
        assert ckpt['epoch'] == entry['epoch'] and ckpt['eval_top1'] == entry['metric']
    best = read_checkpoint(ckpt_dir / 'best.pt')
    assert best['eval_top1'] == max(r['eval_top1'] for r in rows) == ranking[0]['metric']
    assert 'keeping the checkpoints of the 2 best epochs' in out


def test_resumed_run_keeps_logging_and_ranking(run, tmp_path):
    """--resume keeps the run's --log and --keep-best; the events of both parts read as one run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    copy = tmp_path / 'tb'
    shutil.copytree(run[0], copy)
    result = lit('train', '--resume', copy / 'checkpoints' / 'last.pt', '--epochs', EPOCHS + 1, '-j', 0)
    assert result.exit_code == 0, result.output
    events = EventAccumulator(str(copy / 'tensorboard'))
    events.Reload()
    assert [e.step for e in events.Scalars('eval/top1')] == [4, 8, 12, 16]
    assert [e.step for e in events.Scalars('train/loss')][-2:] == [14, 16]
    ranking = read_top_index(copy / 'checkpoints')
    rows = metrics_rows(copy)
    assert len(ranking) == 2 and ranking[0]['metric'] == max(r['eval_top1'] for r in rows)


def test_checkpoint_saver_ranking(tmp_path):
    """timm's history: the K best by metric, a tie keeps the earlier epoch, a re-run epoch replaces itself."""
    saver = CheckpointSaver(tmp_path, keep_best=2)
    for epoch, metric in enumerate([50.0, 70.0, 60.0, 70.0, 80.0, 40.0]):
        saver.save_epoch({'epoch': epoch, 'w': torch.tensor([float(epoch)])}, is_best=False, metric=metric)
    assert [(e['epoch'], e['metric']) for e in read_top_index(tmp_path)] == [(4, 80.0), (1, 70.0)]
    assert sorted(p.name for p in tmp_path.glob('top-*.pt')) == ['top-epoch0001.pt', 'top-epoch0004.pt']
    assert read_checkpoint(tmp_path / 'top-epoch0001.pt')['w'].item() == 1.0  # linked, not overwritten later
    saver.save_epoch({'epoch': 4, 'w': torch.tensor([9.0])}, is_best=False, metric=65.0)  # epoch 4 again (resume)
    assert [(e['epoch'], e['metric']) for e in read_top_index(tmp_path)] == [(1, 70.0), (4, 65.0)]
    CheckpointSaver(tmp_path / 'off').save_epoch({'epoch': 0}, is_best=True, metric=1.0)  # keep_best 0: no files
    assert not list((tmp_path / 'off').glob('top*'))


def test_log_needs_its_package_and_a_known_name(tiny_data, tiny_config, tmp_path, monkeypatch):
    import importlib.util

    result = lit(*train_args(tiny_data, tiny_config, tmp_path, '--log', 'mlflow'))
    assert result.exit_code == 2 and "unknown --log 'mlflow'" in result.output
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'wandb' else real(name, *a))
    result = lit(*train_args(tiny_data, tiny_config, tmp_path, '--log', 'wandb', '--name', 'w'))
    assert result.exit_code == 1 and "pip install 'litcli[wandb]'" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / 'w').exists()  # before any work


def test_wandb_writer_runs_offline_in_the_run_directory(tmp_path, monkeypatch):
    """The calls lit makes to wandb (a stand-in module records them): an offline run under <run>/wandb, scalars
    at the optimizer step, finished at the end."""
    from litcli.core.training.tracking import create_tracker

    calls = []

    class Run:
        def log(self, scalars, step):
            calls.append(('log', dict(scalars), step))

        def finish(self):
            calls.append(('finish',))

    fake = types.ModuleType('wandb')
    fake.init = lambda **kw: calls.append(('init', kw)) or Run()
    monkeypatch.setitem(sys.modules, 'wandb', fake)
    monkeypatch.delenv('WANDB_MODE', raising=False)
    optimizer = torch.optim.SGD([dict(params=[torch.zeros(1, requires_grad=True)], lr=0.1, group='decay'),
                                 dict(params=[torch.zeros(1, requires_grad=True)], lr=0.001, group='offset')])
    tracker = create_tracker(['wandb'], tmp_path, {'lr': 0.1}, optimizer, log_interval=1)
    tracker.step(dict(epoch=0, step=1, batch=1, total=2, loss=0.5, lr=0.1, img_per_s=10.0, elapsed=1.0,
                      data_s=0.25, compute_s=0.75, images=4, first=True))
    tracker.close()
    init = calls[0][1]
    assert init['mode'] == 'offline' and init['dir'] == str(tmp_path) and init['config'] == {'lr': 0.1}
    assert calls[1] == ('log', {'train/loss': 0.5, 'train/img_per_s': 10.0, 'time/data_s': 0.25,
                                'time/compute_s': 0.75, 'time/data_share': 0.25, 'lr/decay': 0.1,
                                'lr/offset': 0.001}, 1)
    assert calls[-1] == ('finish',)


# ---------------------------------------------------------------------------------------------------------------
# lit eval --per-class --confusion-matrix --results-file


def test_eval_per_class_confusion_and_results(run, tiny_data, tmp_path):
    run_dir, _ = run
    ckpt = run_dir / 'checkpoints' / 'best.pt'
    result = lit('eval', '--checkpoint', ckpt, '--out', tmp_path / 'ev', '-j', 0, '-b', 3, '--per-class',
                 '--confusion-matrix', '--results-file', tmp_path / 'res.csv', '--topk', 2)
    assert result.exit_code == 0, result.output
    ev = json.loads((tmp_path / 'ev' / 'eval.json').read_text())
    n = ev['num_images']
    assert n == 8
    classes = ev['per_class']['classes']
    assert [c['name'] for c in classes] == ['cat', 'dog'] and sum(c['support'] for c in classes) == n
    assert sum(c['accuracy'] * c['support'] for c in classes) / n == pytest.approx(ev['top1'])
    counts = np.array(ev['confusion_matrix']['counts'])
    assert counts.sum() == n and np.trace(counts) == ev['top1_correct']
    with open(tmp_path / 'ev' / 'confusion_matrix.csv') as f:
        table = list(csv.reader(f))
    assert table[0] == ['true \\ predicted', 'cat', 'dog'] and [[int(v) for v in r[1:]] for r in table[1:]] == \
        counts.tolist()
    assert Image.open(tmp_path / 'ev' / 'confusion_matrix.png').size[0] >= 600
    with open(tmp_path / 'res.csv') as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ['filename', 'true_index', 'true_label', 'index_0', 'index_1', 'label_0', 'label_1',
                             'prob_0', 'prob_1']
    assert sorted(r['filename'] for r in rows) == sorted(str(p) for p in (tiny_data / 'val').rglob('*.png'))
    assert sum(r['index_0'] == r['true_index'] for r in rows) == ev['top1_correct']
    assert all(abs(float(r['prob_0']) + float(r['prob_1']) - 1) < 1e-5 for r in rows)  # 2 classes: all of it
    assert all(r['true_label'] == Path(r['filename']).parent.name for r in rows)
    assert len(ev['results']) == n and ev['results_file'] == str(tmp_path / 'res.csv')
    assert 'per class' in result.output and 'precision' in result.output
    # JSON results (timm's orient='index'), printed JSON, and nothing overwritten without --force
    result = lit('eval', '--checkpoint', ckpt, '--out', tmp_path / 'ev', '-j', 0, '--confusion-matrix')
    assert result.exit_code == 1 and 'eval.json exists; pass --force' in result.output
    result = lit('eval', '--checkpoint', ckpt, '--out', tmp_path / 'ev2', '-j', 0, '--results-file',
                 tmp_path / 'res.csv')
    assert result.exit_code == 1 and 'res.csv exists; pass --force' in result.output
    result = lit('eval', '--checkpoint', ckpt, '--out', tmp_path / 'ev', '-j', 0, '--results-file',
                 tmp_path / 'res.json', '--force', '--json')
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    by_file = json.loads((tmp_path / 'res.json').read_text())
    assert len(by_file) == n and set(next(iter(by_file.values()))) == {'true_index', 'true_label', 'index', 'label',
                                                                       'prob'}
    assert printed['top1'] == ev['top1'] and 'per_class' not in printed
    result = lit('eval', '--checkpoint', ckpt, '--out', tmp_path / 'ev3', '--results-file', tmp_path / 'r.txt')
    assert result.exit_code == 1 and 'use a .csv or .json' in result.output


def test_per_class_metrics_match_sklearn():
    sklearn_metrics = pytest.importorskip('sklearn.metrics')
    from litcli.core.analysis.evaluation import per_class_metrics

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    pred = np.where(rng.random(200) < 0.6, y, rng.integers(0, 3, 200))  # class 3 is never predicted
    confusion = torch.zeros(4, 4, dtype=torch.int64)
    for t, p in zip(y, pred):
        confusion[t, p] += 1
    got = per_class_metrics(confusion, torch.zeros(4, dtype=torch.int64), ['a', 'b', 'c', 'd'])
    precision, recall, f1, support = sklearn_metrics.precision_recall_fscore_support(y, pred, zero_division=0)
    for i, c in enumerate(got['classes']):
        assert (c['precision'], c['recall'], c['f1']) == pytest.approx((100 * precision[i], 100 * recall[i],
                                                                         100 * f1[i]))
        assert c['support'] == support[i] and c['accuracy'] == c['recall']
    assert got['macro']['f1'] == pytest.approx(100 * sklearn_metrics.f1_score(y, pred, average='macro'))
    assert got['macro']['balanced_accuracy'] == pytest.approx(100 * sklearn_metrics.balanced_accuracy_score(y, pred))


# ---------------------------------------------------------------------------------------------------------------
# lit avg-checkpoints


def test_avg_checkpoints_averages_the_kept_epochs(run, tmp_path):
    run_dir, _ = run
    ranking = read_top_index(run_dir / 'checkpoints')
    members = [read_checkpoint(run_dir / 'checkpoints' / e['file']) for e in ranking]
    out = tmp_path / 'avg.pt'
    result = lit('avg-checkpoints', run_dir, '--out', out, '--json')
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed['best'] == str(run_dir / 'checkpoints' / ranking[0]['file']) and len(printed['members']) == 2
    avg = read_checkpoint(out)
    assert avg['variant'] == 'lit_ti' and avg['class_names'] == ['cat', 'dog'] and avg['weights'] == 'model'
    assert avg['data_config'] == members[0]['data_config'] and avg['model_kwargs'] == members[0]['model_kwargs']
    assert 'optimizer' not in avg and 'ema' not in avg
    for key, value in avg['model'].items():
        if value.is_floating_point():  # BatchNorm running statistics included
            torch.testing.assert_close(value, (members[0]['model'][key] + members[1]['model'][key]) / 2)
        else:  # num_batches_tracked: the best member's
            assert torch.equal(value, members[0]['model'][key]), key
    assert any('running_var' in k for k in avg['model'])
    # every command takes it
    result = lit('eval', '--checkpoint', out, '--out', tmp_path / 'ev', '-j', 0)
    assert result.exit_code == 0, result.output
    result = lit('avg-checkpoints', run_dir, '--out', out)
    assert result.exit_code == 1 and 'exists; pass --force' in result.output
    result = lit('avg-checkpoints', run_dir, '--out', out, '--force', '--top', 1)
    assert result.exit_code == 1 and 'nothing to average' in result.output


def test_avg_checkpoints_files_top_k_and_refusals(run, tmp_path):
    import timm

    run_dir, _ = run
    ckpt_dir = run_dir / 'checkpoints'
    tops = sorted(ckpt_dir.glob('top-*.pt'))
    result = lit('avg-checkpoints', *tops, ckpt_dir / 'last.pt', '--out', tmp_path / 'a.pt', '--top', 2, '--json')
    assert result.exit_code == 0, result.output
    ranked = sorted([read_checkpoint(p) for p in [*tops, ckpt_dir / 'last.pt']], key=lambda c: -c['eval_top1'])
    assert [m['eval_top1'] for m in json.loads(result.stdout)['members']] == [c['eval_top1'] for c in ranked[:2]]
    # a checkpoint without its own metric cannot be ranked
    step_like = tmp_path / 'no_metric.pt'
    torch.save({k: v for k, v in read_checkpoint(tops[0]).items() if k != 'eval_top1'}, step_like)
    result = lit('avg-checkpoints', tops[0], step_like, '--out', tmp_path / 'b.pt', '--top', 2)
    assert result.exit_code == 1 and 'does not record' in result.output
    # another variant
    other = timm.create_model('lit_s', num_classes=2, img_size=32, embed_dims=[16, 32, 64, 128],
                              depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], mlp_ratios=[2, 2, 2, 2])
    torch.save(dict(model=other.state_dict(), variant='lit_s', model_kwargs={}), tmp_path / 's.pt')
    result = lit('avg-checkpoints', tops[0], tmp_path / 's.pt', '--out', tmp_path / 'c.pt')
    assert result.exit_code == 1 and 'different variants' in result.output and 'lit_s' in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / 'c.pt').exists()
    # a run without ranked checkpoints
    (tmp_path / 'bare' / 'checkpoints').mkdir(parents=True)
    result = lit('avg-checkpoints', tmp_path / 'bare', '--out', tmp_path / 'd.pt')
    assert result.exit_code == 1 and '--keep-best' in result.output


def test_avg_checkpoints_refuses_other_label_sets_and_data_configs(run, tmp_path):
    """Same variant, keys and shapes, but A's class 0 is B's class 1 (or B was preprocessed otherwise): the average
    would carry A's names over mixed-up weights, so it is refused in one line naming both files."""
    run_dir, _ = run
    top = sorted((run_dir / 'checkpoints').glob('top-*.pt'))[0]
    raw = read_checkpoint(top)
    swapped, resized = tmp_path / 'swapped.pt', tmp_path / 'resized.pt'
    torch.save({**raw, 'class_names': ['dog', 'cat']}, swapped)
    torch.save({**raw, 'data_config': {**raw['data_config'], 'crop_pct': 0.5}}, resized)
    for other, words in ((swapped, ("different label sets (class 0 is 'cat' in", "but 'dog' in")),
                         (resized, ('different data configs (crop_pct', ' vs 0.5'))):
        result = lit('avg-checkpoints', top, other, '--out', tmp_path / 'avg.pt')
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1, result.output
        assert str(top) in lines[0] and str(other) in lines[0] and all(w in lines[0] for w in words), lines[0]
        assert not (tmp_path / 'avg.pt').exists()
    torch.save({**raw, 'class_names': ['cat', 'dog', 'fox']}, swapped)
    result = lit('avg-checkpoints', top, swapped, '--out', tmp_path / 'avg.pt')
    assert result.exit_code == 1 and '(2 classes vs 3)' in result.output


# ---------------------------------------------------------------------------------------------------------------
# lit compare


def test_compare_runs_of_different_lengths_and_data(run, tmp_path):
    from litcli.core.modelio.factory import create_model, param_counts

    run_dir, _ = run
    other = tmp_path / 'short'  # a shorter run on other data: its files as lit train writes them
    other.mkdir()
    rows = metrics_rows(run_dir)
    (other / 'metrics.jsonl').write_text(json.dumps({**rows[0], 'eval_top1': 12.5}) + '\n')
    cfg = yaml.safe_load((run_dir / 'config.yaml').read_text())
    (other / 'config.yaml').write_text(yaml.safe_dump({**cfg, 'data': '/elsewhere/other', 'num_classes': 3}))
    out = tmp_path / 'cmp.png'
    result = lit('compare', run_dir, other, '--out', out, '--json')
    assert result.exit_code == 0, result.output
    res = json.loads(result.stdout)
    first, second = res['runs']
    assert (first['name'], first['epochs'], second['epochs']) == ('tb', EPOCHS, 1)
    assert first['best'] == max(r['eval_top1'] for r in rows) and first['final'] == rows[-1]['eval_top1']
    assert first['wall_time_s'] == pytest.approx(sum(r['epoch_time_s'] for r in rows))
    model = create_model('lit_ti', num_classes=2, img_size=32, **TINY)
    assert first['params'] == param_counts(model)['params'] and first['gmacs'] is None
    assert any('different lengths' in n and 'short: 1 epoch)' in n for n in res['notes'])
    assert any('different datasets' in n and "tb: 2 classes: cat, dog; short: 3 classes" in n for n in res['notes'])
    assert Image.open(out).size[0] > 1000
    result = lit('compare', run_dir, other, '--out', out, '--metric', 'val_loss')
    assert result.exit_code == 1 and 'exists; pass --force' in result.output
    result = lit('compare', run_dir, other, '--out', out, '--metric', 'val_loss', '--force')
    assert result.exit_code == 0 and 'best eval_loss' in result.output and 'note: runs of different' in result.output
    assert f'{min(r["eval_loss"] for r in rows):.2f}' in result.output


def test_compare_knows_a_folder_and_the_shards_packed_from_it_are_one_dataset(run, tmp_path):
    """The data set is identified by its classes, not by how its path is written: a run on wds: shards packed from
    the folder is the same data set; the same path with other classes is not."""
    run_dir, _ = run
    cfg = yaml.safe_load((run_dir / 'config.yaml').read_text())
    for name, data, classes in (('shards', 'wds:/data/packed/train-{000000..000001}.tar', ['cat', 'dog']),
                                ('relabelled', cfg['data'], ['dog', 'cat'])):
        twin = tmp_path / name
        (twin / 'checkpoints').mkdir(parents=True)
        shutil.copy(run_dir / 'metrics.jsonl', twin / 'metrics.jsonl')
        (twin / 'config.yaml').write_text(yaml.safe_dump({**cfg, 'data': data}))
        torch.save({**read_checkpoint(run_dir / 'checkpoints' / 'last.pt'), 'class_names': classes},
                   twin / 'checkpoints' / 'last.pt')
    result = lit('compare', run_dir, tmp_path / 'shards', '--out', tmp_path / 'a.png', '--json')
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)['notes'] == []
    result = lit('compare', run_dir, tmp_path / 'relabelled', '--out', tmp_path / 'b.png', '--json')
    assert result.exit_code == 0, result.output
    assert any("relabelled: 2 classes: dog, cat" in n for n in json.loads(result.stdout)['notes'])


def test_compare_refuses_a_folder_without_metrics(run, tmp_path):
    run_dir, _ = run
    (tmp_path / 'empty').mkdir()
    result = lit('compare', run_dir, tmp_path / 'empty', '--out', tmp_path / 'x.png')
    assert result.exit_code == 1 and 'has no metrics' in result.output and not (tmp_path / 'x.png').exists()
    result = lit('compare', run_dir, '--metric', 'accuracy')
    assert result.exit_code == 2 and 'unknown --metric' in result.output
    for text in ('{"epoch": 0, "train_loss": 1.0}\n[1, 2]\n', '{"train_loss": 1.0}\n'):  # edited by hand
        (tmp_path / 'edited').mkdir(exist_ok=True)
        (tmp_path / 'edited' / 'metrics.jsonl').write_text(text)
        result = lit('compare', run_dir, tmp_path / 'edited', '--out', tmp_path / 'y.png')
        assert result.exit_code == 1 and 'is not a metrics row' in result.output, result.output


# ---------------------------------------------------------------------------------------------------------------
# lit cam


@pytest.fixture(scope='module')
def grad_cam():
    return pytest.importorskip('pytorch_grad_cam')


def test_cam_overlays_per_image_and_class(run, tiny_data, tmp_path, grad_cam):
    run_dir, _ = run
    ckpt = run_dir / 'checkpoints' / 'best.pt'
    images = [tiny_data / 'val' / 'cat' / '0.png', tiny_data / 'val' / 'dog' / '1.png']
    out = tmp_path / 'cam'
    result = lit('cam', *images, '--checkpoint', ckpt, '--stage', 2, '--class', 'dog', '--class', 0,
                 '--out', out, '--json')
    assert result.exit_code == 0, result.output
    res = json.loads(result.stdout)
    assert res['token_grid'] == [4, 4] and res['notes'] == []
    files = sorted(p.name for p in out.iterdir())
    assert files == ['0-cat-gradcam-stage2.png', '0-dog-gradcam-stage2.png', '1-cat-gradcam-stage2.png',
                     '1-dog-gradcam-stage2.png']
    for item in res['images']:
        assert [m['label'] for m in item['maps']] == ['dog', 'cat']
        for m in item['maps']:
            picture = np.asarray(Image.open(m['png']))
            assert picture.shape == (448, 448, 3) and picture.std() > 1  # readable size, not a flat colour
    result = lit('cam', images[0], '--checkpoint', ckpt, '--stage', 2, '--class', 'dog', '--out', out)
    assert result.exit_code == 1 and 'exists; pass --force' in result.output
    # top-1 by default, class-agnostic EigenCAM: one map per image; stage 4 of a 32 px input is one token
    result = lit('cam', images[0], '--checkpoint', ckpt, '--method', 'eigencam', '--out', tmp_path / 'e')
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / 'e').iterdir()] == ['0-all-classes-eigencam-stage4.png']
    assert 'does not depend on the class' in result.output and 'single token' in result.output


def test_cam_methods_and_stages_write_distinct_files(run, tiny_data, tmp_path, grad_cam):
    """Grad-CAM++ next to Grad-CAM, and stage 2 next to stage 3, in one --out: four files, none refused or
    replaced (the '++' and the stage are in the name)."""
    from litcli.commands.cam import map_suffix
    from litcli.core.analysis.cam import METHODS

    assert len({map_suffix(m, s) for m in METHODS for s in (1, 2, 3, 4)}) == len(METHODS) * 4
    run_dir, _ = run
    image, out = tiny_data / 'val' / 'cat' / '0.png', tmp_path / 'cam'
    pictures = {}
    for method in ('gradcam', 'gradcam++'):
        for stage in (2, 3):
            result = lit('cam', image, '--checkpoint', run_dir / 'checkpoints' / 'best.pt', '--method', method,
                         '--stage', stage, '--class', 'cat', '--out', out, '--json')
            assert result.exit_code == 0, result.output
            png = Path(json.loads(result.stdout)['images'][0]['maps'][0]['png'])
            pictures[png.name] = png.read_bytes()
    assert sorted(pictures) == ['0-cat-gradcam-stage2.png', '0-cat-gradcam-stage3.png',
                                '0-cat-gradcampp-stage2.png', '0-cat-gradcampp-stage3.png']
    assert sorted(p.name for p in out.iterdir()) == sorted(pictures)
    assert all(pictures[p.name] == p.read_bytes() for p in out.iterdir())  # nothing overwritten afterwards


def test_cam_bad_input_is_one_line(run, tiny_data, tmp_path, grad_cam):
    run_dir, _ = run
    ckpt = run_dir / 'checkpoints' / 'best.pt'
    image = tiny_data / 'val' / 'cat' / '0.png'
    (tmp_path / 'notes.png').write_text('not an image')
    cases = [(('--class', 'horse'), "--class 'horse' does not exist", 1),
             (('--class', 7), 'no such class index', 1),
             (('--stage', 5), 'LIT has stages 1, 2, 3 and 4', 1),
             (('--method', 'scorecam'), "'scorecam' is not one of", 2)]
    for extra, message, code in cases:
        result = lit('cam', image, '--checkpoint', ckpt, '--out', tmp_path / 'o', *extra)
        assert result.exit_code == code and message in result.output, result.output
    result = lit('cam', image, tmp_path / 'notes.png', '--checkpoint', ckpt, '--out', tmp_path / 'o')
    assert result.exit_code == 1 and 'cannot read' in result.output and 'as an image' in result.output
    assert not (tmp_path / 'o').exists()


@pytest.mark.parametrize('variant', ['lit_ti', 'lit_s'])
def test_cam_token_reshape_lays_tokens_on_the_stage_grid(variant, grad_cam):
    """The reshape of a stage's token sequence is the stage's (B, C, h, w) map (forward_intermediates), and the
    stage-4 Grad-CAM of a class-token model (LIT-Ti: its norm1 input) is not empty."""
    import timm

    from litcli.core.analysis.cam import compute_cams, stage_target

    torch.manual_seed(0)
    model = timm.create_model(variant, num_classes=3, img_size=64, **TINY).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)
    for stage in (1, 2, 3, 4):
        layer, reshape, grid = stage_target(model, stage, (64, 96))
        assert grid == (64 // 2 ** (stage + 1), 96 // 2 ** (stage + 1))
        seen = []
        handle = layer.register_forward_hook(lambda m, i, o: seen.append(o))
        with torch.no_grad():
            model(x)
        handle.remove()
        if variant == 'lit_ti' and stage == 4:  # the target is norm1 of the last block: its input, normalised
            assert reshape(seen[0]).shape == maps[3].shape
            continue
        torch.testing.assert_close(reshape(seen[0]), maps[stage - 1])
    cam = compute_cams(model, x, 'gradcam', 4, [1])
    assert cam.shape == (1, 64, 96) and cam.max() > 0


def test_cam_without_grad_cam_names_the_extra(run, tiny_data, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name, *a: None if name == 'pytorch_grad_cam' else real(name, *a))
    result = lit('cam', tiny_data / 'val' / 'cat' / '0.png', '--checkpoint', run[0] / 'checkpoints' / 'best.pt',
                 '--out', tmp_path / 'o')
    assert result.exit_code == 1 and "pip install 'litcli[cam]'" in result.output
    assert len(result.output.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------------------------
# output: rich on a terminal, plain lines elsewhere


def test_tables_are_rich_on_a_terminal_and_plain_lines_elsewhere(capsys):
    import io

    from rich.console import Console

    from litcli.core.report import print_table

    buffer = io.StringIO()
    print_table('t', ['run', 'top-1'], [('a', '1.00'), ('bb', '10.00')], right=(1,),
                console=Console(file=buffer, force_terminal=True, width=80))
    assert '┃' in buffer.getvalue() or '│' in buffer.getvalue()
    print_table('t', ['run', 'top-1'], [('a', '1.00'), ('bb', '10.00')], right=(1,),
                console=Console(file=io.StringIO(), force_terminal=False))
    assert capsys.readouterr().out.splitlines() == ['t', 'run  top-1', 'a     1.00', 'bb   10.00']

"""Answers that used to be silently wrong (issue 16): the config file's data/variant, the eval transform of
built-in-data checkpoints in predict/export, EMA weights, bf16/fp16 models, relative data paths, the lr column,
the figure commands' data, a paper variant without data, and smaller defects."""
import json
import os
import stat

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image

import litcli.models  # noqa: F401
from litcli.core.errors import LitError
from helpers import lit, make_folder, train_args


@pytest.fixture(scope='module')
def mini_run(tmp_path_factory):
    """The built-in demo configuration, 1 epoch of the shipped mini set, with an EMA of the weights."""
    out = tmp_path_factory.mktemp('runs')
    result = lit('train', '--data', 'fashion-mnist-mini', '--epochs', 1, '--output', out, '--name', 'mini',
                 '--model-ema', '--model-ema-decay', 0.99)
    assert result.exit_code == 0, result.output
    return out / 'mini'


def test_config_file_data_and_variant_count_like_flags(tmp_path):
    from litcli.core.config import new_run_config

    folder = make_folder(tmp_path / 'small', n_train=2, n_val=1)
    (tmp_path / 'ti.yaml').write_text(f'variant: ti\ndata: {folder}\nimg_size: 32\nepochs: 1\n')
    cfg = new_run_config(tmp_path / 'ti.yaml', {})
    assert cfg['variant'] == 'lit_ti' and cfg['model_kwargs'] == {} and not cfg['demo_config']
    assert cfg['lr'] is None and cfg['aa'] == 'rand-m9-mstd0.5-inc1'  # the paper recipe, not the demo's
    (tmp_path / 'mini.yaml').write_text('variant: ti\ndata: fashion-mnist-mini\n')
    cfg = new_run_config(tmp_path / 'mini.yaml', {})
    assert cfg['model_kwargs'] == {} and not cfg['demo_config'] and cfg['img_size'] == 224
    cfg = new_run_config(None, {'data': 'fashion-mnist-mini'})  # no variant anywhere: the demo
    assert cfg['demo_config'] and cfg['model_kwargs']['embed_dims'] == (16, 48, 96, 192)
    assert cfg['model_kwargs']['patch_size'] == 2 and cfg['model_kwargs']['stem_kernel'] == 6 and cfg['amp'] == 'auto'


@pytest.mark.slow
def test_config_file_variant_trains_that_variant(tmp_path):
    folder = make_folder(tmp_path / 'small', n_train=2, n_val=1)
    (tmp_path / 'ti.yaml').write_text(f'variant: ti\ndata: {folder}\nimg_size: 32\nepochs: 1\nbatch_size: 4\n'
                                      f'workers: 0\naa: ""\nreprob: 0.0\n')
    result = lit('train', '--config', tmp_path / 'ti.yaml', '--output', tmp_path / 'runs', '--name', 'ti')
    assert result.exit_code == 0, result.output
    ckpt = torch.load(tmp_path / 'runs' / 'ti' / 'checkpoints' / 'last.pt', weights_only=True)
    params = sum(v.numel() for k, v in ckpt['model'].items() if 'num_batches' not in k and 'index' not in k
                 and 'running' not in k)
    assert params > 18_000_000 and 'demo' not in result.output  # the real LIT-Ti, not the 0.8M demo model


@pytest.mark.slow
def test_demo_configuration_says_so(mini_run):
    cfg = yaml.safe_load((mini_run / 'config.yaml').read_text())
    assert cfg['demo_config'] and cfg['data'] == 'fashion-mnist-mini'


@pytest.mark.slow
def test_demo_log_names_its_size(tmp_path):
    result = lit('train', '--data', 'fashion-mnist-mini', '--epochs', 1, '--output', tmp_path, '--name', 'd',
                 '--batch-size', 1000, '--lr', 0)
    assert result.exit_code == 0, result.output
    assert 'built-in demo configuration' in result.output and "not the paper's lit_ti" in result.output
    assert 'M parameters' in result.output
    # torch's default threads (the patch-2 demo model scales to 2 threads); --threads pins them
    assert yaml.safe_load((tmp_path / 'd' / 'config.yaml').read_text())['threads'] is None
    before = torch.get_num_threads()
    try:
        result = lit('train', '--data', 'fashion-mnist-mini', '--epochs', 1, '--output', tmp_path, '--name', 'e',
                     '--batch-size', 1000, '--lr', 0, '--threads', 2)  # the flag wins
    finally:
        torch.set_num_threads(before)  # lit train sets the process's threads
    assert result.exit_code == 0 and 'cpu (2 thread(s))' in result.output, result.output
    assert yaml.safe_load((tmp_path / 'e' / 'config.yaml').read_text())['threads'] == 2


@pytest.mark.slow
def test_predict_over_test_pngs_equals_eval(mini_run, tmp_path):
    """The built-in sets are zero-padded 28 -> 32 in training; predict (and export's config) must do the same."""
    from litcli.core.data.datasets import load_fashion_mnist_mini
    from litcli.commands.eval import run as run_eval
    from litcli.commands.predict import run as predict

    ckpt = mini_run / 'checkpoints' / 'last.pt'
    ev = run_eval(ckpt, out=tmp_path / 'ev', workers=0)
    images, labels = load_fashion_mnist_mini('test')
    folder = tmp_path / 'pngs'
    folder.mkdir()
    for i, a in enumerate(images):
        Image.fromarray(a, 'L').save(folder / f'{i:04d}.png')
    result = predict([str(folder)], ckpt, topk=1, batch_size=250)
    predicted = np.array([p['topk'][0]['index'] for p in result['predictions']])
    assert result['model']['crop_mode'] == 'pad' and result['model']['weights'] == 'ema'
    assert 100.0 * (predicted == labels).mean() == pytest.approx(ev['top1'])
    # lit export writes the same preprocessing into its config, so ONNX users inherit it
    assert lit('export', '--checkpoint', ckpt, '-f', 'safetensors', '--out', tmp_path / 'm.safetensors').exit_code == 0
    sidecar = json.loads((tmp_path / 'm.safetensors.json').read_text())
    assert sidecar['data_config']['crop_mode'] == 'pad' and sidecar['data_config']['input_size'] == [3, 32, 32]
    assert sidecar['weights'] == 'ema'
    exported = predict([str(folder)], tmp_path / 'm.safetensors', topk=1, batch_size=250)
    assert [p['topk'][0]['index'] for p in exported['predictions']] == predicted.tolist()


@pytest.mark.slow
def test_eval_loads_the_weights_the_metrics_came_from(mini_run, tmp_path):
    ckpt = torch.load(mini_run / 'checkpoints' / 'best.pt', weights_only=True)
    assert ckpt['eval_weights'] == 'ema'
    best = ckpt['best_metric']
    ev = {}
    for flag in ('', '--use-ema', '--no-use-ema'):
        result = lit('eval', '--checkpoint', mini_run / 'checkpoints' / 'best.pt', '--out', tmp_path / f'e{flag}',
                     '-j', 0, *([flag] if flag else []))
        assert result.exit_code == 0, result.output
        ev[flag] = json.loads((tmp_path / f'e{flag}' / 'eval.json').read_text())
    assert ev['']['top1'] == pytest.approx(best) and ev['']['weights'] == 'ema'
    assert ev['--use-ema']['top1'] == ev['']['top1']
    assert ev['--no-use-ema']['weights'] == 'model' and ev['--no-use-ema']['top1'] != pytest.approx(best)
    for command in (('predict', str(mini_run / 'checkpoints' / 'best.pt')),):
        assert '--use-ema' in lit(command[0], '--help').output
    for command in ('export', 'viz-offsets', 'attn-maps'):
        assert '--use-ema' in lit(command, '--help').output


def test_use_ema_on_a_run_without_ema_is_a_clear_error(tmp_path, tiny_config):
    data = make_folder(tmp_path / 'd', n_train=2, n_val=1)
    assert lit(*train_args(data, tiny_config, tmp_path, '--name', 'r')).exit_code == 0
    result = lit('eval', '--checkpoint', tmp_path / 'r' / 'checkpoints' / 'last.pt', '--use-ema', '-j', 0,
                 '--out', tmp_path / 'ev')
    assert result.exit_code == 1 and 'no EMA weights' in result.output


@pytest.mark.parametrize('variant', ['lit_ti', 'lit_s', 'lit_m', 'lit_b'])
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.slow
def test_model_cast_to_half_precision_runs(variant, dtype):
    torch.manual_seed(0)
    model = timm.create_model(variant, img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        reference = model(x)
        out = model.to(dtype)(x.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out.float()).all()
    assert (out.float() - reference).abs().max() < 0.1 * reference.abs().max() + 0.05


def test_relative_data_is_stored_absolute(tmp_path, tiny_config, monkeypatch):
    make_folder(tmp_path / 'two', n_train=2, n_val=1)
    monkeypatch.chdir(tmp_path)
    assert lit(*train_args('two', tiny_config, tmp_path / 'runs', '--name', 'rel')).exit_code == 0
    ckpt = tmp_path / 'runs' / 'rel' / 'checkpoints' / 'last.pt'
    assert torch.load(ckpt, weights_only=True)['config']['data'] == str(tmp_path / 'two')
    monkeypatch.chdir('/')
    result = lit('eval', '--checkpoint', ckpt, '-j', 0, '--out', tmp_path / 'ev')
    assert result.exit_code == 0, result.output
    (tmp_path / 'two').rename(tmp_path / 'moved')
    result = lit('eval', '--checkpoint', ckpt, '-j', 0, '--out', tmp_path / 'ev2')
    assert result.exit_code == 1 and 'recorded in the checkpoint' in result.output and '--data' in result.output


def test_lr_column_is_the_rate_the_epoch_used(tmp_path, tiny_config):
    data = make_folder(tmp_path / 'd', n_train=2, n_val=1)
    # LIT-Ti's recipe: per-epoch schedule, epoch 0 of the warmup trains at warmup_lr
    result = lit(*train_args(data, tiny_config, tmp_path, '--name', 'lr', '--epochs', 2, '--warmup-lr', 1e-6,
                             '--lr', 1e-3))
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / 'lr' / 'metrics.jsonl').read_text().splitlines()]
    # epoch 1: the cosine of 2 epochs half-way from 1e-3 to min_lr 1e-5 (before, each row held the next epoch's)
    assert rows[0]['lr'] == pytest.approx(1e-6) and rows[1]['lr'] == pytest.approx((1e-3 + 1e-5) / 2)
    assert 'lr 1.000e-06' in result.output


@pytest.mark.slow
def test_checkpoint_sizes_follow_its_own_patch(mini_run, tmp_path):
    """A 2x2-patch checkpoint (the demo's) takes any side divisible by 16 at load time (48 was refused by the
    official 32-pixel rule); a side that fits no 16 is a usage error naming the nearest."""
    from litcli.core.errors import UsageError
    from litcli.core.modelio.factory import load_model

    ckpt = mini_run / 'checkpoints' / 'last.pt'
    assert load_model(ckpt, img_size=48).model.stage_grids[-1] == (3, 3)
    with pytest.raises(UsageError, match='nearest valid: 32 or 48'):
        load_model(ckpt, img_size=40)
    result = lit('export', '--checkpoint', ckpt, '--format', 'safetensors', '--img-size', 48,
                 '--out', tmp_path / 'm48.safetensors')  # export checked the 32-pixel rule before loading
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_figure_commands_take_builtin_data_and_default_to_the_checkpoints(mini_run, tmp_path):
    ckpt = mini_run / 'checkpoints' / 'last.pt'
    result = lit('attn-maps', '--checkpoint', ckpt, '--data', 'fashion-mnist-mini', '--num-images', 20,
                 '--output', tmp_path, '--name', 'a', '--stage', 3, '--json')
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / 'a' / 'stats.json').read_text())
    assert stats['num_images'] == 20 and stats['img_size'] == 32
    assert stats['stages']['3']['grid'] == [4, 4]  # the demo's 2x2-patch model: what `make demo` draws
    result = lit('attn-maps', '--checkpoint', ckpt, '--num-images', 10, '--output', tmp_path, '--name', 'b',
                 '--stage', 3)  # the checkpoint's own validation data
    assert result.exit_code == 0, result.output
    assert 'validation data' in result.output
    result = lit('viz-offsets', '--checkpoint', ckpt, '--num-images', 3, '--output', tmp_path, '--name', 'v',
                 '--tokens', 'center', '--summary')
    assert result.exit_code == 0, result.output
    folders = sorted(p for p in (tmp_path / 'v').iterdir() if p.is_dir())
    assert len(folders) == 3 and all((f / 'overview.png').exists() for f in folders)
    assert Image.open(folders[0] / 'overview.png').size[0] >= 448  # readable, not 64 px
    assert 'T-shirt/top' in result.output and 'Trouser' in result.output  # different classes, one each
    # 32 px / 16 = a 2x2 top grid: 'center' is token 1-1 (not 0-0 of a 32-px-per-token grid), and 1,1 is valid
    assert [t.name for t in (folders[0] / 'tokens').iterdir()] == ['1-1.png']
    result = lit('viz-offsets', '--checkpoint', ckpt, '--num-images', 1, '--output', tmp_path, '--name', 'x',
                 '--tokens', '1,1', '--json')
    assert result.exit_code == 0, result.output
    assert json.loads(next((tmp_path / 'x').rglob('points.json')).read_text())['token_grid'] == [2, 2]
    result = lit('viz-offsets', '--data', 'fashion-mnist-mini', '--num-images', 1, '--checkpoint', ckpt,
                 '--output', tmp_path, '--name', 'w')
    assert result.exit_code == 0, result.output


def test_paper_variant_without_data_refuses_with_the_alternatives(tmp_path):
    result = lit('train', '--variant', 's', '--output', tmp_path)
    assert result.exit_code == 1 and '--data DIR' in result.output and 'no arguments' in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_smaller_defects(tmp_path, mini_run):
    from litcli.core.data.images import expand_images

    help_text = lit('export', '--help').output
    assert 'lit_s.safetensors.json' in ''.join(c for c in help_text if c not in ' \n│')
    result = lit('flops', '-v', 'ti', '--img-size', 32, '--json-file', tmp_path / 'f.json', '--json')
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(os.stat(tmp_path / 'f.json').st_mode) == 0o666 & ~_umask()
    # a glob over a folder with a labels.txt
    fm = tmp_path / 'fm'
    fm.mkdir()
    for i in range(3):
        Image.new('L', (28, 28)).save(fm / f'{i}.png')
    (fm / 'labels.txt').write_text('0\n1\n2\n')
    assert [p.name for p in expand_images([f'{fm}/*'])] == ['0.png', '1.png', '2.png']
    with pytest.raises(LitError, match='none is an image'):
        expand_images([f'{fm}/*.txt'])
    ckpt = mini_run / 'checkpoints' / 'last.pt'
    by_glob = lit('predict', f'{fm}/*', '--checkpoint', ckpt, '--json')
    by_name = lit('predict', *[fm / f'{i}.png' for i in range(3)], '--checkpoint', ckpt, '--json')
    assert by_glob.exit_code == 0 and by_name.exit_code == 0, by_glob.output + by_name.output
    by_glob, by_name = json.loads(by_glob.stdout), json.loads(by_name.stdout)
    assert [os.path.basename(p['image']) for p in by_glob['predictions']] == ['0.png', '1.png', '2.png']
    assert by_glob['predictions'] == by_name['predictions']  # the PNGs only, predicted as when named one by one
    for p in by_glob['predictions']:  # top 5 of the 10 Fashion-MNIST classes, most probable first
        probs = [t['prob'] for t in p['topk']]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6, p
    # a TorchScript export passed as a checkpoint
    ts = tmp_path / 'm.pt'
    assert lit('export', '--checkpoint', mini_run / 'checkpoints' / 'last.pt', '-f', 'torchscript',
               '--out', ts).exit_code == 0
    result = lit('predict', fm, '--checkpoint', ts)
    assert result.exit_code == 1 and 'TorchScript module' in result.output and 'torch.jit.load' in result.output
    assert 'weights_only' not in result.output
    # lit eval names the dataset, not its split folder
    data = make_folder(tmp_path / 'flowers', n_train=1, n_val=1)
    from litcli.core.data.datasets import build_eval_dataset
    from litcli.core.data.datasets import dataset_name
    _, spec = build_eval_dataset(str(data / 'val'))
    assert dataset_name(spec) == 'flowers'


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

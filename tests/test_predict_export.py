"""`lit predict` and `lit export`: a tiny `lit train` run's classes on real photos, ImageNet names for official
weights, safetensors round trip, ONNX/onnxruntime and TorchScript parity, and bad input."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image

import litcli.models  # noqa: F401
from litcli.core.modelio.checkpoint import read_checkpoint, sidecar_path
from litcli.paths import REPO_ASSETS
from litcli.core.modelio.factory import load_model
from litcli.core.data.transforms import eval_transform
from helpers import lit

TINY = dict(embed_dims=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], mlp_ratios=[2, 2, 2, 2])
CLASSES = ('bluish', 'greenish', 'reddish')  # sorted, as ImageFolder numbers them
PHOTOS = sorted((REPO_ASSETS / 'photos').glob('*.jpg'))
ONNX_MISSING = [m for m in ('onnx', 'onnxscript', 'onnxruntime') if importlib.util.find_spec(m) is None]




def one_line_error(result, *words):
    assert result.exit_code != 0, result.output
    lines = [l for l in result.output.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith('Error:'), result.output
    for w in words:
        assert w in lines[0], result.output


@pytest.fixture(scope='module')
def trained(tmp_path_factory) -> Path:
    """best.pt of a 1-epoch `lit train` of a TINY lit_ti at 32 px on a 3-class ImageFolder."""
    root = tmp_path_factory.mktemp('data') / 'colours'
    rng = np.random.default_rng(0)
    for split, n in (('train', 4), ('val', 2)):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                a = rng.integers(0, 128, (32, 32, 3), dtype=np.uint8)
                a[..., c] = 255
                Image.fromarray(a).save(root / split / name / f'{i}.png')
    config = root.parent / 'tiny.yaml'
    config.write_text(yaml.safe_dump(dict(model_kwargs=TINY, warmup_epochs=1, aa='', reprob=0.0)))
    runs = tmp_path_factory.mktemp('runs')
    result = lit('train', '--variant', 'ti', '--data', root, '--config', config, '--img-size', 32, '-b', 4, '-j', 0,
                 '--epochs', 1, '--output', runs, '--name', 'tiny', '--log-interval', 1)
    assert result.exit_code == 0, result.output
    checkpoint = runs / 'tiny' / 'checkpoints' / 'last.pt'
    assert checkpoint.is_file(), sorted(p.name for p in (runs / 'tiny' / 'checkpoints').iterdir())
    return checkpoint


@pytest.fixture(scope='module')
def official(tmp_path_factory) -> Path:
    """A full-size lit_ti state dict saved the way the official .pth files are (bare, 1000 classes)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('official') / 'lit_ti.pth'
    torch.save(timm.create_model('lit_ti').state_dict(), path)
    return path


def predict_json(*args):
    result = lit('predict', *args, '--json')
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


# ---- predict ----

def test_predict_refuses_without_checkpoint():
    result = lit('predict', PHOTOS[0])
    one_line_error(result, '--checkpoint', 'random weights')
    assert result.exit_code == 2


def test_predict_run_from_python_refuses_without_weights():
    """The check lives in the command, so a Python caller cannot predict with random weights either."""
    from litcli.commands import predict
    from litcli.core.errors import UsageError
    with pytest.raises(UsageError, match='--checkpoint PATH or --pretrained'):
        predict.run([str(PHOTOS[0])], checkpoint=None)


def test_predict_prints_the_runs_class_names(trained):
    result = lit('predict', REPO_ASSETS / 'photos' / '*.jpg', '--checkpoint', trained, '--topk', 3)
    assert result.exit_code == 0, result.output
    for photo in PHOTOS:
        assert str(photo) in result.output
    for name in CLASSES:  # top-3 of 3 classes: every class name is listed for every photo
        assert result.output.count(name) == len(PHOTOS), result.output
    assert 'class 0' not in result.output


def test_predict_json_batches_files_folders_and_globs(trained, tmp_path):
    extra = tmp_path / 'modes'
    extra.mkdir()
    Image.new('L', (50, 70), 128).save(extra / 'gray.png')
    Image.new('RGBA', (64, 40), (255, 0, 0, 100)).save(extra / 'rgba.png')
    Image.new('P', (33, 33)).save(extra / 'palette.gif')
    (extra / 'notes.txt').write_text('not an image')
    out = predict_json(REPO_ASSETS / 'photos', PHOTOS[0], extra, '--checkpoint', trained, '-k', 2, '-b', 2)
    images = [p['image'] for p in out['predictions']]
    assert images == [str(p) for p in PHOTOS] + [str(extra / n) for n in ('gray.png', 'palette.gif', 'rgba.png')]
    assert out['model']['variant'] == 'lit_ti' and out['model']['img_size'] == 32
    for item in out['predictions']:
        probs = [p['prob'] for p in item['topk']]
        assert len(probs) == 2 and probs[0] >= probs[1] > 0
        assert all(p['label'] == CLASSES[p['index']] for p in item['topk'])
    # Batching does not change the answer: batch size 1 gives the same top-1 for each image.
    single = predict_json(*PHOTOS, '--checkpoint', trained, '-k', 1, '-b', 1)
    for a, b in zip(single['predictions'], out['predictions']):
        assert a['topk'][0]['index'] == b['topk'][0]['index']
        assert a['topk'][0]['prob'] == pytest.approx(b['topk'][0]['prob'], abs=1e-5)


def test_predict_uses_imagenet_names_for_official_weights(official):
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    out = predict_json(PHOTOS[0], '--checkpoint', official, '-k', 5)  # variant recognised from the keys
    top = out['predictions'][0]['topk']
    assert out['model'] == dict(out['model'], variant='lit_ti', num_classes=1000, img_size=224)
    assert [p['label'] for p in top] == [info.index_to_description(p['index']) for p in top]
    assert not any(p['label'].startswith('class ') for p in top)


def test_predict_bad_input(trained, tmp_path):
    one_line_error(lit('predict', tmp_path / 'nothing*.jpg', '--checkpoint', trained), 'nothing')
    broken = tmp_path / 'broken.jpg'
    broken.write_bytes(b'not a jpeg')
    one_line_error(lit('predict', broken, '--checkpoint', trained), 'broken.jpg')
    one_line_error(lit('predict', PHOTOS[0], '--checkpoint', trained, '--variant', 's'), 'lit_ti', '--variant ti')
    one_line_error(lit('predict', PHOTOS[0], '--checkpoint', trained, '--img-size', 40), 'multiple of 32')
    exported = tmp_path / 'model.onnx'
    exported.write_bytes(b'onnx bytes')
    one_line_error(lit('predict', PHOTOS[0], '--checkpoint', exported), 'ONNX model, not a checkpoint')
    truncated = tmp_path / 'cut.safetensors'
    truncated.write_bytes(b'\x10\x00')
    one_line_error(lit('predict', PHOTOS[0], '--checkpoint', truncated), 'not a readable safetensors')


# ---- export ----

def test_safetensors_round_trip_is_bit_exact(trained, tmp_path):
    out = tmp_path / 'tiny.safetensors'
    result = lit('export', '--checkpoint', trained, '--format', 'safetensors', '--out', out)
    assert result.exit_code == 0, result.output
    from safetensors.torch import load_file

    original = read_checkpoint(trained)['model']
    exported = load_file(out)
    assert set(exported) == set(original)
    for k, v in original.items():
        assert exported[k].dtype == v.dtype and torch.equal(exported[k], v), k
    config = json.loads(sidecar_path(out).read_text())
    assert config['variant'] == 'lit_ti' and config['class_names'] == list(CLASSES)
    assert config['num_classes'] == 3 and config['model_kwargs']['img_size'] == 32
    assert config['data_config']['input_size'] == [3, 32, 32]
    # predict and eval take the export directly, with the same results as from the checkpoint.
    from_export, from_checkpoint = (predict_json(*PHOTOS, '--checkpoint', c) for c in (out, trained))
    assert from_export['predictions'] == from_checkpoint['predictions']
    metrics = []
    for i, checkpoint in enumerate((trained, out)):
        result = lit('eval', '--checkpoint', checkpoint, '-j', 0, '--out', tmp_path / f'eval-{i}')
        assert result.exit_code == 0, result.output
        metrics.append(json.loads((tmp_path / f'eval-{i}' / 'eval.json').read_text()))
    assert [(m['top1'], m['loss'], m['img_size']) for m in metrics] == [(metrics[0]['top1'], metrics[0]['loss'], 32)] * 2
    # Without its sidecar the file still loads: the config is also in the safetensors header.
    sidecar_path(out).unlink()
    assert read_checkpoint(out)['class_names'] == list(CLASSES)


def test_official_pth_to_safetensors_in_one_command(official):
    result = lit('export', '--checkpoint', official, '--format', 'safetensors')
    assert result.exit_code == 0, result.output
    out = official.with_suffix('.safetensors')
    loaded = load_model(out)
    model, raw = loaded.model, loaded.checkpoint
    assert raw['variant'] == 'lit_ti' and len(raw['class_names']) == 1000
    original = torch.load(official, weights_only=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in original.items())


needs_onnx = pytest.mark.skipif(bool(ONNX_MISSING), reason=f'ONNX export needs {", ".join(ONNX_MISSING)} '
                                                           f'(pip install "litcli[export]")')


def check_onnx_export(checkpoint, out: Path, img_size: int):
    import onnx
    import onnxruntime as ort

    from litcli.core.data.images import load_image

    result = lit('export', '--checkpoint', checkpoint, '--format', 'onnx', '--out', out, '--img-size', img_size)
    assert result.exit_code == 0, result.output
    assert 'onnxruntime' in result.output and 'max |diff|' in result.output
    config = json.loads(sidecar_path(out).read_text())
    assert config['export']['max_abs_diff'] < 1e-4 and config['data_config']['input_size'] == [3, img_size, img_size]
    nodes = onnx.load(str(out)).graph.node
    ops = {n.op_type for n in nodes}
    # The DTM's bilinear taps as Gather + weighted sum (ReduceSum), not embedding_bag's Loop; no custom op.
    assert {'Gather', 'ReduceSum'} <= ops and 'Loop' not in ops
    assert all(n.domain in ('', 'ai.onnx') for n in nodes)
    # Independently of the exporter's own check: real photos through the eval transform, two batch sizes.
    loaded = load_model(checkpoint, img_size=img_size)
    model, transform = loaded.model, eval_transform(loaded.data_config)
    session = ort.InferenceSession(str(out), providers=['CPUExecutionProvider'])
    for photos in (PHOTOS[:1], PHOTOS + PHOTOS[:1]):
        x = torch.stack([transform(load_image(p)) for p in photos])
        with torch.inference_mode():
            expected = model(x)
        got = torch.from_numpy(session.run(None, {'input': x.numpy()})[0])
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() < 1e-4


@needs_onnx
@pytest.mark.slow
def test_onnx_export_matches_pytorch_in_onnxruntime(trained, tmp_path):
    # lit_ti (PVT layout, absolute position tables resampled from the 32 px run to 64 px).
    check_onnx_export(trained, tmp_path / 'tiny.onnx', 64)


@needs_onnx
@pytest.mark.slow
def test_onnx_export_of_swin_layout(tmp_path):
    # lit_s layout: relative position bias in the attention stages (fused SDPA would not export; see export.py).
    torch.manual_seed(0)
    model = timm.create_model('lit_s', num_classes=10, img_size=64, **TINY)
    checkpoint = tmp_path / 'tiny_s.pt'
    torch.save(dict(model=model.state_dict(), variant='lit_s', model_kwargs={**TINY, 'img_size': 64}), checkpoint)
    check_onnx_export(checkpoint, tmp_path / 'tiny_s.onnx', 64)


def test_torchscript_export_matches_pytorch(trained, tmp_path):
    out = tmp_path / 'tiny.torchscript.pt'
    result = lit('export', '--checkpoint', trained, '--format', 'torchscript', '--out', out)
    assert result.exit_code == 0, result.output
    scripted = torch.jit.load(str(out))
    model = load_model(trained).model
    x = torch.randn(5, 3, 32, 32)
    with torch.inference_mode():
        assert (scripted(x) - model(x)).abs().max().item() < 1e-4


def test_export_bad_input(trained, tmp_path):
    result = lit('export', '--checkpoint', trained, '--format', 'tflite', '--out', tmp_path / 'x')
    assert result.exit_code == 2 and 'tflite' in result.output
    # An existing output is never overwritten without --force.
    out = tmp_path / 'taken.safetensors'
    out.write_bytes(b'keep me')
    one_line_error(lit('export', '--checkpoint', trained, '-f', 'safetensors', '--out', out), 'exists', '--force')
    assert out.read_bytes() == b'keep me' and not sidecar_path(out).exists()
    assert lit('export', '--checkpoint', trained, '-f', 'safetensors', '--out', out, '--force').exit_code == 0
    assert out.read_bytes() != b'keep me'
    # An unwritable place (a path under a regular file: fails even as root).
    one_line_error(lit('export', '--checkpoint', trained, '-f', 'safetensors', '--out', out / 'sub' / 'm.safetensors'),
                   'cannot create')
    one_line_error(lit('export', '--checkpoint', trained, '-f', 'onnx', '--variant', 's', '--out', tmp_path / 'm.onnx'),
                   'lit_ti', '--variant ti')
    result = lit('export', '--checkpoint', trained, '-f', 'onnx', '--opset', 13, '--out', tmp_path / 'm.onnx')
    assert result.exit_code == 2 and '--opset 18' in result.output
    one_line_error(lit('export', '--checkpoint', tmp_path / 'missing.pt', '-f', 'onnx'), 'not found')
    # Nothing half-written is left behind by the failures.
    assert sorted(p.name for p in tmp_path.iterdir()) == ['taken.safetensors', 'taken.safetensors.json']

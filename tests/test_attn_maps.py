"""`lit attn-maps`: streamed mean attention maps, distance/entropy statistics, figures, bad input."""
import json
import math

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from typer.testing import CliRunner

import litcli.models  # noqa: F401
from litcli.cli import app
from litcli.models import Attention
from litcli.core.analysis.attention import AttentionMeans, attention_stages


def _model(variant='lit_s', **kw):
    torch.manual_seed(0)
    return timm.create_model(variant, img_size=64, fused_attn=False, **kw).eval()


def _uniform(model):
    """q = k = 0 and no position bias: every query attends uniformly."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Attention):
                m.qkv.weight.zero_()
                m.qkv.bias.zero_()
                if m.rel_pos_grid is not None:
                    m.relative_position_bias_table.zero_()


def _mean_pairwise_distance(h, w, stride):
    ys, xs = np.divmod(np.arange(h * w), w)
    return stride * np.hypot(ys[:, None] - ys[None, :], xs[:, None] - xs[None, :]).mean()


@pytest.mark.parametrize('variant', ['lit_s', 'lit_ti'])
def test_uniform_attention_gives_exact_statistics(variant):
    model = _model(variant)
    _uniform(model)
    with AttentionMeans(model, [3, 4], (64, 64)) as acc, torch.no_grad():
        model(torch.randn(3, 3, 64, 64))
    for stage, (h, w), stride in ((3, (4, 4), 16), (4, (2, 2), 32)):
        mean = acc.means(stage)
        np.testing.assert_allclose(mean, 1 / (h * w), atol=1e-6)  # Ti: cls token removed and renormalised
        for row in acc.statistics(stage):
            assert row['entropy_nats'] == pytest.approx(math.log(h * w), abs=1e-5)
            assert row['mean_distance_px'] == pytest.approx(_mean_pairwise_distance(h, w, stride), rel=1e-5)


def test_self_attention_has_zero_distance_and_entropy():
    model = _model()
    acc = AttentionMeans(model, [3], (64, 64))
    heads, n = model.layers[2].blocks[0].attn.num_heads, 16
    identity = torch.eye(n).expand(2, heads, n, n)
    for j in acc.stages[3].blocks:
        acc._hook(3, j)(None, (identity,), None)
    acc.__exit__()
    for row in acc.statistics(3):
        assert row['mean_distance_px'] == 0 and row['entropy_nats'] == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize('batch_size', [1, 2, 3])
def test_streaming_mean_equals_stacked_mean(batch_size):
    model = _model('lit_ti')
    images = torch.randn(5, 3, 64, 64)
    stacked = []
    attn = attention_stages(model)[4][0][1]
    handle = attn.attn_drop.register_forward_hook(lambda m, i, o: stacked.append(i[0].detach()))
    with AttentionMeans(model, [4], (64, 64)) as acc, torch.no_grad():
        for k in range(0, 5, batch_size):
            model(images[k:k + batch_size])
    handle.remove()
    probs = torch.cat(stacked)[:, :, 1:, 1:]  # drop the class token
    probs = probs / probs.sum(-1, keepdim=True)
    np.testing.assert_allclose(acc.means(4)[0], probs.mean(0).numpy(), rtol=1e-5, atol=1e-7)
    entropy = -(probs * probs.log()).sum(-1).mean(-1).mean(0)
    rows = [r for r in acc.statistics(4) if r['block'] == 0]
    np.testing.assert_allclose([r['entropy_nats'] for r in rows], entropy.numpy(), rtol=1e-5)
    assert acc.stages[4].count == 5


def _invoke(*args):
    return CliRunner().invoke(app, ['attn-maps', *args], prog_name='lit', env={'COLUMNS': '160'})


def image_folder(root, n=4):
    for i in range(n):
        cls = root / 'val' / f'class{i % 2}'
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(cls / f'{i}.png')
    return root


@pytest.mark.slow
def test_cli_writes_grid_per_head_npy_json(tmp_path):
    data = image_folder(tmp_path / 'data')
    r = _invoke('--variant', 's', '--img-size', '64', '--data', str(data), '--num-images', '3', '-b', '2',
                '--per-head', '--save-npy', '--json', '--output', str(tmp_path / 'out'), '--name', 'run')
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout[r.stdout.index('{'):])
    assert result['num_images'] == 3 and sorted(result['stages']) == ['3', '4']
    out = tmp_path / 'out' / 'run'
    assert np.load(out / 'stage3_mean_attention.npy').shape == (6, 12, 16, 16)
    assert (out / 'stage4' / 'block1-head23.png').exists()
    grid = np.asarray(Image.open(out / 'stage3.png').convert('RGB'))
    assert grid.std() > 20  # real content, not a blank canvas
    lime = (grid[..., 1] > 200) & (grid[..., 0] < 80) & (grid[..., 2] < 80)
    assert lime.sum() > 100  # the query markers


def test_cli_full_attention_model_stage_1(tmp_path):
    """Stage 1 of a full-attention LIT-S: the saved means equal the attention probabilities of the same model
    (seed 0) on the same images averaged here, and the figure is drawn."""
    from litcli.core.data.transforms import eval_transform
    from litcli.core.modelio.factory import load_model
    data = image_folder(tmp_path / 'data')
    r = _invoke('--variant', 's', '--msa-stages', '1,2,3,4', '--stage', '1', '--img-size', '64', '--data', str(data),
                '--num-images', '4', '--save-npy', '--output', str(tmp_path))
    assert r.exit_code == 0, r.output
    out = tmp_path / 'lit_s-stage-1'
    saved = np.load(out / 'stage1_mean_attention.npy')
    assert saved.shape == (2, 3, 256, 256)  # blocks, heads, 16x16 queries, 16x16 keys
    np.testing.assert_allclose(saved.sum(-1), 1, rtol=1e-5)
    torch.manual_seed(0)  # the command's random init
    loaded = load_model(None, 'lit_s', img_size=64, msa_stages=(1, 2, 3, 4))
    model, transform = loaded.model.eval(), eval_transform(loaded.data_config)
    probs = []
    for _, attn in attention_stages(model)[1]:
        attn.fused_attn = False
        attn.attn_drop.register_forward_hook(lambda m, i, o: probs.append(i[0]))
    x = torch.stack([transform(Image.open(p).convert('RGB')) for p in sorted(data.rglob('*.png'))])
    with torch.no_grad():
        model(x)
    expected = torch.stack([p.mean(0) for p in probs]).numpy()  # the mean over all 4 images, in any order
    np.testing.assert_allclose(saved, expected, rtol=1e-4, atol=1e-7)
    grid = np.asarray(Image.open(out / 'stage1.png').convert('RGB'))
    assert grid.std() > 20  # real content, not a blank canvas


@pytest.mark.slow
def test_cli_bad_inputs(tmp_path):
    r = _invoke('--variant', 's', '--stage', '1', '--img-size', '64', '--output', str(tmp_path))
    assert r.exit_code != 0 and 'MLP blocks only' in r.output and 'msa-stages' in r.output
    r = _invoke('--stage', '5', '--img-size', '64', '--output', str(tmp_path))
    assert r.exit_code != 0 and 'out of range' in r.output
    r = _invoke('--stage', '4', '--query', '5,0', '--img-size', '64', '--output', str(tmp_path))
    assert r.exit_code != 0 and 'outside the 2x2 token grid' in r.output
    (tmp_path / 'empty').mkdir()
    r = _invoke('--data', str(tmp_path / 'empty'), '--img-size', '64', '--output', str(tmp_path))
    assert r.exit_code != 0 and 'no images found' in r.output
    r = _invoke('--num-images', '0', '--img-size', '64', '--output', str(tmp_path))
    assert r.exit_code != 0 and 'at least 1' in r.output
    torch.save(timm.create_model('lit_ti', img_size=64).state_dict(), tmp_path / 'ti.pth')
    r = _invoke('--variant', 's', '--checkpoint', str(tmp_path / 'ti.pth'), '--output', str(tmp_path))
    assert r.exit_code != 0 and 'pass --variant ti' in r.output
    assert 'Traceback' not in r.output
    assert not any(p.is_dir() for p in tmp_path.iterdir() if p.name.startswith('lit_'))  # nothing written


def test_stage_checks_live_in_the_command(tmp_path, monkeypatch):
    """A Python caller gets the same refusals as the CLI, before any model is built."""
    from litcli.commands import attn_maps
    from litcli.core.errors import UsageError
    import litcli.core.modelio.factory as factory

    monkeypatch.setattr(factory, 'load_model', lambda *a, **k: pytest.fail('validated after building the model'))
    with pytest.raises(UsageError, match='--stage 5 is out of range'):
        attn_maps.run(stage=5, output=tmp_path)
    with pytest.raises(UsageError, match="bad --msa-stages '1,5'"):
        attn_maps.run(stage=1, msa_stages=(1, 5), output=tmp_path)
    r = _invoke('--msa-stages', '0,3', '--output', str(tmp_path))
    assert r.exit_code == 2 and "bad --msa-stages '0,3'" in r.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path):
    """Under torchrun (gloo on CPU) each rank takes a share of the images and the sums are all-reduced."""
    import subprocess
    import sys
    torch.save(timm.create_model('lit_ti', img_size=64).state_dict(), tmp_path / 'ti.pth')
    data = image_folder(tmp_path / 'data', n=5)
    common = ['attn-maps', '--checkpoint', str(tmp_path / 'ti.pth'), '--img-size', '64', '--data', str(data),
              '--json', '--stage', '4']
    runs = []
    for launcher, out in ((['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', '-m', 'litcli'], 'a'),
                          (['-m', 'litcli'], 'b')):
        proc = subprocess.run([sys.executable, *launcher, *common, '--output', str(tmp_path / out)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs.append(json.loads(proc.stdout[proc.stdout.index('{'):]))
    two, one = runs
    assert two['num_images'] == one['num_images'] == 5
    for a, b in zip(two['stages']['4']['stats'], one['stages']['4']['stats']):
        assert a['mean_distance_px'] == pytest.approx(b['mean_distance_px'], rel=1e-5)
        assert a['entropy_nats'] == pytest.approx(b['entropy_nats'], rel=1e-5)

"""`lit viz-offsets`: back-projection follows the model's offset layout; figures for any image."""
import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from typer.testing import CliRunner

import litcli.models  # noqa: F401
from litcli.cli import app
from litcli.models import DeformConv2x2
from litcli.commands.viz_offsets import viz_offsets
from litcli.core.analysis.offsets import back_project, trace_offsets

PHOTO = 'assets/photos/chelsea.jpg'


def _zero_offsets(size=224):
    g = size // 32
    return [np.zeros((8, g * 2 ** k, g * 2 ** k)) for k in range(3)]  # top (last DTM) first


def test_zero_offsets_give_the_regular_lattice():
    tokens = np.array([(r, c) for r in range(7) for c in range(7)])
    points, dropped = back_project(_zero_offsets(), tokens)
    assert dropped == 0 and points.shape == (49, 64, 2)
    pixels = 4 * points + 2
    for (r, c), pts in zip(tokens, pixels):
        ys, xs = sorted(set(pts[:, 0])), sorted(set(pts[:, 1]))
        assert ys == [32 * r + 4 * a + 2 for a in range(8)] and xs == [32 * c + 4 * a + 2 for a in range(8)]
        assert len({tuple(p) for p in pts}) == 64  # the full 8x8 lattice inside the 32x32 box


@pytest.mark.parametrize('level, shift_px', [(2, 4), (1, 8)])  # level: index in top-down order
def test_plus_one_dx_moves_points_right(level, shift_px):
    """+1 in every dx channel (2k+1) of one DTM moves every point right by one cell of the grid it reads."""
    offsets = _zero_offsets()
    offsets[level][1::2] = 1.0
    tokens = np.array([(3, 3)])
    base, _ = back_project(_zero_offsets(), tokens)
    moved, _ = back_project(offsets, tokens)
    np.testing.assert_allclose(4 * moved[..., 1] - 4 * base[..., 1], shift_px)
    np.testing.assert_allclose(moved[..., 0], base[..., 0])


@pytest.fixture(scope='module')
def lit_ti():
    return timm.create_model('lit_ti').eval()


@pytest.mark.slow
def test_model_offset_layout_end_to_end():
    """Through the real model: a bias of +1 on the dx channels of the first DTM shifts the points by 4 px,
    on the dy channels by 4 px down."""
    model = timm.create_model('lit_ti').eval()
    base = trace_offsets(model, PHOTO)
    dtm = [m for m in model.modules() if isinstance(m, DeformConv2x2)][0]
    with torch.no_grad():
        dtm.conv_offset.bias[1::2] = 1.0
    right = trace_offsets(model, PHOTO)
    keep = ~np.isnan(right.pixels[..., 1])
    np.testing.assert_allclose((right.pixels - base.pixels)[keep][:, 1], 4.0, atol=1e-6)
    np.testing.assert_allclose((right.pixels - base.pixels)[keep][:, 0], 0.0, atol=1e-6)
    assert right.dropped_outside_image == 7 * 8  # the last lattice column of the 7 right-most tokens (x=226)
    with torch.no_grad():
        dtm.conv_offset.bias.zero_()
        dtm.conv_offset.bias[0::2] = 1.0
    down = trace_offsets(model, PHOTO)
    keep = ~np.isnan(down.pixels[..., 0])
    np.testing.assert_allclose((down.pixels - base.pixels)[keep][:, 0], 4.0, atol=1e-6)


def _write_modes(tmp_path):
    rgb = Image.open(PHOTO).convert('RGB')
    paths = {}
    paths['rgba'] = tmp_path / 'a.png'
    rgb.convert('RGBA').save(paths['rgba'])
    paths['gray'] = tmp_path / 'g.png'
    rgb.convert('L').save(paths['gray'])
    paths['palette'] = tmp_path / 'p.png'
    rgb.convert('P').save(paths['palette'])
    paths['16bit'] = tmp_path / 'i16.png'
    Image.fromarray((np.asarray(rgb.convert('L'), dtype=np.uint16) * 257)).save(paths['16bit'])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    paths['exif'] = tmp_path / 'e.jpg'
    rgb.save(paths['exif'], exif=exif)
    return paths


@pytest.mark.slow
def test_every_image_mode(tmp_path, lit_ti):
    for mode, path in _write_modes(tmp_path).items():
        trace = trace_offsets(lit_ti, path)
        assert trace.image.shape == (224, 224, 3) and trace.image.dtype == np.uint8, mode
        assert trace.image.std() > 10, mode
    rotated = trace_offsets(lit_ti, tmp_path / 'e.jpg').image
    upright = trace_offsets(lit_ti, PHOTO).image
    assert not np.array_equal(rotated, upright)  # EXIF orientation applied


@pytest.mark.slow
def test_pngs_are_real(tmp_path, lit_ti):
    result = viz_offsets(PHOTO, lit_ti, tmp_path, tokens='center')
    assert [p.rsplit('/', 1)[-1] for p in result['paths']] == ['overview.png', 'offset_magnitude.png', '3-3.png']
    source = np.asarray(Image.open(PHOTO).convert('RGB').resize((448, 448)), dtype=np.float64)
    overview = np.asarray(Image.open(tmp_path / 'overview.png').convert('RGB'), dtype=np.float64)
    token = np.asarray(Image.open(tmp_path / 'tokens' / '3-3.png').convert('RGB'))
    assert overview.shape == source.shape and np.abs(overview - source).mean() > 5  # points drawn over the photo
    red = (token[..., 0] > 200) & (token[..., 1] < 60) & (token[..., 2] < 60)
    lime = (token[..., 1] > 200) & (token[..., 0] < 80) & (token[..., 2] < 80)
    assert red.sum() > 64 and lime.sum() > 100


@pytest.mark.slow
def test_cli_writes_figures_json_npy(tmp_path):
    runner = CliRunner()
    args = ['viz-offsets', PHOTO, '--tokens', '0,0;6,6', '--output', str(tmp_path), '--json', '--save-npy',
            '--summary', '--img-size', '256']
    result = runner.invoke(app, args, prog_name='lit', env={'COLUMNS': '160'})
    assert result.exit_code == 0, result.output
    assert 'zero offsets' in result.output  # honest about random weights
    out = tmp_path / 'chelsea-lit_ti'
    data = json.loads((out / 'points.json').read_text())
    assert data['token_grid'] == [8, 8] and [t['token'] for t in data['tokens']] == [[0, 0], [6, 6]]
    assert len(data['tokens'][0]['points_yx']) == 64
    npz = np.load(out / 'offsets.npz')
    assert npz['patch_embed2_dconv_conv_offset'].shape == (8, 32, 32)
    again = runner.invoke(app, args, prog_name='lit', env={'COLUMNS': '160'})
    assert again.exit_code == 0 and (tmp_path / 'chelsea-lit_ti-2' / 'overview.png').exists()  # never overwrites


def _invoke(*args):
    return CliRunner().invoke(app, ['viz-offsets', *args], prog_name='lit', env={'COLUMNS': '160'})


@pytest.mark.slow
def test_cli_bad_inputs(tmp_path):
    assert _invoke(str(tmp_path / 'missing.jpg')).exit_code == 2
    assert _invoke(str(tmp_path)).exit_code == 2
    (tmp_path / 'notes.jpg').write_text('not an image')
    r = _invoke(str(tmp_path / 'notes.jpg'), '--output', str(tmp_path / 'o'))
    assert r.exit_code != 0 and 'cannot read' in r.output and 'Traceback' not in r.output
    data = (tmp_path / 'cut.jpg')
    full = open(PHOTO, 'rb').read()
    data.write_bytes(full[:200])
    r = _invoke(str(data), '--output', str(tmp_path / 'o'))
    assert r.exit_code != 0 and 'Error' in r.output
    Image.new('RGB', (20, 40)).save(tmp_path / 'tiny.png')
    r = _invoke(str(tmp_path / 'tiny.png'), '--output', str(tmp_path / 'o'))
    assert r.exit_code != 0 and 'at least 32 px' in r.output
    r = _invoke(PHOTO, '--tokens', '7,0', '--output', str(tmp_path / 'o'))
    assert r.exit_code != 0 and 'outside the 7x7 token grid' in r.output
    torch.save(timm.create_model('lit_s', img_size=64).state_dict(), tmp_path / 's.pth')
    r = _invoke(PHOTO, '--variant', 'ti', '--checkpoint', str(tmp_path / 's.pth'), '--output', str(tmp_path / 'o'))
    assert r.exit_code != 0 and 'pass --variant s' in r.output
    assert not (tmp_path / 'o').exists() or not any((tmp_path / 'o').iterdir())  # nothing half-written

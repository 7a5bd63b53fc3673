"""Loading official and own checkpoints safely, with clear errors."""
import pickle

import pytest
import timm
import torch

import litcli.models  # noqa: F401
from litcli.core.modelio.checkpoint import detect_variant, load_weights as load_checkpoint, read_checkpoint, save_checkpoint
from litcli.core.errors import CheckpointError


@pytest.fixture(scope='module')
def ti_state():
    torch.manual_seed(0)
    return timm.create_model('lit_ti').state_dict()


@pytest.mark.parametrize('wrap', ['bare', 'model', 'state_dict', 'ddp'])
def test_official_formats_load_strictly(tmp_path, ti_state, wrap):
    sd = {f'module.{k}': v for k, v in ti_state.items()} if wrap == 'ddp' else ti_state
    obj = sd if wrap in ('bare', 'ddp') else {wrap: sd, 'epoch': 299}
    torch.save(obj, tmp_path / 'lit_ti.pth')
    model = timm.create_model('lit_ti')
    load_checkpoint(tmp_path / 'lit_ti.pth', model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, ti_state[k]), k


def test_timm_pretrained_file_overlay(tmp_path, ti_state):
    torch.save(ti_state, tmp_path / 'lit_ti.pth')
    model = timm.create_model('lit_ti', pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / 'lit_ti.pth')))
    assert torch.equal(model.pos_embed1, ti_state['pos_embed1']) and model.head.out_features == 10


def test_wrong_variant_names_the_right_one(tmp_path):
    torch.save(timm.create_model('lit_s', img_size=64).state_dict(), tmp_path / 's.pth')
    with pytest.raises(CheckpointError, match='looks like a lit_s checkpoint: pass --variant s'):
        load_checkpoint(tmp_path / 's.pth', timm.create_model('lit_ti', img_size=64))


def test_class_count_mismatch(tmp_path):
    torch.save(timm.create_model('lit_s', img_size=64, num_classes=10).state_dict(), tmp_path / 's.pth')
    with pytest.raises(CheckpointError, match='num-classes'):
        load_checkpoint(tmp_path / 's.pth', timm.create_model('lit_s', img_size=64))


def test_truncated_file(tmp_path, ti_state):
    torch.save(ti_state, tmp_path / 'full.pth')
    data = (tmp_path / 'full.pth').read_bytes()
    (tmp_path / 'cut.pth').write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match='truncated or corrupt'):
        read_checkpoint(tmp_path / 'cut.pth')
    with pytest.raises(CheckpointError, match='not found'):
        read_checkpoint(tmp_path / 'nope.pth')


class _Evil:
    def __reduce__(self):
        return (print, ('pwned',))


def test_pickled_code_is_refused(tmp_path):
    with open(tmp_path / 'evil.pth', 'wb') as f:
        pickle.dump({'model': _Evil()}, f)
    with pytest.raises(CheckpointError, match='refused for safety'):
        read_checkpoint(tmp_path / 'evil.pth')


@pytest.mark.parametrize('variant', ['lit_ti', 'lit_s', 'lit_m', 'lit_b'])
def test_detect_variant(variant):
    sd = timm.create_model(variant, img_size=64).state_dict()
    assert detect_variant(sd) == variant
    assert detect_variant({'model': sd}) == variant


def test_save_is_atomic_and_leaves_no_temp(tmp_path):
    path = tmp_path / 'ck' / 'last.pt'
    save_checkpoint({'step': 1, 'w': torch.ones(2)}, path)
    save_checkpoint({'step': 2, 'w': torch.ones(2)}, path)
    assert read_checkpoint(path)['step'] == 2
    assert [p.name for p in path.parent.iterdir()] == ['last.pt']


def test_resampled_load_at_other_size(tmp_path):
    """A 224 file loaded into a 384 model: each table is the 224 one resized bicubically to the 384 grid, everything
    else is copied, and the model computes what the 224 model computes at 384 (which resizes at run time)."""
    from litcli.models.lit import resize_rel_pos_table
    torch.manual_seed(0)
    m224 = timm.create_model('lit_s').eval()
    with torch.no_grad():
        for p in m224.parameters():  # the rel-pos tables are zero-init: make them informative
            p.add_(torch.randn_like(p) * 0.01)
    sd = m224.state_dict()
    torch.save(sd, tmp_path / 's224.pth')
    model = timm.create_model('lit_s', img_size=384).eval()
    load_checkpoint(tmp_path / 's224.pth', model)
    assert model.layers[2].blocks[0].attn.relative_position_bias_table.shape == (47 * 47, 12)
    tables = 0
    for k, v in model.state_dict().items():
        if k.endswith('relative_position_bias_table'):
            old, new = {27 * 27: (14, 24), 13 * 13: (7, 12)}[len(sd[k])]  # stage 3 and 4 grids at 224 and 384
            assert torch.equal(v, resize_rel_pos_table(sd[k], (old, old), (new, new))), k
            tables += 1
        elif not k.endswith('relative_position_index'):
            assert torch.equal(v, sd[k]), k
    assert tables == 8  # LIT-S: 6 + 2 attention blocks in stages 3 and 4
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        torch.testing.assert_close(model(x), m224(x), rtol=1e-5, atol=1e-5)

"""The dense LIT backbones (litcli/models/dense.py): exact to the official mmdet/mmseg backbones of ziplab/LIT on
the parity vectors in tests/fixtures/dense/ (computed by that code, float64), official key layout, sizes, loading."""
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import parity_lib
from litcli.models import (Attention, DeformConv2x2, capture_offsets, create_dense_backbone,
                           dense_state_dict_from_classification)
from litcli.models.lit import relative_position_index

DENSE_FIXTURES = Path(__file__).parent / 'fixtures' / 'dense'
sys.path.insert(0, str(DENSE_FIXTURES))  # dense_lib.py, copied from the shared parity/dense folder
import dense_lib  # noqa: E402

# tag -> (variant, task, fixture file, manifest, parameters: dense.md section 6 / the parity README)
BACKBONES = {
    'ti': ('ti', 'detection', 'dense_ti.pt', 'manifest_ti_dense.json', 19_371_736),
    's_det': ('s', 'detection', 'dense_s_det.pt', 'manifest_s_det.json', 27_966_192),
    's_seg': ('s', 'segmentation', 'dense_s_seg.pt', 'manifest_s_seg.json', 27_477_360),
}
CASES = [(tag, size) for tag, sizes in (('ti', ('256x352', '320x320', '250x330')), ('s_det', ('256x352', '320x320')),
                                         ('s_seg', ('256x352', '320x320', '250x330'))) for size in sizes]
TOL = 1e-8  # float64; harmless reorderings give <= 5e-14, the smallest real bug (an eps) 2.4e-6 (fixture README)


def _official_weights(model, manifest):
    """The parity weights, loaded strictly: the generator skips only BN's num_batches_tracked, taken from the model."""
    state_dict = parity_lib.det_state_dict(manifest)
    skipped = parity_lib.skipped_keys(manifest)
    assert skipped and all(k.endswith('num_batches_tracked') for k in skipped)
    state_dict.update({k: model.state_dict()[k] for k in skipped})
    model.load_state_dict(state_dict, strict=True)
    return state_dict


@pytest.fixture(scope='module')
def official():
    """official(tag) -> (model in float64 eval with the parity weights, fixture, manifest), each built once (setting
    one up takes seconds; the three stay in memory, ~0.6 GB, until the module ends)."""
    loaded = {}

    def get(tag):
        if tag not in loaded:
            variant, task, fx_name, manifest_name, _ = BACKBONES[tag]
            manifest = parity_lib.load_manifest(DENSE_FIXTURES / manifest_name)
            fx = torch.load(DENSE_FIXTURES / fx_name, weights_only=True)
            model = create_dense_backbone(variant, task)
            _official_weights(model, manifest)
            assert parity_lib.fingerprint(model.state_dict()) == fx['weights_fingerprint']
            loaded[tag] = (model.double().eval(), fx, manifest)
        return loaded[tag]
    yield get
    loaded.clear()


def _meta(variant, task, **kwargs):
    """A dense backbone on the meta device: structure, names and shapes without the cost of building the weights."""
    with torch.device('meta'):
        return create_dense_backbone(variant, task, **kwargs)


@pytest.fixture(scope='module')
def random_models():
    """Randomly initialised detection backbones in eval mode, built on first use."""
    models = {}

    def get(variant):
        if variant not in models:
            torch.manual_seed(0)
            models[variant] = create_dense_backbone(variant, 'detection').eval()
        return models[variant]
    return get


def _set(model, fused=None, backend=None):
    for m in model.modules():
        if isinstance(m, Attention) and fused is not None:
            m.fused_attn = fused
        if isinstance(m, DeformConv2x2) and backend is not None:
            m.backend = backend


@pytest.mark.parametrize('tag,size', CASES, ids=[f'{t}-{s}' for t, s in CASES])
def test_official_outputs_float64(official, tag, size):
    model, fx, _ = official(tag)
    _set(model, fused=True, backend='pure')
    case = fx['cases'][size]
    with torch.no_grad():
        outs = model(dense_lib.case_input(case, torch.float64))
    assert [list(o.shape) for o in outs] == case['output_shapes']
    diffs = dense_lib.compare_case(outs, case)
    assert max(diffs) <= TOL, diffs


@pytest.mark.parametrize('tag', list(BACKBONES))
def test_official_outputs_explicit_attention_torchvision_dtm(official, tag):
    """The other attention path (explicit softmax, used in training on CPU) and DTM backend, main case."""
    model, fx, _ = official(tag)
    _set(model, fused=False, backend='torchvision')
    try:
        case = fx['cases'][fx['main_case']]
        with torch.no_grad():
            diffs = dense_lib.compare_case(model(dense_lib.case_input(case, torch.float64)), case)
    finally:
        _set(model, fused=True, backend='auto')
    assert max(diffs) <= TOL, diffs


@pytest.mark.parametrize('tag', list(BACKBONES))
def test_official_dtm_offsets(official, tag):
    model, fx, _ = official(tag)
    case = fx['cases'][fx['main_case']]
    with torch.no_grad():
        offsets = capture_offsets(model, dense_lib.case_input(case, torch.float64))
    assert set(offsets) == set(case['offsets'])
    for name, ref in case['offsets'].items():
        assert offsets[name].shape == ref.shape
        assert (offsets[name] - ref).abs().max().item() <= TOL, name


@pytest.mark.parametrize('tag', list(BACKBONES))
def test_state_dict_is_the_official_dense_layout(official, tag):
    model, _, manifest = official(tag)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == {k: shape for k, shape, _ in manifest}
    assert sum(p.numel() for p in model.parameters()) == BACKBONES[tag][4]
    # No index buffer at all (persistent or not): LIT-S's 800-px grid would make it 306 MB.
    assert not [n for n, _ in model.named_buffers() if 'relative_position_index' in n]
    assert not hasattr(model, 'cls_token')


def test_relative_position_tables_at_the_dense_grid():
    det, seg = _meta('s', 'detection'), _meta('s', 'segmentation')
    assert det.layers[2].blocks[0].attn.relative_position_bias_table.shape == (9801, 12)
    assert det.layers[3].blocks[0].attn.relative_position_bias_table.shape == (2401, 24)
    assert seg.layers[2].blocks[0].attn.relative_position_bias_table.shape == (3969, 12)
    assert seg.layers[3].blocks[0].attn.relative_position_bias_table.shape == (961, 24)
    assert [n for n in ('norm0', 'norm1', 'norm2', 'norm3') if hasattr(det, n)] == ['norm1', 'norm2', 'norm3']
    assert all(getattr(seg, f'norm{i}').eps == 1e-5 for i in range(4))
    ti = _meta('ti', 'detection')
    assert ti.patch_embed1.norm.eps == 1e-5 and ti.block1[0].norm2.eps == 1e-6 and ti.block4[0].norm1.eps == 1e-6
    assert ti.pos_embed4.shape == (1, 50, 512)


def test_old_state_dict_with_index_buffers_still_loads(official):
    """A state dict that still holds relative_position_index (older lit, classification-style saving) loads strictly,
    also nested under a prefix (the backbone inside a detector), and gives the same outputs."""
    model, fx, _ = official('s_seg')
    state_dict = {k: v.clone() for k, v in model.state_dict().items()}
    for name, m in model.named_modules():
        if isinstance(m, Attention):
            h, w = m.rel_pos_grid
            state_dict[f'{name}.relative_position_index'] = relative_position_index(h, w)
    assert sum(k.endswith('relative_position_index') for k in state_dict) == 8
    model.load_state_dict(state_dict, strict=True)
    wrapper = torch.nn.ModuleDict({'body': model})
    wrapper.load_state_dict({f'body.{k}': v for k, v in state_dict.items()}, strict=True)
    assert not [n for n, _ in model.named_buffers() if 'relative_position_index' in n]
    case = fx['cases'][fx['main_case']]
    with torch.no_grad():
        assert max(dense_lib.compare_case(model(dense_lib.case_input(case, torch.float64)), case)) <= TOL


# Odd sizes floor (Ti) or pad to a multiple of 4 then floor (S): the fixture README's shapes, and the smallest inputs.
@pytest.mark.parametrize('variant,hw,sizes', [
    ('ti', (250, 330), [(62, 82), (31, 41), (15, 20), (7, 10)]),
    ('s', (250, 330), [(63, 83), (31, 41), (15, 20), (7, 10)]),
    ('ti', (35, 47), [(8, 11), (4, 5), (2, 2), (1, 1)]),
    ('s', (29, 61), [(8, 16), (4, 8), (2, 4), (1, 2)]),
    ('ti', (32, 32), [(8, 8), (4, 4), (2, 2), (1, 1)]),
])
def test_odd_and_small_sizes(random_models, variant, hw, sizes):
    model = random_models(variant)
    assert model.feature_sizes(*hw) == sizes
    with torch.no_grad():
        outs = model(torch.randn(2, 3, *hw))
    assert [tuple(o.shape) for o in outs] == [(2, c, *s) for c, s in zip(model.out_channels, sizes)]
    assert all(torch.isfinite(o).all() for o in outs)


@pytest.mark.parametrize('variant,hw,minimum', [('ti', (31, 64), 32), ('ti', (64, 20), 32), ('s', (28, 28), 29)])
def test_too_small_input_is_a_one_line_error(random_models, variant, hw, minimum):
    model = random_models(variant)
    with pytest.raises(ValueError, match=rf'at least {minimum}x{minimum} pixels .*got {hw[0]}x{hw[1]}') as err:
        model(torch.zeros(1, 3, *hw))
    assert '\n' not in str(err.value)
    with pytest.raises(ValueError, match=r'expects a \(B, 3, H, W\) image batch'):
        model(torch.zeros(3, 64, 64))


def test_bad_names_are_value_errors_naming_the_choices():
    with pytest.raises(ValueError, match=r"unknown dense backbone variant 'm'.*'ti', 's'"):
        create_dense_backbone('m', 'detection')
    with pytest.raises(ValueError, match=r"unknown dense task 'classification'.*'detection', 'segmentation'"):
        create_dense_backbone('s', 'classification')
    with pytest.raises(TypeError, match=r"img_size.*drop_path_rate"):
        create_dense_backbone('s', 'detection', img_size=224)
    assert type(_meta('lit_ti', 'segmentation')) is type(_meta('ti', 'detection'))


def test_interface_the_detectors_use():
    for variant, chans in (('ti', (64, 128, 320, 512)), ('s', (96, 192, 384, 768))):
        model = _meta(variant, 'detection')
        assert model.out_channels == chans
        assert [(f['num_chs'], f['reduction']) for f in model.feature_info] == list(zip(chans, (4, 8, 16, 32)))
        for f in model.feature_info:
            model.get_submodule(f['module'])  # names a real module
        blocks = [b for i in range(4) for b in model.stage_blocks(i)]
        official_rate = {'ti': 0.1, 's': 0.2}[variant]
        assert blocks[-1].drop_path.drop_prob == pytest.approx(official_rate)
        rate = _meta(variant, 'detection', drop_path_rate=0.3)
        assert [b for i in range(4) for b in rate.stage_blocks(i)][-1].drop_path.drop_prob == pytest.approx(0.3)


def test_no_weight_decay_follows_the_official_configs():
    # LIT-Ti's configs (detection and segmentation) and LIT-S's segmentation config (lit_s_fpn_r50_512x512_80k_ade20k.py:
    # AdamW lr 1e-4, wd 1e-4, nothing more) have no paramwise_cfg: everything decays.
    assert _meta('ti', 'detection').no_weight_decay() == set()
    assert _meta('ti', 'segmentation').no_weight_decay() == set()
    assert _meta('s', 'segmentation').no_weight_decay() == set()
    # LIT-S's detection configs: custom_keys 'relative_position_bias_table' and 'norm' (substring of the name) get
    # decay_mult 0.
    names = _meta('s', 'detection').no_weight_decay()
    assert {n for n in names if 'relative_position_bias_table' in n} == \
        {f'layers.{i}.blocks.{j}.attn.relative_position_bias_table' for i, d in ((2, 6), (3, 2)) for j in range(d)}
    assert {'norm1.weight', 'norm3.bias', 'patch_embed.norm.weight', 'layers.0.blocks.0.norm2.weight',
            'layers.1.downsample.norm_layer.weight'} <= names
    assert not {n for n in names if 'qkv' in n or 'mlp' in n or 'dconv' in n or 'proj' in n}


@pytest.mark.parametrize('variant', ['ti', 's'])
def test_grad_checkpointing_same_outputs_and_gradients(variant):
    torch.manual_seed(0)
    model = create_dense_backbone(variant, 'detection', drop_path_rate=0.)
    for m in model.modules():  # non-zero offsets, so the offset convs are in the graph
        if isinstance(m, DeformConv2x2):
            torch.nn.init.normal_(m.conv_offset.weight, std=0.01)
    model.eval()  # BN on running statistics: both runs see the same function
    x = torch.randn(1, 3, 64, 96)

    def run():
        model.zero_grad()
        outs = model(x)
        sum((o * (i + 1)).mean() for i, o in enumerate(outs)).backward()
        return [o.detach() for o in outs], {n: p.grad.clone() for n, p in model.named_parameters()}

    outs, grads = run()
    model.set_grad_checkpointing(True)
    outs_ckpt, grads_ckpt = run()
    for a, b in zip(outs, outs_ckpt):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for n in grads:
        torch.testing.assert_close(grads[n], grads_ckpt[n], rtol=1e-5, atol=1e-7, msg=n)
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert not [n for n, g in grads.items() if not g.abs().sum()]  # every parameter takes part
    if variant == 'ti':
        assert grads['pos_embed4'][:, 0].abs().sum() == 0 and grads['pos_embed4'][:, 1:].abs().sum() > 0


@pytest.mark.parametrize('variant,cls_name', [('ti', 'lit_ti'), ('s', 'lit_s')])
def test_classification_checkpoint_initialises_every_dense_backbone(variant, cls_name):
    torch.manual_seed(0)
    classifier = timm.create_model(cls_name)
    for m in classifier.modules():  # give the tables structure so the resize is visible
        if isinstance(m, Attention) and m.rel_pos_grid is not None:
            torch.nn.init.normal_(m.relative_position_bias_table)
    source = classifier.state_dict()
    for task in ('detection', 'segmentation'):
        converted = dense_state_dict_from_classification({'model': source}, variant, task)  # wrapped, as released
        _meta(variant, task).load_state_dict(converted, strict=True, assign=True)  # checks every key and shape
        assert not {k for k in converted if k == 'cls_token' or k.startswith(('norm.', 'head.'))
                    or k.endswith('relative_position_index')}
        for k, v in converted.items():
            if k in source and v.shape == source[k].shape:
                assert torch.equal(v, source[k]), k
        if variant == 's':
            # The official init's loader (Swin's load_checkpoint): each table as a (1, heads, 2r-1, 2r-1) image,
            # F.interpolate bicubic (align_corners False, no antialias) to the dense grid's side.
            for k, v in source.items():
                if k.endswith('relative_position_bias_table'):
                    rows, heads = converted[k].shape
                    side, new_side = round(v.shape[0] ** .5), round(rows ** .5)
                    ref = F.interpolate(v.permute(1, 0).view(1, heads, side, side), size=(new_side, new_side),
                                        mode='bicubic').view(heads, rows).permute(1, 0)
                    torch.testing.assert_close(converted[k], ref, rtol=0, atol=0)
            norms = [k for k in converted if k.split('.')[0] in ('norm0', 'norm1', 'norm2', 'norm3')]
            assert len(norms) == (6 if task == 'detection' else 8)
            assert all(torch.equal(converted[k], torch.ones_like(converted[k]) if k.endswith('weight')
                                   else torch.zeros_like(converted[k])) for k in norms)
        else:
            assert torch.equal(converted['pos_embed4'], source['pos_embed4'])  # kept at 224, cls slot included


def test_classification_conversion_refuses_another_variant():
    with pytest.raises(ValueError, match=r'not a LIT-Ti classification checkpoint: .*missing keys'):
        dense_state_dict_from_classification(timm.create_model('lit_s').state_dict(), 'ti', 'detection')

"""Semantic FPN LIT (models/segmentation.py): the official parameter counts, mmseg's FPNHead structure, strict loading
of an official-format (mmseg) state dict, logits at any input size and mmseg's training loss."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import parity_lib
from litcli.models.segmentation import (FPNHead, SemanticFPN, identify_semantic_fpn, mmseg_head_layout,
                                        mmseg_semantic_fpn_layout, semantic_fpn_from_mmseg, semantic_fpn_lit)

# docs dense.md section 6 (measured from the official settings): total, backbone, neck, decode head
PARAMS = {'ti': (23_638_382, 19_371_736, 2_623_488, 1_643_158),
          's': (31_850_502, 27_477_360, 2_729_984, 1_643_158)}


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def official_state_dict(variant: str, num_classes: int = 150, seed: int = 0) -> dict:
    """An mmseg-format Semantic FPN LIT state dict (official key names and shapes), random values."""
    g = torch.Generator().manual_seed(seed)
    return {key: torch.randn(shape, generator=g) if dtype.is_floating_point else torch.full(shape, 7, dtype=dtype)
            for key, shape, dtype in mmseg_semantic_fpn_layout(variant, num_classes)}


@pytest.fixture(scope='module', params=['ti', 's'])
def model(request):
    torch.manual_seed(0)
    return semantic_fpn_lit(request.param).eval()


def test_parameter_counts_are_the_official_ones(model):
    variant = 'ti' if model.backbone.out_channels[0] == 64 else 's'
    total, backbone, neck, head = PARAMS[variant]
    assert (n_params(model), n_params(model.backbone), n_params(model.neck), n_params(model.decode_head)) == \
        (total, backbone, neck, head)


def test_fpn_head_is_mmsegs():
    head = FPNHead(num_classes=150)
    # strides 4, 8, 16, 32 -> 1, 1, 2, 3 conv-BN-ReLU steps, 256 -> 128 then 128 -> 128, an upsample after each
    # step except at stride 4
    for level, steps in enumerate((1, 1, 2, 3)):
        layers = list(head.scale_heads[level])
        convs = [m.conv for m in layers if hasattr(m, 'conv')]
        upsamples = [m for m in layers if isinstance(m, nn.Upsample)]
        assert len(convs) == steps
        assert [(c.in_channels, c.out_channels, c.kernel_size, c.bias) for c in convs] == \
            [(256 if k == 0 else 128, 128, (3, 3), None) for k in range(steps)]
        assert all(isinstance(m.bn, nn.BatchNorm2d) and isinstance(m.activate, nn.ReLU)
                   for m in layers if hasattr(m, 'conv'))
        assert len(upsamples) == (0 if level == 0 else steps)
        assert all((u.scale_factor, u.mode, u.align_corners) == (2.0, 'bilinear', False) for u in upsamples)
        if level:  # conv, up, conv, up, ...
            assert [isinstance(m, nn.Upsample) for m in layers] == [False, True] * steps
    assert isinstance(head.dropout, nn.Dropout2d) and head.dropout.p == 0.1
    assert (head.conv_seg.in_channels, head.conv_seg.out_channels, head.conv_seg.kernel_size) == (128, 150, (1, 1))
    # mmseg's normal_init(conv_seg, std=0.01): 19,200 draws put the sample std within 2% of 0.01
    assert head.conv_seg.weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert head.conv_seg.bias.abs().max().item() == 0


def test_fpn_head_sums_levels_as_mmseg():
    """The head's forward written out from mmseg's FPNHead.forward on the same modules."""
    torch.manual_seed(0)
    head = FPNHead(num_classes=5).eval()
    feats = [torch.randn(1, 256, 13, 17), torch.randn(1, 256, 7, 9), torch.randn(1, 256, 4, 5),
             torch.randn(1, 256, 2, 3)]
    expected = head.scale_heads[0](feats[0])
    for i in range(1, 4):
        x = feats[i]
        for m in head.scale_heads[i]:
            x = F.interpolate(x, scale_factor=2, mode='bilinear', align_corners=False) \
                if isinstance(m, nn.Upsample) else m.activate(m.bn(m.conv(x)))
        expected = expected + F.interpolate(x, size=(13, 17), mode='bilinear', align_corners=False)
    with torch.no_grad():
        assert torch.allclose(head(feats), head.conv_seg(expected), atol=1e-6)


def test_official_mmseg_state_dict_loads_strictly(model):
    variant = 'ti' if model.backbone.out_channels[0] == 64 else 's'
    official = official_state_dict(variant)
    assert identify_semantic_fpn(official) == (variant, 150)
    converted = semantic_fpn_from_mmseg(official)
    model = copy.deepcopy(model)  # the random weights would spoil the module-scoped model for the other tests
    assert model.load_state_dict(converted, strict=True)
    # values land where mmseg had them
    assert torch.equal(model.neck.inner_blocks[2][0].weight, official['neck.lateral_convs.2.conv.weight'])
    assert torch.equal(model.neck.layer_blocks[3][0].bias, official['neck.fpn_convs.3.conv.bias'])
    assert torch.equal(model.decode_head.scale_heads[3][4].bn.running_var,
                       official['decode_head.scale_heads.3.4.bn.running_var'])
    assert torch.equal(model.decode_head.conv_seg.weight, official['decode_head.conv_seg.weight'])
    first_backbone_key = next(k for k in official if k.startswith('backbone.'))
    assert torch.equal(model.state_dict()[first_backbone_key], official[first_backbone_key])


@pytest.mark.parametrize('variant, manifest', [('ti', 'manifest_ti_dense.json'), ('s', 'manifest_s_seg.json')])
def test_the_official_backbone_rows_load_too(variant, manifest, fixtures_dir):
    """The backbone part read from the official code's own state dict (its manifest), not from our backbone."""
    g = torch.Generator().manual_seed(1)
    rows = [(f'backbone.{key}', shape, getattr(torch, dtype.split('.')[1]))
            for key, shape, dtype in parity_lib.load_manifest(fixtures_dir / 'dense' / manifest)]
    official = {key: torch.randn(shape, generator=g) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)
                for key, shape, dtype in rows + mmseg_head_layout(variant, 150)}
    assert identify_semantic_fpn(official) == (variant, 150)
    assert semantic_fpn_lit(variant).load_state_dict(semantic_fpn_from_mmseg(official), strict=True)


def test_mmseg_neck_and_head_rows():
    rows = [key for key, _, _ in mmseg_head_layout('ti', 150)]
    assert len(rows) == 8 * 2 + 7 * 6 + 2  # 8 neck convs (weight, bias); 7 ConvModules (conv + 5 BN entries); conv_seg
    convs = [k[len('decode_head.scale_heads.'):-len('.conv.weight')] for k in rows if k.endswith('.conv.weight')
             and k.startswith('decode_head')]
    assert convs == ['0.0', '1.0', '2.0', '2.2', '3.0', '3.2', '3.4']  # dense.md section 4


def test_identify_refuses_other_state_dicts():
    official = official_state_dict('ti', num_classes=19)
    assert identify_semantic_fpn(official) == ('ti', 19)
    pvt_like = {k: v for k, v in official.items() if 'dconv' not in k}  # same channels, no DTM: PVT-Tiny
    with pytest.raises(ValueError, match='not LIT-Ti'):
        identify_semantic_fpn(pvt_like)
    with pytest.raises(ValueError, match='no decode_head.conv_seg'):
        identify_semantic_fpn({k: v for k, v in official.items() if not k.startswith('decode_head')})
    wrong_neck = dict(official, **{'neck.lateral_convs.0.conv.weight': torch.zeros(256, 32, 1, 1)})
    with pytest.raises(ValueError, match='match neither'):
        identify_semantic_fpn(wrong_neck)
    with pytest.raises(ValueError, match="unexpected key 'auxiliary_head.conv_seg.weight'"):
        semantic_fpn_from_mmseg(dict(official, **{'auxiliary_head.conv_seg.weight': torch.zeros(1)}))


@pytest.mark.parametrize('size', [(256, 352), (250, 330)])
def test_logits_have_the_input_size(model, size):
    with torch.no_grad():
        logits = model(torch.randn(1, 3, *size))
    assert logits.shape == (1, 150, *size) and torch.isfinite(logits).all()


def test_num_classes_is_settable():
    model = semantic_fpn_lit('ti', num_classes=7).eval()
    assert model.decode_head.conv_seg.out_channels == 7 and model.num_classes == 7
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 7, 64, 96)
    with pytest.raises(ValueError, match='num_classes'):
        semantic_fpn_lit('ti', num_classes=0)


def test_training_loss_is_finite_backprops_and_converts_to_sync_batchnorm():
    torch.manual_seed(0)
    model = semantic_fpn_lit('ti', num_classes=5).train()
    images = torch.randn(2, 3, 64, 96)
    targets = torch.randint(0, 5, (2, 64, 96))
    targets[:, :10] = 255
    losses = model(images, targets)
    assert set(losses) == {'loss_seg'} and torch.isfinite(losses['loss_seg'])
    losses['loss_seg'].backward()
    for part in (model.backbone, model.neck, model.decode_head):
        grads = [p.grad for p in part.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in synced.decode_head.modules())


def test_loss_ignores_255_and_averages_over_all_pixels_as_mmseg():
    """mmseg 0.13's CrossEntropyLoss: per-pixel CE (ignore_index 255) averaged over every pixel, ignored ones as 0;
    the stride-4 logits are resized to the label size first."""
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 10, requires_grad=True)
    targets = torch.randint(0, 4, (2, 32, 40))
    targets[0, :16] = 255
    loss = SemanticFPN.loss(logits, targets)
    upsampled = F.interpolate(logits, size=(32, 40), mode='bilinear', align_corners=False)
    expected = F.cross_entropy(upsampled, targets, ignore_index=255, reduction='sum') / targets.numel()
    assert torch.allclose(loss, expected)
    assert not torch.allclose(loss, F.cross_entropy(upsampled, targets, ignore_index=255))  # not the valid-only mean
    assert SemanticFPN.loss(logits, torch.full_like(targets, 255)).item() == 0
    # at the label size, ignored pixels get no gradient
    same_size = torch.randn(1, 4, 6, 6, requires_grad=True)
    labels = torch.randint(0, 4, (1, 6, 6))
    labels[0, :3] = 255
    SemanticFPN.loss(same_size, labels).backward()
    assert same_size.grad[0, :, :3].abs().max() == 0 and same_size.grad[0, :, 3:].abs().max() > 0
    with pytest.raises(ValueError, match=r'targets must be \(B, H, W\)'):
        SemanticFPN.loss(logits, targets[:, None])

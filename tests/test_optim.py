"""Parameter groups and learning-rate schedule of the official recipes (docs/training.md, "Configuration")."""
import copy

import pytest
import timm
import torch

import litcli.models  # noqa: F401
from litcli.core.training.optim import create_optimizer, create_scheduler, lit_param_groups
from litcli.core.config import recipe, scaled_lrs

TINY = dict(img_size=32, embed_dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8),
            mlp_ratios=(2, 2, 2, 2))


def _names(model, group):
    ids = {id(p) for p in group['params']}
    return {n for n, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize('variant', ['lit_ti', 'lit_s'])
def test_param_groups_follow_the_official_rule(variant):
    model = timm.create_model(variant, num_classes=10, **(TINY if variant == 'lit_ti' else dict(img_size=64)))
    groups = {g['group']: g for g in lit_param_groups(model, weight_decay=0.05, offset_lr=1e-5)}
    decay, no_decay, offset = (_names(model, groups[k]) for k in ('decay', 'no_decay', 'offset'))
    params = dict(model.named_parameters())
    assert decay | no_decay | offset == set(params) and not (decay & no_decay) and not (decay & offset)
    assert offset and all(n.endswith('conv_offset.weight') for n in offset)
    assert all(n.replace('.weight', '.bias') in no_decay for n in offset)  # conv_offset.bias: full lr, no wd
    assert all(params[n].ndim > 1 and not n.endswith('.bias') for n in decay)
    assert all(params[n].ndim <= 1 or n.endswith('.bias') or n in model.no_weight_decay() for n in no_decay)
    if variant == 'lit_ti':
        assert 'cls_token' in no_decay and {'pos_embed1', 'pos_embed4'} <= decay  # official: pos embeds decayed
    else:
        assert any('relative_position_bias_table' in n for n in no_decay)
    assert groups['decay']['weight_decay'] == groups['offset']['weight_decay'] == 0.05
    assert groups['no_decay']['weight_decay'] == 0.0 and groups['offset']['lr'] == 1e-5


def test_optimizer_sets_weight_decay_and_offset_lr_in_every_group():
    model = timm.create_model('lit_ti', num_classes=10, **TINY)
    opt = create_optimizer(model, lr=1e-3, weight_decay=0.05, offset_lr=1e-5)
    assert isinstance(opt, torch.optim.AdamW)
    by_name = {g['group']: g for g in opt.param_groups}
    assert by_name['decay']['lr'] == by_name['no_decay']['lr'] == 1e-3 and by_name['offset']['lr'] == 1e-5
    assert [by_name[k]['weight_decay'] for k in ('decay', 'no_decay', 'offset')] == [0.05, 0.0, 0.05]


def test_lr_scaling_per_recipe():
    ti, s = recipe('ti'), recipe('s')
    ti['batch_size'] = s['batch_size'] = 128
    # 8 GPUs x 128 = 1024 -> the paper's 1e-3 / 1e-5 (offset) for both families.
    a, b = scaled_lrs(ti, world_size=8), scaled_lrs(s, world_size=8)
    assert a['lr'] == pytest.approx(1e-3) and b['lr'] == pytest.approx(1e-3)
    assert a['offset_lr'] == pytest.approx(1e-5) and b['offset_lr'] == pytest.approx(1e-5)
    assert (a['warmup_lr'], a['min_lr']) == (1e-6, 1e-5)  # Ti: not scaled
    assert b['warmup_lr'] == pytest.approx(1e-6) and b['min_lr'] == pytest.approx(1e-5)  # S/M/B: scaled
    s['grad_accum_steps'] = 2  # global batch counts accumulation
    assert scaled_lrs(s, world_size=4)['lr'] == pytest.approx(1e-3)
    assert scaled_lrs(s, world_size=1)['min_lr'] == pytest.approx(5e-6 * 256 / 512)
    s['lr'] = 3e-4  # an explicit --lr is absolute
    assert scaled_lrs(s, world_size=8)['lr'] == 3e-4


@pytest.mark.parametrize('per_epoch', [True, False])
def test_offset_lr_warms_up_then_stays_at_min_lr(per_epoch):
    """Recipe 1.1 at batch 1024: main 1e-6 -> 1e-3 -> cosine to 1e-5; offset 1e-6 -> 1e-5, then constant 1e-5."""
    model = timm.create_model('lit_ti', num_classes=10, **TINY)
    cfg = recipe('ti' if per_epoch else 's')
    cfg['batch_size'] = 1024
    lrs = scaled_lrs(cfg)
    opt = create_optimizer(model, lr=lrs['lr'], weight_decay=0.05, offset_lr=lrs['offset_lr'])
    epochs, warmup, per = 300, cfg['warmup_epochs'], 4
    sched = create_scheduler(opt, epochs, warmup, lrs['warmup_lr'], lrs['min_lr'], updates_per_epoch=per,
                             step_on_epochs=per_epoch)
    main, offset = [], []
    updates = 0
    for epoch in range(epochs):
        main.append(opt.param_groups[0]['lr'])
        offset.append(next(g['lr'] for g in opt.param_groups if g['group'] == 'offset'))
        for _ in range(per):
            updates += 1
            sched.step_update(num_updates=updates)
        sched.step(epoch + 1)
    assert main[0] == pytest.approx(1e-6) and offset[0] == pytest.approx(1e-6)
    assert max(main) == pytest.approx(1e-3, rel=2e-2) and main[-1] == pytest.approx(1e-5, rel=0.05)
    assert offset[warmup + 1:] == pytest.approx([1e-5] * (epochs - warmup - 1))
    assert max(offset) == pytest.approx(1e-5)
    assert all(a <= b + 1e-12 for a, b in zip(offset[:warmup], offset[1:warmup + 1]))  # linear warmup up


def test_adamw_is_fused_and_updates_like_the_reference():
    # A plain MLP: in LIT the pre-BatchNorm DTM bias gets a gradient that is float noise around zero, which Adam
    # turns into +-lr steps of random sign, so bitwise-different kernels diverge there by design.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.LayerNorm(16), torch.nn.Linear(16, 3))
    reference = copy.deepcopy(model)
    fused = create_optimizer(model, lr=1e-2, weight_decay=0.05, offset_lr=1e-4)
    assert all(g['fused'] for g in fused.param_groups)
    plain = torch.optim.AdamW(lit_param_groups(reference, 0.05, 1e-4), lr=1e-2, foreach=False)
    x = torch.randn(32, 8)
    for _ in range(5):
        for m, opt in ((model, fused), (reference, plain)):
            m(x).square().mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_adamw_without_a_fused_kernel_falls_back_before_the_first_step():
    """torch only checks fused support at the first step, too late to fall back: a parameter on a device without
    the kernel (here 'meta') must give the plain optimizer up front."""
    from litcli.core.training.optim import fused_kernel_available
    model = torch.nn.Linear(3, 2)
    assert fused_kernel_available(model)
    model_meta = torch.nn.Linear(3, 2, device='meta')
    assert not fused_kernel_available(model_meta)
    opt = create_optimizer(model_meta, lr=1e-3, weight_decay=0.05, offset_lr=1e-5)
    assert not any(g.get('fused') for g in opt.param_groups)

"""The LIT models: exact to the official code, the spec's keys and counts, and the timm model contract."""
import re

import pytest
import timm
import torch

import litcli.models  # noqa: F401  (registers the variants)
import parity_lib
from litcli.models import Attention, DeformConv2x2, LITBase, capture_offsets

VARIANTS = ('lit_ti', 'lit_s', 'lit_m', 'lit_b')
# The official variants' parameter counts and state-dict sizes (docs/models.md)
PARAMS = {'lit_ti': 19_886_272, 'lit_s': 27_973_720, 'lit_m': 49_372_264, 'lit_b': 87_292_384}
PARAMS_NO_HEAD = {'lit_ti': 19_373_272, 'lit_s': 27_204_720, 'lit_m': 48_603_264, 'lit_b': 86_267_384}
ENTRIES = {'lit_ti': 190, 'lit_s': 171, 'lit_m': 339, 'lit_b': 339}


def _set_attention(model, fused):
    for m in model.modules():
        if isinstance(m, Attention):
            m.fused_attn = fused


def _set_backend(model, backend):
    for m in model.modules():
        if isinstance(m, DeformConv2x2):
            m.backend = backend


@pytest.fixture(scope='module', params=[('lit_ti', 'ti'), ('lit_s', 's')], ids=['ti', 's'])
def official(request, fixtures_dir):
    """A model loaded with the parity weights (float64, eval) and the official outputs."""
    variant, tag = request.param
    manifest = parity_lib.load_manifest(fixtures_dir / f'manifest_{tag}.json')
    fx = torch.load(fixtures_dir / f'parity_{tag}.pt', weights_only=True)
    model = timm.create_model(variant)
    missing, unexpected = model.load_state_dict(parity_lib.det_state_dict(manifest), strict=False)
    assert not unexpected and set(missing) <= set(parity_lib.skipped_keys(manifest))  # integer buffers only
    assert parity_lib.fingerprint(model.state_dict()) == fx['weights_fingerprint']
    return model.double().eval(), fx, manifest


def test_state_dict_matches_official_manifest(official):
    model, _, manifest = official
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == [(k, s) for k, s, _ in manifest]


@pytest.mark.parametrize('fused', [False, True], ids=['explicit', 'sdpa'])
@pytest.mark.parametrize('backend', ['pure', 'torchvision'])
@pytest.mark.slow
def test_official_logits_float64(official, fused, backend):
    model, fx, _ = official
    _set_attention(model, fused)
    _set_backend(model, backend)
    with torch.no_grad():
        logits = model(fx['input'].double())
    torch.testing.assert_close(logits, fx['logits'], rtol=0, atol=1e-8)


@pytest.mark.slow
def test_official_offsets_and_intermediates(official):
    model, fx, _ = official
    _set_attention(model, True)
    _set_backend(model, 'auto')
    x = fx['input'].double()
    with torch.no_grad():
        offsets = capture_offsets(model, x)
    assert set(offsets) == set(fx['offsets'])
    for name, ref in fx['offsets'].items():
        torch.testing.assert_close(offsets[name], ref.to(offsets[name].dtype), rtol=0, atol=1e-9)
    outputs = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: outputs.__setitem__(n, o[0].detach())) for n in fx['intermediates']]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    for name, ref in fx['intermediates'].items():
        ours = outputs[name].float()
        if ours.shape != ref.shape:  # Ti's DTM returns NCHW maps; the fixtures may store tokens
            ours = ours.flatten(1).t().reshape(ref.shape) if ours.ndim == 3 else ours.reshape(ref.shape)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_official_logits_float32(official, fixtures_dir):
    model, fx, _ = official
    model32 = timm.create_model(model.pretrained_cfg['architecture'])
    model32.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()})
    with torch.no_grad():
        logits = model32.eval()(fx['input'])
    torch.testing.assert_close(logits, fx['logits_fp32'], rtol=0, atol=1e-4)


def _spec_manifest(variant):
    """Key -> shape for S/M/B, written out from the official code's state-dict layout (LIT-S's is
    tests/fixtures/manifest_s.json)."""
    C = 128 if variant == 'lit_b' else 96
    depths = (2, 2, 18, 2) if variant in ('lit_m', 'lit_b') else (2, 2, 6, 2)
    heads = (16, 32) if variant == 'lit_b' else (12, 24)
    grids = (14, 7)
    keys = {'patch_embed.proj.weight': (C, 3, 4, 4), 'patch_embed.proj.bias': (C,),
            'patch_embed.norm.weight': (C,), 'patch_embed.norm.bias': (C,)}
    for i, depth in enumerate(depths):
        Ci = C * 2 ** i
        for j in range(depth):
            p = f'layers.{i}.blocks.{j}.'
            if i >= 2:
                keys.update({p + 'norm1.weight': (Ci,), p + 'norm1.bias': (Ci,)})
                r = grids[i - 2]
                keys[p + 'attn.relative_position_bias_table'] = ((2 * r - 1) ** 2, heads[i - 2])
                keys[p + 'attn.relative_position_index'] = (r * r, r * r)
                keys.update({p + 'attn.qkv.weight': (3 * Ci, Ci), p + 'attn.qkv.bias': (3 * Ci,),
                             p + 'attn.proj.weight': (Ci, Ci), p + 'attn.proj.bias': (Ci,)})
            keys.update({p + 'norm2.weight': (Ci,), p + 'norm2.bias': (Ci,),
                         p + 'mlp.fc1.weight': (4 * Ci, Ci), p + 'mlp.fc1.bias': (4 * Ci,),
                         p + 'mlp.fc2.weight': (Ci, 4 * Ci), p + 'mlp.fc2.bias': (Ci,)})
        if i < 3:
            p = f'layers.{i}.downsample.'
            keys.update({p + 'dconv.weight': (2 * Ci, Ci, 2, 2), p + 'dconv.bias': (2 * Ci,),
                         p + 'dconv.conv_offset.weight': (8, Ci, 2, 2), p + 'dconv.conv_offset.bias': (8,)})
            keys.update({p + f'norm_layer.{n}': (2 * Ci,) for n in ('weight', 'bias', 'running_mean', 'running_var')})
            keys[p + 'norm_layer.num_batches_tracked'] = ()
    keys.update({'norm.weight': (8 * C,), 'norm.bias': (8 * C,), 'head.weight': (1000, 8 * C), 'head.bias': (1000,)})
    return keys


@pytest.mark.parametrize('variant', ['lit_s', 'lit_m', 'lit_b'])
@pytest.mark.slow
def test_swin_style_keys_follow_spec_table(variant):
    model = timm.create_model(variant)
    spec = _spec_manifest(variant)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == spec
    # A state dict built from the spec's key list alone loads strictly.
    sd = {k: torch.zeros(s, dtype=torch.long if 'index' in k or 'num_batches' in k else torch.float32)
          for k, s in spec.items()}
    model.load_state_dict(sd, strict=True)


@pytest.mark.parametrize('variant', VARIANTS)
@pytest.mark.slow
def test_counts_match_spec(variant):
    model = timm.create_model(variant)
    assert len(model.state_dict()) == ENTRIES[variant]
    assert sum(p.numel() for p in model.parameters()) == PARAMS[variant]
    assert sum(p.numel() for p in model.parameters()) - model.head.weight.numel() - model.head.bias.numel() \
        == PARAMS_NO_HEAD[variant]


def test_eps_and_structure_details():
    ti = timm.create_model('lit_ti')
    assert ti.patch_embed1.norm.eps == 1e-5
    assert ti.block1[0].norm2.eps == 1e-6 and ti.block4[0].norm1.eps == 1e-6 and ti.norm.eps == 1e-6
    assert not hasattr(ti.block1[0], 'norm1') and not hasattr(ti.block1[0], 'attn')
    s = timm.create_model('lit_s')
    assert all(m.eps == 1e-5 for m in s.modules() if isinstance(m, torch.nn.LayerNorm))
    assert s.layers[3].downsample is None
    assert s.layers[2].blocks[0].attn.relative_position_index.dtype == torch.int64


@pytest.mark.parametrize('variant', VARIANTS)
@pytest.mark.slow
def test_offset_conv_zero_at_init(variant):
    model = timm.create_model(variant)
    convs = [m.conv_offset for m in model.modules() if isinstance(m, DeformConv2x2)]
    assert len(convs) == 3
    assert all(c.weight.abs().sum() == 0 and c.bias.abs().sum() == 0 for c in convs)


def test_stochastic_depth_linear_over_all_blocks():
    model = timm.create_model('lit_ti', drop_path_rate=0.1)
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, 'drop_prob') else 0.
             for i in range(4) for b in model.stage_blocks(i)]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.1, 16))


@pytest.mark.parametrize('variant', VARIANTS)
@pytest.mark.slow
def test_contract_forward_backward_every_param_gets_grad(variant):
    torch.manual_seed(0)
    model = timm.create_model(variant, img_size=64, num_classes=7, drop_path_rate=0.1)
    # Non-zero offsets so the offset convs are really in the graph beyond the zero-init state.
    for m in model.modules():
        if isinstance(m, DeformConv2x2):
            torch.nn.init.normal_(m.conv_offset.weight, std=0.01)
    model.train()
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 7)
    out.sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f'parameters without a finite gradient: {no_grad}'
    # forward_features / pre_logits / reset_classifier
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    feats = model.forward_features(x)
    assert feats.shape[-1] == model.num_features
    assert model.forward_head(feats, pre_logits=True).shape == (1, model.num_features)
    model.reset_classifier(0)
    assert model(x).shape == (1, model.num_features)
    model.reset_classifier(5)
    assert model(x).shape == (1, 5) and model.get_classifier().out_features == 5


@pytest.mark.parametrize('variant', ['lit_ti', 'lit_s'])
@pytest.mark.slow
def test_forward_intermediates_and_features_only(variant):
    model = timm.create_model(variant).eval()
    x = torch.randn(1, 3, 224, 256)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        feats = model.forward_features(x)
        torch.testing.assert_close(final, feats)
        assert [tuple(f.shape) for f in inter] == [
            (1, c, 224 // r, 256 // r) for c, r in zip(model.embed_dims, (4, 8, 16, 32))]
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert len(last2) == 2 and last2[1].shape == inter[3].shape
        fo = timm.create_model(variant, features_only=True).eval()
        fo.model.load_state_dict(model.state_dict())
        outs = fo(x)
    assert fo.feature_info.reduction() == [4, 8, 16, 32]
    assert fo.feature_info.channels() == list(model.embed_dims)
    for a, b in zip(outs, inter):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('variant', ['lit_ti', 'lit_s'])
@pytest.mark.slow
def test_fused_and_explicit_attention_agree_fp32(variant):
    torch.manual_seed(0)
    model = timm.create_model(variant, img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        _set_attention(model, True)
        a = model(x)
        _set_attention(model, False)
        b = model(x)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_fused_attn_constructor_flag():
    model = timm.create_model('lit_s', fused_attn=False, img_size=64)
    assert not any(m.fused_attn for m in model.modules() if isinstance(m, Attention))


@pytest.mark.slow
def test_cpu_training_takes_the_explicit_attention_path_with_the_same_gradients(monkeypatch):
    """On CPU a learnable bias sends SDPA to its slow math fallback, so training uses the explicit path; its
    values and gradients equal SDPA's, and inference still goes through SDPA."""
    import torch.nn.functional as F
    model = timm.create_model('lit_s', img_size=64, num_classes=5).double().train()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    sdpa_calls = []
    real_sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, 'scaled_dot_product_attention', lambda *a, **k: sdpa_calls.append(1) or real_sdpa(*a, **k))

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        loss = model(x).square().sum()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    explicit = loss_and_grads()
    assert not sdpa_calls
    monkeypatch.setattr(Attention, '_bias_grad_on_cpu', lambda self, x: False)  # force SDPA with a bias gradient
    fused = loss_and_grads()
    assert sdpa_calls
    torch.testing.assert_close(explicit[0], fused[0], rtol=0, atol=1e-10)
    assert explicit[1].keys() == fused[1].keys()
    assert any('relative_position_bias_table' in n for n in explicit[1])
    for name in explicit[1]:
        torch.testing.assert_close(explicit[1][name], fused[1][name], rtol=0, atol=1e-10, msg=name)
    monkeypatch.undo()
    monkeypatch.setattr(F, 'scaled_dot_product_attention', lambda *a, **k: sdpa_calls.append(1) or real_sdpa(*a, **k))
    sdpa_calls.clear()
    with torch.no_grad():
        model.eval()(x)
    assert len(sdpa_calls) == sum(len(model.stage_blocks(i)) for i in (2, 3))


@pytest.mark.parametrize('variant', ['lit_ti', 'lit_s'])
@pytest.mark.parametrize('size', [(256, 256), (256, 320), (96, 64)])
@pytest.mark.slow
def test_other_input_sizes(variant, size):
    model = timm.create_model(variant, num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 3)


@pytest.mark.parametrize('variant', ['lit_ti', 'lit_s'])
@pytest.mark.slow
def test_build_size_is_bit_exact_and_checkpoint_resamples(variant, monkeypatch):
    """A 224 checkpoint loaded into a model built for 384 equals running the 224 model at 384; at its own build
    size a model resamples nothing, and running it at another size leaves its tables as they were."""
    import litcli.models.lit as lit_module
    from litcli.models import checkpoint_filter_fn
    resampled = []  # (function, changed the table?) for each call made inside a forward

    def spy(name):
        original = getattr(lit_module, name)

        def wrapper(table, *args, **kwargs):
            out = original(table, *args, **kwargs)
            resampled.append((name, out.shape != table.shape or not torch.equal(out, table)))
            return out
        monkeypatch.setattr(lit_module, name, wrapper)

    torch.manual_seed(0)
    m224 = timm.create_model(variant).eval()
    for p in m224.parameters():  # pos tables are zero-init for the S rel-pos bias; make them informative
        p.data.add_(torch.randn_like(p) * 0.01)
    original = {k: v.clone() for k, v in m224.state_dict().items()}
    m384 = timm.create_model(variant, img_size=384).eval()
    m384.load_state_dict(checkpoint_filter_fn(m224.state_dict(), m384), strict=True)
    spy('resize_rel_pos_table')
    spy('resample_abs_pos_embed')
    x = torch.randn(1, 3, 384, 384)
    x224 = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        out384 = m384(x)
        assert not any(changed for _, changed in resampled)  # at its build size: tables untouched
        resampled.clear()
        torch.testing.assert_close(out384, m224(x), rtol=1e-5, atol=1e-5)
        assert any(changed for _, changed in resampled)  # off its build size the 224 model resampled
        resampled.clear()
        out224 = m224(x224)
        assert not any(changed for _, changed in resampled)
        # the runtime resampling left the 224 model's tables as they were: it equals a fresh model of the
        # original state dict (and would not, had the 384 run written resampled tables back)
        assert all(torch.equal(v, original[k]) for k, v in m224.state_dict().items())
        fresh = timm.create_model(variant).eval()
        fresh.load_state_dict(original, strict=True)
        assert torch.equal(out224, fresh(x224))


@pytest.mark.parametrize('shape, match', [((1, 3, 225, 224), 'divisible by 32'), ((1, 1, 224, 224), '3, H, W'),
                                          ((3, 224, 224), '3, H, W')])
def test_bad_input_raises_valueerror(shape, match):
    model = timm.create_model('lit_s', img_size=64)
    with pytest.raises(ValueError, match=re.escape(match) if ',' in match else match):
        model(torch.randn(*shape))


def test_no_weight_decay_and_group_matcher():
    ti = timm.create_model('lit_ti', img_size=64)
    assert ti.no_weight_decay() == {'cls_token'}  # official: pos_embeds *are* decayed
    s = timm.create_model('lit_s', img_size=64)
    assert s.no_weight_decay() == {n for n, _ in s.named_parameters() if n.endswith('relative_position_bias_table')}
    from timm.models import group_parameters
    for model in (ti, s):
        for coarse in (True, False):
            groups = group_parameters(model, model.group_matcher(coarse=coarse))
            assert sorted(n for g in groups.values() for n in g) == sorted(n for n, _ in model.named_parameters())


@pytest.mark.slow
def test_grad_checkpointing_same_result():
    torch.manual_seed(0)
    model = timm.create_model('lit_s', img_size=64).eval()
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    ref = model(x)
    ref.sum().backward()
    g_ref = x.grad.clone()
    x.grad = None
    model.set_grad_checkpointing(True)
    out = model(x)
    out.sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(x.grad, g_ref)


@pytest.mark.slow
def test_cfgs_registered():
    for v in VARIANTS:
        model = timm.create_model(v, img_size=64)
        assert isinstance(model, LITBase)
        cfg = model.pretrained_cfg
        assert cfg['crop_pct'] == 0.875 and cfg['interpolation'] == 'bicubic' and cfg['classifier'] == 'head'
        assert cfg['mean'] == (0.485, 0.456, 0.406)
    assert set(VARIANTS) <= set(timm.list_models('lit_*'))
    assert timm.create_model('lit_s', num_classes=10, img_size=64).head.out_features == 10


@pytest.mark.slow
def test_bf16_autocast_cpu():
    model = timm.create_model('lit_ti', img_size=64).eval()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(torch.randn(3, 3, 64, 64))
    assert out.shape == (3, 1000) and torch.isfinite(out).all()


@pytest.mark.slow
def test_chunked_fused_attention_is_exact(monkeypatch):
    """Large maps run SDPA in query chunks (bias never built whole); the result is the same function."""
    import litcli.models.lit as lit_module
    torch.manual_seed(0)
    model = timm.create_model('lit_s', img_size=64).eval()
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.01)  # non-zero position tables
    x = torch.randn(2, 3, 96, 64)  # another grid than the build grid: on-the-fly index rows, resized table
    with torch.no_grad():
        _set_attention(model, False)
        ref = model(x)
        _set_attention(model, True)
        monkeypatch.setattr(lit_module, 'ATTN_BIAS_CHUNK_ELEMENTS', 12 * 24 * 5)  # 5-query chunks in stage 3
        chunked = model(x)
    torch.testing.assert_close(chunked, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize('variant', ['lit_ti', 'lit_s'])
@pytest.mark.slow
def test_torch_compile_traces_one_graph(variant):
    """torch.compile sees the whole model (train and eval) as one graph: no graph breaks around DTM or attention.
    (Inductor itself runs in `make gpu-check`; compiling on a 2-core CI machine takes minutes.)"""
    import torch._dynamo
    model = timm.create_model(variant, img_size=64, num_classes=3)
    x = torch.randn(2, 3, 64, 64)
    for train in (True, False):
        torch._dynamo.reset()
        explained = torch._dynamo.explain(model.train(train))(x)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_explicit_attention_adds_the_bias_in_fp32_under_autocast():
    """As the official code: bf16 scores + the fp32 rel-pos bias promote to fp32 before the softmax."""
    model = timm.create_model('lit_s', img_size=64, num_classes=3, fused_attn=False).eval()
    seen = []
    attn = next(m for m in model.modules() if isinstance(m, Attention))
    attn.attn_drop.register_forward_hook(lambda m, inp, out: seen.append(inp[0].dtype))
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        model(torch.randn(1, 3, 64, 64))
    assert seen == [torch.float32]


@pytest.mark.parametrize('variant', ['lit_ti', 'lit_s'])
def test_patch_size_two_stem_doubles_every_grid(variant):
    """``patch_size=2`` (small inputs such as the built-in 28-32 px demo): 2x2 patches, stage grids twice as fine,
    sides in multiples of 16, and every consumer of the strides reads them from the model."""
    model = timm.create_model(variant, num_classes=3, img_size=32, patch_size=2).eval()
    assert model.stage_grids == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert [f['reduction'] for f in model.feature_info] == [2, 4, 8, 16] == list(model.stage_strides)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 48, 32)).shape == (2, 3)  # 48: a multiple of 16, not of 32
        feats = model.forward_intermediates(torch.randn(1, 3, 32, 32), intermediates_only=True)
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    with pytest.raises(ValueError, match='divisible by 16, got 40x32; nearest valid: height 32 or 48'):
        model(torch.randn(1, 3, 40, 32))


@pytest.mark.parametrize('variant, kernel, window', [('lit_ti', 4, (1, 2)), ('lit_ti', 6, (2, 3)),
                                                     ('lit_s', 4, (1, 2))])
def test_overlapping_stem_window_is_centred_on_its_patch(variant, kernel, window):
    """``stem_kernel`` > ``patch_size`` (PVTv2-style overlapping patch embedding), in both layouts: same grids, and
    token (r, c) of a 2x2-patch model sees pixels 2r - a .. 2r + 1 + a (a = (kernel - 2) / 2), a window centred on
    its own 2x2 patch, so the pixel geometry of viz-offsets and attn-maps holds unchanged."""
    model = timm.create_model(variant, num_classes=3, img_size=32, patch_size=2, stem_kernel=kernel).eval()
    assert model.stage_grids == [(16, 16), (8, 8), (4, 4), (2, 2)]
    stem = model.patch_embed1 if variant == 'lit_ti' else model.patch_embed
    assert tuple(stem.proj.kernel_size) == (kernel, kernel) and tuple(stem.proj.padding) == (window[0],) * 2
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    stem(x)[0, 5, 7, 0].backward()  # NHWC: token row 5, column 7, one channel (LayerNorm makes a sum constant)
    rows, cols = x.grad[0].abs().sum(0).nonzero(as_tuple=True)
    before, after = window
    assert sorted(set(rows.tolist())) == list(range(10 - before, 10 + after + 1))
    assert sorted(set(cols.tolist())) == list(range(14 - before, 14 + after + 1))
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize('bad', [3, 1, 6.0])
def test_stem_kernel_must_be_the_patch_plus_an_even_integer(bad):
    with pytest.raises(ValueError, match='patch_size \\(2\\) plus an even number'):
        timm.create_model('lit_ti', num_classes=3, img_size=32, patch_size=2, stem_kernel=bad)


def test_patch_size_two_trace_maps_cells_to_pixel_centres():
    """viz-offsets maps stage-1 cells p to P*p + P/2 pixels: with zero offsets a 2x2-patch model's final token
    (r, c) samples the 8x8 lattice 2a + 1 inside its regular 16x16 field."""
    from litcli.core.analysis.offsets import fraction_outside_field, trace_offsets
    model = timm.create_model('lit_ti', num_classes=10, img_size=32, patch_size=2).eval()
    trace = trace_offsets(model, 'assets/photos/chelsea.jpg', img_size=32)
    assert trace.patch == 2 and trace.grid == (2, 2)
    for (r, c), pts in zip(trace.tokens, trace.pixels):
        assert sorted(set(pts[:, 0])) == [16 * r + 2 * a + 1 for a in range(8)]
        assert sorted(set(pts[:, 1])) == [16 * c + 2 * a + 1 for a in range(8)]
    assert fraction_outside_field(trace) == 0.0

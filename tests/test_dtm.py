"""Deformable Token Merging: backend parity, offset layout, batch sizes, precision."""
import pytest
import torch
import torch.nn.functional as F

from litcli.models import DeformableTokenMerging, deform_conv2x2, resolve_dtm_backend, torchvision_ops_available

needs_tv = pytest.mark.skipif(not torchvision_ops_available(), reason="torchvision's C++ ops did not load")


def _inputs(B=2, C=6, H=8, W=10, C_out=5, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=g, dtype=dtype)
    # Non-integer offsets, some reaching outside the map (integer positions have a kink, see data docs).
    offset = (torch.rand(B, 8, H // 2, W // 2, generator=g, dtype=dtype) - 0.5) * 5 + 0.137
    weight = torch.randn(C_out, C, 2, 2, generator=g, dtype=dtype) / (4 * C) ** 0.5  # conv-init scale
    bias = torch.randn(C_out, generator=g, dtype=dtype)
    return x, offset, weight, bias


def _run(backend, x, offset, weight, bias):
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, offset, weight, bias)]
    out = deform_conv2x2(*leaves, backend=backend)
    out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out))
    return out.detach(), [t.grad for t in leaves]


@needs_tv
@pytest.mark.parametrize('dtype, atol', [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_backends_agree_values_and_gradients(dtype, atol):
    args = _inputs(dtype=dtype)
    out_tv, grads_tv = _run('torchvision', *args)
    out_pure, grads_pure = _run('pure', *args)
    torch.testing.assert_close(out_pure, out_tv, rtol=0, atol=atol)
    for name, a, b in zip(('x', 'offset', 'weight', 'bias'), grads_pure, grads_tv):
        # weight gradients are sums over many samples: compare relative to their scale
        scale = b.abs().max().item() if name == 'weight' else 1.0
        torch.testing.assert_close(a / scale, b / scale, rtol=0, atol=atol * 10, msg=f'grad of {name}')


def test_pure_backend_gradients_pass_gradcheck():
    """The pure backend's gradients (through the weighted embedding_bag, to the rows and, through the bilinear
    weights, to the offsets) against finite differences, offsets outside the map included; no torchvision needed."""
    x, offset, weight, bias = (t.requires_grad_(True) for t in _inputs(B=2, C=3, H=4, W=6, C_out=2))
    assert torch.autograd.gradcheck(lambda *a: deform_conv2x2(*a, backend='pure'), (x, offset, weight, bias))


@needs_tv
@pytest.mark.parametrize('B', [1, 3, 5, 7])
def test_any_batch_size(B):
    """The official CUDA DCN crashes on odd batches >= 5; both backends here take any batch."""
    args = _inputs(B=B)
    a = deform_conv2x2(*args, backend='pure')
    b = deform_conv2x2(*args, backend='torchvision')
    assert a.shape == (B, 5, 4, 5)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_offset_layout_dx_moves_samples_right():
    """Channel 2k+1 is dx of tap k=2i+j: +1 in every dx equals sampling the image shifted one pixel left."""
    x, _, weight, bias = _inputs()
    B, _, H, W = x.shape
    offset = torch.zeros(B, 8, H // 2, W // 2, dtype=x.dtype)
    offset[:, 1::2] = 1.0  # dx of all 4 taps
    shifted = torch.cat([x[..., 1:], torch.zeros_like(x[..., :1])], dim=-1)  # shifted[.., c] = x[.., c+1]
    expected = F.conv2d(shifted, weight, bias, stride=2)
    for backend in ('pure',) + (('torchvision',) if torchvision_ops_available() else ()):
        torch.testing.assert_close(deform_conv2x2(x, offset, weight, bias, backend=backend), expected)
    offset = torch.zeros_like(offset)
    offset[:, 0::2] = 1.0  # dy of all taps: one row down
    shifted = torch.cat([x[..., 1:, :], torch.zeros_like(x[..., :1, :])], dim=-2)
    torch.testing.assert_close(deform_conv2x2(x, offset, weight, bias, backend='pure'),
                               F.conv2d(shifted, weight, bias, stride=2))


def test_single_tap_offset_moves_only_that_tap():
    """Tap k = 2i + j: an offset on tap 1 (i=0, j=1) changes only that tap's sample."""
    x, _, weight, bias = _inputs(C_out=1)
    B, _, H, W = x.shape
    offset = torch.zeros(B, 8, H // 2, W // 2, dtype=x.dtype)
    offset[:, 3] = 1.0  # dx of tap 1 -> samples (2oy, 2ox + 2) instead of (2oy, 2ox + 1)
    only_tap = torch.zeros_like(weight)
    only_tap[:, :, 0, 1] = weight[:, :, 0, 1]
    out = deform_conv2x2(x, offset, only_tap, torch.zeros_like(bias), backend='pure')
    padded = F.pad(x, (0, 1))
    expected = torch.einsum('bchw,oc->bohw', padded[:, :, 0::2, 2::2][..., :W // 2], weight[:, :, 0, 1])
    torch.testing.assert_close(out, expected)


def test_outside_points_contribute_zero():
    x, _, weight, bias = _inputs()
    offset = torch.full((x.shape[0], 8, x.shape[2] // 2, x.shape[3] // 2), -100.0, dtype=x.dtype)
    out = deform_conv2x2(x, offset, weight, bias, backend='pure')
    torch.testing.assert_close(out, bias.view(1, -1, 1, 1).expand_as(out))


def test_non_finite_offsets_propagate_without_out_of_range_reads():
    """A diverged offset (NaN/inf) must give NaN/finite outputs, never an out-of-range gather (the neighbour
    indices are clamped after the float -> int conversion)."""
    x, offset, weight, bias = _inputs()
    offset = offset.clone()
    offset[0, :, 0, 0] = float('nan')
    offset[-1, :, -1, -1] = float('inf')
    out = deform_conv2x2(x, offset, weight, bias, backend='pure')
    assert out[0, :, 0, 0].isnan().all() and out[-1, :, -1, -1].isnan().all()
    assert torch.isfinite(out[:, :, 1:-1, 1:-1]).all()


def test_channels_last_and_contiguous_inputs_agree():
    x, offset, weight, bias = _inputs()
    a = deform_conv2x2(x, offset, weight, bias, backend='pure')
    b = deform_conv2x2(x.contiguous(memory_format=torch.channels_last), offset, weight, bias, backend='pure')
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_zero_offsets_equal_plain_conv_bn_gelu():
    torch.manual_seed(0)
    dtm = DeformableTokenMerging(6, 5).double().eval()
    dtm.norm_layer.running_mean.normal_()
    dtm.norm_layer.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 6, 8, 8, dtype=torch.float64)
    expected = F.gelu(dtm.norm_layer(F.conv2d(x, dtm.dconv.weight, dtm.dconv.bias, stride=2)))
    torch.testing.assert_close(dtm(x), expected)


def test_autocast_runs_deform_in_fp32():
    x, offset, weight, bias = _inputs(dtype=torch.float32)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = deform_conv2x2(x.bfloat16(), offset.bfloat16(), weight, bias, backend='pure')
        dtm_out = DeformableTokenMerging(6, 5)(x)
    assert out.dtype == torch.float32 and dtm_out.dtype == torch.float32
    if torchvision_ops_available():  # torchvision's CPU kernel rejects bf16: the upcast makes it work
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert deform_conv2x2(x.bfloat16(), offset.bfloat16(), weight, bias, backend='torchvision').dtype \
                == torch.float32


def test_backend_resolution(monkeypatch):
    assert resolve_dtm_backend('auto', torch.device('cpu')) == 'pure'
    assert resolve_dtm_backend('pure', torch.device('cuda')) == 'pure'
    if torchvision_ops_available():
        assert resolve_dtm_backend('auto', torch.device('cuda')) == 'torchvision'
    monkeypatch.setenv('LIT_DTM_BACKEND', 'torchvision')
    if torchvision_ops_available():
        assert resolve_dtm_backend('auto', torch.device('cpu')) == 'torchvision'
    with pytest.raises(ValueError, match='unknown DTM backend'):
        resolve_dtm_backend('cuda-dcn', torch.device('cpu'))


def test_odd_map_rejected():
    with pytest.raises(ValueError, match='even'):
        DeformableTokenMerging(3, 4)(torch.randn(1, 3, 7, 8))

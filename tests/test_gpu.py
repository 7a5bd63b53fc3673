"""CUDA-only checks (run by `make gpu-check`; skipped elsewhere)."""
import pytest
import timm
import torch

import litcli.models  # noqa: F401
from litcli.models import DeformConv2x2, deform_conv2x2, torchvision_ops_available

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')]


@pytest.mark.parametrize('variant', ['lit_ti', 'lit_s', 'lit_m', 'lit_b'])
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_forward_backward_autocast(variant, dtype):
    model = timm.create_model(variant).cuda().train()
    x = torch.randn(4, 3, 224, 224, device='cuda')
    with torch.autocast('cuda', dtype=dtype):
        out = model(x)
    assert out.dtype == dtype
    out.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert {m.backend for m in model.modules() if isinstance(m, DeformConv2x2)} == {'auto'}


@pytest.mark.skipif(not torchvision_ops_available(), reason="torchvision's C++ ops did not load")
@pytest.mark.parametrize('B', [1, 5, 32])
def test_cuda_torchvision_matches_pure(B):
    g = torch.Generator(device='cuda').manual_seed(0)
    x = torch.randn(B, 64, 56, 56, device='cuda', generator=g, dtype=torch.float64)
    off = (torch.rand(B, 8, 28, 28, device='cuda', generator=g, dtype=torch.float64) - 0.5) * 5 + 0.137
    w = torch.randn(128, 64, 2, 2, device='cuda', generator=g, dtype=torch.float64) / 16
    b = torch.randn(128, device='cuda', generator=g, dtype=torch.float64)
    ins = [t.clone().requires_grad_(True) for t in (x, off, w, b)]
    ref = [t.clone().requires_grad_(True) for t in (x, off, w, b)]
    a = deform_conv2x2(*ins, backend='torchvision')
    c = deform_conv2x2(*ref, backend='pure')
    torch.testing.assert_close(a, c, rtol=0, atol=1e-10)
    a.sum().backward()
    c.sum().backward()
    for t, r in zip(ins, ref):
        torch.testing.assert_close(t.grad, r.grad, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize('mode', ['train', 'infer'])
def test_torch_compile_matches_eager(mode):
    """torch.compile (inductor) of LIT-S under bf16 autocast: one graph, outputs as eager's."""
    import torch._dynamo
    torch._dynamo.reset()
    model = timm.create_model('lit_s').cuda().train(mode == 'train')
    x = torch.randn(8, 3, 224, 224, device='cuda')
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(model)
    with torch.autocast('cuda', dtype=torch.bfloat16), torch.set_grad_enabled(mode == 'train'):
        if mode == 'train':
            torch.manual_seed(0)
            eager = model(x)
            torch.manual_seed(0)
            out = compiled(x)
            out.float().sum().backward()
            assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        else:
            eager, out = model(x), compiled(x)
    torch.testing.assert_close(out.float(), eager.float(), rtol=0.05, atol=0.05)

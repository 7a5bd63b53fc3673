"""Deformable Token Merging (DTM), the LIT downsampling layer, with two sampling backends.

DTM = deformable 2x2/stride-2 convolution (DCN v1, one offset group, no modulation mask)
      -> BatchNorm2d -> GELU.
The sampling offsets come from a zero-initialised ``Conv2d(C_in, 8, 2, stride=2)`` (``conv_offset``), so
at initialisation DTM is exactly a plain 2x2/s2 conv + BN + GELU.

Offset layout (identical to the official CUDA DCN and to ``torchvision.ops.deform_conv2d``): the 8 offset
channels hold 4 taps x (dy, dx); tap ``k = 2*i + j`` (kernel row i, column j), channel ``2k`` is dy and
``2k+1`` is dx. Output (oy, ox) tap (i, j) samples the input at ``(2*oy + i + dy, 2*ox + j + dx)`` in pixel
coordinates, bilinearly, with every neighbour outside the map contributing zero.

Backends (same parameters, same keys):
- ``torchvision``: ``torchvision.ops.deform_conv2d``; the default on CUDA.
- ``pure``: ``F.grid_sample`` of the 4 taps into a (2Ho, 2Wo) map, then a plain 2x2/s2 conv. Written by
  hand because torchvision's CPU kernel is ~7x slower for forward+backward; this is the default on CPU.
Select one with the module's ``backend`` attribute or the ``LIT_DTM_BACKEND`` environment variable
(``auto`` | ``torchvision`` | ``pure``).
"""
import functools
import math
import os
from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['DeformConv2x2', 'DeformableTokenMerging', 'deform_conv2x2', 'torchvision_ops_available',
           'resolve_dtm_backend', 'capture_offsets', 'DTM_BACKENDS']

DTM_BACKENDS = ('auto', 'torchvision', 'pure')


@functools.lru_cache(maxsize=None)
def torchvision_ops_available() -> bool:
    """True when torchvision's compiled C++ ops (deform_conv2d included) loaded. Checked once."""
    try:
        import torchvision.extension
        return bool(torchvision.extension._has_ops())
    except Exception:  # a broken torchvision install must not break the model
        return False


def resolve_dtm_backend(backend: str, device: torch.device) -> str:
    """Map ``auto`` (or the LIT_DTM_BACKEND override) to the concrete backend used on ``device``."""
    if backend == 'auto':
        backend = os.environ.get('LIT_DTM_BACKEND', 'auto')
    if backend not in DTM_BACKENDS:
        raise ValueError(f"unknown DTM backend {backend!r}; choose one of {', '.join(DTM_BACKENDS)}")
    if backend == 'auto':
        return 'torchvision' if device.type == 'cuda' and torchvision_ops_available() else 'pure'
    if backend == 'torchvision' and not torchvision_ops_available():
        raise RuntimeError("DTM backend 'torchvision' requested but torchvision's C++ ops did not load; "
                           "use backend 'pure' or reinstall a torchvision that matches torch")
    return backend


def _deform_conv2x2_pure(x, offset, weight, bias):
    """Bilinear sampling of the 4 taps with grid_sample, then a 2x2/s2 conv. Shapes as deform_conv2x2."""
    B, _, H, W = x.shape
    Ho, Wo = offset.shape[-2:]
    # (B, 8, Ho, Wo) -> (B, i, j, yx, Ho, Wo) -> (B, Ho, i, Wo, j, yx) -> (B, 2Ho, 2Wo, 2):
    # entry [2oy+i, 2ox+j] holds the (dy, dx) of tap (i, j) of output (oy, ox).
    delta = offset.view(B, 2, 2, 2, Ho, Wo).permute(0, 4, 1, 5, 2, 3).reshape(B, 2 * Ho, 2 * Wo, 2)
    # The regular 2x2/s2 sampling position of entry [r, c] is simply (r, c).
    rows = torch.arange(2 * Ho, device=x.device, dtype=x.dtype).view(1, -1, 1)
    cols = torch.arange(2 * Wo, device=x.device, dtype=x.dtype).view(1, 1, -1)
    py = rows + delta[..., 0]
    px = cols + delta[..., 1]
    # align_corners=True maps -1/+1 to the centres of the first/last pixel; grid_sample wants (x, y).
    grid = torch.stack((px * (2 / max(W - 1, 1)) - 1, py * (2 / max(H - 1, 1)) - 1), dim=-1)
    sampled = F.grid_sample(x, grid, mode='bilinear', padding_mode='zeros', align_corners=True)
    return F.conv2d(sampled, weight, bias, stride=2)  # B, C_out, Ho, Wo


def deform_conv2x2(x, offset, weight, bias, backend: str = 'auto'):
    """Deformable 2x2/stride-2 convolution.

    Args:
        x: (B, C_in, H, W) input, H and W even.
        offset: (B, 8, H/2, W/2) offsets in the layout described in the module docstring.
        weight: (C_out, C_in, 2, 2); bias: (C_out,).
        backend: ``auto`` | ``torchvision`` | ``pure``.

    Returns:
        (B, C_out, H/2, W/2), computed in at least float32 even under autocast (as the official code does;
        torchvision's CPU kernel also rejects bf16).
    """
    backend = resolve_dtm_backend(backend, x.device)
    dtype = torch.promote_types(x.dtype, torch.float32)  # fp16/bf16 -> fp32, fp64 stays fp64
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, offset, weight, bias = (t.to(dtype) for t in (x, offset, weight, bias))
        if backend == 'torchvision':
            from torchvision.ops import deform_conv2d
            return deform_conv2d(x, offset, weight, bias, stride=2)
        return _deform_conv2x2_pure(x, offset, weight, bias)


class DeformConv2x2(nn.Module):
    """The deformable conv of DTM. Parameter names follow the official code (``dconv.*``)."""

    def __init__(self, in_chs: int, out_chs: int, backend: str = 'auto', device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.in_chs, self.out_chs = in_chs, out_chs
        self.backend = backend
        self.weight = nn.Parameter(torch.empty(out_chs, in_chs, 2, 2, **dd))
        self.bias = nn.Parameter(torch.empty(out_chs, **dd))
        self.conv_offset = nn.Conv2d(in_chs, 8, kernel_size=2, stride=2, bias=True, **dd)
        self.reset_parameters()

    def reset_parameters(self):
        # Same as nn.Conv2d's default init (fan_in = C_in * 2 * 2), as in the official code.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(self.in_chs * 4)
        nn.init.uniform_(self.bias, -bound, bound)
        # Zero offsets at init: DTM starts as a regular 2x2/s2 merge.
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x):
        offset = self.conv_offset(x)  # B, 8, H/2, W/2
        return deform_conv2x2(x, offset, self.weight, self.bias, self.backend)

    def extra_repr(self):
        return f'{self.in_chs}, {self.out_chs}, kernel_size=2, stride=2, backend={self.backend}'


class DeformableTokenMerging(nn.Module):
    """DTM: (B, C_in, H, W) -> (B, C_out, H/2, W/2) = GELU(BN(DeformConv2x2(x))). No residual, no LayerNorm."""

    def __init__(self, in_chs: int, out_chs: int, backend: str = 'auto', device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.dconv = DeformConv2x2(in_chs, out_chs, backend=backend, **dd)
        self.norm_layer = nn.BatchNorm2d(out_chs, eps=1e-5, momentum=0.1, **dd)
        self.act = nn.GELU()

    def forward(self, x):
        if x.shape[-2] % 2 or x.shape[-1] % 2:
            raise ValueError(f'DTM needs an even feature map, got {tuple(x.shape[-2:])}')
        return self.act(self.norm_layer(self.dconv(x)))


def capture_offsets(model: nn.Module, x: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Run ``model(x)`` and return every DTM's raw offsets, keyed by the offset conv's module name.

    Each value is (B, 8, Ho, Wo) in the layout of the module docstring, detached. Works for any model that
    contains ``DeformConv2x2`` modules (all LIT variants), via forward hooks, so no model code changes.
    """
    offsets, handles = {}, []
    for name, module in model.named_modules():
        if isinstance(module, DeformConv2x2):
            def hook(_mod, _inp, out, key=f'{name}.conv_offset' if name else 'conv_offset'):
                offsets[key] = out.detach()
            handles.append(module.conv_offset.register_forward_hook(hook))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return offsets

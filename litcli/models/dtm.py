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
- ``pure``: the 4 taps of every output gathered bilinearly from channels-last rows (one weighted
  ``F.embedding_bag``), then the 2x2 conv as one matmul over (tap, channel). Written by hand because
  torchvision's CPU kernel is ~7x slower for forward+backward; this is the default on CPU. (An earlier
  ``F.grid_sample`` + conv2d version made LIT-S's DTM layers 1.3-1.5x slower: grid_sample's NCHW kernel gathers
  one channel at a time.)
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
# torch.export's flag (torch >= 2.6; older releases cannot be inside torch.export's tracing of this code anyway).
_is_exporting = getattr(torch.compiler, 'is_exporting', lambda: False)


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


def _bilinear_gather(rows, height: int, width: int, py, px):
    """Bilinear samples of a (B*H*W, C) row-major pixel table at pixel coordinates ``py``/``px`` (B, M).

    Returns (B*M, C). Neighbours outside the map contribute zero (weight 0, index clamped to a valid row), as in
    DCN and grid_sample(padding_mode='zeros'). The weighted 4-neighbour sum is one ``F.embedding_bag`` (mode
    'sum', per-sample weights): a fused gather of contiguous C-vectors, 1.2-2.8x faster forward+backward than
    grid_sample on CPU, whose NCHW kernel gathers one channel at a time; gradients reach ``rows`` and, through
    the weights, ``py``/``px``.
    """
    batch = py.shape[0]
    y0, x0 = py.detach().floor(), px.detach().floor()
    ly, lx = py - y0, px - x0  # fractional parts, differentiable
    y0, x0 = y0.long(), x0.long()
    ys = torch.stack((y0, y0, y0 + 1, y0 + 1), dim=-1)  # B, M, 4 neighbours
    xs = torch.stack((x0, x0 + 1, x0, x0 + 1), dim=-1)
    weight = torch.stack(((1 - ly) * (1 - lx), (1 - ly) * lx, ly * (1 - lx), ly * lx), dim=-1)
    inside = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
    weight = weight * inside.to(weight.dtype)
    batch_start = torch.arange(batch, device=py.device).view(batch, 1, 1) * (height * width)
    index = batch_start + ys.clamp(0, height - 1) * width + xs.clamp(0, width - 1)
    if torch.onnx.is_in_onnx_export() or _is_exporting():
        # ONNX has no weighted embedding bag (the exporter lowers it to a Loop); Gather + weighted sum is the same.
        return (rows[index.view(-1)].view(-1, 4, rows.shape[1]) * weight.view(-1, 4, 1)).sum(1)
    return F.embedding_bag(index.view(-1, 4), rows, per_sample_weights=weight.view(-1, 4), mode='sum')


def _deform_conv2x2_pure(x, offset, weight, bias):
    """Gather the 4 taps of every output bilinearly, then one matmul. Shapes as deform_conv2x2."""
    B, C, H, W = x.shape
    Ho, Wo = offset.shape[-2:]
    # (B, 8, Ho, Wo) -> (B, Ho, Wo, tap, yx): one sample point per (output, tap), taps of an output adjacent.
    delta = offset.permute(0, 2, 3, 1).reshape(B, Ho, Wo, 4, 2)
    tap = torch.arange(4, device=x.device)  # k = 2*i + j (made on the device: no host-to-device copy per call)
    tap_row, tap_col = (tap // 2).to(x.dtype), (tap % 2).to(x.dtype)
    # The regular 2x2/s2 position of tap (i, j) of output (oy, ox) is (2*oy + i, 2*ox + j).
    py = (2 * torch.arange(Ho, device=x.device, dtype=x.dtype)).view(Ho, 1, 1) + tap_row + delta[..., 0]
    px = (2 * torch.arange(Wo, device=x.device, dtype=x.dtype)).view(1, Wo, 1) + tap_col + delta[..., 1]
    rows = x.permute(0, 2, 3, 1).reshape(B * H * W, C)  # a view when x is channels_last (LIT's token maps are)
    taps = _bilinear_gather(rows, H, W, py.reshape(B, -1), px.reshape(B, -1))  # B*Ho*Wo*4, C
    # The 2x2 conv is a matmul over (tap, channel): weight (C_out, C, i, j) -> (C_out, [i, j, C]).
    out = F.linear(taps.view(B * Ho * Wo, 4 * C), weight.permute(0, 2, 3, 1).reshape(weight.shape[0], 4 * C), bias)
    return out.view(B, Ho, Wo, -1).permute(0, 3, 1, 2)  # B, C_out, Ho, Wo (channels_last memory)


def deform_conv2x2(x, offset, weight, bias, backend: str = 'auto'):
    """Deformable 2x2/stride-2 convolution.

    Args:
        x: (B, C_in, H, W) input, H and W even.
        offset: (B, 8, H/2, W/2) offsets in the layout described in the module docstring.
        weight: (C_out, C_in, 2, 2); bias: (C_out,).
        backend: ``auto`` | ``torchvision`` | ``pure``.

    Returns:
        (B, C_out, H/2, W/2) in the dtype of ``weight``: computed in at least float32 (as the official code does;
        torchvision's CPU kernel also rejects bf16), so under autocast (fp32 weights) the result stays fp32, and
        a model cast to bf16/fp16 gets its own dtype back for the BatchNorm that follows.
    """
    backend = resolve_dtm_backend(backend, x.device)
    out_dtype = weight.dtype
    dtype = torch.promote_types(x.dtype, torch.float32)  # fp16/bf16 -> fp32, fp64 stays fp64
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, offset, weight, bias = (t.to(dtype) for t in (x, offset, weight, bias))
        if backend == 'torchvision':
            from torchvision.ops import deform_conv2d
            out = deform_conv2d(x, offset, weight, bias, stride=2)
        else:
            out = _deform_conv2x2_pure(x, offset, weight, bias)
    return out.to(out_dtype)


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


def offset_strides(model: nn.Module, offsets: Dict[str, torch.Tensor]) -> Dict[str, int]:
    """The pixels between the cells each DTM's offsets are measured in, keyed like ``capture_offsets``'s result: the
    k-th DTM in forward order reads stage k, whose cells are ``model.stage_strides[k]`` pixels apart."""
    return dict(zip(offsets, model.stage_strides))


def offset_lengths_px(model: nn.Module, offsets: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``capture_offsets``'s raw offsets as per-tap lengths in pixels, keyed alike: (B, 8, h, w) -> (B, 4, h, w).

    A DTM's offsets are in cells of the grid it reads, ``offset_strides`` pixels apart (4, 8, 16 for a 4x4 stem,
    2, 4, 8 for the demo's 2x2 one): the one conversion of offsets to pixels (the tracker and viz-offsets use it).
    """
    lengths = {}
    for name, stride in offset_strides(model, offsets).items():
        off = offsets[name]
        b, _, h, w = off.shape
        taps = off.float().reshape(b, 4, 2, h, w)  # B, tap, (dy, dx), h, w
        lengths[name] = taps.norm(dim=2) * stride
    return lengths

"""Where Deformable Token Merging learned to look (the paper's Figure 2, ``lit viz-offsets``).

For each final-stage token, its 4^3 = 64 sampling locations are traced back through the three DTMs onto the
image, following the official visualisation code: start from the token on the top grid; at each DTM (last to
first) round the point to the nearest cell, drop it if it leaves that DTM's output grid, expand it to the 2x2
kernel taps ``(2y + i, 2x + j)`` and add the learned ``(dy, dx)`` of tap ``k = 2i + j`` read at the cell. The
points end in stage-1 grid coordinates p and map to pixels as ``4p + 2`` (the official convention; ``Pp + P/2``
for a stem of P x P patches). Unlike the official script we feed the model a *normalised* image (it forgot the
mean/std normalisation); pass ``normalize=False`` to replicate it.
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from litcli.core.errors import LitError

PATCH = 4  # stage-1 token = 4x4 pixels in every official model (a model's own: ``model.stage_strides[0]``)


def top_grid(model, img_size: int) -> Tuple[int, int]:
    """The final stage's token grid of a square ``img_size`` input: its side over the last stage's stride (32 for
    the official 4x4 stem, 16 for the demo's 2x2), as attn-maps and cam read it."""
    side = img_size // model.stage_strides[-1]
    return side, side


TAPS = np.array([(0, 0), (0, 1), (1, 0), (1, 1)], dtype=np.float64)  # tap k = 2i + j -> (i, j)


def back_project(offsets_top_down: Sequence[np.ndarray], tokens: np.ndarray) -> Tuple[np.ndarray, int]:
    """Trace tokens of the top grid back through the DTMs.

    Args:
        offsets_top_down: raw offsets of each DTM, last DTM first, each (8, h, w) with channel 2k = dy and
            2k + 1 = dx of tap k (the model's layout); (h, w) is that DTM's output grid.
        tokens: (T, 2) integer (row, col) positions on the top (last DTM's output) grid.

    Returns:
        points (T, 4^L, 2) as (y, x) in the grid the first DTM reads (stage 1), NaN where a point was dropped,
        and the number of points dropped for leaving a grid on the way down.
    """
    points = tokens.astype(np.float64)[:, None, :]  # T, 1, 2
    for offset in offsets_top_down:
        _, h, w = offset.shape
        cell = np.floor(points + 0.5)  # nearest integer cell (NaN stays NaN)
        inside = (cell[..., 0] >= 0) & (cell[..., 0] <= h - 1) & (cell[..., 1] >= 0) & (cell[..., 1] <= w - 1)
        cy = np.where(inside, cell[..., 0], 0).astype(np.int64)
        cx = np.where(inside, cell[..., 1], 0).astype(np.int64)
        delta = offset.reshape(4, 2, h, w)[:, :, cy, cx]  # 4 taps, (dy, dx), T, n
        delta = delta.transpose(2, 3, 0, 1)  # T, n, 4, 2
        new = 2 * cell[:, :, None, :] + TAPS + delta  # T, n, 4, 2
        new[~inside] = np.nan
        points = new.reshape(new.shape[0], -1, 2)  # T, 4n, 2
    dropped = int(np.isnan(points[..., 0]).sum())
    return points, dropped


@dataclass
class OffsetTrace:
    """Everything a figure or an analysis needs."""
    image: np.ndarray  # H, W, 3 uint8: what the model saw, before normalisation
    grid: Tuple[int, int]  # top token grid (H/32, W/32 for the 4x4 stem; top_grid)
    tokens: np.ndarray  # T, 2 (row, col)
    pixels: np.ndarray  # T, 64, 2 (y, x) in pixels, NaN where dropped
    dropped_in_grids: int  # points that left a DTM's grid on the way down
    dropped_outside_image: int
    offsets: Dict[str, np.ndarray] = field(default_factory=dict)  # DTM name -> (8, h, w), forward order
    patch: int = PATCH  # the stem's patch side: stage-1 cells are this many pixels apart
    # DTM name -> pixels between the cells of the grid it reads, and each tap's |offset| in pixels (4, h, w):
    # ``litcli.models.dtm.offset_strides`` / ``offset_lengths_px``, the one conversion to pixels
    strides_px: Dict[str, int] = field(default_factory=dict)
    lengths_px: Dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def field_px(self) -> int:
        """The side of a final-stage token's regular field: 8 * patch (32 px for the 4x4 stem)."""
        return 8 * self.patch


def open_checked_image(image, min_side: int = 32):
    """A path, ImageRef or PIL image as RGB, refusing images too small to hold one 32 px token."""
    from PIL import Image

    from litcli.core.data.images import load_image
    if isinstance(image, Image.Image):
        pil = image.convert('RGB')
    elif isinstance(image, (str, Path)):
        pil = load_image(image)
    else:  # litcli.data.ImageRef
        pil = image.open()
    if min(pil.size) < min_side:
        raise LitError(f'image is {pil.size[0]}x{pil.size[1]} px; LIT needs at least {min_side} px on each side')
    return pil


def model_frame(pil, data_config: Dict, img_size: int) -> np.ndarray:
    """The image as the model sees it before normalisation, (S, S, 3) uint8: zero-padded for a run that pads
    (the built-in sets, ``crop_mode='pad'``), else the whole image resized to the input size (no crop), as the
    official script does, so every part of it is shown."""
    import torch
    from PIL import Image

    from litcli.core.data.transforms import PAD_MODE, pad_or_resize

    if data_config.get('crop_mode') == PAD_MODE:
        rgb = torch.from_numpy(np.array(pil, dtype=np.uint8)).permute(2, 0, 1)[None]  # 1, 3, H, W
        return pad_or_resize(rgb, img_size)[0].permute(1, 2, 0).numpy().copy()
    return np.array(pil.resize((img_size, img_size), Image.BICUBIC), dtype=np.uint8)  # a writable copy


def trace_offsets(model, image, img_size: int = 224, normalize: bool = True,
                  data_config: Optional[Dict] = None) -> OffsetTrace:
    """Run ``image`` (a path, ImageRef or PIL image) through ``model`` and back-project every top-grid token.

    ``trace.pixels[r * grid_w + c]`` holds the points of token (r, c). The preprocessing (pad or resize, and the
    normalisation) is ``data_config``'s (a ``LoadedModel``'s: a ``lit train`` run on the built-in gray sets pads
    and has its own mean/std), else the model's registered cfg."""
    import torch

    from litcli.core.config import checked_img_size
    from litcli.core.modelio.factory import inference_data_config
    from litcli.core.data.transforms import normalize_data_config
    from litcli.models.dtm import capture_offsets, offset_lengths_px, offset_strides

    if not hasattr(model, 'stage_strides'):
        raise LitError('this model has no deformable token merging, so there are no offsets to show')
    patch = model.stage_strides[0]  # stage-1 cells are a stem patch apart
    checked_img_size(img_size, patch_size=patch)
    cfg = normalize_data_config(data_config, img_size) if data_config else inference_data_config({}, model, img_size)
    pil = open_checked_image(image, min_side=1 if cfg['crop_mode'] == 'pad' else 32)
    rgb = model_frame(pil, cfg, img_size)
    x = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255).unsqueeze(0)  # 1, 3, H, W
    if normalize:
        x = (x - torch.tensor(cfg['mean']).view(1, 3, 1, 1)) / torch.tensor(cfg['std']).view(1, 3, 1, 1)
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        raw = capture_offsets(model, x.to(device))
    if not raw:
        raise LitError('this model has no deformable token merging, so there are no offsets to show')
    offsets = {name: o[0].double().cpu().numpy() for name, o in raw.items()}  # forward order
    lengths_px = {name: px[0].double().cpu().numpy() for name, px in offset_lengths_px(model, raw).items()}
    top = list(offsets.values())[-1]
    grid = top.shape[-2:]
    tokens = np.array([(r, c) for r in range(grid[0]) for c in range(grid[1])], dtype=np.int64)
    points, dropped = back_project(list(offsets.values())[::-1], tokens)
    pixels = patch * points + patch / 2  # official mapping of stage-1 cells to pixels (4p + 2)
    valid = ~np.isnan(pixels[..., 0])
    outside = valid & ((pixels[..., 0] < 0) | (pixels[..., 0] > img_size - 1) |
                       (pixels[..., 1] < 0) | (pixels[..., 1] > img_size - 1))
    pixels[outside] = np.nan
    return OffsetTrace(rgb, tuple(grid), tokens, pixels, dropped, int(outside.sum()), offsets, patch,
                       offset_strides(model, raw), lengths_px)


def offset_stats(trace: OffsetTrace) -> List[Dict]:
    """Per DTM: mean/max |offset| in its input grid's units and in pixels, and the fraction of sampling
    points that leave their regular 2x2 cell; plus, for the traced tokens, the share of the final points that
    lie outside the token's regular field (32x32 px for the 4x4 stem)."""
    rows = []
    for name, off in trace.offsets.items():
        d = off.reshape(4, 2, *off.shape[-2:])
        mag = np.sqrt((d ** 2).sum(axis=1))  # 4, h, w, in cells of the grid this DTM reads
        px = trace.lengths_px[name]
        # a tap at regular position 2o + t lies in its cell while |dy|, |dx| keep it inside [2o - .5, 2o + 1.5]
        t = TAPS.reshape(4, 2, 1, 1)
        pos = t + d
        out = ((pos < -0.5) | (pos > 1.5)).any(axis=1)
        rows.append({'dtm': name, 'grid': list(off.shape[-2:]), 'input_stride_px': trace.strides_px[name],
                     'mean_abs_offset': float(mag.mean()), 'mean_abs_offset_px': float(px.mean()),
                     'max_abs_offset_px': float(px.max()), 'frac_taps_outside_cell': float(out.mean())})
    return rows


def fraction_outside_field(trace: OffsetTrace, cell: Optional[int] = None) -> float:
    """Share of the (kept) final points that lie outside their token's regular ``cell`` x ``cell`` field (default:
    the final stage's token, 8 * patch = 32 px for the 4x4 stem)."""
    cell = cell or trace.field_px
    ty, tx = trace.tokens[:, 0:1] * cell, trace.tokens[:, 1:2] * cell
    y, x = trace.pixels[..., 0], trace.pixels[..., 1]
    valid = ~np.isnan(y)
    outside = valid & ((y < ty) | (y >= ty + cell) | (x < tx) | (x >= tx + cell))
    return float(outside.sum() / max(valid.sum(), 1))

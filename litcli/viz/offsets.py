"""``lit viz-offsets``: where Deformable Token Merging learned to look (the paper's Figure 2).

For each final-stage token, its 4^3 = 64 sampling locations are traced back through the three DTMs onto the
image, following the official visualisation code: start from the token on the top grid; at each DTM (last to
first) round the point to the nearest cell, drop it if it leaves that DTM's output grid, expand it to the 2x2
kernel taps ``(2y + i, 2x + j)`` and add the learned ``(dy, dx)`` of tap ``k = 2i + j`` read at the cell. The
points end in stage-1 grid coordinates p and map to pixels as ``4p + 2`` (the official convention). Unlike the
official script we feed the model a *normalised* image (it forgot the mean/std normalisation); pass
``normalize=False`` to replicate it.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from litcli.errors import LitError

PATCH = 4  # stage-1 token = 4x4 pixels
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
    grid: Tuple[int, int]  # top token grid (H/32, W/32)
    tokens: np.ndarray  # T, 2 (row, col)
    pixels: np.ndarray  # T, 64, 2 (y, x) in pixels, NaN where dropped
    dropped_in_grids: int  # points that left a DTM's grid on the way down
    dropped_outside_image: int
    offsets: Dict[str, np.ndarray] = field(default_factory=dict)  # DTM name -> (8, h, w), forward order


def open_checked_image(image, min_side: int = 32):
    """A path, ImageRef or PIL image as RGB, refusing images too small to hold one 32 px token."""
    from PIL import Image

    from litcli.images import load_image
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

    from litcli.transforms import PAD_MODE, pad_or_resize

    if data_config.get('crop_mode') == PAD_MODE:
        rgb = torch.from_numpy(np.array(pil, dtype=np.uint8)).permute(2, 0, 1)[None]  # 1, 3, H, W
        return pad_or_resize(rgb, img_size)[0].permute(1, 2, 0).numpy().copy()
    return np.array(pil.resize((img_size, img_size), Image.BICUBIC), dtype=np.uint8)  # a writable copy


def trace_offsets(model, image, img_size: int = 224, normalize: bool = True,
                  checkpoint: Optional[Dict] = None) -> OffsetTrace:
    """Run ``image`` (a path, ImageRef or PIL image) through ``model`` and back-project every top-grid token.

    ``trace.pixels[r * grid_w + c]`` holds the points of token (r, c). The preprocessing (pad or resize, and the
    normalisation) is the one the ``checkpoint`` records (a ``lit train`` run on the built-in gray sets pads and
    has its own mean/std), else the model's cfg."""
    import torch

    from litcli.checkpoint import inference_data_config
    from litcli.models.dtm import capture_offsets
    from litcli.models.lit import LITBase

    LITBase._check_size((img_size, img_size))
    cfg = inference_data_config(checkpoint or {}, model, img_size=img_size)
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
    top = list(offsets.values())[-1]
    grid = top.shape[-2:]
    tokens = np.array([(r, c) for r in range(grid[0]) for c in range(grid[1])], dtype=np.int64)
    points, dropped = back_project(list(offsets.values())[::-1], tokens)
    pixels = PATCH * points + 2  # official mapping of stage-1 cells to pixels
    valid = ~np.isnan(pixels[..., 0])
    outside = valid & ((pixels[..., 0] < 0) | (pixels[..., 0] > img_size - 1) |
                       (pixels[..., 1] < 0) | (pixels[..., 1] > img_size - 1))
    pixels[outside] = np.nan
    return OffsetTrace(rgb, tuple(grid), tokens, pixels, dropped, int(outside.sum()), offsets)


def offset_stats(trace: OffsetTrace) -> List[Dict]:
    """Per DTM: mean/max |offset| in its input grid's units and in pixels, and the fraction of sampling
    points that leave their regular 2x2 cell; plus, for the traced tokens, the share of the final points that
    lie outside the token's regular 32x32 field."""
    rows = []
    for level, (name, off) in enumerate(trace.offsets.items()):
        stride = PATCH * 2 ** level  # pixels per cell of the grid this DTM reads
        d = off.reshape(4, 2, *off.shape[-2:])
        mag = np.sqrt((d ** 2).sum(axis=1))  # 4, h, w
        # a tap at regular position 2o + t lies in its cell while |dy|, |dx| keep it inside [2o - .5, 2o + 1.5]
        t = TAPS.reshape(4, 2, 1, 1)
        pos = t + d
        out = ((pos < -0.5) | (pos > 1.5)).any(axis=1)
        rows.append({'dtm': name, 'grid': list(off.shape[-2:]), 'input_stride_px': stride,
                     'mean_abs_offset': float(mag.mean()), 'mean_abs_offset_px': float(mag.mean() * stride),
                     'max_abs_offset_px': float(mag.max() * stride), 'frac_taps_outside_cell': float(out.mean())})
    return rows


def fraction_outside_field(trace: OffsetTrace, cell: int = 32) -> float:
    """Share of the (kept) final points that lie outside their token's regular ``cell`` x ``cell`` field."""
    ty, tx = trace.tokens[:, 0:1] * cell, trace.tokens[:, 1:2] * cell
    y, x = trace.pixels[..., 0], trace.pixels[..., 1]
    valid = ~np.isnan(y)
    outside = valid & ((y < ty) | (y >= ty + cell) | (x < tx) | (x >= tx + cell))
    return float(outside.sum() / max(valid.sum(), 1))


MIN_PANEL_PX = 448  # figures of small inputs (32 px) are scaled up to stay readable


def _figure(image: np.ndarray, scale: float = 2.0):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    h, w = image.shape[:2]
    scale = max(scale, MIN_PANEL_PX / min(h, w))
    fig = plt.figure(figsize=(w * scale / 100, h * scale / 100), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(image, interpolation='nearest')
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.axis('off')
    return fig, ax


def _box(ax, row, col, colour, cell=32, lw=1.5):
    from matplotlib.patches import Rectangle
    ax.add_patch(Rectangle((col * cell - 0.5, row * cell - 0.5), cell, cell, fill=False, edgecolor=colour, lw=lw))


def draw_token(trace: OffsetTrace, index: int, path: Path):
    """The paper's per-token figure: the sampling points in red, the regular 32x32 field in lime."""
    import matplotlib.pyplot as plt
    fig, ax = _figure(trace.image)
    pts = trace.pixels[index]
    ax.scatter(pts[:, 1], pts[:, 0], s=6, marker='s', c='red', linewidths=0)
    _box(ax, *trace.tokens[index], colour='lime')
    fig.savefig(path)
    plt.close(fig)


def draw_overview(trace: OffsetTrace, path: Path, step: int = 1):
    """All (or every ``step``-th) tokens' points in distinct colours, each with its regular field outlined."""
    import matplotlib.pyplot as plt
    fig, ax = _figure(trace.image)
    keep = [i for i, (r, c) in enumerate(trace.tokens) if r % step == 0 and c % step == 0]
    colours = plt.get_cmap('hsv')(np.linspace(0, 1, len(keep), endpoint=False))
    for colour, i in zip(colours, keep):
        pts = trace.pixels[i]
        ax.scatter(pts[:, 1], pts[:, 0], s=4, marker='s', color=colour, linewidths=0)
        _box(ax, *trace.tokens[i], colour=colour, lw=0.8)
    fig.savefig(path)
    plt.close(fig)


def draw_magnitude(trace: OffsetTrace, path: Path):
    """One panel per DTM: mean offset magnitude (pixels) as a heat map, with the mean (dx, dy) as arrows."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    stats = offset_stats(trace)
    n = len(trace.offsets)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4), squeeze=False)
    for ax, (name, off), st in zip(axes[0], trace.offsets.items(), stats):
        d = off.reshape(4, 2, *off.shape[-2:]) * st['input_stride_px']  # pixels
        mag = np.sqrt((d ** 2).sum(axis=1)).mean(axis=0)  # h, w
        im = ax.imshow(mag, cmap='magma')
        mean_d = d.mean(axis=0)  # 2 (dy, dx), h, w
        ys, xs = np.mgrid[0:mag.shape[0], 0:mag.shape[1]]
        if np.abs(mean_d).max() > 0:  # all-zero arrows (untrained model) cannot be scaled
            ax.quiver(xs, ys, mean_d[1], -mean_d[0], color='cyan', angles='xy')
        ax.set_title(f"{name.replace('.dconv.conv_offset', '')}\nmean |offset| {st['mean_abs_offset_px']:.2f} px",
                     fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label='px')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_tokens(spec: str, grid: Tuple[int, int]) -> Optional[np.ndarray]:
    """'all' -> None (every token); 'center'; or 'ROW,COL;ROW,COL' checked against the grid."""
    spec = spec.strip().lower()
    if spec == 'all':
        return None
    if spec in ('center', 'centre'):
        return np.array([(grid[0] // 2, grid[1] // 2)], dtype=np.int64)
    from litcli.viz.tokens import parse_token
    tokens = [parse_token(part, grid) for part in filter(None, (p.strip() for p in spec.split(';')))]
    if not tokens:
        raise LitError("no token given: use 'all', 'center' or ROW,COL[;ROW,COL...]")
    return np.array(tokens, dtype=np.int64)


def viz_offsets(image, model, out_dir: Path, img_size: int = 224, tokens: str = 'all',
                normalize: bool = True, step: Optional[int] = None, save_json: bool = False,
                save_npy: bool = False, checkpoint: Optional[Dict] = None) -> Dict:
    """Write the figures (and optional data files) for one image (a path, ImageRef or PIL image) into
    ``out_dir``; return paths and stats."""
    grid = (img_size // 32, img_size // 32)
    chosen = parse_tokens(tokens, grid)
    trace = trace_offsets(model, image, img_size=img_size, normalize=normalize, checkpoint=checkpoint)
    indices = range(len(trace.tokens)) if chosen is None else [r * grid[1] + c for r, c in chosen]
    paths = []
    overview = out_dir / 'overview.png'
    draw_overview(trace, overview, step=step or max(1, -(-grid[0] // 4)))  # ~4x4 tokens by default
    paths.append(overview)
    magnitude = out_dir / 'offset_magnitude.png'
    draw_magnitude(trace, magnitude)
    paths.append(magnitude)
    token_dir = out_dir / 'tokens'
    token_dir.mkdir(exist_ok=True)
    for i in indices:
        r, c = trace.tokens[i]
        p = token_dir / f'{r}-{c}.png'  # the official naming: <row>-<col>.png
        draw_token(trace, i, p)
        paths.append(p)
    result = {
        'image': str(getattr(image, 'name', image)), 'img_size': img_size, 'normalized': normalize,
        'token_grid': list(grid), 'points_per_token': int(trace.pixels.shape[1]),
        'dropped_leaving_grid': trace.dropped_in_grids, 'dropped_outside_image': trace.dropped_outside_image,
        'frac_points_outside_field': fraction_outside_field(trace), 'stages': offset_stats(trace),
    }
    if save_json:
        p = out_dir / 'points.json'
        tokens_json = [{'token': [int(v) for v in trace.tokens[i]],
                        'points_yx': [[round(float(y), 3), round(float(x), 3)] for y, x in trace.pixels[i]
                                      if not np.isnan(y)]}
                       for i in indices]
        p.write_text(json.dumps({**result, 'tokens': tokens_json}, indent=1))
        paths.append(p)
    if save_npy:
        p = out_dir / 'offsets.npz'
        np.savez(p, tokens=trace.tokens, points_px=trace.pixels,
                 **{name.replace('.', '_'): off for name, off in trace.offsets.items()})
        paths.append(p)
    result['paths'] = [str(p) for p in paths]
    return result


def _slug(text: str) -> str:
    """A folder name for an image: its file stem, or 'fashion-mnist-test-17' for an in-memory image."""
    import re
    stem = Path(text).stem if '/' in text or '.' in Path(text).name else text
    return re.sub(r'[^A-Za-z0-9_.-]+', '-', stem).strip('-') or 'image'


def run_viz_offsets(images: Sequence = (), variant: Optional[str] = None, checkpoint: Optional[Path] = None,
                    output: Path = Path('runs/viz-offsets'), name: Optional[str] = None, exist_ok: bool = False,
                    summary: bool = False, data: Optional[str] = None, data_dir: Optional[str] = None,
                    num_images: int = 4, use_ema: Optional[bool] = None, img_size: Optional[int] = None,
                    **kwargs) -> Dict:
    """The ``lit viz-offsets`` command: build/load the model, make a fresh output folder, draw, report.

    Images: the ``images`` given (paths), else ``num_images`` images of different classes from ``data`` (a
    built-in set's test split or a folder), by default the checkpoint's own validation data. Each is fed as the
    checkpoint's eval transform does (the built-in sets are padded), at ``img_size`` (default: the checkpoint's,
    else 224). One image writes into the output folder; several write a subfolder each.
    """
    import timm
    from rich.console import Console
    from rich.table import Table

    import litcli.models  # noqa: F401
    from litcli.checkpoint import inference_data_config, model_from_checkpoint
    from litcli.data import image_refs, one_per_class
    from litcli.models.lit import LITBase
    from litcli.rundir import new_run_dir
    from litcli.viz.attention import figure_data

    console = Console()
    if num_images < 1:
        raise LitError('--num-images must be at least 1')
    if images and data is not None:
        raise LitError('give IMAGE paths or --data, not both')
    model_kwargs = {}
    if img_size is not None:
        LITBase._check_size((img_size, img_size))
        model_kwargs['img_size'] = img_size
    if checkpoint is not None:
        model, raw = model_from_checkpoint(checkpoint, variant, use_ema=use_ema, **model_kwargs)
        source = f'checkpoint {checkpoint}' + (' (EMA weights)' if raw['loaded_weights'] == 'ema' else '')
    else:
        model, raw = timm.create_model(variant or 'lit_ti', **model_kwargs), {}
        source = 'random initialisation'
    arch = model.pretrained_cfg.get('architecture', variant)
    data_cfg = inference_data_config(raw, model, img_size=img_size)
    img_size = data_cfg['input_size'][-1]
    parse_tokens(kwargs.get('tokens', 'all'), (img_size // 32, img_size // 32))  # validate before writing anything
    pad = data_cfg['crop_mode'] == 'pad'
    if images:
        chosen = list(images)
        for image in chosen:  # fail on a bad image before any model work or folder creation
            open_checked_image(image, min_side=1 if pad else 32)
        origin = None
    else:
        if checkpoint is None and data is None:
            raise LitError('give an IMAGE, or --data (a built-in set or a folder) to take images from, or a '
                           '--checkpoint whose training data to use')
        data, data_dir, origin = figure_data(data, data_dir, raw, checkpoint)
        refs, class_names = image_refs(data, data_dir)
        chosen = one_per_class(refs, num_images)
    if checkpoint is None:
        console.print('[yellow]No --checkpoint: a randomly initialised LIT has zero offsets (DTM starts as a regular '
                      '2x2 merge), so the figures show the regular grid. Pass a trained checkpoint to see '
                      'learned offsets.[/yellow]')
    first = str(getattr(chosen[0], 'name', chosen[0]))
    default_name = f'{_slug(first)}-{arch}' if len(chosen) == 1 else f'{arch}-{len(chosen)}-images'
    out_dir = new_run_dir(output, name or default_name, exist_ok=exist_ok)
    per_image = []
    for image in chosen:
        label = str(getattr(image, 'name', image))
        target = out_dir if len(chosen) == 1 else out_dir / _slug(label)
        target.mkdir(exist_ok=True)
        r = viz_offsets(image, model, target, checkpoint=raw, img_size=img_size, **kwargs)
        if getattr(image, 'label', None) is not None and not images:
            r['label'] = class_names[image.label] if class_names else image.label
        per_image.append(r)
    result = dict(per_image[0]) if len(per_image) == 1 else {
        'images': per_image, 'paths': [p for r in per_image for p in r['paths']]}
    result.update(variant=arch, weights=source, out_dir=str(out_dir))
    if origin is not None:
        result['data'] = origin
    if summary:
        for r in per_image:
            title = r['image'] + (f' ({r["label"]})' if 'label' in r else '')
            table = Table(title=f'DTM offsets of {arch} ({source}) on {title}')
            for col in ('DTM', 'grid', 'mean |offset| px', 'max |offset| px', 'taps outside their cell'):
                table.add_column(col, justify='left' if col == 'DTM' else 'right')
            for st in r['stages']:
                table.add_row(st['dtm'].replace('.dconv.conv_offset', ''), 'x'.join(map(str, st['grid'])),
                              f"{st['mean_abs_offset_px']:.2f}", f"{st['max_abs_offset_px']:.2f}",
                              f"{100 * st['frac_taps_outside_cell']:.1f}%")
            console.print(table)
            console.print(f"points outside their token's regular 32x32 field: "
                          f"{100 * r['frac_points_outside_field']:.1f}%")
    for r in per_image:
        dropped = r['dropped_leaving_grid'] + r['dropped_outside_image']
        if dropped:
            console.print(f"{r['image']}: {dropped} sampling points fell outside the map or image and were dropped "
                          f"({r['dropped_leaving_grid']} left a DTM grid, {r['dropped_outside_image']} left the "
                          f"image)")
    console.print(f'wrote {len(result["paths"])} files to {out_dir}:')
    if len(per_image) > 1:
        for r in per_image:
            label = f' ({r["label"]})' if 'label' in r else ''
            console.print(f'  {Path(r["paths"][0]).parent}: {r["image"]}{label}', soft_wrap=True)
        return result
    for p in result['paths'][:3]:
        console.print(f'  {p}')
    if len(result['paths']) > 3:
        console.print(f'  ... and {len(result["paths"]) - 3} more under {out_dir}')
    return result

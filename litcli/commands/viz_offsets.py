"""``lit viz-offsets``: where Deformable Token Merging learned to look (the paper's Figure 2), for one image or a
few of a dataset. The back-projection is ``core.offsets``'s, the drawing ``core.figures``'s."""
import re
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import numpy as np

from litcli.core.errors import LitError
from litcli.core.analysis.figures import draw_magnitude, draw_overview, draw_token
from litcli.core.analysis.offsets import fraction_outside_field, offset_stats, open_checked_image, top_grid, trace_offsets
from litcli.core.analysis.tokens import Token, select_tokens
from litcli.core.io import atomic_write, write_json

ELSEWHERE = 'choose another --output'


def viz_offsets(image, model, out_dir: Path, img_size: int = 224, tokens: Union[str, Sequence[Token]] = 'all',
                normalize: bool = True, step: Optional[int] = None, save_json: bool = False,
                save_npy: bool = False, data_config: Optional[Dict] = None) -> Dict:
    """Write the figures (and optional data files) for one image (a path, ImageRef or PIL image) into
    ``out_dir``; return paths and stats."""
    grid = top_grid(model, img_size)
    chosen = select_tokens(tokens, grid)
    trace = trace_offsets(model, image, img_size=img_size, normalize=normalize, data_config=data_config)
    indices = range(len(trace.tokens)) if chosen is None else [r * grid[1] + c for r, c in chosen]
    paths = []
    overview = out_dir / 'overview.png'
    draw_overview(trace, overview, step=step or max(1, -(-grid[0] // 4)), elsewhere=ELSEWHERE)  # ~4x4 tokens
    paths.append(overview)
    magnitude = out_dir / 'offset_magnitude.png'
    draw_magnitude(trace, magnitude, ELSEWHERE)
    paths.append(magnitude)
    token_dir = out_dir / 'tokens'
    token_dir.mkdir(exist_ok=True)
    for i in indices:
        r, c = trace.tokens[i]
        p = token_dir / f'{r}-{c}.png'  # the official naming: <row>-<col>.png
        draw_token(trace, i, p, ELSEWHERE)
        paths.append(p)
    result = {
        'image': str(getattr(image, 'name', image)), 'img_size': img_size, 'normalized': normalize,
        'token_grid': list(grid), 'points_per_token': int(trace.pixels.shape[1]),
        'dropped_leaving_grid': trace.dropped_in_grids, 'dropped_outside_image': trace.dropped_outside_image,
        'field_px': trace.field_px, 'frac_points_outside_field': fraction_outside_field(trace),
        'stages': offset_stats(trace),
    }
    if save_json:
        p = out_dir / 'points.json'
        tokens_json = [{'token': [int(v) for v in trace.tokens[i]],
                        'points_yx': [[round(float(y), 3), round(float(x), 3)] for y, x in trace.pixels[i]
                                      if not np.isnan(y)]}
                       for i in indices]
        write_json(p, {**result, 'tokens': tokens_json}, ELSEWHERE, indent=1)
        paths.append(p)
    if save_npy:
        p = out_dir / 'offsets.npz'
        atomic_write(p, lambda f: np.savez(f, tokens=trace.tokens, points_px=trace.pixels,
                                           **{name.replace('.', '_'): off for name, off in trace.offsets.items()}),
                     ELSEWHERE)
        paths.append(p)
    result['paths'] = [str(p) for p in paths]
    return result


def _slug(text: str) -> str:
    """A folder name for an image: its file stem, or 'fashion-mnist-test-17' for an in-memory image."""
    stem = Path(text).stem if '/' in text or '.' in Path(text).name else text
    return re.sub(r'[^A-Za-z0-9_.-]+', '-', stem).strip('-') or 'image'


def run(images: Sequence = (), variant: Optional[str] = None, checkpoint: Optional[Path] = None,
        output: Path = Path('runs/viz-offsets'), name: Optional[str] = None, exist_ok: bool = False,
        summary: bool = False, data: Optional[str] = None, data_dir: Optional[str] = None,
        num_images: int = 4, use_ema: Optional[bool] = None, img_size: Optional[int] = None,
        device: Optional[str] = None, pretrained: bool = False, **kwargs) -> Dict:
    """The ``lit viz-offsets`` command: build/load the model, make a fresh output folder, draw, report.

    Images: the ``images`` given (paths), else ``num_images`` images of different classes from ``data`` (a
    built-in set's test split or a folder), by default the checkpoint's own validation data. Each is fed as the
    checkpoint's eval transform does (the built-in sets are padded), at ``img_size`` (default: the checkpoint's,
    else 224), on ``device`` (default: CUDA when available). One image writes into the output folder; several write a
    subfolder each.
    """
    from rich.console import Console

    from litcli.core.modelio.factory import load_model
    from litcli.core.training.rundir import new_run_dir
    from litcli.core.runtime import resolve_device

    console = Console()
    if num_images < 1:
        raise LitError('--num-images must be at least 1')
    if images and data is not None:
        raise LitError('give IMAGE paths or --data, not both')
    loaded = load_model(checkpoint, variant, use_ema=use_ema, img_size=img_size, default_variant='lit_ti',
                        pretrained=pretrained)
    model = loaded.model.to(resolve_device(device))
    source, arch, img_size = loaded.describe(), loaded.variant, loaded.img_size
    select_tokens(kwargs.get('tokens', 'all'), top_grid(model, img_size))  # validate before writing
    chosen, origin, class_names = choose_images(images, loaded, checkpoint is None and not pretrained, data,
                                                data_dir, num_images)
    if checkpoint is None and not pretrained:
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
        r = viz_offsets(image, model, target, data_config=loaded.data_config, img_size=img_size, **kwargs)
        if getattr(image, 'label', None) is not None and not images:
            r['label'] = class_names[image.label] if class_names else image.label
        per_image.append(r)
    result = dict(per_image[0]) if len(per_image) == 1 else {
        'images': per_image, 'paths': [p for r in per_image for p in r['paths']]}
    result.update(variant=arch, weights=source, out_dir=str(out_dir))
    if origin is not None:
        result['data'] = origin
    report(result, per_image, arch, source, summary, console)
    return result


def choose_images(images: Sequence, loaded, untrained: bool, data: Optional[str], data_dir: Optional[str],
                  num_images: int):
    """(images, the data they came from or None, its class names): the ``images`` given, each checked readable and
    large enough before any work, else ``num_images`` of different classes from ``data`` (default: the
    checkpoint's validation data)."""
    from litcli.core.data.datasets import figure_data, image_refs, one_per_class

    if images:
        pad = loaded.data_config['crop_mode'] == 'pad'
        for image in images:  # fail on a bad image before any model work or folder creation
            open_checked_image(image, min_side=1 if pad else 32)
        return list(images), None, None
    if untrained and data is None:
        raise LitError('give an IMAGE, or --data (a built-in set or a folder) to take images from, or a '
                       '--checkpoint whose training data to use')
    data, data_dir, origin = figure_data(data, data_dir, loaded)
    refs, class_names = image_refs(data, data_dir)
    return one_per_class(refs, num_images), origin, class_names


def report(result: Dict, per_image: Sequence[Dict], arch: str, source: str, summary: bool, console):
    """Per image: the offset statistics per DTM (``summary``) and the points dropped; then the files written."""
    from rich.table import Table

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
            console.print(f"points outside their token's regular {r['field_px']}x{r['field_px']} field: "
                          f"{100 * r['frac_points_outside_field']:.1f}%")
    for r in per_image:
        dropped = r['dropped_leaving_grid'] + r['dropped_outside_image']
        if dropped:
            console.print(f"{r['image']}: {dropped} sampling points fell outside the map or image and were dropped "
                          f"({r['dropped_leaving_grid']} left a DTM grid, {r['dropped_outside_image']} left the "
                          f"image)")
    out_dir = result['out_dir']
    console.print(f'wrote {len(result["paths"])} files to {out_dir}:')
    if len(per_image) > 1:
        for r in per_image:
            label = f' ({r["label"]})' if 'label' in r else ''
            console.print(f'  {Path(r["paths"][0]).parent}: {r["image"]}{label}', soft_wrap=True)
        return
    for p in result['paths'][:3]:
        console.print(f'  {p}')
    if len(result['paths']) > 3:
        console.print(f'  ... and {len(result["paths"]) - 3} more under {out_dir}')

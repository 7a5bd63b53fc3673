"""``lit cam``: class-activation maps (Grad-CAM, Grad-CAM++, EigenCAM) of a checkpoint on images, one overlay PNG
per image and class. The grad-cam package computes the maps; ``core.cam`` says where LIT's stage activations are
and lays its tokens out on the image."""
import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from litcli.core.errors import LitError


def resolve_class(value: str, class_names: Optional[List[str]], num_classes: int) -> int:
    """A ``--class`` value as a class index: a class name (case-insensitive) or an index 0..N-1."""
    names = class_names or [f'class {i}' for i in range(num_classes)]
    text = str(value).strip()
    if text.lstrip('-').isdigit():
        index = int(text)
        if 0 <= index < num_classes:
            return index
        raise LitError(f'--class {text}: no such class index; this checkpoint has classes 0..{num_classes - 1}')
    lowered = [n.lower() for n in names]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    shown = ', '.join(names[:8]) + (f' ... ({num_classes} in all)' if num_classes > 8 else '')
    raise LitError(f'--class {text!r} does not exist in this checkpoint; its classes are {shown}; give a class name '
                   f'or an index 0..{num_classes - 1}')


def _slug(text: str) -> str:
    return re.sub(r'[^A-Za-z0-9_.-]+', '-', str(text)).strip('-')[:60] or 'x'


def map_suffix(method: str, stage: int) -> str:
    """The file-name tail of one method's map of one stage, distinct for every method and stage: 'gradcam++' is
    'gradcampp' (a slug would drop the '+', and Grad-CAM++ would overwrite Grad-CAM), e.g. 'gradcampp-stage3'."""
    return f'{_slug(method.replace("+", "p"))}-stage{stage}'


def run(images: Sequence[str], checkpoint: Path, method: str = 'gradcam', stage: int = 4,
        classes: Sequence[str] = (), out: Optional[Path] = None, force: bool = False,
        variant: Optional[str] = None, use_ema: Optional[bool] = None, device: Optional[str] = None) -> Dict:
    """Write ``<out>/<image>-<class>-<method>-stage<N>.png`` (``map_suffix``) for every image and class (default:
    the top-1 prediction;
    class-agnostic EigenCAM writes one map per image) and return what was drawn.

    Images (files, folders, globs) go through the checkpoint's eval transform; the overlay shows the image as the
    model saw it, at least 448 px on its short side. ``out`` default: a new ``runs/cam/<image>-<variant>[-N]``;
    files already in an ``out`` given are replaced only with ``force``.
    """
    import numpy as np
    import torch

    from litcli.core.analysis.cam import CLASS_AGNOSTIC, METHODS, compute_cams, grad_cam_package, overlay, stage_target
    from litcli.core.io import save_png
    from litcli.core.modelio.factory import load_model
    from litcli.core.analysis.figures import MIN_PANEL_PX
    from litcli.core.data.images import expand_images, load_image
    from litcli.core.training.rundir import new_run_dir
    from litcli.core.runtime import resolve_device
    from litcli.core.data.transforms import eval_transform

    if method not in METHODS:
        raise LitError(f'unknown --method {method!r}; use {", ".join(METHODS)}')
    grad_cam_package()  # the missing-package error before any work
    paths = expand_images(images)
    pictures = [load_image(p) for p in paths]  # an unreadable file stops here, before anything is written
    loaded = load_model(checkpoint, variant, use_ema=use_ema)
    dev = resolve_device(device)
    model = loaded.model.to(dev).eval()
    names = loaded.class_names or [f'class {i}' for i in range(loaded.num_classes)]
    wanted = [resolve_class(c, loaded.class_names, loaded.num_classes) for c in dict.fromkeys(classes)]
    transform = eval_transform(loaded.data_config)
    mean = torch.tensor(loaded.data_config['mean']).view(3, 1, 1)
    std = torch.tensor(loaded.data_config['std']).view(3, 1, 1)
    _, _, grid = stage_target(model, stage, (loaded.img_size, loaded.img_size))  # a bad --stage fails here
    notes = []
    if method in CLASS_AGNOSTIC:
        notes.append(f'{method} does not depend on the class: one map per image')
    if grid[0] * grid[1] == 1:
        notes.append(f'stage {stage} has a single token at {loaded.img_size} px, so its map is uniform; choose an '
                     f'earlier --stage')

    stems = [_slug(p.stem) for p in paths]
    stems = [f'{s}-{i}' if stems.count(s) > 1 else s for i, s in enumerate(stems)]
    agnostic = method in CLASS_AGNOSTIC
    out_dir = Path(out) if out is not None else new_run_dir('runs/cam', f'{stems[0]}-{loaded.variant}')
    results = [dict(image=str(p)) for p in paths]
    planned = []  # (image index, class index or None, file)
    xs = torch.stack([transform(p) for p in pictures])  # N, 3, H, W
    with torch.no_grad():
        probs = model(xs.to(dev)).float().softmax(dim=1).cpu()  # N, classes
    for i in range(len(paths)):
        top = int(probs[i].argmax())
        results[i]['top1'] = dict(index=top, label=names[top], prob=float(probs[i, top]))
        for c in ([None] if agnostic else (wanted or [top])):
            label = 'all-classes' if c is None else _slug(names[c])
            planned.append((i, c, out_dir / f'{stems[i]}-{label}-{map_suffix(method, stage)}.png'))
    if out is not None and not force:
        taken = [f for _, _, f in planned if f.exists()]
        if taken:
            raise LitError(f'{taken[0]} exists; pass --force to overwrite, or choose another --out')
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, result in enumerate(results):
        jobs = [(c, f) for j, c, f in planned if j == i]
        x = xs[i:i + 1].to(dev)
        frame = (xs[i] * std + mean).clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()  # H, W, 3
        result['maps'] = []
        for c, file in jobs:
            cam = compute_cams(model, x, method, stage, [c if c is not None else result['top1']['index']])[0]
            picture = overlay(np.ascontiguousarray(frame), cam, MIN_PANEL_PX)
            save_png(file, picture, 'choose another --out')
            entry = dict(png=str(file), width=picture.shape[1], height=picture.shape[0])
            if c is not None:
                entry.update(index=c, label=names[c], prob=float(probs[i, c]))
            result['maps'].append(entry)
    return dict(checkpoint=str(checkpoint), variant=loaded.variant, method=method, stage=stage,
                weights=loaded.weights, img_size=loaded.img_size, token_grid=list(grid), out=str(out_dir),
                class_agnostic=agnostic, notes=notes, images=results)


def print_result(result: Dict, as_json: bool = False):
    if as_json:
        print(json.dumps(result, indent=2))
        return
    from litcli.core.report import print_lines, print_table

    rows = []
    for item in result['images']:
        top = item['top1']
        for m in item['maps']:
            target = 'all classes' if 'index' not in m else f'{m["label"]} ({m["prob"] * 100:.1f}%)'
            rows.append((Path(item['image']).name, f'{top["label"]} ({top["prob"] * 100:.1f}%)', target, m['png']))
    print_table(f'lit cam: {result["method"]}, stage {result["stage"]} of {result["variant"]} '
                f'({result["img_size"]} px)', ['image', 'top-1', 'map of', 'written'], rows)
    print_lines([f'note: {n}' for n in result['notes']] + [f'output folder: {result["out"]}'])

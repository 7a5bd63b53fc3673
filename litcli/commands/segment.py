"""``lit segment``: the class map of Semantic FPN LIT on photos, drawn as a colour overlay with a legend of the
classes present, and saved as a label map (palette PNG: pixel value = class index)."""
import json
from pathlib import Path
from typing import Dict, Optional, Sequence


def run(images: Sequence[str], checkpoint: Optional[Path] = None, pretrained: Optional[str] = None,
        out: Optional[Path] = None, force: bool = False, device: Optional[str] = None,
        img_scale: Optional[Sequence[int]] = None, alpha: float = 0.5) -> Dict:
    """Segment every image (files, folders, glob patterns) with the weights of ``checkpoint`` (an official mmseg
    release file, a lit dense checkpoint or its safetensors export) or the released ``pretrained`` model
    ('semantic_fpn_lit_ti', 'semantic_fpn_lit_s'), through the official test pipeline (keep-ratio resize to fit
    ``img_scale``, default (2048, 512): short side 512; no padding). Writes ``<out>/<image>.png`` (overlay at
    ``alpha`` + legend) and ``<out>/<image>-labels.png`` (palette PNG) per image. ``out`` default: a new
    ``runs/segment/<model>[-N]``; existing files in a given ``out`` are replaced only with ``force``."""
    from litcli.core.errors import UsageError

    if not 0 <= alpha <= 1:
        raise UsageError(f'alpha {alpha:g} is outside [0, 1] (0: the photo alone, 1: the class colours alone)')
    from litcli.core.analysis import dense
    from litcli.core.io import save_png

    run_ = dense.start_run('segmentation', images, checkpoint, pretrained, img_scale, device, out, force,
                           lambda stem: [f'{stem}.png', f'{stem}-labels.png'])
    loaded = run_.loaded
    colours = dense.class_colours(loaded.num_classes)
    results = []
    for path, stem, picture in zip(run_.paths, run_.stems, run_.pictures):
        label_map = dense.segment(loaded.model, picture, run_.device, loaded.preprocessing)
        drawn, legend = dense.draw_segmentation(picture, label_map, loaded.class_names, colours, alpha)
        png, labels_png = run_.out / f'{stem}.png', run_.out / f'{stem}-labels.png'
        save_png(png, drawn, 'choose another --out')
        save_png(labels_png, dense.label_map_image(label_map, colours), 'choose another --out')
        results.append(dict(image=str(path), png=str(png), label_map=str(labels_png), width=picture.shape[2],
                            height=picture.shape[1], classes=legend))
    return dict(model=run_.model_summary(),
                out=str(run_.out), images=results)


def print_result(result: Dict, as_json: bool = False):
    if as_json:
        print(json.dumps(result, indent=2))
        return
    from litcli.core.report import print_lines

    lines = [f'{result["model"]["name"]}: {result["model"]["weights"]}']
    for item in result['images']:
        top = ', '.join(f'{c["name"]} {c["fraction"]:.0%}' for c in item['classes'][:5])
        more = f' (+{len(item["classes"]) - 5} more)' if len(item['classes']) > 5 else ''
        lines.append(f'{item["image"]}: {top}{more} -> {item["png"]}, {Path(item["label_map"]).name}')
    print_lines(lines)

"""``lit detect``: boxes (and masks) of RetinaNet / Mask R-CNN LIT on photos, drawn with class names and scores,
one PNG per image, and the detections as a COCO results file."""
import json
from pathlib import Path
from typing import Dict, Optional, Sequence


def check_score_threshold(score_thr: float) -> float:
    """``score_thr`` when it is in [0, 1]; a UsageError otherwise."""
    from litcli.core.errors import UsageError

    if not 0 <= score_thr <= 1:
        raise UsageError(f'--score-thr {score_thr:g} is outside [0, 1]; detection scores are probabilities '
                         f'(e.g. 0.3 to draw, 0.05 for COCO evaluation)')
    return score_thr


def run(images: Sequence[str], checkpoint: Optional[Path] = None, pretrained: Optional[str] = None,
        score_thr: float = 0.3, out: Optional[Path] = None, force: bool = False, device: Optional[str] = None,
        img_scale: Optional[Sequence[int]] = None) -> Dict:
    """Detect objects in every image (files, folders, glob patterns) with the weights of ``checkpoint`` (an
    official mmdet release file, a lit dense checkpoint or its safetensors export) or the released ``pretrained``
    model ('retinanet_lit_ti', ...), keeping detections scoring at least ``score_thr``. Writes
    ``<out>/<image>.png`` per image and ``<out>/detections.json`` (COCO results: image_id, category_id, bbox
    [x, y, w, h] in the image's pixels, score; mask RLEs with pycocotools). ``out`` default: a new
    ``runs/detect/<model>[-N]``; existing files in a given ``out`` are replaced only with ``force``.
    ``img_scale``: the test resize (default the official (1333, 800)). Returns what was found and written."""
    check_score_threshold(score_thr)
    from litcli.core.analysis import dense
    from litcli.core.io import save_png, write_json

    run_ = dense.start_run('detection', images, checkpoint, pretrained, img_scale, device, out, force,
                           lambda stem: [f'{stem}.png', 'detections.json'])
    loaded, model = run_.loaded, run_.loaded.model
    dense.set_score_threshold(model, score_thr)
    colours = dense.class_colours(loaded.num_classes)
    results, coco = [], []
    for path, stem, image_id, picture in zip(run_.paths, run_.stems, dense.image_ids([p.stem for p in run_.paths]),
                                             run_.pictures):
        found = dense.detect(model, picture, run_.device, score_thr)
        drawn = dense.draw_detections(picture, found, loaded.class_names, colours)
        png = run_.out / f'{stem}.png'
        save_png(png, drawn.permute(1, 2, 0).numpy(), 'choose another --out')
        coco.extend(dense.coco_results(image_id, found, loaded.category_ids))
        results.append(dict(image=str(path), image_id=image_id, png=str(png), width=picture.shape[2],
                            height=picture.shape[1], detections=[
                                dict(label=loaded.class_names[c], category_id=loaded.category_ids[c], score=s,
                                     box=[round(v, 2) for v in b])
                                for b, s, c in zip(found['boxes'].tolist(), found['scores'].tolist(),
                                                   found['labels'].tolist())]))
    results_file = run_.out / 'detections.json'
    write_json(results_file, coco, 'choose another --out', indent=None)
    masks = None
    if loaded.task == 'mask_rcnn':
        masks = 'RLE in detections.json' if dense.mask_encoder() else \
            'drawn; not in detections.json (pip install pycocotools to add their RLEs)'
    return dict(model=run_.model_summary(),
                score_thr=score_thr, out=str(run_.out), results_file=str(results_file), masks=masks, images=results)


def print_result(result: Dict, as_json: bool = False):
    if as_json:
        print(json.dumps(result, indent=2))
        return
    from litcli.core.report import print_lines

    lines = [f'{result["model"]["name"]}: {result["model"]["weights"]}; score >= {result["score_thr"]:g}']
    for item in result['images']:
        found = item['detections']
        best = ', '.join(f'{d["label"]} {d["score"]:.2f}' for d in found[:5])
        lines.append(f'{item["image"]}: {len(found)} detection(s){": " + best if best else ""}'
                     f'{" ..." if len(found) > 5 else ""} -> {item["png"]}')
    lines.append(f'COCO results: {result["results_file"]}')
    if result['masks']:
        lines.append(f'masks: {result["masks"]}')
    print_lines(lines)

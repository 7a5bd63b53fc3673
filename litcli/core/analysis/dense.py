"""What the dense models' outputs become for a user: detections and class maps of one image through the official
test pipeline, drawn on the photo (boxes and masks with class names and scores; a colour overlay with a legend of
the classes present), a COCO results list and a palette label-map PNG.

Images are (3, H, W) uint8 RGB tensors; every coordinate returned is in the original image's pixels.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

# moved to training (the evaluation writes them too); imported here for this module's callers
from litcli.core.training.dense_metrics import coco_results, mask_encoder  # noqa: F401

Colour = Tuple[int, int, int]
LEGEND_ROW_PX = 18  # height of one legend row (swatch and name)
LEGEND_SWATCH_PX = 12


def class_colours(num_classes: int) -> List[Colour]:
    """One RGB colour per label: ADE20K's palette (mmseg's, what the official demos draw), repeated for more
    classes, so label i has the same colour in every picture."""
    from litcli.models.dense_classes import ADE20K_PALETTE

    return [tuple(int(c) for c in ADE20K_PALETTE[i % len(ADE20K_PALETTE)]) for i in range(num_classes)]


def set_score_threshold(model, threshold: float):
    """Let the detector keep every detection scoring above ``threshold`` when that is below its own (the official
    0.05): the threshold the caller filters with would otherwise never see them."""
    heads = getattr(model, 'roi_heads', model)  # Mask R-CNN scores in its RoI heads, RetinaNet in the model
    heads.score_thresh = min(heads.score_thresh, threshold)


def detect(model, image: torch.Tensor, device: torch.device, score_thr: float) -> Dict[str, torch.Tensor]:
    """Detections of one image scoring at least ``score_thr``: boxes (N, 4) x0 y0 x1 y1, scores (N,), labels (N,)
    and, for Mask R-CNN, masks (N, H, W) bool, all on the CPU in original-image pixels. The detectors resize
    (keep ratio to fit 1333x800), normalise and pad to 32 inside, as the official test pipeline."""
    with torch.inference_mode():
        output = model([image.to(device).float() / 255])[0]
    keep = output['scores'] >= score_thr
    result = {k: v[keep].cpu() for k, v in output.items()}
    if 'masks' in result:
        result['masks'] = result['masks'][:, 0].bool()
    return result


def segment(model, image: torch.Tensor, device: torch.device, preprocessing: Dict) -> torch.Tensor:
    """The class map (H, W) long of one image, on the CPU, as mmseg 0.13's single-scale test (``lit eval``'s, in
    ``core.training.dense.predict_class_map``): keep-ratio resize to fit ``img_scale``, normalise, logits bilinearly
    resized back to the image, argmax. ``device``: where the model is."""
    from litcli.core.training.dense import predict_class_map

    with torch.inference_mode():
        return predict_class_map(model, image.to(device), preprocessing['img_scale'], preprocessing['mean'],
                                 preprocessing['std']).cpu()


def draw_detections(image: torch.Tensor, detections: Dict[str, torch.Tensor], class_names: Sequence[str],
                    colours: Sequence[Colour], mask_alpha: float = 0.5, line_px: int = 2) -> torch.Tensor:
    """The photo with each detection's mask (blended at ``mask_alpha``) and box (outline ``line_px`` wide) in its
    class colour, labelled 'name score'; (3, H, W) uint8."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    labels = detections['labels'].tolist()
    picture = image
    if 'masks' in detections and len(labels):
        picture = draw_segmentation_masks(picture, detections['masks'], alpha=mask_alpha,
                                          colors=[colours[i] for i in labels])
    if labels:
        text = [f'{class_names[i]} {s:.2f}' for i, s in zip(labels, detections['scores'].tolist())]
        picture = draw_bounding_boxes(picture, detections['boxes'], labels=text, colors=[colours[i] for i in labels],
                                      width=line_px)
    return picture


def draw_segmentation(image: torch.Tensor, label_map: torch.Tensor, class_names: Sequence[str],
                      colours: Sequence[Colour], alpha: float = 0.5) -> Tuple[np.ndarray, List[Dict]]:
    """The photo with its class map blended in (each pixel its class colour at ``alpha``) and, on the right, a
    legend of the classes present, most pixels first: (H', W', 3) uint8 picture and the legend's entries
    [{'index', 'name', 'fraction'}] (fraction of the image's pixels)."""
    from PIL import Image, ImageDraw

    labels, counts = torch.unique(label_map, return_counts=True)
    order = counts.argsort(descending=True)
    legend = [dict(index=int(labels[i]), name=class_names[int(labels[i])], fraction=float(counts[i]) /
                   label_map.numel()) for i in order]
    palette = torch.tensor(colours, dtype=torch.float32)
    frame = image.permute(1, 2, 0).float()
    blended = (frame * (1 - alpha) + palette[label_map] * alpha).round().clamp(0, 255).byte().numpy()
    height, width = blended.shape[:2]
    captions = [f'{e["name"]} {e["fraction"]:.1%}' if e['fraction'] >= 0.001 else f'{e["name"]} <0.1%'
                for e in legend]
    text_px = max(len(c) for c in captions) * 6 + LEGEND_SWATCH_PX + 16
    canvas = Image.new('RGB', (width + text_px, max(height, LEGEND_ROW_PX * len(legend) + 8)), (255, 255, 255))
    canvas.paste(Image.fromarray(blended), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for row, (entry, caption) in enumerate(zip(legend, captions)):
        x0, y0, x1, y1 = legend_swatch_box(width, row)
        draw.rectangle([x0, y0, x1, y1], fill=colours[entry['index']])
        draw.text((x1 + 5, y0), caption, fill=(0, 0, 0))
    return np.asarray(canvas), legend


def legend_swatch_box(image_width: int, row: int) -> Tuple[int, int, int, int]:
    """(x0, y0, x1, y1) inclusive of the ``row``-th legend swatch in a ``draw_segmentation`` picture of an image
    ``image_width`` wide."""
    x, y = image_width + 6, 4 + row * LEGEND_ROW_PX
    return x, y, x + LEGEND_SWATCH_PX - 1, y + LEGEND_SWATCH_PX - 1


def label_map_image(label_map: torch.Tensor, colours: Sequence[Colour]):
    """The class map as a PIL image: a palette PNG whose pixel values are the labels and whose palette holds the
    class colours (up to 256 classes); 16-bit grayscale values beyond that."""
    from PIL import Image

    labels = label_map.numpy()
    if len(colours) > 256:
        return Image.fromarray(labels.astype(np.uint16))
    picture = Image.fromarray(labels.astype(np.uint8), mode='P')
    picture.putpalette([c for colour in colours for c in colour])
    return picture


def image_ids(stems: Sequence[str]) -> List[int]:
    """COCO image ids for files: their names' numbers when every name is one (COCO's 000000397133.jpg -> 397133),
    else 1, 2, ... in order."""
    if stems and all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
        return [int(s) for s in stems]
    return list(range(1, len(stems) + 1))


def unique_stems(paths, outputs: Callable[[str], List[str]] = lambda stem: [stem]) -> List[str]:
    """A file-name stem per image, unique within the run (a repeated stem gets -1, -2 ...), and such that no two
    images' ``outputs(stem)`` share a file (x.jpg's x-labels.png and the overlay of x-labels.jpg): no file
    overwrites another's output. ``outputs``: the files of one image, not those of the whole run."""
    stems = [p.stem for p in paths]
    taken, unique = set(), []
    for stem in (f'{s}-{i}' if stems.count(s) > 1 else s for i, s in enumerate(stems)):
        candidate, n = stem, 1
        while taken & set(outputs(candidate)):
            candidate, n = f'{stem}-{n}', n + 1
        taken.update(outputs(candidate))
        unique.append(candidate)
    return unique


def output_folder(out, default_base: str, default_name: str, files: Sequence[str], force: bool):
    """Where a run's pictures go: ``out`` (its ``files`` already there are replaced only with ``force``: a
    one-line LitError otherwise, before any work), or a new ``<default_base>/<default_name>[-N]``."""
    from litcli.core.errors import LitError
    from litcli.core.training.rundir import new_run_dir

    if out is None:
        return new_run_dir(default_base, default_name)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LitError(f'--out {out} is a file; give a folder')
    taken = [out / f for f in files if (out / f).exists()]
    if taken and not force:
        raise LitError(f'{taken[0]} exists; pass --force to overwrite, or choose another --out')
    out.mkdir(parents=True, exist_ok=True)
    return out


@dataclass
class DenseRun:
    """What ``lit detect`` / ``lit segment`` work on: the images (paths, output stems, (3, H, W) uint8 pictures,
    decoded one at a time as ``pictures`` is iterated), the loaded model (on ``device``) and the output folder."""
    paths: List[Path]
    stems: List[str]
    pictures: Iterable[torch.Tensor]
    loaded: object  # litcli.core.modelio.factory.LoadedDenseModel
    device: torch.device
    out: Path

    def model_summary(self) -> Dict:
        loaded = self.loaded
        return dict(name=loaded.name, weights=loaded.describe(), classes=loaded.num_classes,
                    preprocessing=loaded.preprocessing, device=str(self.device))


def start_run(kind: str, images: Sequence[str], checkpoint, pretrained: Optional[str], img_scale, device: Optional[str],
              out, force: bool, outputs: Callable[[str], List[str]]) -> DenseRun:
    """The shared start of ``lit detect`` (``kind`` 'detection') and ``lit segment`` ('segmentation'), every check
    before any work: weights named (one of ``checkpoint``, ``pretrained``), every image opens, the weights are a
    model of ``kind``, no file of ``outputs(stem)`` would be overwritten in ``out`` without ``force``."""
    from torchvision.transforms.functional import pil_to_tensor

    from litcli.core.data.images import expand_images, load_image
    from litcli.core.errors import UsageError
    from litcli.core.modelio.factory import DENSE_COMMANDS, load_dense_model
    from litcli.core.runtime import resolve_device

    if checkpoint is None and pretrained is None:
        raise UsageError(f'{DENSE_COMMANDS[kind]} needs trained weights: pass --checkpoint PATH or --pretrained NAME '
                         f'(lit weights lists the released ones)')
    paths = expand_images(images)
    for p in paths:  # every image opens before any work; only the one being worked on is held decoded
        load_image(p)
    loaded = load_dense_model(checkpoint, pretrained, pretrained=pretrained is not None, kind=kind,
                              img_scale=img_scale)
    shared = set(outputs('0')) & set(outputs('1'))  # the run's own files (detections.json)
    stems = unique_stems(paths, lambda stem: [f for f in outputs(stem) if f not in shared])
    folder = output_folder(out, f'runs/{DENSE_COMMANDS[kind].split()[-1]}', loaded.name,
                           [f for stem in stems for f in outputs(stem)], force)
    # an input that an output file replaces (--out its folder, --force) is read now, before anything is written
    written = {(folder / f).resolve() for stem in stems for f in outputs(stem)}
    held = {p: pil_to_tensor(load_image(p)) for p in paths if p.resolve() in written}
    pictures = (held.pop(p) if p in held else pil_to_tensor(load_image(p)) for p in paths)
    dev = resolve_device(device)
    loaded.model.to(dev)
    return DenseRun(paths, stems, pictures, loaded, dev, folder)

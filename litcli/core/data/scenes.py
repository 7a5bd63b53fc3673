"""Built-in synthetic scenes for the dense tasks: ``fashion-mnist-det`` and ``fashion-mnist-seg``.

Each canvas (128x160 by default) holds 1-4 Fashion-MNIST garments at random positions and scales (28 px scaled 1x-3x,
bilinear) over a background: black, noise, or a random crop of one of the asset photos (``assets/photos``),
darkened so the garments stay visible. A garment's pixels are its resized pixels above 20; they are drawn in its
own intensity (sometimes tinted by a random colour) over what is below, so later garments occlude earlier ones.
Heavy overlap is avoided by placement retries: a garment is placed only where every garment already on the
canvas keeps at least half of its pixels; a garment with no such place in 10 tries is not drawn at all. So every
garment drawn is annotated, none is dropped, and its visible mask holds at least 20 pixels.

Annotations: instance masks = the visible pixels of each garment (no two overlap), boxes = their extents
(x0, y0, x1 + 1, y1 + 1 in pixel-edge coordinates), labels = the Fashion-MNIST classes 0..9; the semantic map =
class + 1 where a garment is visible, 0 = background (a real class here, unlike ADE20K's ignored 0).

Nothing is written to disk: canvas i is made when it is read, a pure function of (split, i) and the garment source
(the full Fashion-MNIST when installed, else the shipped mini set; ``resolve_data(None)``), drawn from its own
generators (never the global ones): the validation split is fixed, and a canvas is the same in every worker and
run. 'train' canvases use Fashion-MNIST's train garments, 'val' canvases its test garments. Making a 128x160
canvas takes about 1.1 ms of CPU on one thread (measured on the 2-core dev machine: 0.7 ms on black, 1.4 ms on a
photo), well within a data loader's budget.
"""
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from litcli.core.data.datasets import (FASHION_MNIST_CLASSES, load_fashion_mnist, load_fashion_mnist_mini,
                                       resolve_data)
from litcli.core.errors import LitError
from litcli.core.seeding import sample_seed
from litcli.paths import PHOTOS_DIR

SCENE_NAMES = {'detection': 'fashion-mnist-det', 'segmentation': 'fashion-mnist-seg'}
DEFAULT_SIZES = {'train': 4000, 'val': 250}
GARMENT_SPLITS = {'train': 'train', 'val': 'test'}  # canvas split -> Fashion-MNIST split its garments come from
SCENES_SEED = 30  # mixed into every canvas's seed (issue 30), so scenes share no stream with other seeded draws
IGNORE_INDEX = 255
GARMENT_SIZE = 28
SCALE_RANGE = (1.0, 3.0)
GARMENTS_PER_CANVAS = (1, 4)
GARMENT_THRESHOLD = 20  # a resized garment pixel above this is the garment's
MIN_VISIBLE_PIXELS = 20
KEEP_FRACTION = 0.5  # a placement must leave every garment already drawn at least this share of its pixels
PLACEMENT_TRIES = 10
BACKGROUND_KINDS = ('black', 'noise', 'photo', 'photo')  # drawn uniformly: photos half of the time
DARKEN_RANGE = (0.3, 0.65)  # photo backgrounds are multiplied by this
PHOTO_ZOOM_MAX = 2.5  # a photo crop spans 1x-2.5x the canvas before it is resized to it

_GARMENTS: Dict[Tuple[str, str, str], Tuple[torch.Tensor, np.ndarray]] = {}  # per process
_PHOTOS: Dict[Tuple[int, int], List[torch.Tensor]] = {}  # canvas (H, W) -> photos shrunk for it, float (3, h, w)


def garment_arrays(split: str) -> Tuple[torch.Tensor, np.ndarray, str]:
    """(images uint8 (N, 28, 28), labels int64 (N,), source name) of Fashion-MNIST's ``split`` ('train' or
    'test'), from the full set when installed else the shipped mini set; loaded once per process."""
    kind, root = resolve_data(None)
    key = (kind, root, split)
    if key not in _GARMENTS:
        images, labels = (load_fashion_mnist if kind == 'fashion-mnist' else load_fashion_mnist_mini)(split, root)
        _GARMENTS[key] = torch.from_numpy(np.ascontiguousarray(images)), np.asarray(labels, dtype=np.int64)
    return _GARMENTS[key] + (kind,)


def _photos(canvas: Tuple[int, int]) -> List[torch.Tensor]:
    """The asset photos as float (3, h, w), shrunk once per process so that PHOTO_ZOOM_MAX canvases just fit."""
    if canvas not in _PHOTOS:
        from litcli.core.data.images import load_image

        paths = sorted(PHOTOS_DIR.glob('*.jpg'))
        if not paths:
            raise LitError(f'no photos in {PHOTOS_DIR} (the synthetic scenes\' backgrounds); reinstall lit')
        photos = []
        for path in paths:
            photo = torch.from_numpy(np.asarray(load_image(path), dtype=np.uint8).copy()).permute(2, 0, 1).float()
            factor = max(PHOTO_ZOOM_MAX * canvas[0] / photo.shape[1], PHOTO_ZOOM_MAX * canvas[1] / photo.shape[2])
            if factor < 1:  # shrink; a photo smaller than that is kept and cropped less
                size = (round(photo.shape[1] * factor), round(photo.shape[2] * factor))
                photo = F.interpolate(photo[None], size=size, mode='bilinear', align_corners=False, antialias=True)[0]
            photos.append(photo)
        _PHOTOS[canvas] = photos
    return _PHOTOS[canvas]


def _background(rng: np.random.Generator, canvas: Tuple[int, int]) -> torch.Tensor:
    """float (3, H, W) in 0-255."""
    height, width = canvas
    kind = BACKGROUND_KINDS[rng.integers(len(BACKGROUND_KINDS))]
    if kind == 'black':
        return torch.zeros(3, height, width)
    if kind == 'noise':
        amplitude = int(rng.integers(30, 90))
        return torch.from_numpy(rng.integers(0, amplitude, size=(3, height, width), dtype=np.uint8)).float()
    photos = _photos(canvas)
    photo = photos[rng.integers(len(photos))]
    zoom = min(rng.uniform(1.0, PHOTO_ZOOM_MAX), photo.shape[1] / height, photo.shape[2] / width)
    crop_h, crop_w = max(1, round(height * zoom)), max(1, round(width * zoom))
    top, left = int(rng.integers(photo.shape[1] - crop_h + 1)), int(rng.integers(photo.shape[2] - crop_w + 1))
    crop = photo[:, top:top + crop_h, left:left + crop_w]
    if (crop_h, crop_w) != (height, width):
        crop = F.interpolate(crop[None], size=canvas, mode='bilinear', align_corners=False, antialias=True)[0]
    return crop * rng.uniform(*DARKEN_RANGE)


def render_canvas(split: str, index: int, canvas: Tuple[int, int] = (128, 160)):
    """Canvas ``index`` of ``split``: (image uint8 (3, H, W), instance map int64 (H, W) with 0 = background and
    k = the k-th garment drawn, garment classes int64 (n,)). A pure function of its arguments and the garment
    source."""
    height, width = canvas
    images, labels, _ = garment_arrays(GARMENT_SPLITS[split])
    rng = np.random.default_rng(sample_seed(SCENES_SEED, list(GARMENT_SPLITS).index(split), index))
    image = _background(rng, canvas)
    instances = torch.zeros(canvas, dtype=torch.int64)
    visible = [0]  # pixels still visible per instance id (0: background, unused)
    own_area = [0]
    classes = []
    for _ in range(int(rng.integers(GARMENTS_PER_CANVAS[0], GARMENTS_PER_CANVAS[1] + 1))):
        which = int(rng.integers(len(images)))
        size = min(round(GARMENT_SIZE * rng.uniform(*SCALE_RANGE)), height, width)
        garment = F.interpolate(images[which][None, None].float(), size=(size, size), mode='bilinear',
                                align_corners=False)[0, 0]  # (size, size)
        mask = garment > GARMENT_THRESHOLD
        area = int(mask.sum())
        colour = rng.uniform(0.4, 1.0, size=3) if rng.random() < 0.5 else np.ones(3)
        if area < MIN_VISIBLE_PIXELS / KEEP_FRACTION:
            continue
        for _ in range(PLACEMENT_TRIES):
            top, left = int(rng.integers(height - size + 1)), int(rng.integers(width - size + 1))
            window = instances[top:top + size, left:left + size]
            covered = torch.bincount(window[mask], minlength=len(visible)).tolist()
            if all(visible[k] - covered[k] >= KEEP_FRACTION * own_area[k] for k in range(1, len(visible))):
                break
        else:
            continue
        for k in range(1, len(visible)):
            visible[k] -= covered[k]
        new_id = len(visible)
        visible.append(area)
        own_area.append(area)
        classes.append(int(labels[which]))
        window[mask] = new_id
        tinted = garment[None] * torch.tensor(colour, dtype=torch.float32).view(3, 1, 1)  # (3, size, size)
        pixels = image[:, top:top + size, left:left + size]
        pixels.copy_(torch.where(mask[None], tinted, pixels))
    return image.round_().clamp_(0, 255).to(torch.uint8), instances, torch.tensor(classes, dtype=torch.int64)


def instance_annotations(instances: torch.Tensor, count: int):
    """Instance map (H, W) with ids 1..count -> (masks bool (count, H, W), boxes float32 (count, 4) x0, y0, x1, y1
    in pixel edges: the masks' extents)."""
    height, width = instances.shape
    masks = instances[None] == torch.arange(1, count + 1).view(-1, 1, 1)  # (count, H, W)
    rows, cols = masks.any(2), masks.any(1)  # (count, H), (count, W)
    # first and last True per row of ``rows``/``cols``: argmax finds the first; on the flipped one, the last
    y0, x0 = rows.int().argmax(1), cols.int().argmax(1)
    y1, x1 = height - rows.flip(1).int().argmax(1), width - cols.flip(1).int().argmax(1)
    return masks, torch.stack([x0, y0, x1, y1], dim=1).float()


def _encode_masks(masks: torch.Tensor) -> List[Dict]:
    """bool (N, H, W) -> COCO compressed RLEs {'size', 'counts' (str)} (pycocotools' format, as json holds it)."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        raise LitError("COCO ground truth with masks needs pycocotools: pip install 'litcli[dense]' (or "
                       "pycocotools)") from None
    if not len(masks):
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.permute(1, 2, 0).numpy().astype(np.uint8)))  # (H, W, N)
    return [dict(size=[int(s) for s in rle['size']], counts=rle['counts'].decode('ascii')) for rle in rles]


class FashionScenes(torch.utils.data.Dataset):
    """The synthetic scenes as a dataset of the dense sample contract (see the module docstring for the canvases).

    detection: item i -> (uint8 (3, H, W), dict(boxes float32 (N, 4), labels int64 (N,) in 0..9, image_id i + 1,
    masks uint8 (N, H, W) when ``masks``)); segmentation: item i -> (uint8 (3, H, W), int64 (H, W) in 0..10).
    ``transform(image, target)`` runs last when given. ``size``: the number of canvases (default 4000 train,
    250 val); ``canvas``: (H, W)."""

    ignore_index = IGNORE_INDEX
    skipped = 0  # canvases are made, never read: nothing is unreadable and no box degenerate
    dropped_boxes = 0

    def __init__(self, split: str, task: str, masks: bool = False, size: Optional[int] = None,
                 canvas: Tuple[int, int] = (128, 160), transform=None):
        if split not in DEFAULT_SIZES:
            raise LitError(f'unknown split {split!r} of the synthetic scenes; use one of {", ".join(DEFAULT_SIZES)}')
        if task not in SCENE_NAMES:
            raise LitError(f'unknown task {task!r} of the synthetic scenes; use one of {", ".join(SCENE_NAMES)}')
        size = DEFAULT_SIZES[split] if size is None else int(size)
        if size < 1:
            raise LitError(f'the synthetic scenes need at least one canvas (got size {size})')
        canvas = (int(canvas[0]), int(canvas[1]))
        if min(canvas) < GARMENT_SIZE:
            raise LitError(f'a synthetic-scene canvas must be at least {GARMENT_SIZE}x{GARMENT_SIZE} pixels '
                           f'(got {canvas[1]}x{canvas[0]})')
        self.split, self.task, self.masks, self.size, self.canvas = split, task, bool(masks), size, canvas
        self.transform = transform
        self.name = SCENE_NAMES[task]
        self.garment_classes = list(FASHION_MNIST_CLASSES)
        self.class_names = (['background'] + self.garment_classes if task == 'segmentation'
                            else list(self.garment_classes))
        self.category_ids = list(range(1, len(self.garment_classes) + 1))  # COCO category of garment class k: k + 1
        self._coco_gt = None

    @property
    def description(self) -> str:
        source = garment_arrays(GARMENT_SPLITS[self.split])[2]
        return (f'{self.name} {self.split}: {self.size:,} synthetic {self.canvas[1]}x{self.canvas[0]} canvases of '
                f'{GARMENTS_PER_CANVAS[0]}-{GARMENTS_PER_CANVAS[1]} garments from {source}\'s '
                f'{GARMENT_SPLITS[self.split]} split, {len(self.class_names)} classes')

    def skipped_message(self) -> Optional[str]:
        return None

    def reset_skipped(self):
        pass

    def __len__(self):
        return self.size

    def aspect_flags(self) -> List[int]:
        """mmdet's GroupSampler flag per canvas (all the same shape): 1 when wider than tall."""
        return [int(self.canvas[1] / self.canvas[0] > 1)] * self.size

    def _check_index(self, index: int) -> int:
        if not -self.size <= index < self.size:
            raise IndexError(f'canvas {index} out of range ({self.size} canvases)')
        return index % self.size

    def __getitem__(self, index: int):
        index = self._check_index(int(index))
        image, instances, classes = render_canvas(self.split, index, self.canvas)
        if self.task == 'segmentation':
            lookup = torch.cat([torch.zeros(1, dtype=torch.int64), classes + 1])  # instance id -> class + 1
            target = lookup[instances]
        else:
            masks, boxes = instance_annotations(instances, len(classes))
            target = dict(boxes=boxes, labels=classes, image_id=index + 1)
            if self.masks:
                target['masks'] = masks.to(torch.uint8)
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target

    def coco_gt(self) -> Dict:
        """COCO-format ground truth of the garments of all canvases (image ids i + 1, categories 1..10; masks as
        compressed RLE when ``masks``); made once per dataset object (about 2.5 s per 1,000 canvases with masks)."""
        if self._coco_gt is None:
            height, width = self.canvas
            images, annotations = [], []
            for index in range(self.size):
                _, instances, classes = render_canvas(self.split, index, self.canvas)
                masks, boxes = instance_annotations(instances, len(classes))
                rles = _encode_masks(masks) if self.masks else [None] * len(classes)
                images.append(dict(id=index + 1, width=width, height=height,
                                   file_name=f'{self.name}-{self.split}-{index:06d}.png'))
                for mask, box, label, rle in zip(masks, boxes.tolist(), classes.tolist(), rles):
                    x0, y0, x1, y1 = box
                    annotation = dict(id=len(annotations) + 1, image_id=index + 1, category_id=label + 1,
                                      bbox=[x0, y0, x1 - x0, y1 - y0], area=int(mask.sum()), iscrowd=0)
                    if rle is not None:
                        annotation['segmentation'] = rle
                    annotations.append(annotation)
            categories = [dict(id=k + 1, name=name) for k, name in enumerate(self.garment_classes)]
            self._coco_gt = dict(images=images, annotations=annotations, categories=categories)
        return self._coco_gt

    def __repr__(self):
        return (f'FashionScenes(split={self.split!r}, task={self.task!r}, masks={self.masks}, size={self.size}, '
                f'canvas={self.canvas})')

"""Training transforms of the dense tasks, on torch tensors: mmdet's random flip and mmseg 0.13's train pipeline.

Every random draw comes from torch's global CPU generator (``torch.rand`` / ``torch.randint``), which the loaders
seed per sample (``litcli.core.seeding.seeded_rng``): a sample's augmentation is the same in any worker and after a
resume. The pipelines are written by hand because torchvision's v2 transforms have neither mmseg's crop rule
(cat_max_ratio) nor its photometric distortion (uint8 truncation after each step, one of two random orders).
"""
from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from litcli.models.detection import mmdet_resize_size

# mmdet / mmseg configs' mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375]: timm's ImageNet statistics on
# 0-255 (rounded: 0.485 * 255 is 123.67499... in floating point)
IMAGENET_MEAN_255 = tuple(round(m * 255, 3) for m in IMAGENET_DEFAULT_MEAN)
IMAGENET_STD_255 = tuple(round(s * 255, 3) for s in IMAGENET_DEFAULT_STD)
IGNORE_INDEX = 255


def _coin(probability: float) -> bool:
    return bool(torch.rand(()) < probability)


def _uniform(low: float, high: float) -> float:
    return low + float(torch.rand(())) * (high - low)


class DetectionTrainTransform:
    """mmdet's RandomFlip(flip_ratio=hflip), horizontal: (uint8 image (3, H, W), target) -> the same, flipped with
    probability ``hflip``: boxes x0' = W - x1, x1' = W - x0, masks (N, H, W) mirrored. (The model resizes after it;
    mmdet flips after resizing, which is the same up to the rounding of the resized width.)"""

    def __init__(self, hflip: float = 0.5):
        self.hflip = float(hflip)

    def __call__(self, image: torch.Tensor, target: Dict) -> Tuple[torch.Tensor, Dict]:
        if not _coin(self.hflip):
            return image, target
        width = image.shape[-1]
        target = dict(target)
        boxes = target['boxes']
        target['boxes'] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        if 'masks' in target:
            target['masks'] = target['masks'].flip(-1)
        return image.flip(-1), target

    def __repr__(self):
        return f'DetectionTrainTransform(hflip={self.hflip})'


def resize_image(image: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """uint8 (C, H, W) -> uint8 (C, h, w), bilinear without antialiasing, rounded (cv2.INTER_LINEAR, as mmcv; cv2's
    11-bit fixed-point weights can differ by one level)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    out = F.interpolate(image[None].float(), size=size, mode='bilinear', align_corners=False)[0]
    return out.round_().clamp_(0, 255).to(torch.uint8)


def resize_label(label: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """(H, W) integer map -> int64 (h, w), nearest (torch's 'nearest' takes floor(dst * in / out): cv2.INTER_NEAREST,
    as mmcv)."""
    if tuple(label.shape[-2:]) == tuple(size):
        return label.long()
    # float32 holds label values exactly (< 2**24)
    return F.interpolate(label[None, None].float(), size=size, mode='nearest')[0, 0].long()


def _convert(channel: torch.Tensor, alpha: float = 1.0, beta: float = 0.0) -> torch.Tensor:
    # mmseg's convert: float * alpha + beta, clipped to 0-255 and truncated to uint8 (numpy astype; torch's .to too)
    return (channel.float() * alpha + beta).clamp_(0, 255).to(torch.uint8)


def rgb_to_hsv_uint8(image: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (3, H, W) -> uint8 HSV as OpenCV's 8-bit COLOR_RGB2HSV: H in 0..179 (degrees / 2), S and V in
    0..255 (rounded; OpenCV's fixed-point tables can differ by one level)."""
    rgb = image.float()
    r, g, b = rgb
    value, _ = rgb.max(0)
    diff = value - rgb.min(0)[0]
    safe = diff.clamp(min=1)
    saturation = torch.where(value > 0, diff * 255 / value.clamp(min=1), torch.zeros_like(value))
    hue = torch.where(value == r, (g - b) * 60 / safe,
                      torch.where(value == g, 120 + (b - r) * 60 / safe, 240 + (r - g) * 60 / safe))
    hue = torch.where(diff > 0, hue, torch.zeros_like(hue))
    hue = torch.where(hue < 0, hue + 360, hue)
    hue = (hue / 2).round_() % 180
    return torch.stack([hue, saturation.round_(), value]).to(torch.uint8)


def hsv_to_rgb_uint8(hsv: torch.Tensor) -> torch.Tensor:
    """uint8 HSV (H in 0..179) -> uint8 RGB (3, H, W), as OpenCV's 8-bit COLOR_HSV2RGB (float math, rounded)."""
    h, s, v = hsv.float()
    sector_float = (h * 2 / 60) % 6  # hue in sixths of the circle
    sector = sector_float.floor()
    frac = sector_float - sector
    s, v = s / 255, v / 255
    p, q, t = v * (1 - s), v * (1 - s * frac), v * (1 - s * (1 - frac))
    sector = sector.long()
    # (r, g, b) per sector 0..5
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = torch.zeros((3,) + tuple(h.shape))
    for k, channels in enumerate(table):
        where = sector == k
        for c in range(3):
            out[c] = torch.where(where, channels[c], out[c])
    return (out * 255).round_().clamp_(0, 255).to(torch.uint8)


class PhotoMetricDistortion:
    """mmseg 0.13's PhotoMetricDistortion on a uint8 RGB image (3, H, W): brightness, then contrast first (mode 1) or
    last (mode 0), saturation, hue; each step applied with probability 1/2, each result clipped and truncated to
    uint8, draws in mmseg's order."""

    def __init__(self, brightness_delta: int = 32, contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5),
                 hue_delta: int = 18):
        self.brightness_delta = brightness_delta
        self.contrast_range = tuple(contrast_range)
        self.saturation_range = tuple(saturation_range)
        self.hue_delta = hue_delta

    @staticmethod
    def _draw_step() -> bool:
        return bool(torch.randint(2, ()))  # numpy's random.randint(2)

    def brightness(self, image):
        if self._draw_step():
            return _convert(image, beta=_uniform(-self.brightness_delta, self.brightness_delta))
        return image

    def contrast(self, image):
        if self._draw_step():
            return _convert(image, alpha=_uniform(*self.contrast_range))
        return image

    def saturation(self, image):
        if self._draw_step():
            hsv = rgb_to_hsv_uint8(image)
            hsv[1] = _convert(hsv[1], alpha=_uniform(*self.saturation_range))
            return hsv_to_rgb_uint8(hsv)
        return image

    def hue(self, image):
        if self._draw_step():
            hsv = rgb_to_hsv_uint8(image)
            delta = int(torch.randint(-self.hue_delta, self.hue_delta, ()))  # numpy's randint: high excluded
            hsv[0] = ((hsv[0].long() + delta) % 180).to(torch.uint8)
            return hsv_to_rgb_uint8(hsv)
        return image

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        image = self.brightness(image)
        contrast_first = bool(torch.randint(2, ()))  # mmseg: mode == 1 -> contrast before saturation
        if contrast_first:
            image = self.contrast(image)
        image = self.saturation(image)
        image = self.hue(image)
        if not contrast_first:
            image = self.contrast(image)
        return image


class SegmentationTrainTransform:
    """mmseg 0.13's ADE20K train pipeline: (uint8 image (3, H, W), integer label (H, W)) -> (float32 (3, ch, cw)
    normalised, int64 (ch, cw) with ``ignore_index`` in the padding).

    Resize: a scale img_scale * r, r uniform in ratio_range, applied keeping the ratio with mmcv's rescale rule
    (bilinear image, nearest label); RandomCrop to crop_size (h, w) whose largest class (``ignore_index`` not
    counted) holds under cat_max_ratio of the crop and which holds two classes or more, up to 10 tries (then the
    last drawn crop, unchecked, as mmseg); horizontal flip with probability hflip; PhotoMetricDistortion;
    Normalize (mean/std on 0-255 RGB); Pad to crop_size at the bottom/right (image 0, label ``ignore_index``)."""

    def __init__(self, img_scale: Tuple[int, int] = (2048, 512), ratio_range: Tuple[float, float] = (0.5, 2.0),
                 crop_size: Tuple[int, int] = (512, 512), cat_max_ratio: float = 0.75, hflip: float = 0.5,
                 photometric: bool = True, mean: Sequence[float] = IMAGENET_MEAN_255,
                 std: Sequence[float] = IMAGENET_STD_255, ignore_index: int = IGNORE_INDEX, crop_tries: int = 10):
        self.img_scale = tuple(int(s) for s in img_scale)
        self.ratio_range = tuple(float(r) for r in ratio_range)
        self.crop_size = tuple(int(s) for s in crop_size)
        self.cat_max_ratio = float(cat_max_ratio)
        self.hflip = float(hflip)
        self.photometric = PhotoMetricDistortion() if photometric else None
        self.mean = torch.tensor([float(m) for m in mean]).view(3, 1, 1)
        self.std = torch.tensor([float(s) for s in std]).view(3, 1, 1)
        self.ignore_index = int(ignore_index)
        self.crop_tries = int(crop_tries)

    def resize(self, image: torch.Tensor, label: torch.Tensor):
        ratio = _uniform(*self.ratio_range)
        scale = (int(self.img_scale[0] * ratio), int(self.img_scale[1] * ratio))  # mmseg's random_sample_ratio
        size = mmdet_resize_size(image.shape[-2], image.shape[-1], scale)
        return resize_image(image, size), resize_label(label, size)

    def _draw_crop(self, height: int, width: int) -> Tuple[int, int]:
        top = int(torch.randint(max(height - self.crop_size[0], 0) + 1, ()))
        left = int(torch.randint(max(width - self.crop_size[1], 0) + 1, ()))
        return top, left

    def _crop_is_varied(self, crop: torch.Tensor) -> bool:
        values, counts = torch.unique(crop, return_counts=True)
        counts = counts[values != self.ignore_index]
        return len(counts) > 1 and float(counts.max()) / float(counts.sum()) < self.cat_max_ratio

    def crop(self, image: torch.Tensor, label: torch.Tensor):
        ch, cw = self.crop_size
        top, left = self._draw_crop(*label.shape)
        if self.cat_max_ratio < 1:
            for _ in range(self.crop_tries):
                if self._crop_is_varied(label[top:top + ch, left:left + cw]):
                    break
                top, left = self._draw_crop(*label.shape)
        return image[:, top:top + ch, left:left + cw], label[top:top + ch, left:left + cw]

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        image, label = self.resize(image, label)
        image, label = self.crop(image, label)
        if _coin(self.hflip):
            image, label = image.flip(-1), label.flip(-1)
        if self.photometric is not None:
            image = self.photometric(image)
        image = (image.float() - self.mean) / self.std
        pad_h, pad_w = self.crop_size[0] - image.shape[-2], self.crop_size[1] - image.shape[-1]
        image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
        label = F.pad(label.long(), (0, pad_w, 0, pad_h), value=self.ignore_index)
        return image.contiguous(), label.contiguous()

    def __repr__(self):
        return (f'SegmentationTrainTransform(img_scale={self.img_scale}, ratio_range={self.ratio_range}, '
                f'crop_size={self.crop_size}, cat_max_ratio={self.cat_max_ratio}, hflip={self.hflip}, '
                f'photometric={self.photometric is not None}, ignore_index={self.ignore_index})')

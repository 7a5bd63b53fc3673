"""Image transforms: the one eval transform (recorded in every checkpoint), the training transform of a recipe.

A *data config* is a plain dict of timm's data-config keys (``input_size``, ``interpolation``, ``crop_pct``,
``crop_mode``, ``mean``, ``std``). ``lit train`` records the one it evaluated with in every checkpoint
(``data_config``), and ``lit eval``/``predict``/``export``/``viz-offsets``/``attn-maps`` rebuild the same
preprocessing from it with ``eval_transform``, so a model is always fed as it was trained.

``crop_mode`` is timm's ('center', 'squash', 'border') plus ``'pad'``: the image is zero-padded to the input size
when it is smaller by an even margin of at most 4 pixels per side pair (Fashion-MNIST's 28 -> 32: the background
is black), else resized bilinearly with antialiasing. It is the built-in datasets' preprocessing (their fast
tensor path pads the same way, with ``pad_or_resize``), written by hand because timm and torchvision transforms
have no pad-or-resize.
"""
from typing import Dict, Optional

DATA_CONFIG_KEYS = ('input_size', 'interpolation', 'crop_pct', 'crop_mode', 'mean', 'std')
PAD_MODE = 'pad'
MAX_PAD = 4  # largest size difference (pixels per side pair) that is padded rather than resized


def pad_or_resize(images, size: int):
    """uint8 (N, C, H, W) -> uint8 (N, C, size, size): zero-padded (centred) when ``size`` exceeds H and W by an
    even margin of at most 4, else resized bilinearly with antialiasing (rounded back to uint8)."""
    import torch
    import torch.nn.functional as F

    h, w = images.shape[-2:]
    pad_h, pad_w = size - h, size - w
    if 0 <= pad_h <= MAX_PAD and 0 <= pad_w <= MAX_PAD and pad_h % 2 == 0 and pad_w % 2 == 0:
        return F.pad(images, (pad_w // 2, pad_w // 2, pad_h // 2, pad_h // 2))
    out = [F.interpolate(chunk.float(), size=(size, size), mode='bilinear', align_corners=False,
                         antialias=True).round_().clamp_(0, 255).to(torch.uint8)
           for chunk in images.split(4096)]  # chunks bound the float memory (60k images at 224)
    return torch.cat(out)


class PadOrResize:
    """PIL image -> normalised float tensor (3, S, S) through ``pad_or_resize``: the eval transform of the
    ``'pad'`` crop mode, equal pixel for pixel to the built-in datasets' tensor path."""

    def __init__(self, size: int, mean, std, uint8: bool = False):
        self.size, self.mean, self.std, self.uint8 = int(size), tuple(mean), tuple(std), uint8

    def __call__(self, img):
        import numpy as np
        import torch

        rgb = np.asarray(img.convert('RGB'), dtype=np.uint8)  # H, W, 3
        x = pad_or_resize(torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None], self.size)[0]  # 3, S, S
        if self.uint8:  # normalised on the device (litcli.core.data.loaders.DeviceLoader)
            return x
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x.float().div(255) - mean) / std

    def __repr__(self):
        return f'PadOrResize(size={self.size}, mean={self.mean}, std={self.std})'


def normalize_data_config(dc: Dict, img_size: Optional[int] = None, crop_pct: Optional[float] = None) -> Dict:
    """The data-config keys only, as plain tuples (JSON gives lists), with optional size/crop overrides."""
    out = {k: dc.get(k) for k in DATA_CONFIG_KEYS}
    if img_size is not None:
        out['input_size'] = (3, img_size, img_size)
    if crop_pct is not None:
        out['crop_pct'] = crop_pct
    out['crop_mode'] = out['crop_mode'] or 'center'
    for k in ('input_size', 'mean', 'std'):
        out[k] = tuple(out[k])
    return out


def eval_transform(data_config: Dict, uint8: bool = False):
    """The evaluation transform of a data config: timm's resize + crop + normalise, or ``PadOrResize``.

    ``uint8``: stop before the float conversion and normalisation (uint8 (3, S, S) tensors, timm's
    ``use_prefetcher`` output), which ``litcli.core.data.loaders.DeviceLoader`` does on the device."""
    dc = normalize_data_config(data_config)
    if dc['crop_mode'] == PAD_MODE:
        return PadOrResize(dc['input_size'][-1], dc['mean'], dc['std'], uint8=uint8)
    from timm.data import create_transform
    return create_transform(**dc, is_training=False, use_prefetcher=uint8)


# ---------------------------------------------------------------------------------------------------------------
# Training transforms


def _posterize_any_bits(img, bits_to_keep, **kwargs):
    """timm's ``posterize`` with Pillow < 13's meaning of 0 bits kept: a black image.

    timm's ``PosterizeIncreasing`` (in every LIT recipe's ``rand-m9-mstd0.5-inc1``) maps a sampled magnitude of
    10 to 0 bits; Pillow 13 raises ``ValueError: bits must be between or equal to 1 and 8`` for it (older Pillow
    returned black), about 1 call in 750 on one image. timm 1.0.31 has no guard, so the op is wrapped here.
    """
    if bits_to_keep < 1:
        return img.point(lambda _: 0)  # what ImageOps.posterize(img, 0) computed: every value & ~255 = 0
    from timm.data.auto_augment import posterize
    return posterize(img, bits_to_keep, **kwargs)


def guard_augment_ops(transform):
    """Replace timm's posterize in every RandAugment/AutoAugment/AugMix op of ``transform`` (in place)."""
    from timm.data import auto_augment

    def ops_of(t):
        for op in getattr(t, 'ops', None) or []:  # RandAugment, AugMixAugment
            yield op
        for sub_policy in getattr(t, 'policy', None) or []:  # AutoAugment: a list of sub-policies
            yield from sub_policy

    for t in getattr(transform, 'transforms', [transform]):
        for op in ops_of(t):
            if getattr(op, 'aug_fn', None) is auto_augment.posterize:
                op.aug_fn = _posterize_any_bits
    return transform


def train_transform(data_config: Dict, aa: Optional[str], hflip: float, reprob: float, remode: str = 'pixel',
                    recount: int = 1, uint8: bool = False):
    """timm's training transform (RandomResizedCrop, flip, auto-augment, normalise, random erasing) for a data
    config, with the augmentation ops guarded for the installed Pillow.

    ``uint8``: timm's ``use_prefetcher`` form, which ends with a uint8 (3, S, S) tensor: normalisation and random
    erasing are then the device's work (``litcli.core.data.loaders.DeviceLoader``)."""
    from timm.data import create_transform

    dc = normalize_data_config(data_config)
    tf = create_transform(dc['input_size'], is_training=True, auto_augment=aa or None,
                          interpolation=dc['interpolation'], hflip=hflip, re_prob=reprob, re_mode=remode,
                          re_count=recount, mean=dc['mean'], std=dc['std'], use_prefetcher=uint8)
    return guard_augment_ops(tf)


def transform_name(t) -> str:
    """A short name of one transform step for error messages (its repr's first line)."""
    text = repr(t).splitlines()[0].rstrip('(').strip()
    return type(t).__name__ if not text or text.startswith('<') else text


class TransformError(RuntimeError):
    """A transform step raised on a readable image: a bug (of a library or of lit), never bad input, so it is not
    a LitError and is not hidden as an unreadable file."""


def apply_transform(transform, img, source: str):
    """``transform(img)`` step by step (a Compose's steps one at a time), so an exception names ``source`` (the
    image) and the step that raised."""
    if transform is None:
        return img
    for step in getattr(transform, 'transforms', None) or [transform]:
        try:
            img = step(img)
        except Exception as e:
            raise TransformError(f'transform {transform_name(step)} failed on {source}: '
                                 f'{type(e).__name__}: {e}') from e
    return img

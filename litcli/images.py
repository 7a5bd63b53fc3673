"""Reading user images and turning them into model input with the model's eval transform."""
from pathlib import Path
from typing import Optional, Union

from litcli.errors import LitError

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm', '.pgm')


def load_image(path: Union[str, Path]):
    """Open any image PIL reads (RGB, RGBA, grayscale, palette, 16-bit, EXIF-rotated) as 8-bit RGB."""
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
    except FileNotFoundError:
        raise LitError(f'image not found: {path}')
    except (UnidentifiedImageError, OSError) as e:
        raise LitError(f'cannot read {path} as an image ({e}); give a JPEG/PNG/... file')
    if im.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
        # 16/32-bit grayscale: PIL's convert('RGB') would clip at 255; rescale to the full 8-bit range.
        a = np.asarray(im, dtype=np.float64)
        lo, hi = a.min(), a.max()
        a = (a - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(a)
        im = Image.fromarray(a.astype(np.uint8), 'L')
    if im.mode in ('RGBA', 'LA') or (im.mode == 'P' and 'transparency' in im.info):
        rgba = im.convert('RGBA')
        background = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    return im.convert('RGB')


def eval_transform(model, img_size: Optional[int] = None, crop_pct: Optional[float] = None,
                   checkpoint: Optional[dict] = None):
    """The evaluation transform (resize by crop_pct, center crop, normalise) of ``model``: the one recorded by its
    ``checkpoint`` (a ``lit train`` run's size and normalisation, an export's config) or else its timm cfg."""
    from timm.data import create_transform

    from litcli.checkpoint import inference_data_config
    return create_transform(**inference_data_config(checkpoint or {}, model, img_size, crop_pct), is_training=False)

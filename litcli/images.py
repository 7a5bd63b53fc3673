"""Reading user images and turning them into model input with the model's eval transform."""
from pathlib import Path
from typing import Union

from litcli.errors import LitError

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm', '.pgm')


def load_image(path: Union[str, Path]):
    """Open any image PIL reads (RGB, RGBA, grayscale, palette, 16-bit, EXIF-rotated) as 8-bit RGB."""
    import numpy as np
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
    except FileNotFoundError:
        raise LitError(f'image not found: {path}')
    except MemoryError:
        raise
    except Exception as e:
        # Opening and decoding only: PIL signals a broken file with UnidentifiedImageError/OSError ("image file
        # is truncated"), but also SyntaxError (broken PNG chunks), ValueError, EOFError, struct.error and
        # DecompressionBombError; any of them means this file cannot be read. Transforms run elsewhere.
        raise LitError(f'cannot read {path} as an image ({type(e).__name__}: {e}); give a JPEG/PNG/... file')
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

"""Reading user images: any file PIL opens as 8-bit RGB, and image paths from files, folders and globs."""
import glob
from pathlib import Path
from typing import List, Optional, Sequence

from litcli.core.errors import LitError

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm', '.pgm')


def load_image(path, name: Optional[str] = None):
    """Open any image PIL reads (RGB, RGBA, grayscale, palette, 16-bit, EXIF-rotated) as 8-bit RGB. ``path`` may
    also be a binary file object (a tar member's bytes); ``name`` then names it in errors."""
    import numpy as np
    from PIL import Image, ImageOps

    name = path if name is None else name
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
    except FileNotFoundError:
        raise LitError(f'image not found: {name}')
    except MemoryError:
        raise
    except Exception as e:
        # Opening and decoding only: PIL signals a broken file with UnidentifiedImageError/OSError ("image file
        # is truncated"), but also SyntaxError (broken PNG chunks), ValueError, EOFError, struct.error and
        # DecompressionBombError; any of them means this file cannot be read. Transforms run elsewhere.
        raise LitError(f'cannot read {name} as an image ({type(e).__name__}: {e}); give a JPEG/PNG/... file')
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


def expand_images(inputs: Sequence[str]) -> List[Path]:
    """Files, folders (their images, recursively, sorted) and glob patterns -> image paths, in order, once each."""
    paths = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob('*') if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise LitError(f'no images ({", ".join(IMAGE_SUFFIXES)}) in folder {p}')
        elif p.is_file():
            found = [p]
        else:
            matches = sorted(Path(f) for f in glob.glob(str(item), recursive=True) if Path(f).is_file())
            # A pattern selects images among its matches (labels.txt beside them is not one); a named file is
            # taken as given, so a bad one gets its own error.
            found = [f for f in matches if f.suffix.lower() in IMAGE_SUFFIXES]
            if not found:
                raise LitError(f'{item}: no such file, folder or matching pattern' if not matches else
                               f'{item}: {len(matches)} file(s) match but none is an image '
                               f'({", ".join(IMAGE_SUFFIXES)})')
        paths.extend(found)
    return list(dict.fromkeys(paths))  # drop repeats, keep order

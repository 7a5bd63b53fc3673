"""Synthetic image folders for smoke tests, checks and benchmarks (no download): random pixels with one colour
channel saturated per class, so a model can learn them in a few steps."""
from pathlib import Path
from typing import Sequence


def write_image_folder(root: Path, classes: Sequence[str] = ('cat', 'dog'), n_train: int = 8, n_val: int = 4,
                       size: int = 32, seed: int = 0) -> Path:
    """``root/{train,val}/<class>/<i>.png``: ``n_train``/``n_val`` random ``size`` x ``size`` RGB images per class,
    the same pixels for the same arguments."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (('train', n_train), ('val', n_val)):
        for c, name in enumerate(classes):
            folder = Path(root) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                pixels[..., c % 3] = 255  # the learnable cue of the class
                Image.fromarray(pixels).save(folder / f'{i}.png')
    return Path(root)

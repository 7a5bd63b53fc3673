"""Regenerate assets/datasets/fashion-mnist-mini/fashion-mnist-mini.npz from the full Fashion-MNIST.

Deterministic: for each class, the first 600 training and 100 test images of a fixed permutation (numpy
default_rng(0)), kept in their original order. Reads the full set where `lit train` finds it
(``litcli.core.data.datasets.find_fashion_mnist``: $LIT_FASHION_MNIST_DIR, the user cache, the Debian package's
folder) or a folder given as the first argument.

    python assets/datasets/make_fashion_mnist_mini.py [FASHION_MNIST_DIR]
"""
import sys
from pathlib import Path

import numpy as np

from litcli.core.data.datasets import (FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, MINI_DIR, MINI_FILE,
                                      find_fashion_mnist, load_fashion_mnist)

PER_CLASS = {'train': 600, 'test': 100}


def stratified_indices(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    order = np.random.default_rng(seed).permutation(len(labels))
    picked = [order[labels[order] == c][:per_class] for c in range(len(FASHION_MNIST_CLASSES))]
    return np.sort(np.concatenate(picked))


def main(source=FASHION_MNIST_DIR):
    arrays = {}
    for split, per_class in PER_CLASS.items():
        images, labels = load_fashion_mnist(split, source)
        idx = stratified_indices(labels, per_class)
        arrays.update({f'x_{split}': images[idx], f'y_{split}': labels[idx].astype(np.uint8),
                       f'index_{split}': idx.astype(np.int32)})  # positions in the original split
    MINI_DIR.mkdir(parents=True, exist_ok=True)
    out = MINI_DIR / MINI_FILE
    np.savez_compressed(out, classes=np.array(FASHION_MNIST_CLASSES), **arrays)
    print(f'wrote {out} ({out.stat().st_size / 1e6:.1f} MB): '
          + ', '.join(f'{k} {v.shape}' for k, v in arrays.items() if k.startswith('x_')))


if __name__ == '__main__':
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else find_fashion_mnist() or FASHION_MNIST_DIR)

"""`make demo`'s data step: say where the full Fashion-MNIST is, or download it once into the user cache
(``~/.cache/litcli/fashion-mnist``) with torchvision's downloader. Exit 0 when the full set is on this machine
afterwards, 1 when it is not (the demo then trains on the subset shipped in assets/, and says so).

    python assets/datasets/fetch_fashion_mnist.py
"""
import sys

from litcli.core.data.datasets import download_fashion_mnist, find_fashion_mnist
from litcli.core.errors import LitError


def main() -> int:
    try:
        found = find_fashion_mnist()
        if found is not None:
            print(f'data: the full Fashion-MNIST is in {found}')
            return 0
        print('data: the full Fashion-MNIST is not on this machine; downloading it once into the user cache')
        print(f'data: downloaded into {download_fashion_mnist()}')
        return 0
    except LitError as e:
        print(f'data: {e}')
        return 1


if __name__ == '__main__':
    sys.exit(main())

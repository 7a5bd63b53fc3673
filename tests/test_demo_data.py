"""Where the built-in full Fashion-MNIST comes from (`make demo`'s data step): --data-dir or $LIT_FASHION_MNIST_DIR,
the user cache (filled by torchvision's downloader, here from a server on 127.0.0.1), the Debian package's folder;
else the shipped subset, with one line saying which and how to get the full set. No test touches the network."""
import gzip
import hashlib
import http.server
import socket
import threading

import numpy as np
import pytest

from litcli.core.data import datasets as data
from litcli.core.errors import LitError

SIZES = {'train': 20, 't10k': 10}


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b''.join(int(n).to_bytes(4, 'big') for n in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def fake_release(folder):
    """The four *-ubyte.gz files of a tiny Fashion-MNIST-like set; {file name: md5}."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    md5 = {}
    for prefix, n in SIZES.items():
        for name, array in ((f'{prefix}-images-idx3-ubyte.gz', rng.integers(0, 256, (n, 28, 28))),
                            (f'{prefix}-labels-idx1-ubyte.gz', np.arange(n) % 10)):
            blob = idx_bytes(array)
            (folder / name).write_bytes(blob)
            md5[name] = hashlib.md5(blob).hexdigest()
    return md5


@pytest.fixture
def places(monkeypatch, tmp_path):
    """No full set anywhere: an empty user cache, no Debian folder, no environment variable."""
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    monkeypatch.delenv(data.FASHION_MNIST_ENV, raising=False)
    monkeypatch.setattr(data, 'FASHION_MNIST_DIR', tmp_path / 'no-debian-package')
    return tmp_path


@pytest.fixture
def mirror(places, monkeypatch):
    """torchvision's FashionMNIST downloader pointed at a local server holding the fake release."""
    from torchvision.datasets import FashionMNIST
    served = places / 'served'
    md5 = fake_release(served)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(FashionMNIST, 'mirrors', [f'http://127.0.0.1:{server.server_address[1]}/'])
    monkeypatch.setattr(FashionMNIST, 'resources', [(name, md5[name]) for name in md5])
    yield served
    server.shutdown()
    server.server_close()


def test_without_the_full_set_the_subset_is_used_and_the_line_says_how_to_get_it(places):
    assert data.find_fashion_mnist() is None
    assert data.resolve_data(None) == ('fashion-mnist-mini', str(data.MINI_DIR))
    _, _, spec = data.build_datasets(None)
    line = spec.description
    assert 'mini' in line and 'not found' in line and '\n' not in line
    assert str(data.fashion_mnist_cache()) in line and 'apt-get install dataset-fashion-mnist' in line
    assert '--data-dir' in line and data.FASHION_MNIST_ENV in line
    with pytest.raises(LitError, match='fashion-mnist-mini'):
        data.resolve_data('fashion-mnist')


def test_the_download_fills_the_user_cache_which_is_used_from_then_on(mirror):
    cache = data.download_fashion_mnist(timeout=10)
    assert cache == data.fashion_mnist_cache() and sorted(p.name for p in cache.iterdir()) == sorted(
        f'{prefix}-{kind}.gz' for prefix in SIZES for kind in ('images-idx3-ubyte', 'labels-idx1-ubyte'))
    assert [p.name for p in cache.parent.iterdir()] == ['fashion-mnist']  # no partial download left
    assert data.find_fashion_mnist() == cache
    assert data.resolve_data(None) == ('fashion-mnist', str(cache))
    images, labels = data.load_fashion_mnist('train', cache)
    assert images.shape == (SIZES['train'], 28, 28) and labels.tolist() == (np.arange(SIZES['train']) % 10).tolist()
    assert data.download_fashion_mnist() == cache  # once: present, nothing fetched


def test_a_failed_download_is_one_line_and_leaves_the_cache_empty(places, monkeypatch):
    from torchvision.datasets import FashionMNIST
    with socket.socket() as s:  # a port nobody listens on
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(FashionMNIST, 'mirrors', [f'http://127.0.0.1:{port}/'])
    with pytest.raises(LitError, match='could not download Fashion-MNIST') as error:
        data.download_fashion_mnist(timeout=5)
    assert '\n' not in str(error.value) and 'apt-get install dataset-fashion-mnist' in str(error.value)
    cache_root = data.fashion_mnist_cache().parent
    assert not cache_root.exists() or list(cache_root.iterdir()) == []
    assert data.find_fashion_mnist() is None


def test_the_environment_variable_comes_first_and_must_hold_the_files(places, monkeypatch):
    folder = places / 'mine'
    fake_release(folder)
    monkeypatch.setenv(data.FASHION_MNIST_ENV, str(folder))
    assert data.resolve_data(None) == ('fashion-mnist', str(folder))
    assert data.resolve_data('fashion-mnist') == ('fashion-mnist', str(folder))
    monkeypatch.setenv(data.FASHION_MNIST_ENV, str(places / 'empty'))
    with pytest.raises(LitError, match=f'{data.FASHION_MNIST_ENV}=.* does not hold'):
        data.resolve_data(None)

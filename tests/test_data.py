"""litcli.data: the built-in Fashion-MNIST sets, ImageFolder trees and their bad-input errors."""
import numpy as np
import pytest
import torch
from PIL import Image

from litcli.core.data import datasets as data
from litcli.core.data.datasets import (BUILTIN_DATASETS, FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, build_datasets,
                         build_eval_dataset, resolve_data)
from litcli.core.errors import LitError

HAVE_FULL = data.fashion_mnist_files(FASHION_MNIST_DIR) is not None
needs_full = pytest.mark.skipif(not HAVE_FULL, reason=f'full Fashion-MNIST not installed at {FASHION_MNIST_DIR} '
                                                     f'(apt-get install dataset-fashion-mnist)')


def write_tree(root, splits=('train', 'val'), classes=('cat', 'dog'), per_class=3, size=20):
    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f'{i}.png')
    return root


# ---- built-ins ----

def test_mini_set_is_stratified():
    train, val, spec = build_datasets('fashion-mnist-mini')
    assert spec.name == 'fashion-mnist-mini' and spec.num_classes == 10 and spec.class_names == FASHION_MNIST_CLASSES
    assert (spec.train_size, spec.val_size) == (6000, 1000) == (len(train), len(val))
    assert np.bincount(train.targets, minlength=10).tolist() == [600] * 10
    assert np.bincount(val.targets, minlength=10).tolist() == [100] * 10
    img, label = train[0]
    assert isinstance(img, Image.Image) and img.mode == 'RGB' and img.size == (28, 28) and isinstance(label, int)
    r, g, b = img.split()
    assert r.tobytes() == g.tobytes() == b.tobytes()  # gray replicated


def test_mini_set_is_a_subset_of_the_full_set_at_its_indices():
    if not HAVE_FULL:
        pytest.skip(f'full Fashion-MNIST not installed at {FASHION_MNIST_DIR}')
    with np.load(data.MINI_DIR / data.MINI_FILE) as z:
        x_full, y_full = data.load_fashion_mnist('test')
        assert np.array_equal(x_full[z['index_test']], z['x_test']) and np.array_equal(y_full[z['index_test']],
                                                                                        z['y_test'])


def test_timm_transform_applies_to_builtin():
    from timm.data import create_transform

    train, val, _ = build_datasets('fashion-mnist-mini', train_transform=create_transform(32, is_training=True),
                                   eval_transform=create_transform(32))
    assert train[5][0].shape == val[5][0].shape == (3, 32, 32)


@needs_full
def test_full_fashion_mnist_loads():
    train, val, spec = build_datasets('fashion-mnist')
    assert (len(train), len(val)) == (60000, 10000) and spec.root == str(FASHION_MNIST_DIR)
    assert np.bincount(val.targets).tolist() == [1000] * 10
    assert 'full, 60000/10000' in spec.description


def test_full_fashion_mnist_from_data_dir(tmp_path):
    # A --data-dir in torchvision's raw layout (uncompressed IDX), written from the mini arrays.
    raw = tmp_path / 'FashionMNIST' / 'raw'
    raw.mkdir(parents=True)
    x, y = data.load_fashion_mnist_mini('test')
    for split in ('train', 'test'):
        images, labels = data.FASHION_MNIST_FILES[split]
        (raw / images).write_bytes(bytes([0, 0, 8, 3]) + b''.join(n.to_bytes(4, 'big') for n in x.shape) + x.tobytes())
        (raw / labels).write_bytes(bytes([0, 0, 8, 1]) + len(y).to_bytes(4, 'big') + y.astype(np.uint8).tobytes())
    assert resolve_data(None, str(tmp_path)) == ('fashion-mnist', str(tmp_path))
    train, val, spec = build_datasets('fashion-mnist', str(tmp_path))
    assert len(train) == len(val) == 1000 and np.array_equal(train.images, x)
    (raw / data.FASHION_MNIST_FILES['test'][0]).write_bytes(bytes([0, 0, 8, 3]) + b'\0' * 20)
    with pytest.raises(LitError, match='truncated'):
        build_datasets('fashion-mnist', str(tmp_path))


def test_fast_tensor_path():
    train, val, spec = build_datasets('fashion-mnist-mini', fast_tensors=True, img_size=32)
    assert train.images.shape == (6000, 1, 32, 32) and train.images.dtype == torch.uint8
    assert train.images[:, :, :2].sum() == 0  # 28 -> 32 by zero padding
    x = data.normalize_batch(data.augment_batch(train.images[:8], crop_padding=2, hflip=True))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
    # Same numbers as the PIL path through ToTensor + Normalize (padded border aside).
    pil = np.asarray(build_datasets('fashion-mnist-mini')[0][0][0])[..., 0]
    plain = data.normalize_batch(train.images[:1])[0, 0, 2:30, 2:30]
    assert torch.allclose(plain, (torch.from_numpy(pil.copy()).float() / 255 - data.FASHION_MNIST_MEAN)
                          / data.FASHION_MNIST_STD)
    big, _ = build_eval_dataset('fashion-mnist-mini', fast_tensors=True, img_size=64)
    assert big.images.shape == (1000, 1, 64, 64)


def test_augment_batch_is_a_shifted_flipped_crop():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    g = torch.Generator().manual_seed(0)
    y = data.augment_batch(x, crop_padding=0, hflip=False, generator=g)
    assert torch.equal(x, y)
    y = data.augment_batch(x, crop_padding=1, hflip=False, generator=g)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for b in range(2):
        assert any(torch.equal(y[b], padded[b, :, i:i + 6, j:j + 6]) for i in range(3) for j in range(3))


# ---- resolve_data ----

def test_resolve_data_defaults(monkeypatch, tmp_path):
    assert resolve_data('fashion-mnist-mini')[0] == 'fashion-mnist-mini'
    monkeypatch.setattr(data, 'FASHION_MNIST_DIR', tmp_path / 'absent')
    assert resolve_data(None) == ('fashion-mnist-mini', str(data.MINI_DIR))
    _, _, spec = build_datasets(None)
    assert 'mini' in spec.description and 'not found' in spec.description
    with pytest.raises(LitError, match='apt-get install dataset-fashion-mnist'):
        resolve_data('fashion-mnist')
    with pytest.raises(LitError, match='does not hold'):
        resolve_data(None, str(tmp_path))
    assert resolve_data(str(tmp_path)) == ('folder', str(tmp_path))


@needs_full
def test_resolve_data_prefers_full_set():
    assert resolve_data(None) == ('fashion-mnist', str(FASHION_MNIST_DIR))
    assert set(BUILTIN_DATASETS) == {'fashion-mnist', 'fashion-mnist-mini'}


def test_unknown_name_and_missing_folder(tmp_path):
    with pytest.raises(LitError, match="unknown dataset 'cifar10'"):
        resolve_data('cifar10')
    with pytest.raises(LitError, match='data folder not found'):
        resolve_data(str(tmp_path / 'nope'))
    (tmp_path / 'f.txt').write_text('x')
    with pytest.raises(LitError, match='is a file'):
        resolve_data(str(tmp_path / 'f.txt'))


# ---- folders ----

def test_folder_happy_path(tmp_path):
    from timm.data import create_transform

    root = write_tree(tmp_path / 'ds')
    (root / 'train' / '.ipynb_checkpoints').mkdir()  # hidden folders are not classes
    (root / 'train' / 'cat' / 'notes.txt').write_text('not an image')  # other suffixes are ignored
    train, val, spec = build_datasets(str(root), train_transform=create_transform(32, is_training=True),
                                      eval_transform=create_transform(32))
    assert spec.name == 'folder' and spec.class_names == ['cat', 'dog'] and spec.num_classes == 2
    assert (spec.train_size, spec.val_size) == (6, 6)
    x, y = train[4]
    assert x.shape == (3, 32, 32) and y == 1


def test_folder_validation_dir_and_eval(tmp_path):
    root = write_tree(tmp_path / 'ds', splits=('train', 'validation'))
    assert build_datasets(str(root))[2].val_size == 6
    ds, spec = build_eval_dataset(str(root))
    assert len(ds) == 6 and spec.root.endswith('validation')
    with pytest.raises(LitError, match='no val/ subfolder'):
        build_eval_dataset(str(write_tree(tmp_path / 'train_only', splits=('train',))))
    flat = write_tree(tmp_path / 'flat', splits=('',))  # class subfolders directly
    ds, spec = build_eval_dataset(str(flat))
    assert len(ds) == 6 and spec.class_names == ['cat', 'dog']


@pytest.mark.parametrize('case, message', [
    ('empty', 'is empty'),
    ('no_val', 'no val/ subfolder'),
    ('no_classes', 'no class subfolders'),
    ('no_images', 'has no images'),
    ('empty_class', 'without images'),
    ('class_mismatch', 'different class folders'),
])
def test_folder_bad_input(tmp_path, case, message):
    root = tmp_path / 'ds'
    root.mkdir()
    if case == 'no_val':
        write_tree(root, splits=('train',))
    elif case == 'no_classes':
        (root / 'train').mkdir()
        (root / 'val').mkdir()
        (root / 'train' / 'loose.png').write_bytes(b'')
    elif case == 'no_images':
        for split in ('train', 'val'):
            (root / split / 'cat').mkdir(parents=True)
    elif case == 'empty_class':
        write_tree(root)
        (root / 'train' / 'bird').mkdir()
        (root / 'val' / 'bird').mkdir()
    elif case == 'class_mismatch':
        write_tree(root, splits=('train',))
        write_tree(root, splits=('val',), classes=('cat', 'fox'))
    with pytest.raises(LitError, match=message) as info:
        build_datasets(str(root))
    assert '\n' not in str(info.value)


def test_corrupt_file_is_skipped_and_counted(tmp_path):
    root = write_tree(tmp_path / 'ds')
    bad = root / 'train' / 'cat' / '1.png'
    bad.write_bytes(b'this is not a png')
    train, _, _ = build_datasets(str(root))
    assert train.skipped_message() is None
    with pytest.warns(RuntimeWarning, match='1.png'):
        samples = [train[i] for i in range(len(train))]
    assert len(samples) == 6 and samples[1][1] == samples[2][1] == 0  # replaced by the next (readable) cat
    assert train.skipped == 1 and 'skipped 1 unreadable' in train.skipped_message()
    train.reset_skipped()
    assert train.skipped == 0 and train.skipped_message() is None
    # Counted across DataLoader worker processes (shared-memory counter).
    loader = torch.utils.data.DataLoader(train, batch_size=3, num_workers=2, collate_fn=list)
    assert sum(len(b) for b in loader) == 6 and train.skipped == 1


def test_corrupt_file_strict(tmp_path):
    root = write_tree(tmp_path / 'ds')
    bad = root / 'val' / 'dog' / '2.png'
    bad.write_bytes(b'')
    _, val, _ = build_datasets(str(root), strict_data=True)
    val[0]
    with pytest.raises(LitError, match=f'unreadable image {bad}'):
        val[5]


def test_default_small_config_builds():
    import timm

    import litcli.models  # noqa: F401

    from litcli.core.config import CONFIG_KEYS, demo_config

    cfg = demo_config()
    model = timm.create_model(cfg['variant'], img_size=cfg['img_size'], num_classes=10, **cfg['model_kwargs'])
    assert model.msa_stages == (3, 4)  # MLP-early / MSA-late kept
    for key in ('batch_size', 'epochs', 'lr', 'weight_decay', 'warmup_epochs', 'hflip'):
        assert key in cfg
    assert set(cfg) <= CONFIG_KEYS  # every key is a trainer setting (model kwargs live in model_kwargs)

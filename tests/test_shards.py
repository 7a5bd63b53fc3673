"""Issue 19: tar and WebDataset data, ``lit data pack`` / ``lit data bench``, the uint8 device loader, per-sample
seeding, data time in the log, and every shard image read exactly once per epoch across ranks and workers."""
import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import lit, make_folder
from litcli.core.data import shards as shards_mod
from litcli.core.data.datasets import build_datasets, build_eval_dataset, resolve_data
from litcli.core.errors import LitError
from litcli.core.data.pack import pack
from litcli.core.seeding import sample_seed, seeded_rng
from litcli.core.data.shards import ShardDataset, resolve_shards

pytest.importorskip('webdataset')


def tree_digest(root: Path) -> str:
    """Names, sizes and contents of every file under ``root`` (to prove a command left it unchanged)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob('*')):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope='module')
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp('img') / 'img', classes=('cat', 'dog', 'eel'), n_train=8, n_val=4)


@pytest.fixture(scope='module')
def packed(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('packed') / 'shards'
    pack(folder, out, shard_size=12_000, log=lambda m: None)  # ~5 images a shard: several shards per split
    return out


def pattern(packed: Path, split='train') -> str:
    n = len(json.loads((packed / 'index.json').read_text())['splits'][split]['shards'])
    return f'wds:{packed}/{split}-{{000000..{n - 1:06d}}}.tar'


def uint8_tf(img):
    """A random transform drawing from python, numpy and torch, ending in a uint8 (3, 32, 32) tensor."""
    import random
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
    shift = random.randint(0, 3) + int(np.random.randint(0, 3))
    x = torch.roll(x, shift, dims=2)
    return x.flip(-1) if torch.rand(1).item() < 0.5 else x


# ---------------------------------------------------------------------------------------------------------------
# seeding


def test_sample_seed_is_stable_and_seeded_rng_restores_the_caller_streams():
    import random
    assert sample_seed(0, 1, 2) == sample_seed(0, 1, 2) != sample_seed(0, 2, 1)
    assert 0 <= sample_seed(2 ** 70, -1) < 2 ** 63
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    expected = random.random(), np.random.rand(), torch.rand(1).item()
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    with seeded_rng(123):
        inside = random.random(), np.random.rand(), torch.rand(1).item()
    with seeded_rng(123):
        assert (random.random(), np.random.rand(), torch.rand(1).item()) == inside
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected  # streams untouched


# ---------------------------------------------------------------------------------------------------------------
# lit data pack


def test_pack_writes_shards_and_an_index_and_never_changes_or_overwrites(folder, packed, tmp_path):
    index = json.loads((packed / 'index.json').read_text())
    assert index['format'] == 'lit-shards' and index['classes'] == ['cat', 'dog', 'eel']
    train, val = index['splits']['train'], index['splits']['val']
    assert train['count'] == 24 and val['count'] == 12 and len(train['shards']) > 2
    assert sum(s['count'] for s in train['shards']) == 24
    for s in train['shards'] + val['shards']:
        assert (packed / s['name']).stat().st_size == s['bytes']
    # members: KEY.png (the original bytes) + KEY.cls, as WebDataset/timm read them
    with tarfile.open(packed / train['shards'][0]['name']) as tf:
        names = tf.getnames()
        assert names[:2] == ['00000000.cls', '00000000.png']
        assert int(tf.extractfile('00000000.cls').read()) in (0, 1, 2)
    labels = []  # the training split is shuffled across shards: the first shard mixes classes
    with tarfile.open(packed / train['shards'][0]['name']) as tf:
        labels = {int(tf.extractfile(n).read()) for n in tf.getnames() if n.endswith('.cls')}
    assert len(labels) > 1
    assert not (packed / '.lit-pack-partial').exists()

    before = tree_digest(folder)
    result = lit('data', 'pack', folder, packed)  # not empty: refused, nothing touched
    assert result.exit_code == 1 and 'never overwrites' in result.output
    result = lit('data', 'pack', folder, folder / 'train' / 'shards')  # inside the folder it reads: refused
    assert result.exit_code == 1 and 'never changes the folder' in result.output
    result = lit('data', 'pack', folder, tmp_path / 'new', '--shard-size', '1MB', '--json')
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index('{'):])
    assert summary['splits']['train']['shards'] == 1 and summary['splits']['train']['images'] == 24
    assert summary['splits']['train']['pattern'] == f'wds:{tmp_path / "new"}/train-{{000000..000000}}.tar'
    assert tree_digest(folder) == before
    assert lit('data', 'pack', folder, tmp_path / 'x', '--shard-size', 'lots').exit_code == 2
    for size in ('nan', 'inf', '1e400', '0'):  # one line, not a ValueError/OverflowError traceback
        result = lit('data', 'pack', folder, tmp_path / 'x', '--shard-size', size)
        assert result.exit_code == 2 and 'finite size' in result.output, result.output


def test_pack_leaves_out_unreadable_files_and_strict_stops(tmp_path):
    src = make_folder(tmp_path / 'src', n_train=3, n_val=2)
    (src / 'train' / 'cat' / 'broken.jpg').write_bytes(b'not an image')
    summary = pack(src, tmp_path / 'out', log=lambda m: None)
    assert summary['splits']['train']['images'] == 6 and len(summary['splits']['train']['skipped']) == 1
    with pytest.raises(LitError, match='unreadable image .*broken.jpg'):
        pack(src, tmp_path / 'out2', strict=True, log=lambda m: None)
    assert not (tmp_path / 'out2' / 'index.json').exists()
    empty = make_folder(tmp_path / 'empty', n_train=2, n_val=0)
    with pytest.raises(LitError, match='no images'):
        pack(empty, tmp_path / 'out3', log=lambda m: None)


# ---------------------------------------------------------------------------------------------------------------
# Resolving shards, and their bad input


def test_a_set_packed_with_its_val_split_alone_is_evaluated_not_a_traceback(folder, tmp_path):
    pack(folder, tmp_path / 'val-only', splits=('val',), log=lambda m: None)
    src = resolve_shards(str(tmp_path / 'val-only'))
    assert src.split == 'val' and src.total == len(list((folder / 'val').rglob('*.png')))
    assert src.pattern.endswith('val-*.tar (its one shard)'), src.pattern  # not "(all 1 shards)"
    ds, spec = build_eval_dataset(str(tmp_path / 'val-only'))
    assert len(ds) == src.total
    with pytest.raises(LitError, match='are the val shards; train on the train split'):
        build_datasets(str(tmp_path / 'val-only'))


def test_shards_stay_within_the_shard_size(folder, tmp_path):
    pack(folder, tmp_path / 'small', shard_size=12_000, log=lambda m: None)
    sizes = [p.stat().st_size for p in (tmp_path / 'small').glob('*.tar')]
    assert len(sizes) > 2 and max(sizes) <= 12_000


def test_resolve_shards_and_bad_patterns(packed, tmp_path):
    src = resolve_shards(pattern(packed))
    assert src.split == 'train' and src.total == 24 and src.classes == ['cat', 'dog', 'eel']
    assert resolve_data(pattern(packed)) == ('shards', pattern(packed))
    assert resolve_data(str(packed)) == ('shards', str(packed))  # the folder lit data pack wrote
    assert resolve_shards(str(packed)).total == 24
    with pytest.raises(LitError, match='no shard matches'):
        resolve_shards(f'wds:{packed}/nope-{{000000..000003}}.tar')
    for empty in ('wds:', 'wds:  '):  # not "no shard matches <the current folder>"
        with pytest.raises(LitError, match='the shard pattern after wds: is empty'):
            resolve_shards(empty)
    with pytest.raises(LitError, match='missing shard .*train-000012.tar and 87 more'):
        resolve_shards(f'wds:{packed}/train-{{000000..000099}}.tar')
    copy = tmp_path / 'copy'
    copy.mkdir()
    for p in packed.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    shard = copy / 'train-000001.tar'
    shard.write_bytes(shard.read_bytes()[:5000])  # a cut copy
    with pytest.raises(LitError, match='truncated since lit data pack'):
        resolve_shards(pattern(copy))
    spec = pattern(copy)
    (copy / 'index.json').unlink()
    with pytest.raises(LitError, match='no index.json'):
        resolve_shards(spec)


def write_shards(folder: Path, split_samples, classes=('a', 'b')) -> Path:
    """A shard set written by hand: {split: [[sample dict, ...] per shard]} plus a matching index.json."""
    import webdataset as wds

    folder.mkdir(parents=True)
    index = dict(format='lit-shards', version=1, classes=list(classes), splits={})
    for split, shard_list in split_samples.items():
        shards = []
        for i, samples in enumerate(shard_list):
            name = f'{split}-{i:06d}.tar'
            with wds.TarWriter(str(folder / name), encoder=False) as w:
                for s in samples:
                    w.write(s)
            shards.append(dict(name=name, count=len(samples), bytes=(folder / name).stat().st_size))
        index['splits'][split] = dict(count=sum(s['count'] for s in shards), shards=shards)
    (folder / 'index.json').write_text(json.dumps(index))
    return folder


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(buf, 'PNG')
    return buf.getvalue()


def test_unreadable_samples_are_replaced_in_training_left_out_in_eval_and_counted(tmp_path):
    good = [{'__key__': f'{i:04d}', 'png': png(10 * i), 'cls': str(i % 2).encode()} for i in range(6)]
    bad = [{'__key__': '9000', 'png': b'garbage', 'cls': b'0'},  # an image that fails to decode
           {'__key__': '9001', 'txt': b'a note', 'cls': b'1'}]  # a member that is not an image
    folder = write_shards(tmp_path / 's', {'train': [good[:3] + bad, good[3:]], 'val': [good[:2] + bad]})
    train, val, spec = build_datasets(f'wds:{folder}/train-{{000000..000001}}.tar', train_transform=uint8_tf,
                                      eval_transform=uint8_tf)
    assert spec.train_size == 8 and spec.val_size == 4
    train.configure(0, 1, 2, 0, training=True)
    train.set_epoch(0)
    with pytest.warns(RuntimeWarning, match='skipping unreadable sample'):
        items = list(train)
    assert len(items) == 8 and train.skipped == 2  # replaced: the batch count stays
    assert 'skipped 2 unreadable sample(s)' in train.skipped_message()
    val.configure(0, 1, 2, 0, training=False)
    with pytest.warns(RuntimeWarning):
        assert len(list(val)) == 2 and val.skipped == 2  # left out of the evaluation
    strict = ShardDataset(resolve_shards(f'wds:{folder}/train-{{000000..000001}}.tar'), uint8_tf, strict=True)
    strict.configure(0, 1, 2, 0, training=True)
    with pytest.raises(LitError, match='unreadable sample .*:900[01] .*--strict-data'):
        list(strict)


def test_label_outside_the_classes_and_an_empty_split_are_one_line_errors(tmp_path):
    samples = [{'__key__': '0000', 'png': png(1), 'cls': b'7'}]
    folder = write_shards(tmp_path / 's', {'train': [samples], 'val': [samples]})
    train, _, _ = build_datasets(f'wds:{folder}/train-000000.tar', train_transform=uint8_tf)
    train.configure(0, 1, 1, 0, training=True)
    with pytest.raises(LitError, match="label b'7' is not one of the 2 classes"):
        list(train)
    folder = write_shards(tmp_path / 'noval', {'train': [[{'__key__': '0', 'png': png(1), 'cls': b'0'}]], 'val': []})
    with pytest.raises(LitError, match='has no val split'):
        build_datasets(f'wds:{folder}/train-000000.tar')


def test_missing_webdataset_is_a_one_line_error_naming_the_extra(monkeypatch):
    import builtins
    real = builtins.__import__

    def fake(name, *a, **k):
        if name == 'webdataset':
            raise ImportError(name)
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, '__import__', fake)
    with pytest.raises(LitError, match=r"pip install 'litcli\[shards\]'"):
        shards_mod.webdataset()


# ---------------------------------------------------------------------------------------------------------------
# The split across ranks and workers


@pytest.mark.parametrize('world,workers,batch', [(1, 1, 4), (2, 2, 3), (3, 2, 2), (4, 3, 1), (2, 4, 5)])
def test_every_sample_once_per_epoch_across_ranks_and_workers(packed, world, workers, batch):
    """The ranges every (rank, worker) reads: disjoint; evaluation covers all N; training covers whole batches,
    the same number on every rank (DDP steps in lockstep), at most N mod W + W x (batch - 1) left out."""
    src = resolve_shards(pattern(packed))
    n = src.total
    for training in (True, False):
        seen, per_rank = [], []
        for rank in range(world):
            ds = ShardDataset(src)
            ds.configure(rank, world, batch, workers, training)
            got, partial = [], 0
            for w in range(workers):
                lo, hi = ds.worker_range(w, workers)
                assert lo <= hi and (not training or (hi - lo) % batch == 0)
                partial += (hi - lo) % batch != 0
                got += range(lo, hi)
            assert len(got) == len(ds)
            assert partial <= 1  # evaluation: whole batches but the share's last, so len(loader) batches come
            per_rank.append(len(got))
            seen += got
        assert len(seen) == len(set(seen))  # never twice
        if training:
            assert len(set(per_rank)) == 1 and per_rank[0] == (n // world) // batch * batch
            assert n - len(seen) <= n % world + world * (batch - 1)
        else:
            assert sorted(seen) == list(range(n))  # evaluation: every image exactly once


def run_epoch(ds, workers, batch, epoch, skip=0):
    """The batches a DataLoader over the shard dataset yields (uint8 images, labels)."""
    from torch.utils.data import DataLoader
    ds.set_epoch(epoch, skip)
    return [(x.clone(), y.clone()) for x, y in DataLoader(ds, batch_size=batch, num_workers=workers, drop_last=True)]


def test_workers_keys_and_resume_skip_are_exact(packed, tmp_path, monkeypatch):
    log = tmp_path / 'seen.log'
    monkeypatch.setenv('LIT_DATA_LOG', str(log))
    ds = ShardDataset(resolve_shards(pattern(packed)), uint8_tf, seed=3, shuffle_buffer=4)
    ds.configure(0, 1, 3, 2, training=True)
    full = run_epoch(ds, 2, 3, epoch=1)
    lines = [line.split() for line in log.read_text().splitlines()]
    keys = [k for split, epoch, rank, worker, k in lines]
    assert len(full) == 8 and len(keys) == 24 == len(set(keys))  # every image once, both workers
    assert {w for *_, w, _ in lines} == {'0', '1'}
    again = run_epoch(ds, 2, 3, epoch=1)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full, again))  # reproducible
    assert not torch.equal(run_epoch(ds, 2, 3, epoch=2)[0][0], full[0][0])  # a new epoch, a new order
    resumed = run_epoch(ds, 2, 3, epoch=1, skip=3)  # a mid-epoch resume after 3 batches
    assert len(resumed) == 5
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[3:], resumed))
    one_worker = run_epoch(ds, 0, 3, epoch=1)  # another worker count: another order, the same images
    assert len(one_worker) == 8
    assert sorted(torch.cat([y for _, y in one_worker]).tolist()) == sorted(torch.cat([y for _, y in full]).tolist())


# ---------------------------------------------------------------------------------------------------------------
# Tar files holding an image folder


def write_class_tars(folder: Path, out: Path) -> Path:
    """timm's ImageNet tar layout of ``folder``: ``out/<split>/<class>.tar`` holding the class's images."""
    for split in ('train', 'val'):
        (out / split).mkdir(parents=True)
        for c in sorted(p.name for p in (folder / split).iterdir()):
            with tarfile.open(out / split / f'{c}.tar', 'w') as tf:
                for f in sorted((folder / split / c).iterdir()):
                    tf.add(f, arcname=f.name)
    return out


@pytest.mark.parametrize('layout', ['one-tar', 'split-tars', 'class-tars'])
def test_tar_layouts_read_the_same_images_as_the_folder(folder, tmp_path, layout):
    if layout == 'one-tar':  # imagenet.tar holding imagenet/train/<class>/... and imagenet/val/...
        data = tmp_path / 'imagenet.tar'
        with tarfile.open(data, 'w') as tf:
            tf.add(folder, arcname='imagenet')
    elif layout == 'split-tars':  # train.tar holding <class>/..., val.tar holding val/<class>/...
        data = tmp_path / 'tars'
        data.mkdir()
        with tarfile.open(data / 'train.tar', 'w') as tf:
            tf.add(folder / 'train', arcname='.')
        with tarfile.open(data / 'val.tar', 'w') as tf:
            tf.add(folder / 'val', arcname='val')
            tf.addfile(tarfile.TarInfo('val/notes.txt'), io.BytesIO(b''))  # not an image: ignored
    else:  # timm's ImageNet layout: train/<class>.tar holding the class's images
        data = write_class_tars(folder, tmp_path / 'ctars')
    assert resolve_data(str(data))[0] == 'tar'
    before = tree_digest(folder)
    t_train, t_val, spec = build_datasets(str(data))
    f_train, f_val, _ = build_datasets(str(folder))
    assert spec.name == 'tar' and t_train.classes == f_train.classes == ['cat', 'dog', 'eel']
    assert (len(t_train), len(t_val)) == (len(f_train), len(f_val)) == (24, 12)
    for i in (0, 7, 23):
        a, b = t_train[i], f_train[i]
        assert a[1] == b[1] and np.array_equal(np.asarray(a[0]), np.asarray(b[0]))
    ev, ev_spec = build_eval_dataset(str(data))
    assert len(ev) == 12 and ev_spec.val_size == 12
    assert tree_digest(folder) == before


def test_many_class_tars_keep_a_bounded_number_open(folder, tmp_path, monkeypatch):
    """timm's class-per-tar ImageNet layout has 1000 tars per split and ulimit -n is often 1024: a process keeps
    at most MAX_OPEN_TARS open (least recently used closed) and still reads every image."""
    from litcli.core.data import tars

    monkeypatch.setattr(tars, 'MAX_OPEN_TARS', 2)
    train, _, _ = build_datasets(str(write_class_tars(folder, tmp_path / 'ctars')))
    images = train.dataset
    for i in list(range(len(train))) + [0, 23, 8]:  # every tar, twice
        images.load_sample(i)
        assert len(images._fds) <= 2


def test_bad_tars_are_one_line_errors_or_counted_skips(folder, tmp_path):
    data = tmp_path / 'd.tar'
    with tarfile.open(data, 'w') as tf:
        tf.add(folder, arcname='d')
        info = tarfile.TarInfo('d/train/cat/zz-broken.png')
        info.size = 7
        tf.addfile(info, io.BytesIO(b'garbage'))
    train, _, _ = build_datasets(str(data))
    broken = train.dataset.names.index('d/train/cat/zz-broken.png')
    with pytest.warns(RuntimeWarning, match='skipping unreadable image'):
        img, label = train[broken]  # replaced by the next readable image
    assert train.skipped == 1 and 'zz-broken.png' in train.skipped_message()
    cut = tmp_path / 'cut.tar'
    cut.write_bytes(data.read_bytes()[:20000])
    with pytest.raises(LitError, match='truncated'):
        build_datasets(str(cut))
    junk = tmp_path / 'junk.tar'
    junk.write_bytes(b'this is no tar' * 100)
    with pytest.raises(LitError, match='cannot read .* as a tar file'):
        build_datasets(str(junk))
    train_only = tmp_path / 'train_only.tar'
    with tarfile.open(train_only, 'w') as tf:
        tf.add(folder / 'train', arcname='train')
    with pytest.raises(LitError, match='no val/ folder'):
        build_datasets(str(train_only))


# ---------------------------------------------------------------------------------------------------------------
# The device loader


def test_device_normalisation_is_torchvisions_to_the_bit_and_sends_a_quarter_of_the_bytes(folder):
    from litcli.core.data.datasets import ImageFolderNoHidden
    from litcli.core.data.loaders import DeviceLoader
    from litcli.core.data.transforms import eval_transform

    dc = dict(input_size=(3, 32, 32), interpolation='bicubic', crop_pct=0.875, crop_mode='center',
              mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    ds_float = ImageFolderNoHidden(str(folder / 'val'), transform=eval_transform(dc))
    ds_uint8 = ImageFolderNoHidden(str(folder / 'val'), transform=eval_transform(dc, uint8=True))
    x8 = torch.stack([ds_uint8[i][0] for i in range(4)])
    xf = torch.stack([ds_float[i][0] for i in range(4)])
    assert x8.dtype == torch.uint8 and x8.nbytes * 4 == xf.nbytes
    loader = DeviceLoader(None, torch.device('cpu'), dc['mean'], dc['std'])
    assert torch.equal(loader.prepare(x8, 0), xf)
    bf16 = DeviceLoader(None, torch.device('cpu'), dc['mean'], dc['std'], dtype=torch.bfloat16, channels_last=True)
    out = bf16.prepare(x8, 0)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    erase = DeviceLoader(None, torch.device('cpu'), dc['mean'], dc['std'], reprob=1.0, seed=1)
    a, b, c = erase.prepare(x8, 5), erase.prepare(x8, 5), erase.prepare(x8, 6)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, xf)  # seeded by the batch


def test_reporter_logs_data_time_and_hints_once():
    from litcli.core.progress import Reporter

    lines = []
    reporter = Reporter(True, 2, world_size=4)
    reporter.log = lines.append
    reporter.data_hint = 'raise -j'
    for step in range(1, 7):
        reporter.step(dict(epoch=0, step=step, batch=step, total=6, loss=1.0, lr=1e-3, img_per_s=10.0,
                           elapsed=step, data_s=0.5, compute_s=0.5, images=8, first=step == 1))
    logged = [x for x in lines if x.startswith('epoch')]
    assert len(logged) == 3 and '| data 50% of 2.00s, 8.0 img/s/device, 32.0 img/s total' in logged[0]
    hints = [x for x in lines if x.startswith('hint:')]
    assert len(hints) == 1 and 'waits for data 50%' in hints[0] and 'raise -j' in hints[0]


def test_data_subcommands_have_their_modules():
    """`lit data pack|bench --help` -> commands/data_pack.py, data_bench.py (one hop, as for every command)."""
    from litcli.cli import app

    group = next(g for g in app.registered_groups if g.name == 'data')
    names = [c.name for c in group.typer_instance.registered_commands]
    assert names == ['pack', 'bench']
    for name in names:
        module = Path(__file__).resolve().parent.parent / 'litcli' / 'commands' / f'data_{name}.py'
        assert 'def run(' in module.read_text()
    assert lit('data', 'pack', '--help').exit_code == 0 and lit('data', 'bench', '--help').exit_code == 0


def test_results_file_with_shards_is_refused_with_the_reason_and_documented(packed, tmp_path):
    """Shards keep no file paths, so --results-file (one row per image file) is refused in one line that says so;
    lit eval --help says it too."""
    from helpers import TINY
    from litcli.core.modelio.factory import create_model

    model = create_model('lit_ti', num_classes=3, img_size=32, **TINY)
    torch.save(dict(model=model.state_dict(), variant='lit_ti', model_kwargs=TINY, num_classes=3,
                    class_names=['cat', 'dog', 'eel']), tmp_path / 'tiny.pt')
    result = lit('eval', '--checkpoint', tmp_path / 'tiny.pt', '--img-size', 32, '--data', pattern(packed, 'val'),
                 '--results-file', tmp_path / 'r.csv', '--out', tmp_path / 'ev', '-j', 0)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert 'which WebDataset shards do not keep' in lines[0] and 'evaluate the image folder' in lines[0]
    assert not (tmp_path / 'r.csv').exists()
    from typer.testing import CliRunner
    from litcli.cli import app
    help_text = ' '.join(CliRunner().invoke(app, ['eval', '--help'], env={'COLUMNS': '300'}).output.split())
    assert 'Not for WebDataset shards, which keep no file paths' in help_text

"""``lit data pack``: an image folder -> WebDataset shards + ``index.json`` (the format ``litcli.core.data.shards`` reads).

Each image goes in as its file's bytes (no re-encoding: same pixels, no quality loss, fast) with its class index;
the training split is shuffled once (by ``seed``) so every shard holds a mix of classes, which the streaming reader
relies on (a batch comes from one worker's stretch of one or two shards). Shards close at ``shard_size`` bytes.
Files PIL cannot even open (not an image, a broken header) are left out and counted, or stop the pack with
``strict``; the image folder is only read. The output folder must be new or empty: the shards are written into
``OUT/.lit-pack-partial/`` and moved into place at the end, ``index.json`` last (written atomically), so an
interrupted pack leaves no index and nothing that looks complete.
"""
import io
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from litcli.core.data.datasets import VAL_DIRNAMES, check_empty_classes, image_folder, split_dir
from litcli.core.errors import LitError
from litcli.core.data.shards import INDEX_FORMAT, INDEX_NAME, webdataset

PARTIAL = '.lit-pack-partial'
TAR_BLOCK = 512
MTIME = 946684800  # 2000-01-01: fixed member times, so packing the same folder twice gives the same bytes


def _member_bytes(size: int) -> int:
    """Bytes a member takes in a tar: a 512-byte header plus the data padded to 512."""
    return TAR_BLOCK + -(-size // TAR_BLOCK) * TAR_BLOCK


def _tar_file_bytes(members: int) -> int:
    """The size of a tar file whose members take ``members`` bytes: python's tarfile closes it with two zero
    blocks and pads it to a whole record (``tarfile.RECORDSIZE``, 10 KiB)."""
    import tarfile

    return -(-(members + 2 * TAR_BLOCK) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def check_output(src: Path, out: Path):
    """``out`` may be new or an empty folder, never inside the image folder (packing must not change it)."""
    src, out_abs = src.resolve(), out.expanduser().resolve()
    if out_abs == src or src in out_abs.parents:
        raise LitError(f'the output {out} is inside the image folder {src}; write the shards elsewhere (lit data '
                       f'pack never changes the folder it reads)')
    if out_abs.exists():
        if not out_abs.is_dir():
            raise LitError(f'{out} exists and is a file; give a new folder for the shards')
        leftovers = [e.name for e in os.scandir(out_abs) if e.name != PARTIAL]
        if leftovers:
            raise LitError(f'{out} is not empty ({", ".join(sorted(leftovers)[:3])}' +
                           (' ...' if len(leftovers) > 3 else '') + '); lit data pack never overwrites: give a new '
                                                                    'or empty folder')


def pack(src: Path, out: Path, shard_size: int = 500 * 10 ** 6, splits: Sequence[str] = ('train', 'val'),
         seed: int = 0, strict: bool = False, on_file: Optional[Callable[[str, int, int], None]] = None,
         log: Callable[[str], None] = print) -> Dict:
    """Pack ``src``'s splits (``train``; ``val`` also matches ``validation/``) into ``out``; returns a summary
    (per split: images, shards, bytes, skipped files, the ``wds:`` pattern to train with). ``on_file(split, done,
    total)`` reports progress."""
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if not src.is_dir():
        raise LitError(f'{src} is not a folder; give an image folder with train/ and val/ class subfolders')
    if shard_size < 1024:
        raise LitError(f'--shard-size {shard_size} bytes is too small; use e.g. 500MB')
    check_output(src, out)
    wds = webdataset()
    folders = {}
    for split in splits:
        folder = split_dir(src, VAL_DIRNAMES if split in VAL_DIRNAMES else (split,))
        if folder is None:
            raise LitError(f'{src} has no {split}/ folder; lay it out as {src}/{split}/<class>/*.jpg or choose the '
                           f'splits with --split')
        dataset = image_folder(folder, None, split)  # one-line errors: empty, no classes, no images
        check_empty_classes(dataset, folder, split)
        folders[split] = dataset
    classes = next(iter(folders.values())).classes
    for split, dataset in folders.items():
        if dataset.classes != classes:
            raise LitError(f'{split}/ in {src} has other class folders than {splits[0]}/; give every split the same '
                           f'class subfolders')
    partial = out / PARTIAL
    if partial.exists():  # an interrupted pack of ours: nothing of the user's is in it
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    from PIL import Image

    summary = dict(source=str(src.resolve()), out=str(out.resolve()), classes=list(classes), splits={})
    index = dict(format=INDEX_FORMAT, version=1, classes=list(classes), created=time.strftime('%Y-%m-%dT%H:%M:%S'),
                 source=str(src.resolve()), shard_size=shard_size, seed=seed, splits={})
    for split, dataset in folders.items():
        samples = list(dataset.samples)
        if split not in VAL_DIRNAMES:  # mix the classes across shards
            random.Random(seed).shuffle(samples)
        shards: List[Dict] = []
        skipped: List[str] = []
        writer, f, size, count, key = None, None, 0, 0, 0

        def close():
            if writer is not None:
                writer.close()
                f.close()
                shards[-1].update(count=count, bytes=(partial / shards[-1]['name']).stat().st_size)

        for done, (path, target) in enumerate(samples, start=1):
            try:
                data = Path(path).read_bytes()
                with Image.open(io.BytesIO(data)) as im:  # the header only: cheap, catches non-images
                    im.verify()
            except Exception as e:
                if strict:
                    raise LitError(f'unreadable image {path} ({type(e).__name__}: {e}); fix or remove it, or run '
                                   f'without --strict-data to leave such files out') from None
                skipped.append(str(path))
                if on_file:
                    on_file(split, done, len(samples))
                continue
            ext = Path(path).suffix.lower().lstrip('.') or 'jpg'
            ext = 'jpg' if ext == 'jpeg' else ext
            cls = str(target).encode()
            need = _member_bytes(len(data)) + _member_bytes(len(cls))
            # a shard stays within --shard-size (a single sample larger than it still gets a shard of its own)
            if writer is None or (count and _tar_file_bytes(size + need) > shard_size):
                close()
                shards.append(dict(name=f'{split}-{len(shards):06d}.tar'))
                f = open(partial / shards[-1]['name'], 'wb')
                writer = wds.TarWriter(f, encoder=False, user='lit', group='lit', mtime=MTIME)
                size, count = 0, 0
            writer.write({'__key__': f'{key:08d}', ext: data, 'cls': cls})
            size, count, key = size + need, count + 1, key + 1
            if on_file:
                on_file(split, done, len(samples))
        close()
        writer = None
        if not shards:
            raise LitError(f'no readable image in {src}/{split}/ ({len(skipped)} file(s) could not be opened); the '
                           f'{split} split would be empty')
        index['splits'][split] = dict(count=key, shards=shards, skipped=len(skipped))
        summary['splits'][split] = dict(images=key, shards=len(shards), bytes=sum(s['bytes'] for s in shards),
                                        skipped=skipped,
                                        pattern=f'wds:{out.resolve()}/{split}-{{000000..{len(shards) - 1:06d}}}.tar')
        if skipped:
            log(f'warning: left out {len(skipped)} file(s) of {split}/ that are not readable images: '
                f'{", ".join(skipped[:3])}' + (' ...' if len(skipped) > 3 else ''))
    for split in folders:
        for shard in index['splits'][split]['shards']:
            os.replace(partial / shard['name'], out / shard['name'])
    tmp = out / f'.{INDEX_NAME}.tmp'
    with open(tmp, 'w') as fh:
        fh.write(json.dumps(index, indent=1) + '\n')
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out / INDEX_NAME)
    shutil.rmtree(partial, ignore_errors=True)
    summary['index'] = str(out.resolve() / INDEX_NAME)
    return summary

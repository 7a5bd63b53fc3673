"""``lit data pack``: an image folder -> WebDataset shards + ``index.json`` (the format ``litcli.core.data.shards`` reads).

Each image goes in as its file's bytes (no re-encoding: same pixels, no quality loss, fast) with its class index;
the training split is shuffled once (by ``seed``) so every shard holds a mix of classes, which the streaming reader
relies on (a batch comes from one worker's stretch of one or two shards). Shards close at ``shard_size`` bytes.
Files PIL cannot even open (not an image, a broken header) are left out and counted, or stop the pack with
``strict``; the image folder is only read. The output folder must be new or empty: the shards are written into
``OUT/.lit-pack-partial/`` (each shard atomically) and moved into place at the end, ``index.json`` last, so an
unfinished pack never leaves an index nor anything that looks complete; a pack stopped by an error, a full disk,
Ctrl-C or SIGTERM (``commands.data_pack`` turns it into KeyboardInterrupt) also removes what it wrote, and says
where the files are when it cannot. Only SIGKILL leaves ``.lit-pack-partial/``: the next pack into the folder
removes it, and reading the folder as data says "interrupted pack?" (``datasets.resolve_data``).
"""
import contextlib
import io
import os
import random
import shutil
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from litcli.core.data.datasets import PACK_PARTIAL, VAL_DIRNAMES, check_empty_classes, image_folder, split_dir
from litcli.core.data.shards import INDEX_FORMAT, INDEX_NAME, webdataset
from litcli.core.errors import LitError, WriteError
from litcli.core.io import atomic_write, fsync_dir, write_json

PARTIAL = PACK_PARTIAL
ELSEWHERE = 'choose another output folder'
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
    created = not out.exists()
    partial = out / PARTIAL
    summary = dict(source=str(src.resolve()), out=str(out.resolve()), classes=list(classes), splits={})
    index = dict(format=INDEX_FORMAT, version=1, classes=list(classes), created=time.strftime('%Y-%m-%dT%H:%M:%S'),
                 source=str(src.resolve()), shard_size=shard_size, seed=seed, splits={})
    moved: List[Path] = []  # shards already in ``out``: taken out again if the pack does not finish
    try:
        if partial.exists():  # an interrupted pack of ours: nothing of the user's is in it
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        for split, dataset in folders.items():
            _pack_split(wds, split, dataset, partial, index, summary, src, out, shard_size, seed, strict, on_file,
                        log)
        for split in folders:
            for shard in index['splits'][split]['shards']:
                moved.append(out / shard['name'])  # first: a signal right after the rename still finds it
                os.replace(partial / shard['name'], out / shard['name'])
        fsync_dir(out)
        write_json(out / INDEX_NAME, index, ELSEWHERE, indent=1)  # last: a folder with an index is complete
    except BaseException as e:
        left = _clean_up(out, partial, moved, created)
        if isinstance(e, WriteError):  # a full disk: the shards written so far are gone again
            raise WriteError(f'{e}; {left}', path=e.path, errno=e.errno) from None
        e.cleanup = left  # Ctrl-C, or SIGTERM (commands.data_pack makes it one): the command says what was done
        raise
    shutil.rmtree(partial, ignore_errors=True)
    summary['index'] = str(out.resolve() / INDEX_NAME)
    return summary


def _clean_up(out: Path, partial: Path, moved: Sequence[Path], created: bool) -> str:
    """Remove what an unfinished pack wrote (the partial shards, shards already moved, ``out`` when the pack
    made it); say what was done, or where the files are when they could not be removed."""
    try:
        for path in moved:
            path.unlink(missing_ok=True)
        if partial.exists():
            shutil.rmtree(partial)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        return f'the partial shards were removed from {out}: nothing was packed'
    except BaseException as e:  # a second Ctrl-C, a file that cannot be removed
        try:
            size = f' ({sum(p.stat().st_size for p in partial.rglob("*") if p.is_file()) / 1e6:.1f} MB)'
        except BaseException:
            size = ''
        return (f'the partial shards could not all be removed ({type(e).__name__}): delete {partial}{size}' +
                (f' and the shards in {out}' if moved else '') + ' before packing again')


def _pack_split(wds, split: str, dataset, partial: Path, index: Dict, summary: Dict, src: Path, out: Path,
                shard_size: int, seed: int, strict: bool, on_file, log):
    """Write ``split``'s shards into ``partial`` (each atomically) and record them in ``index`` and ``summary``."""
    samples = list(dataset.samples)
    if split not in VAL_DIRNAMES:  # mix the classes across shards
        random.Random(seed).shuffle(samples)
    skipped: List[str] = []
    readable = _readable(samples, split, strict, skipped, on_file)
    pending = next(readable, None)
    shards: List[Dict] = []
    key = 0

    def fill(f):
        """One shard: samples while they fit in ``shard_size`` (a single larger one gets a shard of its own)."""
        nonlocal pending, key
        writer = wds.TarWriter(f, encoder=False, user='lit', group='lit', mtime=MTIME)
        size, count = 0, 0
        try:
            while pending is not None:
                data, ext, cls = pending
                need = _member_bytes(len(data)) + _member_bytes(len(cls))
                if count and _tar_file_bytes(size + need) > shard_size:
                    break
                writer.write({'__key__': f'{key:08d}', ext: data, 'cls': cls})
                size, count, key = size + need, count + 1, key + 1
                pending = next(readable, None)
        except BaseException:
            with contextlib.suppress(Exception):  # closed now, not by the garbage collector into a closed file
                writer.close()
            raise
        writer.close()
        shards[-1]['count'] = count

    while pending is not None:
        shards.append(dict(name=f'{split}-{len(shards):06d}.tar'))
        path = atomic_write(partial / shards[-1]['name'], fill, ELSEWHERE)
        shards[-1]['bytes'] = path.stat().st_size
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


def _readable(samples, split: str, strict: bool, skipped: List[str], on_file) -> Iterator[Tuple[bytes, str, bytes]]:
    """(file bytes, extension, class bytes) of every sample PIL can open; the others are counted in ``skipped``
    (or stop the pack with ``strict``)."""
    from PIL import Image

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
        if on_file:  # reported before the sample is written, as it is read
            on_file(split, done, len(samples))
        yield data, ext, str(target).encode()

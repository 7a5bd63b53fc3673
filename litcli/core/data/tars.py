"""An ImageFolder tree inside tar files (``--data imagenet.tar`` or a folder of tar files), read by random access.

A tar stands for the folder it was made from: ``train.tar`` holding ``cat/1.jpg`` (``tar -C train -cf train.tar
.``) and ``train.tar`` holding ``train/cat/1.jpg`` (``tar -cf train.tar train``) both give ``train/cat/1.jpg``;
``train/cat.tar`` holding ``1.jpg`` (timm's one-tar-per-class ImageNet layout) gives ``train/cat/1.jpg`` too. A tar
given directly holds the tree itself (``imagenet.tar``: ``[imagenet/]train/<class>/...`` and ``val/<class>/...``).
Within that virtual tree the rules are the folder path's: ``train/`` and ``val/`` (or ``validation/``) with one
subfolder per class, images found by suffix, other members ignored.

The member headers are scanned once when the data set is built (seeking over the data, so about one 512-byte
read per member), keeping only each image's name, tar, data offset and size; every process then reads an image
with one ``os.pread`` on its own file descriptor. timm's ``ReaderImageInTar`` does the same scan but labels by the
last folder across the whole tar (no train/val split inside one tar), asserts on bad input, and reads through a
``TarFile`` whose file offset forked workers share; hence this module.
"""
import io
import os
import tarfile
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from litcli.core.errors import LitError
from litcli.core.data.images import IMAGE_SUFFIXES, load_image

MAX_OPEN_TARS = 64  # open tar files per process; more are reopened on use (least recently used closed)


def _clean(member: str) -> List[str]:
    return [p for p in member.replace('\\', '/').split('/') if p not in ('', '.')]


def tar_sources(path: Path) -> List[Tuple[Path, List[str], Optional[str]]]:
    """(tar file, folder parts of its place in the virtual tree, the name it stands for or None) for ``--data``:
    a tar file given directly stands for the tree's root; a folder's tars (searched recursively) stand for the
    folders they were made from."""
    path = Path(path)
    if path.is_file():
        return [(path, [], None)]
    tars = sorted(p for p in path.rglob('*.tar') if p.is_file() and not p.name.startswith('.'))
    return [(t, list(t.relative_to(path).parent.parts), t.stem) for t in tars]


def has_tars(path: Path, depth: int = 2) -> bool:
    """Whether ``path`` holds tar files at its top level or up to ``depth - 1`` folders down."""
    path = Path(path)
    patterns = ['*.tar'] + ['/'.join(['*'] * d + ['*.tar']) for d in range(1, depth)]
    return any(p.is_file() for pattern in patterns for p in path.glob(pattern))


def scan_tar(path: Path):
    """(member name, data offset, size) of every regular file in ``path``; a one-line LitError when the file is
    not a tar or is cut short."""
    entries = []
    try:
        file_size = path.stat().st_size
        with tarfile.open(path, 'r:') as tf:
            while True:
                ti = tf.next()  # reads a header and seeks over the data ('r:' is random access)
                if ti is None:
                    break
                if ti.isreg():
                    entries.append((ti.name, ti.offset_data, ti.size))
                tf.members = []  # keep memory flat: a TarFile remembers every TarInfo otherwise
    except (tarfile.TarError, OSError, EOFError, UnicodeDecodeError) as e:
        raise LitError(f'cannot read {path} as a tar file ({type(e).__name__}: {e}): it is truncated, corrupt or not '
                       f'an uncompressed .tar; copy or create it again') from None
    # tarfile stops silently at a cut inside the data: the last member then claims bytes the file does not have
    cut = [name for name, offset, size in entries if offset + size > file_size]
    if cut:
        raise LitError(f'{path} is truncated ({file_size} bytes; member {cut[0]} ends past the end); copy or '
                       f'create the tar again')
    return entries


class TarTree:
    """The image members of one or more tars as one virtual folder tree (see the module docstring)."""

    def __init__(self, source: Path):
        self.source = Path(source)
        self.tars: List[str] = []
        names, tar_ids, offsets, sizes = [], [], [], []
        for tar_id, (tar, folder, stands_for) in enumerate(tar_sources(self.source)):
            self.tars.append(str(tar))
            for member, offset, size in scan_tar(tar):
                parts = _clean(member)
                if not parts or not parts[-1].lower().endswith(IMAGE_SUFFIXES):
                    continue  # like an image folder, other files are not samples
                if stands_for is not None and parts[0] != stands_for:
                    parts = [stands_for] + parts
                names.append('/'.join(folder + parts))
                tar_ids.append(tar_id)
                offsets.append(offset)
                sizes.append(size)
        if not self.tars:
            raise LitError(f'no .tar files in {self.source}; give a tar file or a folder of tar files holding an '
                           f'image folder')
        self.names = names
        self.tar_ids = np.asarray(tar_ids, dtype=np.int32)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64)

    def _children(self, prefix: str) -> Dict[str, int]:
        """Sub-folders of ``prefix`` ('' = root) -> number of images under each."""
        out: Dict[str, int] = {}
        start = prefix + '/' if prefix else ''
        for name in self.names:
            if name.startswith(start):
                rest = name[len(start):].split('/')
                if len(rest) > 1:
                    out[rest[0]] = out.get(rest[0], 0) + 1
        return out

    def root(self, split_names: Sequence[str]) -> str:
        """The virtual folder holding the splits: the root, or the single folder the root consists of (an archive
        of ``imagenet/``), repeatedly."""
        prefix = ''
        while True:
            children = self._children(prefix)
            direct = any((name.rsplit('/', 1)[0] if '/' in name else '') == prefix for name in self.names)
            if any(n in children for n in split_names) or len(children) != 1 or direct:
                return prefix
            only = next(iter(children))
            prefix = f'{prefix}/{only}' if prefix else only

    def has(self, folder: str) -> bool:
        start = folder + '/'
        return any(name.startswith(start) for name in self.names)

    def split(self, folder: str, transform=None) -> 'TarImages':
        """The image folder at virtual path ``folder``: classes = its sub-folders (sorted, hidden ones left out),
        samples = the images under each (sorted by name)."""
        start = folder + '/' if folder else ''
        chosen, labels = [], []
        for i, name in enumerate(self.names):
            if not name.startswith(start):
                continue
            rest = name[len(start):].split('/')
            if len(rest) < 2 or rest[0].startswith('.'):
                continue
            chosen.append(i)
            labels.append(rest[0])
        classes = sorted(set(labels))
        index = {c: k for k, c in enumerate(classes)}
        order = sorted(range(len(chosen)), key=lambda k: self.names[chosen[k]])
        members = np.asarray([chosen[k] for k in order], dtype=np.int64)
        targets = [index[labels[k]] for k in order]
        where = f'{self.source}:{folder}' if folder else str(self.source)
        return TarImages(self, members, targets, classes, where, transform)


class TarImages:
    """One split of a ``TarTree`` with ImageFolder's interface (``samples``, ``targets``, ``classes``, ``root``,
    ``transform``), for ``litcli.core.data.datasets.SkipUnreadable``; images are read by ``load_sample(index)``."""

    def __init__(self, tree: TarTree, members: np.ndarray, targets: List[int], classes: List[str], root: str,
                 transform=None):
        self.tars, self.tar_ids = tree.tars, tree.tar_ids[members]
        self.offsets, self.sizes = tree.offsets[members], tree.sizes[members]
        self.names = [tree.names[i] for i in members]
        self.targets = targets
        self.classes = classes
        self.class_to_idx = {c: i for i, c in enumerate(classes)}
        self.root = root
        self.transform = transform
        self.target_transform = None
        # (pid, tar id) -> descriptor, newest used last: forked workers open their own. At most MAX_OPEN_TARS per
        # process stay open (timm's class-per-tar ImageNet layout has 1000 tars per split; ulimit -n is often 1024).
        self._fds: 'OrderedDict[Tuple[int, int], int]' = OrderedDict()

    @property
    def samples(self):
        return _Samples(self)

    def __len__(self):
        return len(self.names)

    def __getstate__(self):  # descriptors do not travel to spawned workers
        state = dict(self.__dict__)
        state['_fds'] = OrderedDict()
        return state

    def _descriptor(self, tar: int) -> int:
        """An open descriptor of tar ``tar`` for this process; the least recently used one is closed beyond
        ``MAX_OPEN_TARS`` (a parent's descriptors inherited by a forked worker are dropped, not closed: they are
        the parent's)."""
        pid = os.getpid()
        key = (pid, tar)
        fd = self._fds.get(key)
        if fd is not None:
            self._fds.move_to_end(key)
            return fd
        for other in [k for k in self._fds if k[0] != pid]:
            del self._fds[other]
        while len(self._fds) >= MAX_OPEN_TARS:
            os.close(self._fds.popitem(last=False)[1])
        try:
            fd = self._fds[key] = os.open(self.tars[tar], os.O_RDONLY)
        except OSError as e:
            raise LitError(f'cannot open {self.tars[tar]} ({e.strerror}); is the data still there?') from None
        return fd

    def read(self, index: int) -> bytes:
        tar = int(self.tar_ids[index])
        fd = self._descriptor(tar)
        size = int(self.sizes[index])
        data = os.pread(fd, size, int(self.offsets[index]))
        if len(data) != size:
            raise LitError(f'{self.tars[tar]} is shorter than when it was scanned (member {self.names[index]}); '
                           f'it was changed during the run')
        return data

    def load_sample(self, index: int):
        """The decoded RGB image of sample ``index`` (a LitError naming it when it cannot be decoded)."""
        name = f'{self.tars[int(self.tar_ids[index])]}:{self.names[index]}'
        return load_image(io.BytesIO(self.read(index)), name=name)

    def __getitem__(self, index):
        img = self.load_sample(index)
        return (self.transform(img) if self.transform is not None else img), self.targets[index]


class _Samples:
    """``samples[i] == (name, target)`` without a list of a million tuples per worker."""

    def __init__(self, images: TarImages):
        self.images = images

    def __len__(self):
        return len(self.images.names)

    def __getitem__(self, i):
        return self.images.names[i], self.images.targets[i]

"""The one way lit writes a file: ``atomic_write`` (a temporary file in the same folder, fsync, rename, directory
fsync). A reader, or a kill at any instant, sees the old file or the complete new one, never a partial one; a
failed write leaves no temporary file and the old file as it was.

Every byte goes to the OS through ``_write`` (tests replace it to simulate a full disk), so a full disk, a quota,
a read-only or forbidden place is one ``WriteError`` naming the file, the problem and the fix, whichever library
fills the file (``torch.save`` turns a failed write into a RuntimeError of its own: the OSError underneath is the
one reported). ``write_bytes`` / ``write_text`` / ``write_json`` / ``write_csv`` / ``save_png`` / ``save_figure`` cover the
common cases; ``elsewhere`` is the caller's way out ("choose another --out").
"""
import csv
import errno
import io
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Optional, Sequence, Union

from litcli.core.errors import WriteError

PathLike = Union[str, Path]
ELSEWHERE = 'write it to another folder'
BUFFER = 1 << 20

# errno -> what the user reads; a full disk (or quota) also says "free some space"
PROBLEMS = {errno.ENOSPC: 'no space left on the device', errno.EDQUOT: 'disk quota exceeded',
            errno.EFBIG: 'file too large for its file system', errno.EROFS: 'read-only file system',
            errno.EACCES: 'permission denied', errno.EPERM: 'operation not permitted',
            errno.EIO: 'input/output error (a failing disk or a lost network mount?)'}
FULL = (errno.ENOSPC, errno.EDQUOT)


def write_error(path: PathLike, e: OSError, elsewhere: str = ELSEWHERE, existed: bool = False) -> WriteError:
    """The one-line error for ``e`` writing ``path``: ``cannot write PATH: PROBLEM (...); FIX``."""
    problem = PROBLEMS.get(e.errno) or (e.strerror or str(e) or type(e).__name__).strip()
    kept = ' (the existing file is unchanged)' if existed else ''
    fix = f'free some space there or {elsewhere}' if e.errno in FULL else elsewhere
    return WriteError(f'cannot write {path}: {problem}{kept}; {fix}', path=Path(path), errno=e.errno)


def _write(fd: int, data) -> int:
    """The one place lit's file bytes go to the OS; returns how many were written (maybe fewer than given)."""
    return os.write(fd, data)


class _Sink(io.RawIOBase):
    """The temporary file under the buffer ``write`` gets: every byte through ``_write``, the first OSError kept
    (a library may swallow it and raise its own error). ``name`` is the temporary file's path. No ``fileno``, so
    no library writes around it."""

    def __init__(self, fd: int, name: str, seekable: bool = True):
        super().__init__()
        self.fd, self.name, self.error, self.discard, self._seekable = fd, name, None, False, seekable

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._seekable

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return os.lseek(self.fd, offset, whence)

    def tell(self) -> int:
        return os.lseek(self.fd, 0, os.SEEK_CUR)

    def write(self, data) -> int:
        if self.discard:  # failed: whatever the buffer still holds goes nowhere
            return len(data)
        try:
            return _write(self.fd, data)
        except OSError as e:
            if self.error is None:
                self.error = e
            raise


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None], elsewhere: str = ELSEWHERE) -> Path:
    """Create or replace ``path`` atomically: ``write(f)`` fills ``f``, a binary file object on a temporary file
    in the same folder (``f.name`` is its path), which is then fsynced and renamed over ``path``, and the folder
    fsynced. A new file gets a normal file's permissions (0666 less the umask), a replaced one keeps its own.

    On any failure the temporary file is removed and ``path`` is untouched; a failure to write (full disk, quota,
    read-only or forbidden place) is a ``WriteError`` whose fix ends in ``elsewhere``. Other errors of ``write``
    (and Ctrl-C) propagate as they are. A stream or device (``--csv /dev/stdout``, a FIFO) is written in place."""
    path = Path(path)
    if _stream(path):
        return _write_in_place(path, write, elsewhere)
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    except OSError as e:
        raise write_error(path, e, elsewhere, existed) from None
    sink = _Sink(fd, tmp)
    f = io.BufferedWriter(sink, BUFFER)
    try:
        try:
            write(f)
            if not f.closed:
                f.flush()
        except Exception as e:
            if sink.error is not None:  # the disk failed, whatever the library made of it
                raise write_error(path, sink.error, elsewhere, existed) from e
            raise
        try:  # mkstemp makes it private (a file system without modes refuses: it keeps what it has)
            os.fchmod(fd, _mode(path) if existed else 0o666 & ~_umask())
        except OSError:
            pass
        try:
            os.fsync(fd)
            os.close(fd)
            fd = None
            os.replace(tmp, path)
        except OSError as e:
            raise write_error(path, e, elsewhere, existed) from None
    except BaseException:
        # From now on whatever reaches the buffer goes nowhere: a library may still hold ``f`` and write into it
        # when it is collected (a tar stream closing itself), so ``f`` is left open for the garbage collector.
        sink.discard = True
        if fd is not None:
            os.close(fd)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    sink.discard = True  # the file is complete and closed: closing the buffer writes nothing
    f.close()
    fsync_dir(path.parent)
    return path


def _stream(path: Path) -> bool:
    """Whether ``path`` is a stream or a device (``/dev/stdout``, ``/dev/null``, a FIFO, ``/proc/self/fd/N``):
    nothing a rename could replace, and renaming over it would swap the device or pipe for a plain file."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return True
    # /dev/stdout, /dev/fd/1, /proc/self/fd/1 redirected to a file: the file this process is already writing
    return os.path.realpath(path.parent).startswith('/proc/') or \
        (path.is_symlink() and os.readlink(path).startswith('/proc/'))


def _write_in_place(path: Path, write: Callable[[BinaryIO], None], elsewhere: str) -> Path:
    """``write(f)`` straight into the stream or device ``path`` (no temporary file, no fsync); a failure to write
    is the same one-line ``WriteError``."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)  # as open(path, 'w') did
    except OSError as e:
        raise write_error(path, e, elsewhere) from None
    sink = _Sink(fd, str(path), seekable=False)
    f = io.BufferedWriter(sink, BUFFER)
    try:
        write(f)
        if not f.closed:
            f.flush()
    except BaseException as e:
        sink.discard = True
        os.close(fd)
        if isinstance(e, Exception) and sink.error is not None:
            raise write_error(path, sink.error, elsewhere) from e
        raise
    sink.discard = True
    f.close()
    os.close(fd)
    return path


def fsync_dir(folder: PathLike):
    """Make renames and new names in ``folder`` durable (a no-op where the file system cannot)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


# ---- the common cases ----
def write_bytes(path: PathLike, data: bytes, elsewhere: str = ELSEWHERE) -> Path:
    return atomic_write(path, lambda f: f.write(data), elsewhere)


def write_text(path: PathLike, text: str, elsewhere: str = ELSEWHERE) -> Path:
    return write_bytes(path, text.encode('utf-8'), elsewhere)


def write_json(path: PathLike, obj: Any, elsewhere: str = ELSEWHERE, indent: Optional[int] = 2) -> Path:
    """``obj`` as JSON, ending in a newline."""
    return write_text(path, json.dumps(obj, indent=indent) + '\n', elsewhere)


def write_csv(path: PathLike, rows: Iterable[Sequence], elsewhere: str = ELSEWHERE) -> Path:
    """Rows (the header first) as CSV, as ``csv.writer`` writes them."""
    text = io.StringIO(newline='')
    csv.writer(text).writerows(rows)
    return write_text(path, text.getvalue(), elsewhere)


def save_png(path: PathLike, image, elsewhere: str = ELSEWHERE) -> Path:
    """A PIL image, or an (H, W[, C]) uint8 array, as a PNG file."""
    from PIL import Image

    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    return atomic_write(path, lambda f: picture.save(f, format='PNG'), elsewhere)


def save_figure(fig, path: PathLike, elsewhere: str = ELSEWHERE, **savefig_kwargs) -> Path:
    """``fig.savefig`` atomically (the format from the suffix unless given); the figure is closed either way."""
    import matplotlib.pyplot as plt

    savefig_kwargs.setdefault('format', Path(path).suffix.lstrip('.').lower() or 'png')
    try:
        return atomic_write(path, lambda f: fig.savefig(f, **savefig_kwargs), elsewhere)
    finally:
        plt.close(fig)

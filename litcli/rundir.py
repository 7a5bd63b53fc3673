"""Output folders that never overwrite another run: ``base/name``, else ``base/name-2``, ``-3``, ..."""
import os
from pathlib import Path
from typing import Union

from litcli.errors import LitError


def new_run_dir(base: Union[str, Path], name: str, exist_ok: bool = False) -> Path:
    """Create and return a fresh run directory (or reuse ``base/name`` when ``exist_ok``).

    Raises LitError with the fix when the location is not writable.
    """
    base = Path(base)
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LitError(f'cannot create output folder {base} ({e.strerror}); pass a writable --output')
    if not os.access(base, os.W_OK):
        raise LitError(f'output folder {base} is not writable; pass a writable --output')
    candidate, n = base / name, 1
    if exist_ok:
        candidate.mkdir(exist_ok=True)
        return candidate
    while True:
        try:
            candidate.mkdir()  # atomic claim: two runs never get the same folder
            return candidate
        except FileExistsError:
            n += 1
            candidate = base / f'{name}-{n}'

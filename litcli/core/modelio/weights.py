"""The released LIT weights as data (variant, URL, paper top-1, GMACs; the six dense models of
``litcli.models.dense_zoo`` too), where they are cached, and a download that never leaves a partial or wrong file in
the cache.

The cache is torch hub's (``torch.hub.get_dir()/checkpoints``: ``$TORCH_HOME/hub/checkpoints``, by default
``~/.cache/torch/hub/checkpoints``), the folder and file name (``lit_s.pth``) that ``timm.create_model('lit_s',
pretrained=True)`` downloads to as well, so either route finds the other's file. (``HF_HOME`` is the cache of weights
hosted on the Hugging Face hub; the LIT releases are GitHub release assets, so it does not apply.)

A download goes to a temporary name in the cache folder, with a timeout on every network operation (connect and
each read), is checked for its full length and then verified by the caller (it must load strictly as the right
variant) before it is renamed into place. Every failure is a one-line ``LitError`` naming the URL and the two ways
out: download the file elsewhere and pass ``--checkpoint``, or put it into the cache folder (whose path it prints).

We write this instead of calling ``torch.hub.download_url_to_file`` (what timm uses) because that has no timeout
(an unreachable host hangs for minutes), accepts a body shorter than its Content-Length (``http.client`` returns
what arrived when the connection closes early) and cannot verify the file before renaming it into the cache.
"""
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

from litcli.core.errors import LitError, UsageError
from litcli.core.io import atomic_write
from litcli.models.spec import PVT_S_MSA_URL, release_url

URL_ENV = 'LIT_WEIGHTS_URL'  # a base URL (mirror) holding lit_ti.pth ... retina_lit_ti.pth ... instead of GitHub
TIMEOUT_ENV = 'LIT_WEIGHTS_TIMEOUT'  # seconds allowed for the connection and for each read
DEFAULT_TIMEOUT = 30.0
CHUNK = 1 << 20


@dataclass(frozen=True)
class Release:
    """One released checkpoint: ImageNet-1k, 224 px, 1000 classes; top-1 and GMACs as the paper reports them."""
    variant: str  # the registered name, e.g. 'lit_s'
    top1: float  # %, paper Table 2
    gmacs: float  # the paper's "FLOPs" at 224 px
    params_m: int  # millions, without the classifier, as the paper prints them
    url: str = ''  # where the file is published; '' = <spec.RELEASE_URL>/<variant>.pth

    @property
    def short(self) -> str:
        return self.variant.removeprefix('lit_')

    @property
    def published_url(self) -> str:
        return self.url or release_url(self.variant)


RELEASES: Dict[str, Release] = {r.variant: r for r in (
    Release('lit_ti', 81.1, 3.6, 19),
    Release('lit_s', 81.5, 4.1, 27),
    Release('lit_m', 83.0, 8.6, 48),
    Release('lit_b', 83.4, 15.0, 86),
    # "PVT w/ MSA" of the paper's Figure 3 (80.9%); GMACs and parameters measured (lit flops -v pvt_s_msa).
    Release('pvt_s_msa', 80.9, 8.4, 20, PVT_S_MSA_URL),
)}


def published_url(name: str) -> str:
    """Where the released file of ``name`` is published: a classification variant ('lit_s', 'pvt_s_msa') or one of
    the six dense models ('retinanet_lit_ti', ...); a UsageError for a model without released weights."""
    from litcli.models.dense_zoo import DENSE_MODELS

    if name in DENSE_MODELS:
        return DENSE_MODELS[name].url
    return release(name).published_url


def release(variant: str) -> Release:
    """The release of ``variant`` ('lit_s'); a UsageError for a model without released weights."""
    if variant not in RELEASES:
        raise UsageError(f'{variant} has no released weights (only these do: '
                         f'{", ".join(r.short for r in RELEASES.values())}, and the dense models of lit detect / '
                         f'lit segment); pick one of them with --variant, or give a weights file instead')
    return RELEASES[variant]


def weights_url(variant: str) -> str:
    """The URL the weights of ``variant`` download from: the published one, or its file name under
    ``$LIT_WEIGHTS_URL`` when set (a mirror, or a local server in the tests)."""
    url = published_url(variant)
    mirror = os.environ.get(URL_ENV, '').strip()
    return f'{mirror.rstrip("/")}/{Path(url).name}' if mirror else url


def cache_dir() -> Path:
    """torch hub's checkpoint folder (timm's ``get_cache_dir()`` without creating it): honours ``TORCH_HOME``,
    ``XDG_CACHE_HOME`` and ``torch.hub.set_dir``."""
    import torch.hub

    return Path(torch.hub.get_dir()) / 'checkpoints'


def cache_path(variant: str) -> Path:
    """Where the weights of ``variant`` are (or will be) cached: the URL's file name, as torch hub/timm name it."""
    return cache_dir() / Path(published_url(variant)).name


def cached(variant: str) -> Optional[Path]:
    path = cache_path(variant)
    return path if path.is_file() else None


def timeout_s() -> float:
    text = os.environ.get(TIMEOUT_ENV, '').strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UsageError(f'{TIMEOUT_ENV}={text!r} is not a number of seconds > 0; unset it or set e.g. 60')
    return value


def ways_out(variant: str) -> str:
    """The two ways to get the weights without this download, for every error message."""
    return (f'download {weights_url(variant)} elsewhere and pass --checkpoint FILE (lit train: --initial-checkpoint '
            f'FILE), or put the file at {cache_path(variant)}')


def _stderr(message: str):
    print(message, file=sys.stderr, flush=True)


def fetch(variant: str, verify: Callable[[Path, str], None], log: Optional[Callable[[str], None]] = None,
          timeout: Optional[float] = None) -> Path:
    """The cached file of ``variant``'s released weights, downloaded first when not cached.

    ``verify(path, url)`` must raise a ``LitError`` when the downloaded file is not the variant's weights (the
    factory loads it strictly into the variant); only a verified, complete file is renamed into the cache.
    A file already in the cache must hold ``variant``'s weights (``cache_problem``: keys and shapes, no tensor
    read), else a one-line LitError says what it holds and how to get the release.
    """
    published_url(variant)  # refuses a model without released weights
    path = cached(variant)
    if path is not None:
        return _refuse_another_file(variant, path)
    with _download_lock(cache_path(variant)):
        path = cached(variant)  # another process (a torchrun rank) finished the download while this one waited
        if path is not None:
            return _refuse_another_file(variant, path)
        return download(variant, verify, log or _stderr, timeout_s() if timeout is None else timeout)


@contextmanager
def _download_lock(dest: Path):
    """One download of ``dest`` at a time across the processes of a machine (every rank of ``torchrun lit eval
    --pretrained`` asks for the file at once): an exclusive ``flock`` on ``.<name>.lock`` beside it. Where the
    folder cannot be written or there is no ``fcntl`` (Windows), no lock: the download reports its own error, and
    concurrent downloads stay safe (each writes its own temporary file and renames it)."""
    try:
        import fcntl

        dest.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(dest.parent / f'.{dest.name}.lock', os.O_RDWR | os.O_CREAT, 0o666)
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the holder's download is bounded by its timeouts
        yield
    finally:
        os.close(fd)  # releases the lock


def _reason(e: BaseException, timeout: float) -> str:
    """What went wrong, in a few words: 'HTTP 404 Not Found', 'Connection refused', 'no answer in 30 s'."""
    import urllib.error

    if isinstance(e, urllib.error.HTTPError):
        return f'HTTP {e.code} {e.reason}'
    if isinstance(e, urllib.error.URLError):
        e = e.reason  # the OSError underneath (refused, timed out, name not resolved), or a string
    if isinstance(e, TimeoutError):  # socket.timeout is TimeoutError
        return f'no answer in {timeout:g} s'
    if isinstance(e, BaseException):
        return (getattr(e, 'strerror', None) or str(e) or type(e).__name__).strip()
    return str(e)


def download(variant: str, verify: Callable[[Path, str], None], log: Callable[[str], None] = _stderr,
             timeout: float = DEFAULT_TIMEOUT) -> Path:
    """Download ``variant``'s weights into the cache (see ``fetch``) with the one atomic writer: any failure
    (network, short body, verification, a full disk) leaves the cache as it was."""
    import http.client
    import urllib.error
    import urllib.request

    url, dest = weights_url(variant), cache_path(variant)
    received, seconds = 0, 0.0

    def failed(e: BaseException) -> LitError:
        done = f' after {received / 1e6:.1f} MB' if received else ''
        return LitError(f'cannot download the {variant} weights from {url}{done} ({_reason(e, timeout)}); '
                        f'nothing was cached; {ways_out(variant)}')

    def fill(out):
        nonlocal received, seconds
        start = time.perf_counter()
        request = urllib.request.Request(url, headers={'User-Agent': 'litcli'})
        # The timeout bounds the connection and every read, so an unreachable or silent server fails in
        # ``timeout`` seconds instead of hanging. Only the network's errors are caught here: a failed write
        # reaches the writer, which names the cache file.
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            raise failed(e) from None
        with response:
            length = response.headers.get('Content-Length')
            expected = int(length) if length and length.strip().isdigit() else None
            size = f' ({expected / 1e6:.1f} MB)' if expected else ''
            log(f'downloading the released {variant} weights{size} from {url} to {dest}')
            progress = _Progress(expected)
            try:
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except (http.client.HTTPException, OSError, ValueError) as e:
                        raise failed(e) from None
                    if not chunk:
                        break
                    out.write(chunk)
                    received += len(chunk)
                    progress.update(received)
            finally:
                progress.close()
        seconds = time.perf_counter() - start
        # A server closing the connection early ends the body without an error (http.client returns what came),
        # so a short file is caught by its length here, and by the verification where no length was sent.
        if expected is not None and received != expected:
            raise LitError(f'the download of {url} stopped after {received / 1e6:.1f} of {expected / 1e6:.1f} MB '
                           f'(connection lost); nothing was cached; run again, or {ways_out(variant)}')
        out.flush()
        try:
            verify(Path(out.name), url)
        except LitError as e:
            # Messages name the file they read: say the URL instead of the temporary name.
            message = str(e).replace(str(out.name), url)
            raise LitError(f'{message}; refused, nothing was cached; {ways_out(variant)}') from None

    atomic_write(dest, fill, f'set TORCH_HOME to another folder, or {ways_out(variant)}')
    rate = f', {received / 1e6 / seconds:.1f} MB/s' if seconds > 0 else ''
    log(f'downloaded and verified {received / 1e6:.1f} MB in {seconds:.1f} s{rate}: {dest}')
    return dest


class _Progress:
    """A transient rich bar on a terminal (stderr); nothing otherwise (the caller logs start and end lines)."""

    def __init__(self, total: Optional[int]):
        from rich.console import Console

        from litcli.core.progress import progress_bar

        self.bar = progress_bar(Console(stderr=True), label='', transfer=True)
        self.bar.start()
        self.task = self.bar.add_task('download', total=total)

    def update(self, done: int):
        self.bar.update(self.task, completed=done)

    def close(self):
        self.bar.stop()


def held_model(raw: Dict) -> Optional[str]:
    """The released model whose weights a checkpoint dict holds: a LIT classification variant recognised from its
    keys and shapes (``detect_variant``), a dense model's recorded name or official mmdet/mmseg layout; None when
    none is recognised."""
    from litcli.core.modelio.checkpoint import detect_variant
    from litcli.models.dense_zoo import DENSE_MODELS, convert_official
    from litcli.models.spec import unwrap_state_dict

    if raw.get('variant') in DENSE_MODELS:
        return raw['variant']
    state_dict = unwrap_state_dict(raw)
    found = detect_variant(state_dict)
    if found is None and any(k.startswith('backbone.') for k in state_dict):
        try:
            found = convert_official(state_dict)[0]
        except ValueError:
            pass
    return found


def cache_problem(name: str) -> Optional[str]:
    """What is wrong with the cached file of ``name``'s release (one line naming it), or None when it holds ``name``'s
    weights or nothing is cached: another model's weights (a LIT-S file saved as lit_ti.pth), an HTML page, a
    damaged file. Read for the pickle alone (``read_checkpoint(mmap=True)``), so listing the cache stays cheap."""
    from litcli.core.errors import CheckpointError
    from litcli.core.modelio.checkpoint import read_checkpoint

    path = cache_path(name)
    if not path.is_file():
        return None
    try:
        return release_mismatch(read_checkpoint(path, mmap=True), name, path)
    except CheckpointError as e:
        return str(e)


def release_mismatch(raw: Dict, name: str, source) -> Optional[str]:
    """None when the checkpoint dict ``raw`` (read from ``source``) holds ``name``'s weights (``held_model``), else
    the line saying what it holds instead: the one check of a download, a cached file and the factory's
    verification."""
    found = held_model(raw)
    if found == name:
        return None
    return f'{source} holds {f"{found} weights" if found else "no LIT weights this package recognises"}, not the ' \
           f'{name} release'


def _refuse_another_file(name: str, path: Path) -> Path:
    """``path`` when the cached file holds ``name``'s release, else a one-line LitError saying what it holds."""
    problem = cache_problem(name)
    if problem is not None:
        raise LitError(f'{problem}; it sits where the download of {name} goes: delete it to download the release '
                       f'again, or move it out of the cache and pass it with --checkpoint')
    return path


def _download_state(name: str) -> Dict:
    """Where the release of ``name`` comes from and whether the cache holds it: ``cached`` only when the file there
    is ``name``'s weights; ``problem`` says what is wrong with a file that is not."""
    path = cache_path(name)
    size = path.stat().st_size if path.is_file() else None
    problem = cache_problem(name)
    return dict(url=weights_url(name), cached=size is not None and problem is None, path=str(path), bytes=size,
                problem=problem)


def listing() -> List[Dict]:
    """Every released ImageNet-1k checkpoint with its paper figures, URL and cache state (for ``lit weights``)."""
    return [dict(variant=r.variant, top1=r.top1, gmacs=r.gmacs, params_m=r.params_m, **_download_state(r.variant))
            for r in RELEASES.values()]


def dense_listing() -> List[Dict]:
    """The six released dense models (COCO / ADE20K) with the paper's results, measured parameters, URL and cache
    state (for ``lit weights``)."""
    from litcli.models.dense_zoo import DENSE_MODELS

    return [dict(name=m.name, task=m.task, dataset=m.dataset, paper=dict(m.paper), params=m.params,
                 **_download_state(m.name)) for m in DENSE_MODELS.values()]

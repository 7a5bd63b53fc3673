"""The one writer (``litcli.core.io.atomic_write``) and what every command makes of a full disk (issue 28: user-trial
defects 3 and 5).

A full disk is simulated by ``FullDisk``, which replaces ``litcli.core.io._write`` (the one place lit's file bytes
reach the OS) with one that fills the "disk" and then raises ``OSError(ENOSPC)``, as a real one does: every
command must then print one line naming the file, the problem and the fix, exit non-zero, leave no temporary file
and leave the file that was there before unchanged. An interrupted ``lit data pack`` (SIGINT / SIGTERM) removes
what it wrote; one killed outright leaves a folder that is refused as data with "interrupted pack?"."""
import contextlib
import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import lit, lit_cmd, make_folder, train_args
from litcli.core import io as lit_io
from litcli.core.data.datasets import resolve_data
from litcli.core.errors import LitError, WriteError
from litcli.core.modelio.checkpoint import save_checkpoint
from litcli.core.data.synthetic import write_image_folder

ENOSPC_TEXT = 'no space left on the device'


class FullDisk:
    """``litcli.core.io._write`` on a disk with ``free`` bytes left: a write that does not fit writes what fits
    (a short write, as the kernel does) and the next one raises ``OSError(ENOSPC)``. ``targets``: only the
    temporary files of these file names fill up (``.NAME.XXXX.tmp``); None: every file."""

    def __init__(self, monkeypatch, free: int = 0, targets=None):
        self.free, self.targets, self.refused = free, targets, []
        real = lit_io._write

        def write(fd, data):
            name = os.path.basename(os.readlink(f'/proc/self/fd/{fd}'))
            if self.targets is not None and not any(name.startswith(f'.{t}.') for t in self.targets):
                return real(fd, data)
            size = memoryview(data).nbytes
            if self.free <= 0:
                self.refused.append(name)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            n = real(fd, memoryview(data).cast('B')[:min(size, self.free)])
            self.free -= n
            return n

        monkeypatch.setattr(lit_io, '_write', write)


@pytest.fixture
def full_disk(monkeypatch):
    """Call it to fill the disk: ``full_disk(free=0, targets=None)``."""
    if not os.path.exists(f'/proc/self/fd/{sys.stdout.fileno()}'):
        pytest.skip('needs /proc/self/fd (Linux)')
    return lambda free=0, targets=None: FullDisk(monkeypatch, free, targets)


def temporaries(folder: Path):
    return sorted(str(p) for p in Path(folder).rglob('*.tmp'))


def error_line(result, *words) -> str:
    """The run failed with one ``Error:`` line, the last one, holding ``words`` (``lit`` already refused a
    traceback)."""
    assert result.exit_code not in (0, None), result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith('Error:')]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output
    for word in words:
        assert str(word) in errors[0], (word, errors[0])
    return errors[0]


def full_disk_line(result, path: Path, fix: str = '') -> str:
    return error_line(result, f'cannot write {path}', ENOSPC_TEXT, 'free some space', fix)


# ---------------------------------------------------------------------------------------------------------------
# atomic_write itself


@pytest.mark.parametrize('umask', [0o022, 0o077], ids=['022', '077'])
def test_a_new_file_gets_normal_permissions_and_a_replaced_one_keeps_its_own(tmp_path, umask):
    before = os.umask(umask)
    try:
        path = lit_io.write_text(tmp_path / 'sub' / 'a.txt', 'one')  # the folder is made
        assert path.read_text() == 'one' and stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
        path.chmod(0o640)
        lit_io.write_bytes(path, b'two')
        assert path.read_bytes() == b'two' and stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(before)
    assert temporaries(tmp_path) == []


def test_the_helpers_write_what_they_are_given(tmp_path):
    assert json.loads(lit_io.write_json(tmp_path / 'a.json', {'x': [1, 2]}).read_text()) == {'x': [1, 2]}
    assert (tmp_path / 'a.json').read_text().endswith('}\n')
    lit_io.write_csv(tmp_path / 'a.csv', [['a', 'b'], [1, None], ['x,y', 2.5]])
    assert (tmp_path / 'a.csv').read_bytes() == b'a,b\r\n1,\r\n"x,y",2.5\r\n'  # csv.writer's own layout
    f_name = []
    lit_io.atomic_write(tmp_path / 'b.bin', lambda f: (f_name.append(f.name), f.write(b'\0' * (3 << 20))))
    assert (tmp_path / 'b.bin').stat().st_size == 3 << 20 and not os.path.exists(f_name[0])
    assert Path(f_name[0]).parent == tmp_path and Path(f_name[0]).name.startswith('.b.bin.')


def _raise(error):
    def write(f):
        f.write(b'new' * 1000)
        raise error
    return write


@pytest.mark.parametrize('how', ['full at once', 'full after a short write', 'fsync', 'a bug', 'ctrl-c'])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, full_disk, how):
    path = tmp_path / 'kept.bin'
    path.write_bytes(b'old')
    write = lambda f: f.write(b'new' * (1 << 20))  # noqa: E731
    if how == 'full at once':
        full_disk()
    elif how == 'full after a short write':
        full_disk(free=12345)
    elif how == 'fsync':  # delayed allocation: the data is accepted and the disk says no at fsync
        def fsync(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(lit_io.os, 'fsync', fsync)
    elif how == 'a bug':
        write = _raise(ValueError('not a disk problem'))
    else:
        write = _raise(KeyboardInterrupt())
    expected = {'a bug': ValueError, 'ctrl-c': KeyboardInterrupt}.get(how, WriteError)
    with pytest.raises(expected) as e:
        lit_io.atomic_write(path, write, 'choose another --out')
    if expected is WriteError:
        assert str(e.value) == (f'cannot write {path}: {ENOSPC_TEXT} (the existing file is unchanged); free some '
                                f'space there or choose another --out')
        assert e.value.path == path and e.value.errno == errno.ENOSPC
    assert path.read_bytes() == b'old' and sorted(p.name for p in tmp_path.iterdir()) == ['kept.bin']


def test_torch_save_hiding_the_full_disk_in_its_own_error_is_still_one_line(tmp_path, full_disk):
    """torch.save writing to a file object turns the OSError of a failed write into a RuntimeError ("unexpected
    pos"): the writer reports the disk, not torch's symptom."""
    path = tmp_path / 'ckpt.pt'
    save_checkpoint({'w': torch.zeros(4)}, path)
    full_disk(free=5000)
    with pytest.raises(WriteError, match=f'cannot write {path}: {ENOSPC_TEXT}') as e:
        save_checkpoint({'w': torch.randn(1000, 1000)}, path)
    assert isinstance(e.value.__cause__, RuntimeError)  # what torch raised
    assert torch.equal(torch.load(path)['w'], torch.zeros(4)) and temporaries(tmp_path) == []


@pytest.mark.parametrize('code, text, fix', [
    (errno.EDQUOT, 'disk quota exceeded', 'free some space there or choose another --out'),
    (errno.EROFS, 'read-only file system', 'choose another --out'),
    (errno.EACCES, 'permission denied', 'choose another --out'),
    (errno.EIO, 'input/output error', 'choose another --out')])
def test_each_kind_of_refused_write_names_its_problem(tmp_path, monkeypatch, code, text, fix):
    def refuse(fd, data):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(lit_io, '_write', refuse)
    with pytest.raises(WriteError) as e:
        lit_io.write_text(tmp_path / 'x.txt', 'x', 'choose another --out')
    assert str(e.value).startswith(f'cannot write {tmp_path / "x.txt"}: {text}') and str(e.value).endswith(fix)
    assert list(tmp_path.iterdir()) == []


def test_a_stream_is_written_in_place_not_replaced(tmp_path):
    """--csv /dev/stdout, a FIFO: written into, never a plain file renamed over it (as root that replaced the
    device or pipe in its folder, /dev/stdout included, and a reader of the pipe got nothing)."""
    fifo = tmp_path / 'pipe'
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        lit_io.write_csv(fifo, [['a', 'b'], [1, 2]])
        assert stat.S_ISFIFO(os.stat(fifo).st_mode)
        assert os.read(reader, 1000) == b'a,b\r\n1,2\r\n'
    finally:
        os.close(reader)
    assert temporaries(tmp_path) == []


def test_a_place_that_cannot_hold_the_file_is_one_line(tmp_path):
    (tmp_path / 'file').write_text('a file, not a folder')
    with pytest.raises(WriteError, match='cannot write .*file/sub/x.json: .*; choose another --out'):
        lit_io.write_json(tmp_path / 'file' / 'sub' / 'x.json', {}, 'choose another --out')


OLD_OR_NEW = '''
import sys
from litcli.core.io import write_bytes
path, n = sys.argv[1], int(sys.argv[2])
write_bytes(path, b'b' * n)  # the file exists before the kill can come
print('ready', flush=True)
for i in range(10 ** 6):
    write_bytes(path, (b'ab'[i % 2:i % 2 + 1]) * n)
'''


@pytest.mark.parametrize('delay', [0.05, 0.13, 0.31])
def test_a_kill_at_any_instant_leaves_the_old_or_the_new_file(tmp_path, delay):
    """A process rewriting a 2 MB file in a loop, SIGKILLed: the file is all a's or all b's, complete."""
    path, n = tmp_path / 'f.bin', 2 << 20
    proc = subprocess.Popen([sys.executable, '-c', OLD_OR_NEW, str(path), str(n)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == 'ready'
    time.sleep(delay)
    proc.kill()
    proc.wait(timeout=30)
    data = path.read_bytes()
    assert len(data) == n and data in (b'a' * n, b'b' * n)  # a SIGKILL may leave a temporary file, never a torn one


# ---------------------------------------------------------------------------------------------------------------
# Every command on a full disk


@pytest.fixture(scope='module')
def run(tiny_data, tiny_config, tmp_path_factory) -> Path:
    """A 2-epoch tiny lit train run keeping its 2 best epochs (for avg-checkpoints)."""
    output = tmp_path_factory.mktemp('runs')
    result = lit(*train_args(tiny_data, tiny_config, output, '--name', 'r', '--epochs', 2, '--keep-best', 2))
    assert result.exit_code == 0, result.output
    return output / 'r'


def test_train_checkpoint_save(run, tmp_path, full_disk):
    """The epoch-end save of last.pt fails: one line, last.pt as it was, and the metrics do not keep the epoch the
    checkpoint lacks (they used to: metrics.csv held it, after a 160-line traceback)."""
    copy = tmp_path / 'r'
    shutil.copytree(run, copy)
    last = copy / 'checkpoints' / 'last.pt'
    before = last.read_bytes(), (copy / 'metrics.csv').read_text(), (copy / 'metrics.jsonl').read_text()
    full_disk(targets=['last.pt'])
    result = lit('train', '--resume', last, '--epochs', 3, '-j', 0)
    line = full_disk_line(result, last, 'choose another --output')
    assert 'epoch 2 is not saved (its metrics row was taken out again)' in line
    assert f'resume from the last save with: lit train --resume {last}' in line
    assert (last.read_bytes(), (copy / 'metrics.csv').read_text(), (copy / 'metrics.jsonl').read_text()) == before
    assert temporaries(copy) == []


def test_train_metrics_write(run, tmp_path, full_disk):
    """metrics.csv cannot be written (after metrics.jsonl was): both go back to the epochs last.pt holds."""
    copy = tmp_path / 'r'
    shutil.copytree(run, copy)
    before = (copy / 'metrics.csv').read_text(), (copy / 'metrics.jsonl').read_text()
    full_disk(targets=['metrics.csv'])
    result = lit('train', '--resume', copy / 'checkpoints' / 'last.pt', '--epochs', 3, '-j', 0)
    full_disk_line(result, copy / 'metrics.csv', 'epoch 2 is not saved')
    assert ((copy / 'metrics.csv').read_text(), (copy / 'metrics.jsonl').read_text()) == before
    assert temporaries(copy) == []


FORMATS = ['safetensors', 'torchscript', pytest.param('onnx', marks=pytest.mark.slow)]


@pytest.mark.parametrize('fmt', FORMATS)
def test_export(run, tmp_path, full_disk, fmt):
    """torchscript used to abort in C++ (rc 134) and leave a .tmp per attempt; the old export stays as it was."""
    if fmt == 'onnx':
        pytest.importorskip('onnxscript')
    out = tmp_path / f'model.{fmt}'
    out.write_bytes(b'the earlier export')
    (tmp_path / f'model.{fmt}.json').write_text('{}')
    full_disk(free=1000)
    result = lit('export', '--checkpoint', run / 'checkpoints' / 'best.pt', '-f', fmt, '--out', out, '--force')
    full_disk_line(result, out, 'choose another --out')
    assert out.read_bytes() == b'the earlier export' and (tmp_path / f'model.{fmt}.json').read_text() == '{}'
    assert temporaries(tmp_path) == []


def test_export_config_beside_the_model(run, tmp_path, full_disk):
    """The JSON config is written before the model is renamed into place: no model without its config."""
    out = tmp_path / 'model.safetensors'
    full_disk(targets=['model.safetensors.json'])
    result = lit('export', '--checkpoint', run / 'checkpoints' / 'best.pt', '-f', 'safetensors', '--out', out)
    full_disk_line(result, tmp_path / 'model.safetensors.json')
    assert list(tmp_path.iterdir()) == []


def test_avg_checkpoints(run, tmp_path, full_disk):
    out = tmp_path / 'avg.pt'
    out.write_bytes(b'earlier average')
    full_disk(free=4096)
    result = lit('avg-checkpoints', run, '--out', out, '--force')
    full_disk_line(result, out, 'choose another --out')
    assert out.read_bytes() == b'earlier average' and temporaries(tmp_path) == []


def test_cam(run, tiny_data, tmp_path, full_disk):
    pytest.importorskip('pytorch_grad_cam')
    image, out = tiny_data / 'val' / 'cat' / '0.png', tmp_path / 'cam'
    args = ('cam', image, '--checkpoint', run / 'checkpoints' / 'best.pt', '--stage', 2, '--out', out, '--json')
    result = lit(*args)
    assert result.exit_code == 0, result.output
    png = Path(json.loads(result.stdout)['images'][0]['maps'][0]['png'])
    before = png.read_bytes()
    full_disk()
    full_disk_line(lit(*args, '--force'), png, 'choose another --out')
    assert png.read_bytes() == before and temporaries(out) == []


def test_eval_json_results_file_and_compare(run, tiny_data, tmp_path, full_disk):
    """The eval.json of an earlier evaluation stays (it was written in place before), as do a results file and
    lit compare's figure."""
    ckpt, out = run / 'checkpoints' / 'best.pt', tmp_path / 'eval'
    assert lit('eval', '--checkpoint', ckpt, '--data', tiny_data, '--out', out, '-j', 0).exit_code == 0
    before = (out / 'eval.json').read_text()
    (tmp_path / 'rows.csv').write_text('earlier rows')
    (tmp_path / 'cmp.png').write_bytes(b'earlier figure')
    full_disk()
    full_disk_line(lit('eval', '--checkpoint', ckpt, '--data', tiny_data, '--out', out, '-j', 0, '--force'),
                   out / 'eval.json', 'choose another --out')
    full_disk_line(lit('eval', '--checkpoint', ckpt, '--data', tiny_data, '--out', tmp_path / 'e2', '-j', 0,
                       '--results-file', tmp_path / 'rows.csv', '--force'),
                   tmp_path / 'rows.csv', 'choose another --results-file')
    shutil.copytree(run, tmp_path / 'r2')
    full_disk_line(lit('compare', run, tmp_path / 'r2', '--out', tmp_path / 'cmp.png', '--force'), tmp_path / 'cmp.png')
    assert (out / 'eval.json').read_text() == before and (tmp_path / 'rows.csv').read_text() == 'earlier rows'
    assert (tmp_path / 'cmp.png').read_bytes() == b'earlier figure' and temporaries(tmp_path) == []


def test_data_pack_removes_its_shards(tmp_path, full_disk):
    """The disk fills after a few shards: they are removed again (the disk is not left full), and so is the
    output folder the pack made."""
    pytest.importorskip('webdataset')
    src = make_folder(tmp_path / 'src', n_train=20, n_val=4)
    disk = full_disk(free=60_000)
    result = lit('data', 'pack', src, tmp_path / 'out', '--shard-size', '12kB')
    line = full_disk_line(result, tmp_path / 'out' / '.lit-pack-partial' / 'train-', 'choose another output folder')
    assert 'the partial shards were removed' in line and disk.refused
    assert not (tmp_path / 'out').exists() and temporaries(tmp_path) == []
    # an empty folder given: it stays, empty
    (tmp_path / 'given').mkdir()
    full_disk(free=60_000)
    full_disk_line(lit('data', 'pack', src, tmp_path / 'given', '--shard-size', '12kB'), tmp_path / 'given')
    assert list((tmp_path / 'given').iterdir()) == []


def test_weights_download(tmp_path, monkeypatch, full_disk):
    """The download fills the disk: one line naming the cache file and the ways out; nothing left in the cache."""
    from test_weights import cache_files, serve, use_cache

    with serve({'lit_ti.pth': b'x' * (3 << 20)}) as server:
        use_cache(monkeypatch, tmp_path, server.base)
        full_disk(free=1 << 20)
        result = lit('weights', '--download', 'ti')
    cache = tmp_path / 'torch' / 'hub' / 'checkpoints' / 'lit_ti.pth'
    full_disk_line(result, cache, 'set TORCH_HOME to another folder')
    assert f'{server.base}/lit_ti.pth' in result.output and '--checkpoint' in result.output
    assert cache_files(tmp_path) == []


# ---------------------------------------------------------------------------------------------------------------
# An interrupted lit data pack (defect 5)


def _as_from_a_shell():
    """The child's SIGINT/SIGTERM as a shell starts a command: default dispositions, not blocked. An ignored SIGINT
    is inherited through exec (and Python then leaves Ctrl-C ignored): the full suite's pytest process was seen
    passing one on, and the SIGINT case then hung until its 60 s limit."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def blocked_pack(tmp_path: Path):
    """``lit data pack`` of 300 small images whose last val image is a FIFO: the pack writes every train shard, then
    waits on the FIFO, whose write end this process holds (opening it is the sign that the pack got there), so a
    signal always lands in the middle of a pack. Returns (process, output folder, write end): closing the write
    end (by hand, or when this process dies) ends the wait, and the pack finishes without that file."""
    src = write_image_folder(tmp_path / 'src', ('cat', 'dog', 'eel'), n_train=80, n_val=20)
    fifo = src / 'val' / 'eel' / 'zz.png'
    os.mkfifo(fifo)
    out = tmp_path / 'out'
    proc = subprocess.Popen(lit_cmd('data', 'pack', src, out, '--shard-size', '100kB'), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=_as_from_a_shell)
    deadline = time.monotonic() + 120
    while True:
        try:
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO until the pack opens it to read
            break
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f'the pack never reached the FIFO: {proc.communicate()[0]}')
        time.sleep(0.02)
    assert len(list((out / '.lit-pack-partial').glob('train-*.tar'))) >= 3
    assert len(list((out / '.lit-pack-partial').glob('val-*.tar'))) >= 1
    return proc, out, writer


@contextlib.contextmanager
def pack_in_the_middle(tmp_path: Path):
    proc, out, writer = blocked_pack(tmp_path)
    try:
        yield proc, out
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(writer)
        proc.wait(timeout=60)


def test_pack_cleans_up_after_ctrl_c_and_lets_it_through(tmp_path):
    """From Python: Ctrl-C in the middle of a pack (here from its progress callback) removes what it wrote, and
    stays a KeyboardInterrupt (carrying what was cleaned up, for the command's one line)."""
    pytest.importorskip('webdataset')
    from litcli.core.data.pack import pack

    src = make_folder(tmp_path / 'src', n_train=20, n_val=4)

    def on_file(split, done, total):
        if split == 'val' and done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as e:
        pack(src, tmp_path / 'out', shard_size=12_000, on_file=on_file, log=lambda m: None)
    assert e.value.cleanup == f'the partial shards were removed from {tmp_path / "out"}: nothing was packed'
    assert not (tmp_path / 'out').exists()


def test_ctrl_c_right_after_a_shard_moved_into_place_removes_it_too(tmp_path, monkeypatch):
    """The signal lands just after a shard was renamed from .lit-pack-partial/ into OUT: that shard goes too."""
    pytest.importorskip('webdataset')
    from litcli.core.data import pack as pack_module

    src, out = make_folder(tmp_path / 'src', n_train=20, n_val=4), tmp_path / 'out'
    real = os.replace

    def replace(a, b):
        real(a, b)
        if Path(b).parent == out and Path(b).suffix == '.tar':
            raise KeyboardInterrupt
    monkeypatch.setattr(pack_module.os, 'replace', replace)
    with pytest.raises(KeyboardInterrupt):
        pack_module.pack(src, out, shard_size=12_000, log=lambda m: None)
    assert not out.exists()


@pytest.mark.parametrize('sig, code', [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_pack_removes_its_partial_shards(tmp_path, sig, code):
    pytest.importorskip('webdataset')
    with pack_in_the_middle(tmp_path) as (proc, out):
        proc.send_signal(sig)
        printed = proc.communicate(timeout=60)[0]
    assert proc.returncode == code, printed
    lines = [line for line in printed.splitlines() if line.strip() and not line.startswith('packing ')]
    assert 'Traceback' not in printed and lines == [
        f'Error: lit data pack interrupted ({sig.name}); the partial shards were removed from {out}: nothing was '
        f'packed'], printed
    assert not out.exists()


def test_a_killed_pack_is_refused_as_data_as_an_interrupted_pack(tmp_path, tiny_config):
    pytest.importorskip('webdataset')
    with pack_in_the_middle(tmp_path) as (proc, out):
        proc.kill()  # nothing can clean up after SIGKILL
        proc.communicate(timeout=60)
    partial = out / '.lit-pack-partial'
    assert partial.is_dir() and not (out / 'index.json').exists()
    with pytest.raises(LitError, match=r'holds the partial shards of an unfinished lit data pack .* no index\.json: '
                                       r'an interrupted pack\?'):
        resolve_data(str(out))
    # the user trial's lit eval --data OUT read the partial tars as one class per tar; every command resolves alike
    result = lit('train', '--data', out, '--config', tiny_config, '--img-size', 32, '--epochs', 1,
                 '--output', tmp_path / 'runs')
    error_line(result, 'interrupted pack?', str(partial))
    # killed while the shards were being moved into place: shard-named tars and no index
    for tar in partial.glob('train-*.tar'):
        os.replace(tar, out / tar.name)
    shutil.rmtree(partial)
    with pytest.raises(LitError, match=r'holds shards named as lit data pack names them \(train-000000\.tar .*'
                                       r'interrupted pack\?'):
        resolve_data(str(out))
    # a pack into the folder with only its partial shards starts afresh
    shutil.rmtree(out)
    with pack_in_the_middle(tmp_path / 'again') as (proc, out):
        proc.kill()
        proc.communicate(timeout=60)
    os.unlink(tmp_path / 'again' / 'src' / 'val' / 'eel' / 'zz.png')
    result = lit('data', 'pack', tmp_path / 'again' / 'src', out, '--shard-size', '100kB')
    assert result.exit_code == 0, result.output
    assert resolve_data(str(out)) == ('shards', str(out)) and not (out / '.lit-pack-partial').exists()

"""Training at volume (issue 15): the recipes' augmentation on thousands of varied images, unreadable files versus
transform bugs, exact per-epoch skip counts, SIGTERM to a process group with DataLoader workers, --exist-ok with
step checkpoints, and --resume auto picking the named run."""
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from litcli.core.data.images import load_image
from litcli.core.config import RECIPES
from litcli.core.data.transforms import TransformError, _posterize_any_bits, train_transform
from helpers import TINY, lit, make_folder, train_args

REPO = Path(__file__).resolve().parent.parent


def varied_images(n: int, seed: int = 0):
    """``n`` small images of random sizes (1-48 px a side), modes and contents: flat, noise, gradients."""
    rng = np.random.default_rng(seed)
    modes = ('RGB', 'L', 'RGBA', 'P', 'I;16', 'CMYK', '1')
    for i in range(n):
        h, w = (int(v) for v in rng.integers(1, 49, 2))
        kind = i % 3
        if kind == 0:
            a = np.full((h, w, 3), rng.integers(0, 256), np.uint8)  # flat: the posterize/solarize edge cases
        elif kind == 1:
            a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        else:
            a = np.broadcast_to(np.linspace(0, 255, w, dtype=np.uint8)[None, :, None], (h, w, 3)).copy()
        img = Image.fromarray(a)
        mode = modes[i % len(modes)]
        if mode == 'I;16':
            img = Image.fromarray(a[..., 0].astype(np.uint16) * 257)  # 16-bit gray
        elif mode != 'RGB':
            img = img.convert(mode)
        buf = io.BytesIO()
        img.save(buf, format='TIFF')  # TIFF holds every one of these modes
        buf.seek(0)
        yield load_image(buf)  # as the loaders read files: any mode -> 8-bit RGB


def test_posterize_zero_bits_is_black_as_before_pillow_13():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    assert np.asarray(_posterize_any_bits(img, 0)).max() == 0
    assert np.array_equal(np.asarray(_posterize_any_bits(img, 8)), np.asarray(img))
    assert np.asarray(_posterize_any_bits(img, 1)).max() == 128  # keeps the top bit


@pytest.mark.slow
def test_every_recipe_transform_on_thousands_of_varied_images():
    """Each recipe's training transform (RandAugment rand-m9-mstd0.5-inc1, random erasing, ...) on 4,000 varied
    images; before the posterize guard about 1 call in 750 raised under Pillow 13 (P(no failure) < 1%)."""
    keys = ('aa', 'hflip', 'reprob', 'remode', 'recount', 'interpolation', 'crop_pct')
    settings = {tuple(cfg[k] for k in keys) for cfg in RECIPES.values()}  # the recipes share their augmentation
    for aa, hflip, reprob, remode, recount, interpolation, crop_pct in settings:
        data_config = dict(input_size=(3, 32, 32), interpolation=interpolation, crop_pct=crop_pct,
                           crop_mode='center', mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
        tf = train_transform(data_config, aa, hflip, reprob, remode, recount)
        for img in varied_images(4000):
            out = tf(img)
            assert out.shape == (3, 32, 32) and torch.isfinite(out).all()


def test_builtin_pil_path_runs_the_recipe_transform():
    """The built-in sets' PIL path (a paper variant on Fashion-MNIST) runs the same guarded transform."""
    from litcli.core.data.datasets import build_datasets
    from litcli.core.data.datasets import run_transforms as transforms

    cfg = dict(RECIPES['pvt_s_msa'], img_size=32, data='fashion-mnist-mini')
    train_tf, eval_tf = transforms(cfg, 'fashion-mnist-mini')
    train_ds, _, _ = build_datasets('fashion-mnist-mini', train_transform=train_tf, eval_transform=eval_tf)
    for i in range(0, 6000, 2):
        assert train_ds[i][0].shape == (3, 32, 32)


def test_transform_errors_name_the_image_and_step_and_are_not_skips(tmp_path):
    from litcli.core.data.datasets import SkipUnreadable, image_folder

    root = make_folder(tmp_path / 'd', n_train=3, n_val=1) / 'train'

    class Broken:
        def __call__(self, img):
            raise ValueError('boom')

    from torchvision import transforms as T
    ds = SkipUnreadable(image_folder(root, T.Compose([T.Resize(8), Broken()]), 'train'))
    with pytest.raises(TransformError, match=r'transform Broken.* failed on .*cat/0\.png: ValueError: boom'):
        ds[0]
    assert ds.skipped == 0


def test_skip_counts_are_per_epoch_and_eval_scores_each_readable_image_once(tmp_path, tiny_config):
    data = make_folder(tmp_path / 'd', n_train=8, n_val=4)
    for bad in ('train/cat/bad1.png', 'train/dog/bad2.png', 'val/cat/junk.png'):
        (data / bad).write_bytes(b'not an image at all')
    # batch 6: all 18 training files are drawn every epoch (drop_last would leave some out with batch 4)
    result = lit(*train_args(data, tiny_config, tmp_path / 'runs', '--name', 'skip', '--epochs', 2, '-b', 6))
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if 'unreadable' in line]
    train_lines = [line for line in lines if '/train' in line]
    assert len(train_lines) == 2 and all('skipped 2 unreadable' in line for line in train_lines), lines
    assert not any('skipped 4' in line for line in lines)
    result = lit('eval', '--checkpoint', tmp_path / 'runs' / 'skip' / 'checkpoints' / 'last.pt', '--data', data,
                 '--out', tmp_path / 'ev', '-j', 2, '-b', 3)
    assert result.exit_code == 0, result.output
    ev = json.loads((tmp_path / 'ev' / 'eval.json').read_text())
    assert ev['num_images'] == 8 and ev['skipped'] == 1  # 9 files, 8 readable: none counted twice
    assert 'junk.png' in ev['skipped_message']
    result = lit('eval', '--checkpoint', tmp_path / 'runs' / 'skip' / 'checkpoints' / 'last.pt', '--data', data,
                 '--out', tmp_path / 'ev2', '-j', 2, '--strict-data')
    assert result.exit_code == 1 and 'junk.png' in result.output and 'Traceback' not in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1


@pytest.mark.slow
def test_every_paper_recipe_trains_an_epoch_on_thousands_of_jpegs(tmp_path_factory):
    """One epoch of each paper recipe (its augmentation, schedule, mixup; a tiny model) over 1,500 small JPEGs
    of random sizes with 2 workers: nothing is skipped, nothing crashes."""
    root = tmp_path_factory.mktemp('jpegs')
    rng = np.random.default_rng(0)
    for split, n in (('train', 750), ('val', 50)):
        for c in ('a', 'b'):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                h, w = (int(v) for v in rng.integers(24, 48, 2))
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / f'{i}.jpg', quality=80)
    config = tmp_path_factory.mktemp('cfg') / 'tiny.yaml'
    import yaml
    config.write_text(yaml.safe_dump(dict(model_kwargs=TINY)))
    for variant in ('ti', 's', 'm', 'b'):
        out = tmp_path_factory.mktemp(f'runs-{variant}')
        result = lit('train', '--variant', variant, '--data', root, '--config', config, '--img-size', 32, '-b', 50,
                     '-j', 2, '--epochs', 1, '--output', out, '--name', 'r', '--log-interval', 100)
        assert result.exit_code == 0, result.output
        assert 'unreadable' not in result.output and 'skipping' not in result.output
        row = json.loads((out / 'r' / 'metrics.jsonl').read_text())
        assert row['step'] == 30 and np.isfinite(row['train_loss'])


def _wait_for(path: Path, text: str, timeout: float = 120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and text in path.read_text():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_workers_saves_and_exits_143(tmp_path, tiny_config):
    """What SLURM preemption, `timeout` and systemd do: SIGTERM to every process of the job, workers included."""
    data = make_folder(tmp_path / 'd', n_train=200, n_val=4)
    log = tmp_path / 'log.txt'
    cmd = [sys.executable, '-m', 'litcli', *map(str, train_args(data, tiny_config, tmp_path / 'runs', '--name', 'D',
                                                                '-j', 2, '--epochs', 50, '--lr', 1e-3))]
    env = {**os.environ, 'PYTHONPATH': str(REPO), 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}
    with open(log, 'w') as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        assert _wait_for(log, 'step 3 loss'), log.read_text()
        os.killpg(proc.pid, signal.SIGTERM)  # the whole group: the main process and its DataLoader workers
        assert proc.wait(timeout=120) == 143, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = log.read_text()
    assert 'SIGTERM received: saved' in out and 'resume with' in out and 'Traceback' not in out, out
    ckpt = torch.load(tmp_path / 'runs' / 'D' / 'checkpoints' / 'last.pt', weights_only=True)
    assert ckpt['step'] >= 3 and ckpt['resume_batch'] >= 3


def test_exist_ok_moves_the_earlier_run_aside(tmp_path, tiny_config):
    data = make_folder(tmp_path / 'd', n_train=8, n_val=2)
    old = tmp_path / 'runs' / 'D'
    (old / 'checkpoints').mkdir(parents=True)
    for name in ('step-0000032.pt', 'step-0000036.pt', 'best.pt', 'last.pt'):
        (old / 'checkpoints' / name).write_bytes(b'old run ' + name.encode())
    (old / 'metrics.csv').write_text('old metrics\n')
    result = lit(*train_args(data, tiny_config, tmp_path / 'runs', '--name', 'D', '--exist-ok', '--save-interval', 1,
                             '--keep-last', 2))
    assert result.exit_code == 0, result.output
    assert 'held an earlier run' in result.output
    assert sorted(p.name for p in (old / 'checkpoints').iterdir()) == \
        ['best.pt', 'last.pt', 'step-0000003.pt', 'step-0000004.pt']  # only the new run's, newest 2 steps kept
    aside = [p for p in old.iterdir() if p.name.startswith('replaced-')]
    assert len(aside) == 1
    assert (aside[0] / 'checkpoints' / 'step-0000036.pt').read_bytes() == b'old run step-0000036.pt'
    assert (aside[0] / 'metrics.csv').read_text() == 'old metrics\n'


@pytest.mark.slow
def test_resume_auto_takes_only_the_named_run(tmp_path, tiny_config):
    data = make_folder(tmp_path / 'd', n_train=8, n_val=2)
    runs = tmp_path / 'runs'
    assert lit(*train_args(data, tiny_config, runs, '--name', 'A')).exit_code == 0
    assert lit(*train_args(data, tiny_config, runs, '--name', '7', '--epochs', 2)).exit_code == 0  # newer
    os.utime(runs / '7' / 'checkpoints' / 'last.pt')
    result = lit('train', '--resume', 'auto', '--name', 'A', '--output', runs, '--epochs', 2, '-j', 0)
    assert result.exit_code == 0, result.output
    assert 'resuming at epoch 1, step 4' in result.output  # A's state, not 7's (epoch 2, step 8)
    assert not (runs / 'A-2').exists()
    assert torch.load(runs / 'A' / 'checkpoints' / 'last.pt', weights_only=True)['step'] == 8


@pytest.mark.parametrize('start', ['lit', 'fork'])
@pytest.mark.slow
def test_workers_still_stop_when_the_main_process_exits(tmp_path, start):
    """Workers survive a SIGTERM sent to the whole job, but not the main process's own terminate(): an exit with a
    live persistent-worker loader (multiprocessing terminates and joins its children at exit) must not hang, with
    lit's loader settings (workers of a forkserver) or ignore_stop_signals on torch's default fork."""
    script = tmp_path / 'exit.py'
    kwargs = ("loader_kwargs(2, torch.device('cpu'), None)" if start == 'lit' else
              "dict(num_workers=2, persistent_workers=True, worker_init_fn=ignore_stop_signals)")
    script.write_text(
        'import torch\n'
        'from litcli.core.data.loaders import loader_kwargs\n'
        'from litcli.core.runtime import ignore_stop_signals\n'
        "if __name__ == '__main__':\n"
        f'    loader = torch.utils.data.DataLoader(list(range(100)), batch_size=4, **{kwargs})\n'
        '    it = iter(loader)\n'
        '    next(it)\n'
        '    KEEP = (loader, it)  # still referenced at exit\n')
    env = {**os.environ, 'PYTHONPATH': str(REPO)}
    proc = subprocess.run([sys.executable, str(script)], env=env, timeout=120, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _gone(pid: int) -> bool:
    try:
        return Path(f'/proc/{pid}/status').read_text().split('State:')[1].split()[0] in ('Z', 'X')
    except (FileNotFoundError, IndexError):
        return True


@pytest.mark.skipif(not Path('/proc/self/status').exists(), reason='reads /proc')
@pytest.mark.slow
def test_workers_and_their_server_exit_when_the_main_process_is_killed(tmp_path):
    """kill -9 (or the OOM killer) of the main process: its workers and their forkserver go too, within seconds.
    torch's workers watch their parent, which is the server, and the server waits for its workers: both stayed."""
    script = tmp_path / 'main.py'
    script.write_text(
        'import time, torch\n'
        'from multiprocessing import forkserver\n'
        'from litcli.core.data.loaders import loader_kwargs\n'
        "if __name__ == '__main__':\n"
        "    loader = torch.utils.data.DataLoader(list(range(100)), batch_size=4, **loader_kwargs(2, torch.device('cpu'), None))\n"
        '    it = iter(loader)\n'
        '    next(it)\n'
        "    print(forkserver._forkserver._forkserver_pid, *[w.pid for w in it._workers], flush=True)\n"
        '    time.sleep(300)\n')
    env = {**os.environ, 'PYTHONPATH': str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 3 and not any(_gone(p) for p in pids)
        proc.kill()
        proc.wait()
        deadline = time.time() + 30
        while time.time() < deadline and not all(_gone(p) for p in pids):
            time.sleep(0.2)
        assert all(_gone(p) for p in pids), [p for p in pids if not _gone(p)]
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize('pidfd', [True, False])
@pytest.mark.slow
def test_the_main_process_watch_exits_when_it_is_gone(pidfd):
    """exit_with_main_process on a pidfd (Linux) and on its once-a-second fallback (macOS): the watcher exits (0) once
    the watched process has gone, and not before."""
    sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])
    code = ('import os, sys, time\n'
            'from litcli.core.runtime import exit_with_main_process\n' +
            ('' if pidfd else 'del os.pidfd_open\n') +
            f'exit_with_main_process({sleeper.pid})\n'
            'print("watching", flush=True)\n'
            'time.sleep(300)\n'
            'sys.exit(3)\n')
    watcher = subprocess.Popen([sys.executable, '-c', code], env={**os.environ, 'PYTHONPATH': str(REPO)},
                               stdout=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout.readline().strip() == 'watching'
        time.sleep(1.5)
        assert watcher.poll() is None  # the watched process still runs
        sleeper.kill()
        sleeper.wait()  # reaped (a zombie still answers kill(pid, 0))
        assert watcher.wait(timeout=30) == 0
    finally:
        for proc in (sleeper, watcher):
            if proc.poll() is None:
                proc.kill()


@pytest.mark.slow
def test_workers_are_not_forked_from_the_threaded_main_process(tmp_path):
    """The CI hang (gh-112275): a worker fork()ed from a process whose other threads hold a CPython lock deadlocks
    before running any Python. lit's workers come from a single-threaded forkserver instead, started with SIGTERM
    blocked so that a job-wide SIGTERM leaves it (and so the workers) alive until the main process has saved. In a
    fresh process: a forkserver started before lit's would be used as it is."""
    script = tmp_path / 'parents.py'
    script.write_text(
        'import json, os, threading, torch\n'
        'from multiprocessing import forkserver\n'
        'from litcli.core.data.loaders import loader_kwargs\n'
        'class ParentOfWorker(torch.utils.data.Dataset):\n'
        '    def __len__(self):\n'
        '        return 4\n'
        '    def __getitem__(self, index):\n'
        '        return os.getppid()\n'
        "if __name__ == '__main__':\n"
        '    busy = threading.Event()\n'
        '    threading.Thread(target=busy.wait, daemon=True).start()  # multi-threaded, as under DDP\n'
        "    kwargs = loader_kwargs(2, torch.device('cpu'), None)\n"
        '    parents = torch.utils.data.DataLoader(ParentOfWorker(), batch_size=1, **kwargs)\n'
        '    print(json.dumps(dict(start=kwargs["multiprocessing_context"].get_start_method(), main=os.getpid(),\n'
        '                          server=forkserver._forkserver._forkserver_pid,\n'
        '                          parents=sorted({int(p) for batch in parents for p in batch}))), flush=True)\n'
        '    input()  # the server runs until the main process exits: the test reads its signal mask first\n'
        '    busy.set()\n')
    env = {**os.environ, 'PYTHONPATH': str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        seen = json.loads(proc.stdout.readline())
        assert seen['start'] == 'forkserver' and seen['parents'] == [seen['server']] != [seen['main']]
        if sys.platform.startswith('linux'):
            blocked = int(Path(f'/proc/{seen["server"]}/status').read_text().split('SigBlk:')[1].split()[0], 16)
            assert blocked & (1 << (signal.SIGTERM - 1)) and blocked & (1 << (signal.SIGINT - 1))
    finally:
        proc.communicate('\n', timeout=60)
    assert proc.returncode == 0

"""Multi-process training (torchrun, gloo on CPU) and fault tolerance: step checkpoints, SIGKILL/SIGTERM, resume.

The end-to-end tests run ``python -m litcli train`` as subprocesses on a tiny built-in-format data set (the
fast tensor path) so that a process can be killed, signalled or launched with torchrun, as a user would.
"""
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from helpers import lit_cmd, run_until_step
from litcli.core.modelio.checkpoint import read_checkpoint
from litcli.cli import app
from litcli.core.runtime import ResumableSampler, ShardSampler
from litcli.core.errors import CheckpointError
from litcli.core.modelio.checkpoint import newest_valid_checkpoint

TINY = dict(embed_dims=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], mlp_ratios=[2, 2, 2, 2])
N_TRAIN, N_VAL = 20, 7  # 7: an uneven evaluation set for 2 processes (shards of 4 and 3)
TIMEOUT = 120


def make_mini(root: Path) -> Path:
    """A fashion-mnist-mini-format file (--data fashion-mnist-mini --data-dir ROOT) with a learnable cue."""
    rng = np.random.default_rng(0)

    def split(n):
        y = np.arange(n) % 10
        x = rng.integers(0, 100, (n, 28, 28), dtype=np.uint8)
        for i, c in enumerate(y):
            x[i, c * 2:c * 2 + 4, :] = 255
        return x, y.astype(np.uint8)

    (x_train, y_train), (x_test, y_test) = split(N_TRAIN), split(N_VAL)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / 'fashion-mnist-mini.npz', x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return root


@pytest.fixture(scope='module')
def mini(tmp_path_factory) -> Path:
    return make_mini(tmp_path_factory.mktemp('data') / 'mini')


def config_file(folder: Path, **cfg) -> Path:
    path = folder / 'cfg.yaml'
    path.write_text(yaml.safe_dump(cfg))
    return path


def env():
    return {**os.environ, 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1', 'COLUMNS': '160'}





def run(*args, timeout=TIMEOUT):
    out = subprocess.run(lit_cmd(*args), capture_output=True, text=True, env=env(), timeout=timeout)
    assert 'Traceback' not in out.stdout + out.stderr, out.stdout + out.stderr
    return out


def train_args(mini, cfg, output, name, *extra):
    # No --variant on built-in data: the small demo config (fast tensors, no mixup/drop path), TINY from the file.
    return ('train', '--data', 'fashion-mnist-mini', '--data-dir', mini, '--config', cfg, '-j', 0,
            '--output', output, '--name', name, '--log-interval', 1, '--seed', 3, *extra)


def weights(path: Path):
    return read_checkpoint(path)['model']


def max_diff(a, b) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


# ---------------------------------------------------------------------------------------------------------------
# Samplers


@pytest.mark.parametrize('n', [0, 1, 7, 10])
@pytest.mark.parametrize('world', [1, 2, 3])
def test_shard_sampler_covers_each_index_once(n, world):
    shards = [list(ShardSampler(n, r, world)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))  # disjoint, complete, no padding
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_resumable_sampler_skips_exactly_the_consumed_batches():
    from torch.utils.data import DistributedSampler

    sampler = ResumableSampler(DistributedSampler(range(23), num_replicas=2, rank=1, seed=5, drop_last=True), 3)
    sampler.set_epoch(4)
    full = list(sampler)
    sampler.set_epoch(4, skip_batches=2)
    assert list(sampler) == full[6:] and len(sampler) == len(full) - 6
    sampler.set_epoch(5)
    assert list(sampler) != full  # a new epoch, a new order


@pytest.mark.parametrize('aug_repeats', [0, 3])
def test_train_sampler_shards_are_reproducible_per_seed_and_epoch(aug_repeats):
    from litcli.core.runtime import World, train_sampler

    def order(rank, seed, epoch):
        sampler = ResumableSampler(train_sampler(range(50), World(rank, 2, rank, True), seed, aug_repeats), 4)
        sampler.set_epoch(epoch)
        return list(sampler)

    r0, r1 = order(0, 1, 2), order(1, 1, 2)
    assert len(r0) == len(r1) and r0 == order(0, 1, 2)  # same length on every rank; a function of seed + epoch
    assert r0 != order(0, 2, 2) and r0 != order(0, 1, 3)
    if aug_repeats:  # RepeatAugSampler: each image's repeats go to different ranks
        assert set(r0) & set(r1)
    else:
        assert not set(r0) & set(r1)


# ---------------------------------------------------------------------------------------------------------------
# Two processes (torchrun, gloo) = one process with the same global batch


@pytest.fixture(scope='module')
def ddp_runs(mini, tmp_path_factory):
    """The same training as 1 process x batch 4 and as 2 processes x batch 2 (via --nproc-per-node -> torchrun).

    The model uses conv merges (LIT-Ti*, no BatchNorm, whose per-replica batch statistics would differ by design)
    and no random augmentation, so both runs see the same global batches and the same gradients up to float
    summation order. SGD, because Adam divides by sqrt(v): a parameter whose gradient is ~0 moves by up to +-lr
    depending on the sign of its rounding noise (measured with AdamW, lr 2e-3, 10 steps: max diff 1.9e-4 with
    SGD-level agreement of the gradients themselves).
    """
    work = tmp_path_factory.mktemp('ddp')
    # amp: fp32 even on CPUs with native bf16 (the demo's `amp: auto`), whose rounding differs with the batch split.
    cfg = config_file(work, model_kwargs={**TINY, 'merge': 'conv'}, hflip=0.0, epochs=2, opt='sgd', lr=0.05,
                      amp=False)
    start = time.perf_counter()
    one = run(*train_args(mini, cfg, work, 'one', '-b', 4))
    t_one = time.perf_counter() - start
    start = time.perf_counter()
    two = run(*train_args(mini, cfg, work, 'two', '-b', 2, '--nproc-per-node', 2))
    t_two = time.perf_counter() - start
    assert one.returncode == 0, one.stdout + one.stderr
    assert two.returncode == 0, two.stdout + two.stderr
    print(f'1 process: {t_one:.1f}s, 2 processes: {t_two:.1f}s')
    return work, one.stdout, two.stdout


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(ddp_runs):
    work, out_one, out_two = ddp_runs
    assert '1 process(es): per-device batch 4 x 1 process(es) x 1 accumulation = global batch 4' in out_one
    assert '2 process(es), gloo: per-device batch 2 x 2 process(es) x 1 accumulation = global batch 4' in out_two
    assert out_two.count('run directory:') == 2  # rank 0 alone prints (start and end)
    a, b = read_checkpoint(work / 'one/checkpoints/last.pt'), read_checkpoint(work / 'two/checkpoints/last.pt')
    assert a['step'] == b['step'] == 2 * N_TRAIN // 4 and b['world_size'] == 2 and len(b['rng_ranks']) == 2
    diff = max_diff(a['model'], b['model'])
    print(f'max |w_1proc - w_2proc| = {diff:.3g}')
    assert diff < 1e-5
    assert max_diff(a['model'], read_checkpoint(work / 'one/checkpoints/best.pt')['model']) >= 0  # loads
    assert not (work / 'two-2').exists()  # one run directory, written by rank 0 only
    env_json = json.loads((work / 'two/env.json').read_text())
    assert env_json['world_size'] == 2 and env_json['rank'] == 0
    # evaluation over the uneven set, reduced across the 2 ranks: the same metrics as one process
    rows_one = [json.loads(line) for line in (work / 'one/metrics.jsonl').read_text().splitlines()]
    rows_two = [json.loads(line) for line in (work / 'two/metrics.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in rows_two] == [0, 1]
    for r1, r2 in zip(rows_one, rows_two):
        assert r2['eval_top1'] == pytest.approx(r1['eval_top1'])
        assert r2['eval_loss'] == pytest.approx(r1['eval_loss'], rel=1e-4)
        assert r2['train_loss'] == pytest.approx(r1['train_loss'], rel=1e-4)


@pytest.mark.slow
def test_two_processes_sigterm_mid_epoch_then_resume_is_bit_identical(ddp_runs, mini):
    """SIGTERM to torchrun: both ranks stop at the same step and save; resuming on 2 processes ends equal."""
    work, _, _ = ddp_runs
    args = train_args(mini, work / 'cfg.yaml', work, 'twocut', '-b', 2)
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', '-m', 'litcli',
           *map(str, args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env())
    try:
        out = []
        for line in proc.stdout:
            out.append(line)
            if re.search(r'\] step 3 loss', line):
                proc.send_signal(signal.SIGTERM)  # torchrun forwards it to both workers
        proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = ''.join(out)
    assert 'SIGTERM received' in out and 'resume with: torchrun --nproc_per_node=2 -m litcli train' in out, out
    ckpt = read_checkpoint(work / 'twocut/checkpoints/last.pt')
    assert 3 <= ckpt['step'] < 2 * N_TRAIN // 4 and len(ckpt['rng_ranks']) == 2
    resumed = run('train', '--nproc-per-node', 2, '--resume', 'auto', '--output', work, '--name', 'twocut', '-j', 0)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    a, b = weights(work / 'two/checkpoints/last.pt'), weights(work / 'twocut/checkpoints/last.pt')
    assert all(torch.equal(v, b[k]) for k, v in a.items())


@pytest.mark.slow
def test_distributed_eval_counts_each_image_once(ddp_runs, tmp_path):
    """lit eval under torchrun on 7 images and 2 processes: shards of 4 and 3, exact all-reduced counts."""
    work, _, _ = ddp_runs
    ckpt = work / 'one/checkpoints/last.pt'
    extras = ('--per-class', '--confusion-matrix', '--results-file')  # issue 20: exact under torchrun too
    single = run('eval', '--checkpoint', ckpt, '--out', tmp_path / 'single', '-j', 0, '-b', 3, *extras,
                 tmp_path / 'single.csv')
    assert single.returncode == 0, single.stdout + single.stderr
    launched = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', '-m', 'litcli', 'eval',
         '--checkpoint', str(ckpt), '--out', str(tmp_path / 'dist'), '-j', '0', '-b', '3', *extras,
         str(tmp_path / 'dist.csv')],
        capture_output=True, text=True, env=env(), timeout=TIMEOUT)
    assert launched.returncode == 0, launched.stdout + launched.stderr
    assert launched.stdout.count('lit eval:') == 1  # rank 0 prints the table
    ev1 = json.loads((tmp_path / 'single/eval.json').read_text())
    ev2 = json.loads((tmp_path / 'dist/eval.json').read_text())
    assert ev1['num_images'] == ev2['num_images'] == N_VAL and ev2['world_size'] == 2
    assert ev2['top1_correct'] == ev1['top1_correct'] and ev2['top5_correct'] == ev1['top5_correct']
    assert ev2['top1'] == pytest.approx(100.0 * ev1['top1_correct'] / N_VAL)
    assert ev2['loss'] == pytest.approx(ev1['loss'], rel=1e-5)
    # per-class counts and the confusion matrix reduced over both ranks; each image once in the results file
    assert ev2['confusion_matrix']['counts'] == ev1['confusion_matrix']['counts']
    assert sum(map(sum, ev2['confusion_matrix']['counts'])) == N_VAL
    assert [c['support'] for c in ev2['per_class']['classes']] == [c['support'] for c in ev1['per_class']['classes']]
    assert [c['top5'] for c in ev2['per_class']['classes']] == [c['top5'] for c in ev1['per_class']['classes']]
    names = [r['filename'] for r in ev2['results']]
    assert names == [f'fashion-mnist-mini test image #{i}' for i in range(N_VAL)]  # sorted, none twice
    assert [r['index'] for r in ev2['results']] == [r['index'] for r in ev1['results']]
    assert (tmp_path / 'dist.csv').read_text().splitlines()[0].startswith('filename,true_index,true_label,index_0')


# ---------------------------------------------------------------------------------------------------------------
# Fault tolerance


@pytest.fixture(scope='module')
def ft_cfg(tmp_path_factory) -> Path:
    # The DTM model (BatchNorm) and random flips: resume must restore batch statistics and random streams.
    return config_file(tmp_path_factory.mktemp('ftcfg'), model_kwargs=TINY, epochs=EPOCHS)


EPOCHS = 4
STEPS = EPOCHS * N_TRAIN // 4  # 5 updates per epoch


@pytest.fixture(scope='module')
def straight(mini, ft_cfg, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp('straight')
    out = run(*train_args(mini, ft_cfg, output, 'straight', '-b', 4, '--save-interval', 1, '--keep-last', 2))
    assert out.returncode == 0, out.stdout + out.stderr
    return output / 'straight'


def assert_all_checkpoints_load(ckpt_dir: Path):
    files = sorted(ckpt_dir.glob('*.pt'))
    assert files
    for f in files:
        raw = read_checkpoint(f)  # raises CheckpointError on a partial file
        assert 'model' in raw and 'optimizer' in raw


@pytest.mark.slow
def test_straight_run_keeps_last_k_step_checkpoints(straight):
    names = sorted(p.name for p in (straight / 'checkpoints').glob('*.pt'))
    assert names == ['best.pt', 'last.pt', f'step-{STEPS - 1:07d}.pt', f'step-{STEPS:07d}.pt']
    last = read_checkpoint(straight / 'checkpoints/last.pt')
    assert last['step'] == STEPS and last['resume_epoch'] == EPOCHS and last['resume_batch'] == 0
    assert last['run_options'] == dict(save_interval=1, keep_last=2, keep_best=0, log=[], sync_bn=False)


@pytest.mark.slow
def test_sigkill_at_random_steps_then_resume_auto_is_bit_identical(mini, ft_cfg, straight, tmp_path):
    rng = random.Random(8)
    args = train_args(mini, ft_cfg, tmp_path, 'cut', '-b', 4, '--save-interval', 1, '--keep-last', 2)
    resume = ('train', '--resume', 'auto', '--output', tmp_path, '--name', 'cut', '-j', 0)
    positions, kill_steps = [0], []
    for i in range(3):
        kill_steps.append(positions[-1] + rng.randint(1, 3))  # 1-3 steps after the resume point
        rc, out, sent = run_until_step(args if i == 0 else resume, kill_steps[-1], env(), TIMEOUT, rng)
        assert 'Traceback' not in out, out
        if not sent or rc == 0:  # finished before the kill could land: nothing left to test
            break
        assert rc == -signal.SIGKILL, out
        assert_all_checkpoints_load(tmp_path / 'cut' / 'checkpoints')
        positions.append(read_checkpoint(tmp_path / 'cut/checkpoints/last.pt')['step'])
    positions = positions[1:]
    assert len(positions) == 3 and positions[-1] < STEPS, positions
    out = run(*resume)
    assert out.returncode == 0, out.stdout + out.stderr
    assert 'resuming at epoch' in out.stdout
    assert_all_checkpoints_load(tmp_path / 'cut' / 'checkpoints')
    print(f'killed at steps >= {kill_steps}; last.pt at steps {positions}')
    a, b = read_checkpoint(straight / 'checkpoints/last.pt'), read_checkpoint(tmp_path / 'cut/checkpoints/last.pt')
    assert a['step'] == b['step'] == STEPS
    for key, value in a['model'].items():
        assert torch.equal(value, b['model'][key]), key
    for s1, s2 in zip(a['optimizer']['state'].values(), b['optimizer']['state'].values()):
        assert torch.equal(s1['exp_avg'], s2['exp_avg'])
    rows = [json.loads(line) for line in (tmp_path / 'cut/metrics.jsonl').read_text().splitlines()]
    ref = [json.loads(line) for line in (straight / 'metrics.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in rows] == list(range(EPOCHS))  # one row per epoch, however often it was killed
    assert [(r['train_loss'], r['eval_loss'], r['eval_top1']) for r in rows] == \
        [(r['train_loss'], r['eval_loss'], r['eval_top1']) for r in ref]


@pytest.mark.parametrize('sig,code', [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.slow
def test_signal_saves_at_step_boundary_and_prints_resume_command(mini, ft_cfg, straight, tmp_path, sig, code):
    args = train_args(mini, ft_cfg, tmp_path, 'sig', '-b', 4)  # no --save-interval: the signal alone saves
    rc, out, sent = run_until_step(args, 3, env(), TIMEOUT, random.Random(0), sig)
    assert sent and rc == code, out
    assert 'Traceback' not in out and 'Error' not in out, out
    name = signal.Signals(sig).name
    last = (tmp_path / 'sig/checkpoints/last.pt').resolve()
    m = re.search(rf'{name} received: saved {re.escape(str(last))} at step (\d+) \(epoch \d+, \d+/5 updates\); '
                  rf'resume with: (lit train --resume \S+)', out)
    assert m, out
    ckpt = read_checkpoint(last)
    assert ckpt['step'] == int(m.group(1)) >= 3 and ckpt['resume_batch'] == ckpt['step'] - 5 * ckpt['resume_epoch']
    if sig != signal.SIGTERM:
        return
    # the printed command continues the run to the same weights as an uninterrupted one
    cmd = shlex.split(m.group(2))
    out = run(*cmd[1:], '-j', 0)
    assert out.returncode == 0, out.stdout + out.stderr
    a, b = weights(straight / 'checkpoints/last.pt'), weights(last)
    assert all(torch.equal(v, b[k]) for k, v in a.items())


@pytest.mark.slow
def test_corrupt_newest_checkpoint_falls_back_to_previous(straight, tmp_path):
    run_dir = tmp_path / 'runs' / 'straight'
    shutil.copytree(straight, run_dir)  # copies: last.pt and the newest step file are separate files here
    last = run_dir / 'checkpoints' / 'last.pt'
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 3])  # a truncated write (disk full, copy cut short)
    result = CliRunner().invoke(app, ['train', '--resume', 'auto', '--output', str(tmp_path / 'runs'), '-j', '0'],
                                env={'COLUMNS': '200'}, prog_name='lit')
    assert result.exit_code == 0, result.output
    assert 'truncated or corrupt' in result.output
    assert f'last.pt unreadable, resuming from {run_dir / "checkpoints" / f"step-{STEPS:07d}.pt"} instead' in \
        result.output
    assert all(torch.equal(v, weights(last)[k]) for k, v in weights(straight / 'checkpoints/last.pt').items())

    for f in (run_dir / 'checkpoints').glob('*.pt'):  # nothing valid left: a one-line error
        f.write_bytes(b'not a checkpoint')
    with pytest.raises(CheckpointError, match='no readable checkpoint'):
        newest_valid_checkpoint(run_dir / 'checkpoints', lambda m: None)


def test_sync_bn_on_cpu_is_a_one_line_error(mini, tmp_path):
    result = CliRunner().invoke(app, ['train', '--data', 'fashion-mnist-mini', '--data-dir', str(mini), '--sync-bn',
                                      '--device', 'cpu', '--output', str(tmp_path)],
                                env={'COLUMNS': '400'}, prog_name='lit')
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and 'SyncBatchNorm cannot run on CPU' in lines[0] and 'Traceback' not in result.output
    assert not any(tmp_path.iterdir())  # nothing written


def test_nproc_per_node_needs_the_command_line(tmp_path):
    result = CliRunner().invoke(app, ['train', '--nproc-per-node', '2', '--output', str(tmp_path)],
                                env={'COLUMNS': '200'}, prog_name='lit')
    assert result.exit_code == 1 and 'torchrun --nproc_per_node N -m litcli train' in result.output


# ---------------------------------------------------------------------------------------------------------------
# GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_torchrun_single_gpu_nccl_amp(mini, ft_cfg, tmp_path):
    """torchrun with 1 process on a GPU: NCCL process group, DDP, SyncBatchNorm, AMP, step checkpoints, resume."""
    base = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '1', '-m', 'litcli']
    args = train_args(mini, ft_cfg, tmp_path, 'gpu', '-b', 4, '--device', 'cuda', '--amp', '--sync-bn',
                      '--save-interval', 2, '--epochs', 1)
    out = subprocess.run(base + [str(a) for a in args], capture_output=True, text=True, env=env(), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert '1 process(es), nccl' in out.stdout and 'autocast' in out.stdout and 'SyncBatchNorm' in out.stdout
    ckpt = read_checkpoint(tmp_path / 'gpu/checkpoints/last.pt')
    assert ckpt['step'] == N_TRAIN // 4 and ckpt['rng'].get('cuda') is not None
    assert (tmp_path / 'gpu/checkpoints/step-0000004.pt').exists()
    out = subprocess.run(base + ['train', '--resume', 'auto', '--output', str(tmp_path), '--epochs', '2', '-j', '0'],
                         capture_output=True, text=True, env=env(), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert read_checkpoint(tmp_path / 'gpu/checkpoints/last.pt')['step'] == 2 * N_TRAIN // 4

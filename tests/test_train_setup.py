"""core/training/setup.py: each piece of a training run's set-up on its own (``lit train`` end to end is
tests/test_train.py): the options a resume keeps, the weights a run starts from, the process, the optimizer state
from the scaled rates, the resume position, the run directory and what every checkpoint holds."""
import json
from pathlib import Path

import pytest
import timm
import torch
import yaml

import litcli.models  # noqa: F401
from helpers import TINY
from litcli.core.config import resolve_config, scaled_lrs
from litcli.core.errors import CheckpointError, LitError, UsageError
from litcli.core.modelio.checkpoint import CheckpointSaver, TrainPosition, read_checkpoint
from litcli.core.runtime import StopRequest, World
from litcli.core.training.setup import (RunCheckpoints, RunOptions, build_train_state, check_start_weights,
                                        place_model, prepare_process, resume_position, run_options, start_run_dir,
                                        start_weights_file, wrap_for_training)

CPU = torch.device('cpu')
ONE = World()
METADATA = dict(variant='lit_ti', model_kwargs={**TINY, 'img_size': 32}, class_names=['cat', 'dog'], num_classes=2,
                data_config={'mean': (0.5, 0.5, 0.5), 'std': (0.5, 0.5, 0.5)})


def tiny_cfg(**overrides):
    return resolve_config('lit_ti', overrides={**dict(img_size=32, batch_size=4, epochs=3, warmup_epochs=1,
                                                      model_kwargs=TINY), **overrides})


def tiny_model():
    return timm.create_model('lit_ti', num_classes=2, img_size=32, **TINY)


# ---- options ----

def test_run_options_take_the_flag_else_the_resumed_runs_else_the_default():
    assert run_options(None, CPU) == RunOptions(save_interval=0, keep_last=3, keep_best=0, log=[], sync_bn=False)
    saved = dict(save_interval=50, keep_last=5, keep_best=2, log=[], sync_bn=False)
    assert run_options(saved, CPU) == RunOptions(50, 5, 2, [], False)
    assert run_options(saved, CPU, save_interval=0, keep_best=1) == RunOptions(0, 5, 1, [], False)
    assert run_options(None, CPU).as_dict() == dict(save_interval=0, keep_last=3, keep_best=0, log=[], sync_bn=False)


def test_run_options_refuse_sync_bn_on_cpu_but_drop_a_resumed_runs():
    with pytest.raises(LitError, match='--sync-bn needs CUDA'):
        run_options(None, CPU, sync_bn=True)
    assert run_options(dict(sync_bn=True), CPU).sync_bn is False  # a GPU run resumed on a CPU
    with pytest.raises(UsageError, match="unknown --log 'tensorbord'"):
        run_options(None, CPU, log=['tensorbord'])


# ---- the weights a run starts from ----

def test_start_weights_checks_before_any_work():
    with pytest.raises(UsageError, match='pass one'):
        check_start_weights(tiny_cfg(), pretrained=True, initial_checkpoint=Path('x.pth'), resuming=False)
    with pytest.raises(UsageError, match='built-in demo model'):
        check_start_weights({**tiny_cfg(), 'demo_config': True}, pretrained=True, initial_checkpoint=None,
                            resuming=False)
    with pytest.raises(UsageError, match='lit_ti_no_such has no released weights'):
        check_start_weights({**tiny_cfg(), 'variant': 'lit_ti_no_such'}, pretrained=True, initial_checkpoint=None,
                            resuming=False)
    # a resumed run has its own weights; the variant's release is then not needed
    check_start_weights({**tiny_cfg(), 'variant': 'lit_ti_no_such'}, pretrained=True, initial_checkpoint=None,
                        resuming=True)


def test_start_weights_file_resume_then_release_then_file(monkeypatch, tmp_path):
    from litcli.core.modelio import factory

    fetched = []
    monkeypatch.setattr(factory, 'pretrained_file', lambda variant, log=None: fetched.append(variant) or
                        tmp_path / f'{variant}.pth')
    given = tmp_path / 'mine.pth'
    assert start_weights_file('lit_ti', ONE, print, pretrained=False, initial_checkpoint=None, resuming=False) is None
    assert start_weights_file('lit_ti', ONE, print, pretrained=False, initial_checkpoint=given, resuming=False) == given
    assert start_weights_file('lit_ti', ONE, print, pretrained=True, initial_checkpoint=None, resuming=True) is None
    assert fetched == []  # nothing downloaded for a resumed run
    assert start_weights_file('lit_s', ONE, print, pretrained=True, initial_checkpoint=None,
                              resuming=False) == tmp_path / 'lit_s.pth'
    assert fetched == ['lit_s']

    def offline(variant, log=None):
        raise LitError(f'cannot download the {variant} weights (offline)')
    monkeypatch.setattr(factory, 'pretrained_file', offline)
    with pytest.raises(LitError, match='^cannot download the lit_s weights'):
        start_weights_file('lit_s', ONE, print, pretrained=True, initial_checkpoint=None, resuming=False)


# ---- process, model, optimizer state ----

def test_prepare_process_seeds_threads_and_precision():
    before = torch.get_num_threads()
    try:
        cfg = tiny_cfg(seed=7, threads=1, amp=False)
        device, amp_dtype = prepare_process(cfg, ONE, CPU)
        first = torch.rand(3)
        assert (device, amp_dtype, torch.get_num_threads()) == (CPU, None, 1)
        prepare_process(cfg, ONE, CPU)
        assert torch.equal(torch.rand(3), first)  # the same streams from the same seed
        prepare_process(cfg, World(rank=1, world_size=2), CPU)
        assert not torch.equal(torch.rand(3), first)  # each rank its own
        assert prepare_process(tiny_cfg(amp=True, amp_dtype='bfloat16'), ONE, CPU)[1] is torch.bfloat16
    finally:
        torch.set_num_threads(before)


def test_place_model_and_wrap_for_one_process():
    model = place_model(tiny_model(), tiny_cfg(channels_last=True, grad_checkpointing=True), CPU, False, ONE, print)
    assert model.patch_embed1.proj.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.grad_checkpointing is True
    assert place_model(tiny_model(), tiny_cfg(), CPU, False, ONE, print).grad_checkpointing is False
    assert wrap_for_training(model, ONE, CPU, compile_model=False) is model  # no DDP, no compile: the model itself


def test_train_state_uses_the_rates_scaled_to_the_global_batch():
    """lr_base x global batch / lr_base_size: 4 x 2 processes x 2 accumulation = 16 images per update."""
    cfg = tiny_cfg(grad_accum_steps=2, model_ema=True, warmup_epochs=0)
    lrs = scaled_lrs(cfg, world_size=2)
    assert lrs['global_batch'] == 16 and lrs['lr'] == pytest.approx(cfg['lr_base'] * 16 / cfg['lr_base_size'])
    state = build_train_state(tiny_model(), cfg, lrs, updates_per_epoch=5, amp_dtype=None, device=CPU)
    rates = {g['group']: g['lr'] for g in state.optimizer.param_groups}
    assert rates['decay'] == pytest.approx(lrs['lr']) and rates['no_decay'] == pytest.approx(lrs['lr'])
    assert rates['offset'] == pytest.approx(lrs['lr'] * cfg['offset_lr_mult'])
    assert state.ema is not None and state.loss_scaler is None  # fp16 alone needs a scaler
    assert build_train_state(tiny_model(), cfg, lrs, 5, torch.float16, CPU).loss_scaler is not None


# ---- what a checkpoint holds, and resuming from it ----

def saved_run(tmp_path, cfg, save_interval=0):
    state = build_train_state(tiny_model(), cfg, scaled_lrs(cfg), 4, None, CPU)
    position = TrainPosition()
    saver = CheckpointSaver(tmp_path / 'run' / 'checkpoints', keep_last=2)
    checkpoints = RunCheckpoints(state, position, cfg, RunOptions(save_interval=save_interval), METADATA, ONE, CPU,
                                 saver, StopRequest())
    return state, position, saver, checkpoints


def test_checkpoints_every_n_steps_and_on_a_stop_signal(tmp_path):
    import signal

    cfg = tiny_cfg()
    _, position, saver, checkpoints = saved_run(tmp_path, cfg, save_interval=2)
    for step in range(1, 6):
        assert checkpoints.on_update(dict(epoch=1, step=step, batch=step, loss_totals=(2.0 * step, 4 * step))) is False
    assert sorted(p.name for p in saver.dir.glob('step-*.pt')) == ['step-0000002.pt', 'step-0000004.pt']
    last = read_checkpoint(saver.last)
    assert (last['step'], last['epoch'], last['resume_epoch'], last['resume_batch']) == (4, 0, 1, 4)
    assert last['epoch_loss_totals'] == [8.0, 16] and last['run_options']['save_interval'] == 2
    assert last['class_names'] == ['cat', 'dog'] and last['config']['epochs'] == 3 and last['eval_weights'] == 'model'
    checkpoints.stop.signum = signal.SIGTERM  # as the handler sets it
    assert checkpoints.on_update(dict(epoch=1, step=5, batch=5, loss_totals=(10.0, 20))) is True
    assert read_checkpoint(saver.last)['step'] == 5 == position.step
    epoch_end = checkpoints.epoch_state(epoch=1, metric=62.5)
    assert (epoch_end['epoch'], epoch_end['resume_epoch'], epoch_end['resume_batch']) == (1, 2, 0)
    assert epoch_end['eval_top1'] == 62.5


def test_resume_position_restores_and_guards_a_shard_streams_order(tmp_path):
    cfg = tiny_cfg(workers=2)
    state, _, saver, checkpoints = saved_run(tmp_path, cfg, save_interval=3)
    checkpoints.on_update(dict(epoch=1, step=3, batch=3, loss_totals=(3.0, 12)))
    ckpt = read_checkpoint(saver.last)
    assert resume_position(state, None, cfg, ONE, None, 'folder', print) == TrainPosition()
    fresh = build_train_state(tiny_model(), cfg, scaled_lrs(cfg), 4, None, CPU)
    position = resume_position(fresh, ckpt, cfg, ONE, saver.last, 'shards', print)
    assert (position.epoch, position.batch, position.step, position.loss_totals) == (1, 3, 3, (3.0, 12))
    for key, value in state.model.state_dict().items():
        assert torch.equal(fresh.model.state_dict()[key], value), key
    with pytest.raises(CheckpointError, match='resume with -j 2'):
        resume_position(fresh, ckpt, {**cfg, 'workers': 4}, ONE, saver.last, 'shards', print)
    resume_position(fresh, ckpt, {**cfg, 'workers': 4}, ONE, saver.last, 'folder', print)  # a folder's order: any -j


# ---- the run directory ----

def test_start_run_dir_new_then_resumed(tmp_path):
    cfg = tiny_cfg()
    logged = []
    new = start_run_dir(cfg, ONE, CPU, torch.bfloat16, logged.append, output=tmp_path, name=None,
                        default_name='lit_ti-tiny', exist_ok=False, resumed_from=None, start_epoch=0)
    assert new == tmp_path / 'lit_ti-tiny'
    assert yaml.safe_load((new / 'config.yaml').read_text())['epochs'] == 3
    env = json.loads((new / 'env.json').read_text())
    assert (env['device'], env['amp_dtype'], env['world_size'], env['torch']) == ('cpu', 'bfloat16', 1,
                                                                                   torch.__version__)
    assert start_run_dir(cfg, ONE, CPU, None, logged.append, output=tmp_path, name=None, default_name='lit_ti-tiny',
                         exist_ok=False, resumed_from=None, start_epoch=0) == tmp_path / 'lit_ti-tiny-2'
    (new / 'metrics.jsonl').write_text(''.join(json.dumps(dict(epoch=e)) + '\n' for e in range(3)))
    resumed = start_run_dir({**cfg, 'epochs': 5}, ONE, CPU, None, logged.append, output=tmp_path / 'elsewhere',
                            name=None, default_name='x', exist_ok=False,
                            resumed_from=new / 'checkpoints' / 'last.pt', start_epoch=2)
    assert resumed == new  # the run goes on in its folder: rows of unfinished epochs dropped, config updated
    assert [json.loads(line)['epoch'] for line in (new / 'metrics.jsonl').read_text().splitlines()] == [0, 1]
    assert yaml.safe_load((new / 'config.yaml').read_text())['epochs'] == 5
    with pytest.raises(LitError, match='pass a writable --output'):
        start_run_dir(cfg, ONE, CPU, None, print, output=new / 'config.yaml' / 'sub', name=None, default_name='x',
                      exist_ok=False, resumed_from=None, start_epoch=0)

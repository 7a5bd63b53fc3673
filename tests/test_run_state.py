"""The training run's own pieces, tested alone: the checkpoint policy (CheckpointSaver), restoring a training
state (TrainState.restore) and setting up the run directory (prepare_run_dir)."""
import json

import pytest
import torch
import yaml

from litcli.core.modelio.checkpoint import CheckpointSaver, TrainState, step_checkpoints
from litcli.core.errors import CheckpointError
from litcli.core.training.optim import create_optimizer, create_scheduler
from litcli.core.training.rundir import prepare_run_dir, write_metrics
from litcli.core.runtime import World

CFG = dict(epochs=4, warmup_epochs=1, warmup_lr=1e-6, min_lr=1e-5, lr=1e-3, lr_base=5e-4, scale_lr_bounds=False,
           sched='cosine', sched_on_epochs=False, batch_size=4, grad_accum_steps=1)


def make_state(seed: int = 0) -> TrainState:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    optimizer = create_optimizer(model, lr=1e-3, weight_decay=0.05, offset_lr=1e-5)
    scheduler = create_scheduler(optimizer, 4, 1, 1e-6, 1e-5, updates_per_epoch=10, step_on_epochs=False)
    return TrainState(model, optimizer, scheduler)


def test_saver_keeps_last_best_and_the_newest_steps(tmp_path):
    saver = CheckpointSaver(tmp_path / 'ckpt', keep_last=2)
    (tmp_path / 'ckpt' / '.last.pt.123.tmp').write_bytes(b'left by a killed save')
    saver = CheckpointSaver(tmp_path / 'ckpt', keep_last=2)  # a new saver clears stale temporaries
    for step in (1, 2, 3):
        saver.save_step({'step': step}, step)
    assert [p.name for p in step_checkpoints(saver.dir)] == ['step-0000002.pt', 'step-0000003.pt']
    assert torch.load(saver.last, weights_only=True) == {'step': 3}
    saver.save_epoch({'step': 4}, is_best=True)
    saver.save_epoch({'step': 5}, is_best=False)
    assert torch.load(saver.dir / 'best.pt', weights_only=True) == {'step': 4}
    assert torch.load(saver.last, weights_only=True) == {'step': 5}
    assert not list(saver.dir.glob('.*.tmp'))


def test_train_state_round_trip_and_position():
    state = make_state(0)
    x = torch.randn(8, 4)
    for _ in range(3):  # a few updates so optimizer moments and BN statistics are non-trivial
        state.model(x).sum().backward()
        state.optimizer.step()
        state.optimizer.zero_grad()
        state.scheduler.step_update(num_updates=3)
    ckpt = dict(**state.state_dicts(), config=CFG, epoch=0, step=3, resume_epoch=0, resume_batch=3,
                epoch_loss_totals=[1.5, 12], best_metric=None, world_size=1)
    fresh = make_state(1)
    logs = []
    position = fresh.restore(ckpt, dict(CFG), world_size=1, rank=0, source='ckpt', log=logs.append)
    assert (position.epoch, position.batch, position.step, position.loss_totals) == (0, 3, 3, (1.5, 12))
    for key, value in state.model.state_dict().items():
        assert torch.equal(value, fresh.model.state_dict()[key]), key
    assert fresh.optimizer.param_groups[0]['lr'] == state.optimizer.param_groups[0]['lr']
    # A part-way checkpoint needs the same world and batch: said in one line, not resumed wrongly.
    with pytest.raises(CheckpointError, match='part-way into epoch 0 with 1 process'):
        make_state(2).restore(ckpt, dict(CFG), world_size=2, rank=0, source='ckpt', log=logs.append)
    # Changed schedule settings: the new plan is followed and the log says so.
    make_state(3).restore(ckpt, {**CFG, 'epochs': 8}, world_size=1, rank=0, source='ckpt', log=logs.append)
    assert any('schedule follows the new config' in line for line in logs)


def test_prepare_run_dir_new_exist_ok_and_resume(tmp_path):
    logs = []
    kwargs = dict(output=tmp_path, name='r', default_name='d', config={'a': (1, 2)}, env={'e': 1})
    first = prepare_run_dir(World(), logs.append, exist_ok=False, resumed_dir=None, start_epoch=0, **kwargs)
    assert first == tmp_path / 'r' and yaml.safe_load((first / 'config.yaml').read_text()) == {'a': [1, 2]}
    assert json.loads((first / 'env.json').read_text()) == {'e': 1}
    second = prepare_run_dir(World(), logs.append, exist_ok=False, resumed_dir=None, start_epoch=0, **kwargs)
    assert second == tmp_path / 'r-2'  # never overwrites
    for epoch in range(3):
        write_metrics(first, dict(epoch=epoch, step=epoch, train_loss=1.0, eval_loss=1.0, eval_top1=1.0,
                                  eval_top5=1.0, lr=1.0, img_per_s=1.0, epoch_time_s=1.0))
    resumed = prepare_run_dir(World(), logs.append, exist_ok=False, resumed_dir=first, start_epoch=2, **kwargs)
    assert resumed == first and len((first / 'metrics.jsonl').read_text().splitlines()) == 2  # epoch 2 runs again
    again = prepare_run_dir(World(), logs.append, exist_ok=True, resumed_dir=None, start_epoch=0, **kwargs)
    assert again == first and not (first / 'metrics.jsonl').exists()
    assert any('held an earlier run' in line for line in logs)
    assert (next(first.glob('replaced-*')) / 'metrics.jsonl').exists()


def test_resume_auto_prefers_the_higher_step_on_an_mtime_tie(tmp_path):
    """A coarse file-system clock gives several step files the same mtime: the higher step is the newer."""
    import os

    from litcli.core.modelio.checkpoint import newest_valid_checkpoint, save_checkpoint

    for step in (10, 12, 11):
        save_checkpoint({'config': {}, 'optimizer': {}, 'step': step}, tmp_path / f'step-{step:07d}.pt')
        os.utime(tmp_path / f'step-{step:07d}.pt', ns=(10**18, 10**18))
    path, raw = newest_valid_checkpoint(tmp_path, print)
    assert path.name == 'step-0000012.pt' and raw['step'] == 12

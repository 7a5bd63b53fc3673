"""The training and evaluation loops, and nothing else (run setup, files and logging live in train.py)."""
import contextlib
import math
import time
from typing import Callable, Dict, Optional

import torch
from torch import nn

from litcli.errors import LitError


class NonFiniteLossError(LitError):
    """The loss became NaN/inf; the run stops and keeps its last good checkpoint."""

    def __init__(self, step: int, epoch: int, value: float):
        self.step, self.epoch = step, epoch
        super().__init__(f'loss is {value} at step {step} (epoch {epoch}); training stopped, the last good '
                         f'checkpoint is kept; lower --lr, enable --clip-grad or use --amp-dtype bfloat16')


def autocast_context(device: torch.device, amp_dtype: Optional[torch.dtype]):
    """torch.autocast for ``amp_dtype``, or a no-op context for full precision."""
    if amp_dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=amp_dtype)


def train_one_epoch(
        model: nn.Module,
        loader,
        optimizer: torch.optim.Optimizer,
        loss_fn: nn.Module,
        device: torch.device,
        epoch: int,
        num_updates: int,
        scheduler=None,
        step_scheduler_per_update: bool = False,
        mixup_fn: Optional[Callable] = None,
        amp_autocast=contextlib.nullcontext,
        loss_scaler=None,
        clip_grad: Optional[float] = None,
        grad_accum_steps: int = 1,
        model_ema=None,
        channels_last: bool = False,
        batch_transform: Optional[Callable] = None,
        on_step: Optional[Callable[[Dict], None]] = None,
        start_batch: int = 0,
        loss_totals=(0.0, 0),
        on_update: Optional[Callable[[Dict], bool]] = None,
) -> Dict:
    """One pass over ``loader``. ``num_updates`` counts optimizer steps across epochs (it continues on resume).

    Each optimizer update accumulates ``grad_accum_steps`` batches (loss divided accordingly); a trailing
    partial accumulation is dropped so every update sees the same number of samples. Under DDP the gradient
    all-reduce is skipped (``no_sync``) on the accumulation micro-steps that do not update.

    Mid-epoch resume: ``loader`` yields only the batches after the first ``start_batch`` (a multiple of
    ``grad_accum_steps``) of the epoch and ``loss_totals`` carries the (loss sum, sample count) up to there.
    After every update ``on_update(state)`` runs (the trainer saves checkpoints there); when it returns True the
    epoch stops at once and the result has ``stopped=True``. Returns the mean train loss, the last lr, images/s,
    the updated ``num_updates`` and the position (``batch``) reached; ``lr`` is the rate of the epoch's last update
    (per-epoch schedules: the epoch's rate), not the one the schedule set after it.
    """
    model.train()
    total_batches = start_batch + len(loader)
    updates_per_epoch = total_batches // grad_accum_steps
    usable_batches = updates_per_epoch * grad_accum_steps
    loss_sum, loss_count = loss_totals
    images = 0
    stopped = False
    batch_idx = start_batch - 1
    no_sync = getattr(model, 'no_sync', None)  # DistributedDataParallel (also under torch.compile's wrapper)
    if no_sync is None and hasattr(model, '_orig_mod'):
        no_sync = getattr(model._orig_mod, 'no_sync', None)
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    step_lr = optimizer.param_groups[0]['lr']  # the rate the latest update used (the schedule moves after it)
    for batch_idx, (x, y) in enumerate(loader, start=start_batch):
        if batch_idx >= usable_batches:
            batch_idx -= 1
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if batch_transform is not None:  # augmentation/normalisation done on the whole batch (built-in sets)
            x = batch_transform(x)
        if mixup_fn is not None:
            x, y = mixup_fn(x, y)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        need_update = (batch_idx + 1) % grad_accum_steps == 0
        sync = contextlib.nullcontext() if need_update or no_sync is None else no_sync()
        with sync:  # forward and backward inside: DDP decides at backward whether to all-reduce
            with amp_autocast():
                loss = loss_fn(model(x), y)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(num_updates + 1, epoch, loss_value)
            loss = loss / grad_accum_steps
            if loss_scaler is not None:  # fp16: timm NativeScaler unscales before clipping
                loss_scaler(loss, optimizer, clip_grad=clip_grad, parameters=model.parameters(),
                            need_update=need_update)
            else:
                loss.backward()
        if loss_scaler is None and need_update:
            if clip_grad is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            optimizer.step()
        if need_update:
            step_lr = optimizer.param_groups[0]['lr']
        loss_sum += loss_value * x.shape[0]
        loss_count += x.shape[0]
        images += x.shape[0]
        if not need_update:
            continue
        optimizer.zero_grad(set_to_none=True)
        num_updates += 1
        if model_ema is not None:
            model_ema.update(model, step=num_updates)
        if scheduler is not None and step_scheduler_per_update:
            scheduler.step_update(num_updates=num_updates)
        if on_update is not None:  # checkpoint / stop request, at an update boundary (no gradient pending)
            stopped = bool(on_update(dict(epoch=epoch, step=num_updates, batch=batch_idx + 1,
                                          loss_totals=(loss_sum, loss_count))))
        if on_step is not None:
            if device.type == 'cuda':
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            position = (batch_idx + 1) // grad_accum_steps
            done_here = (batch_idx + 1 - start_batch) // grad_accum_steps
            # 'elapsed' as if the epoch had run from its start at this pace (the reporter's ETA divides by batch)
            on_step(dict(epoch=epoch, step=num_updates, batch=position, total=updates_per_epoch, loss=loss_value,
                         lr=step_lr, img_per_s=images / max(elapsed, 1e-9),
                         elapsed=elapsed / max(done_here, 1) * position))
        if stopped:
            break
    if device.type == 'cuda':
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return dict(train_loss=loss_sum / max(loss_count, 1), lr=step_lr,
                img_per_s=images / max(elapsed, 1e-9), num_updates=num_updates, train_time_s=elapsed,
                stopped=stopped, batch=batch_idx + 1, loss_totals=(loss_sum, loss_count))


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp_autocast=contextlib.nullcontext,
             channels_last: bool = False, batch_transform: Optional[Callable] = None, world=None) -> Dict:
    """Top-1/top-5 accuracy (%) and cross-entropy over the whole loader, and images/s.

    Correct predictions are counted exactly (integers, not rounded percentages). With a distributed ``world``
    (litcli.distributed.World) every rank must pass a loader over its own disjoint shard (``ShardSampler``):
    the sums are all-reduced, so every rank returns the metrics of the whole dataset.
    """
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction='sum')
    loss_sum, top1_sum, top5_sum, count = 0.0, 0, 0, 0
    start = time.perf_counter()
    for batch in loader:
        if batch is None:  # every image of this batch was unreadable (litcli.data.collate_readable)
            continue
        x, y = batch
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if batch_transform is not None:
            x = batch_transform(x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp_autocast():
            logits = model(x)
        logits = logits.float()
        k = min(5, logits.shape[1])  # top-5 is top-k for datasets with fewer than 5 classes
        hits = logits.topk(k, dim=1).indices.eq(y[:, None])  # B, k (timm's accuracy(), as counts)
        loss_sum += loss_fn(logits, y).item()
        top1_sum += int(hits[:, 0].sum())
        top5_sum += int(hits.any(dim=1).sum())
        count += x.shape[0]
    if device.type == 'cuda':
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    if world is not None and world.distributed:
        from litcli.distributed import all_reduce_sum
        loss_sum, top1_sum, top5_sum, count = all_reduce_sum([loss_sum, top1_sum, top5_sum, count], world, device)
        top1_sum, top5_sum, count = int(top1_sum), int(top5_sum), int(count)
    if count == 0:
        raise LitError('the evaluation set is empty; give a data folder with images in its class subfolders')
    return dict(loss=loss_sum / count, top1=100.0 * top1_sum / count, top5=100.0 * top5_sum / count,
                img_per_s=count / max(elapsed, 1e-9), num_images=count, eval_time_s=elapsed,
                top1_correct=top1_sum, top5_correct=top5_sum)

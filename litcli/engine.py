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
) -> Dict:
    """One pass over ``loader``. ``num_updates`` counts optimizer steps across epochs (it continues on resume).

    Each optimizer update accumulates ``grad_accum_steps`` batches (loss divided accordingly); a trailing
    partial accumulation is dropped so every update sees the same number of samples. Returns the mean train
    loss, the last lr, images/s and the updated ``num_updates``.
    """
    model.train()
    updates_per_epoch = len(loader) // grad_accum_steps
    usable_batches = updates_per_epoch * grad_accum_steps
    loss_sum, loss_count, images = 0.0, 0, 0
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    for batch_idx, (x, y) in enumerate(loader):
        if batch_idx >= usable_batches:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if batch_transform is not None:  # augmentation/normalisation done on the whole batch (built-in sets)
            x = batch_transform(x)
        if mixup_fn is not None:
            x, y = mixup_fn(x, y)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp_autocast():
            loss = loss_fn(model(x), y)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(num_updates + 1, epoch, loss_value)
        loss = loss / grad_accum_steps
        need_update = (batch_idx + 1) % grad_accum_steps == 0
        if loss_scaler is not None:  # fp16: timm NativeScaler unscales before clipping
            loss_scaler(loss, optimizer, clip_grad=clip_grad, parameters=model.parameters(),
                        need_update=need_update)
        else:
            loss.backward()
            if need_update:
                if clip_grad is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
                optimizer.step()
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
        if on_step is not None:
            if device.type == 'cuda':
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            on_step(dict(epoch=epoch, step=num_updates, batch=(batch_idx + 1) // grad_accum_steps,
                         total=updates_per_epoch, loss=loss_value, lr=optimizer.param_groups[0]['lr'],
                         img_per_s=images / max(elapsed, 1e-9), elapsed=elapsed))
    if device.type == 'cuda':
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return dict(train_loss=loss_sum / max(loss_count, 1), lr=optimizer.param_groups[0]['lr'],
                img_per_s=images / max(elapsed, 1e-9), num_updates=num_updates, train_time_s=elapsed)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp_autocast=contextlib.nullcontext,
             channels_last: bool = False, batch_transform: Optional[Callable] = None) -> Dict:
    """Top-1/top-5 accuracy (%) and cross-entropy over the whole loader, and images/s."""
    from timm.utils import accuracy

    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction='sum')
    loss_sum, top1_sum, top5_sum, count = 0.0, 0.0, 0.0, 0
    start = time.perf_counter()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if batch_transform is not None:
            x = batch_transform(x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp_autocast():
            logits = model(x)
        logits = logits.float()
        k = min(5, logits.shape[1])  # top-5 is top-k for datasets with fewer than 5 classes
        top1, top5 = accuracy(logits, y, topk=(1, k))
        loss_sum += loss_fn(logits, y).item()
        top1_sum += top1.item() * x.shape[0]
        top5_sum += top5.item() * x.shape[0]
        count += x.shape[0]
    if device.type == 'cuda':
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    if count == 0:
        raise LitError('the evaluation set is empty; give a data folder with images in its class subfolders')
    return dict(loss=loss_sum / count, top1=top1_sum / count, top5=top5_sum / count,
                img_per_s=count / max(elapsed, 1e-9), num_images=count, eval_time_s=elapsed)

"""The training and evaluation loops (ConvNeXt's engine.py): set-up, files and logging live in commands/train.py."""
import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

from litcli.core.errors import LitError
from litcli.core.training.optim import group_lrs


class NonFiniteLossError(LitError):
    """The loss became NaN/inf; the run stops and keeps its last good checkpoint."""

    def __init__(self, step: int, epoch: int, value: float):
        self.step, self.epoch = step, epoch
        super().__init__(f'loss is {value} at step {step} (epoch {epoch}); training stopped, the last good '
                         f'checkpoint is kept; lower --lr, enable --clip-grad or use --amp-dtype bfloat16')


@dataclass
class TrainSetup:
    """What stays fixed across a run's epochs: the module that trains (DDP-wrapped and/or compiled), the optimizer
    and the options of each update."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    device: torch.device
    scheduler: Any = None
    per_update_schedule: bool = False  # timm's step_update after every update (S/M/B), else per epoch (Ti)
    mixup: Optional[Callable] = None
    autocast: Callable = contextlib.nullcontext
    loss_scaler: Any = None  # fp16: timm's NativeScaler
    clip_grad: Optional[float] = None
    accum_steps: int = 1
    ema: Any = None  # timm ModelEmaV3
    channels_last: bool = False
    batch_transform: Optional[Callable] = None  # augmentation/normalisation on the whole batch (built-in sets)
    # dense tasks: (module, batch) -> (loss, images in the batch), instead of loss_fn(module(x), y)
    forward_loss: Optional[Callable[[nn.Module, Any], tuple]] = None


class DataTimer:
    """Iterates ``loader`` and splits the wall time into waiting for the next batch (``data_s``: in ``iter``/``next``,
    i.e. the workers were behind, plus the host-to-device copy) and the rest (the step). ``split()`` returns both
    since its previous call."""

    def __init__(self, loader):
        self.loader = loader
        self.data_s = 0.0
        self.mark, self.data_mark = time.perf_counter(), 0.0

    def __iter__(self):
        t = time.perf_counter()
        it = iter(self.loader)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            finally:
                self.data_s += time.perf_counter() - t
            yield batch
            t = time.perf_counter()

    def split(self):
        now = time.perf_counter()
        data, wall = self.data_s - self.data_mark, now - self.mark
        self.mark, self.data_mark = now, self.data_s
        return data, max(wall - data, 0.0)


def build_loss(cfg: Dict, num_classes: int):
    """(loss, mixup) of a recipe: Mixup/CutMix with soft-target CE, else label smoothing, else plain CE."""
    if cfg['mixup'] > 0 or cfg['cutmix'] > 0:
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy
        mixup = Mixup(mixup_alpha=cfg['mixup'], cutmix_alpha=cfg['cutmix'], prob=cfg['mixup_prob'],
                      switch_prob=cfg['mixup_switch_prob'], mode=cfg['mixup_mode'],
                      label_smoothing=cfg['smoothing'], num_classes=num_classes)
        return SoftTargetCrossEntropy(), mixup
    if cfg['smoothing'] > 0:
        from timm.loss import LabelSmoothingCrossEntropy
        return LabelSmoothingCrossEntropy(smoothing=cfg['smoothing']), None
    return nn.CrossEntropyLoss(), None


def train_one_epoch(setup: TrainSetup, loader, epoch: int, num_updates: int, start_batch: int = 0,
                    loss_totals=(0.0, 0), on_update: Optional[Callable[[Dict], bool]] = None,
                    on_step: Optional[Callable[[Dict], None]] = None) -> Dict:
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
    s = setup
    model, optimizer, device, grad_accum_steps = s.model, s.optimizer, s.device, s.accum_steps
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
    timer = DataTimer(loader)  # data wait vs compute, per update and per epoch
    optimizer.zero_grad(set_to_none=True)
    step_lr = optimizer.param_groups[0]['lr']  # the rate the latest update used (the schedule moves after it)
    step_lrs = group_lrs(optimizer)  # the same, per parameter group (decay / no_decay / offset)
    for batch_idx, batch in enumerate(timer, start=start_batch):
        if batch_idx >= usable_batches:
            batch_idx -= 1
            break
        need_update = (batch_idx + 1) % grad_accum_steps == 0
        sync = contextlib.nullcontext() if need_update or no_sync is None else no_sync()
        with sync:  # forward and backward inside: DDP decides at backward whether to all-reduce
            if s.forward_loss is not None:
                with s.autocast():
                    loss, batch_images = s.forward_loss(model, batch)
            else:
                x, y = _classification_batch(s, batch)
                batch_images = x.shape[0]
                with s.autocast():
                    loss = s.loss_fn(model(x), y)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(num_updates + 1, epoch, loss_value)
            loss = loss / grad_accum_steps
            if s.loss_scaler is not None:  # fp16: timm NativeScaler unscales before clipping
                s.loss_scaler(loss, optimizer, clip_grad=s.clip_grad, parameters=model.parameters(),
                              need_update=need_update)
            else:
                loss.backward()
        if s.loss_scaler is None and need_update:
            if s.clip_grad is not None:
                nn.utils.clip_grad_norm_(model.parameters(), s.clip_grad)
            optimizer.step()
        if need_update:
            step_lr = optimizer.param_groups[0]['lr']
            step_lrs = group_lrs(optimizer)
        loss_sum += loss_value * batch_images
        loss_count += batch_images
        images += batch_images
        if not need_update:
            continue
        optimizer.zero_grad(set_to_none=True)
        num_updates += 1
        if s.ema is not None:
            s.ema.update(model, step=num_updates)
        if s.scheduler is not None and s.per_update_schedule:
            s.scheduler.step_update(num_updates=num_updates)
        if on_update is not None:  # checkpoint / stop request, at an update boundary (no gradient pending)
            stopped = bool(on_update(dict(epoch=epoch, step=num_updates, batch=batch_idx + 1,
                                          loss_totals=(loss_sum, loss_count))))
        if on_step is not None:
            if device.type == 'cuda':
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            data_s, compute_s = timer.split()  # this update's (first of the epoch: includes worker start-up)
            position = (batch_idx + 1) // grad_accum_steps
            done_here = (batch_idx + 1 - start_batch) // grad_accum_steps
            # 'elapsed' as if the epoch had run from its start at this pace (the reporter's ETA divides by batch)
            on_step(dict(epoch=epoch, step=num_updates, batch=position, total=updates_per_epoch, loss=loss_value,
                         lr=step_lr, lrs=step_lrs, img_per_s=images / max(elapsed, 1e-9),
                         elapsed=elapsed / max(done_here, 1) * position, data_s=data_s, compute_s=compute_s,
                         images=batch_images * grad_accum_steps, first=done_here == 1))
        if stopped:
            break
    if device.type == 'cuda':
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return dict(train_loss=loss_sum / max(loss_count, 1), lr=step_lr,
                img_per_s=images / max(elapsed, 1e-9), num_updates=num_updates, train_time_s=elapsed,
                data_s=timer.data_s, compute_s=max(elapsed - timer.data_s, 0.0),
                stopped=stopped, batch=batch_idx + 1, loss_totals=(loss_sum, loss_count))


def _classification_batch(s: TrainSetup, batch):
    """(inputs, targets) of a classification batch on the device: the built-in sets' batch augmentation, Mixup /
    CutMix, channels-last."""
    x, y = batch
    x, y = x.to(s.device, non_blocking=True), y.to(s.device, non_blocking=True)
    if s.batch_transform is not None:  # augmentation/normalisation done on the whole batch (built-in sets)
        x = s.batch_transform(x)
    if s.mixup is not None:
        x, y = s.mixup(x, y)
    if s.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp_autocast=contextlib.nullcontext,
             channels_last: bool = False, batch_transform: Optional[Callable] = None, world=None,
             num_classes: Optional[int] = None, rows_topk: int = 0) -> Dict:
    """Top-1/top-5 accuracy (%) and cross-entropy over the whole loader, and images/s.

    Correct predictions are counted exactly (integers, not rounded percentages). With a distributed ``world``
    (litcli.core.runtime.World) every rank must pass a loader over its own disjoint shard (``ShardSampler``):
    the sums are all-reduced, so every rank returns the metrics of the whole dataset.

    ``num_classes``: also count the confusion matrix (``confusion``: (C, C) int64, rows = true class, columns =
    top-1 prediction) and each class's top-5 hits (``class_top5_correct``), on the device, reduced like the sums.
    ``rows_topk`` > 0: the loader yields ``(x, y, dataset index)`` (``litcli.core.analysis.evaluation.WithIndex``) and the
    result has ``rows``: per image (index, true class, top-k classes, their probabilities), sorted by index and
    gathered from every rank (each image once).
    """
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction='sum')
    loss_sum, top1_sum, top5_sum, count = 0.0, 0, 0, 0
    confusion = class_top5 = None
    if num_classes:
        confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
        class_top5 = torch.zeros(num_classes, dtype=torch.int64, device=device)
    rows = []
    start = time.perf_counter()
    for batch in loader:
        if batch is None:  # every image of this batch was unreadable (litcli.core.data.datasets.collate_readable)
            continue
        x, y = batch[0], batch[1]
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if batch_transform is not None:
            x = batch_transform(x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp_autocast():
            logits = model(x)
        logits = logits.float()
        k = min(5, logits.shape[1])  # top-5 is top-k for datasets with fewer than 5 classes
        top = logits.topk(k, dim=1).indices  # B, k
        hits = top.eq(y[:, None])  # B, k (timm's accuracy(), as counts)
        loss_sum += loss_fn(logits, y).item()
        top1_sum += int(hits[:, 0].sum())
        top5_sum += int(hits.any(dim=1).sum())
        count += x.shape[0]
        if confusion is not None:  # flat index true * C + predicted, counted in one bincount
            confusion += torch.bincount(y * num_classes + top[:, 0], minlength=num_classes * num_classes)
            class_top5 += torch.bincount(y[hits.any(dim=1)], minlength=num_classes)
        if rows_topk:
            probs, classes = logits.softmax(dim=1).topk(min(rows_topk, logits.shape[1]), dim=1)  # B, k
            rows.extend(zip(batch[2].tolist(), y.tolist(), classes.tolist(), probs.tolist()))
    if device.type == 'cuda':
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    if world is not None and world.distributed:
        from litcli.core.runtime import all_gather_object, all_reduce_sum
        loss_sum, top1_sum, top5_sum, count = all_reduce_sum([loss_sum, top1_sum, top5_sum, count], world, device)
        top1_sum, top5_sum, count = int(top1_sum), int(top5_sum), int(count)
        if confusion is not None:  # float64 sums: exact counts below 2**53
            confusion = torch.tensor(all_reduce_sum(confusion.tolist(), world, device), dtype=torch.int64)
            class_top5 = torch.tensor(all_reduce_sum(class_top5.tolist(), world, device), dtype=torch.int64)
        if rows_topk:
            rows = [r for shard in all_gather_object(rows, world) for r in shard]
    if count == 0:
        raise LitError('the evaluation set is empty; give a data folder with images in its class subfolders')
    result = dict(loss=loss_sum / count, top1=100.0 * top1_sum / count, top5=100.0 * top5_sum / count,
                  img_per_s=count / max(elapsed, 1e-9), num_images=count, eval_time_s=elapsed,
                  top1_correct=top1_sum, top5_correct=top5_sum)
    if confusion is not None:
        result['confusion'] = confusion.cpu().view(num_classes, num_classes)
        result['class_top5_correct'] = class_top5.cpu()
    if rows_topk:
        result['rows'] = sorted(rows)
    return result

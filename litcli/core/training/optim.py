"""Optimizer parameter groups and LR schedule of the official LIT recipes (docs/training.md, "Configuration"); the
dense tasks' (mmcv's rules) at the end.

Three groups, decided per trainable parameter in this order:
1. no decay: 1-D tensors (norms, biases), names ending in ``.bias``, names in ``model.no_weight_decay()``
   (cls_token, relative_position_bias_table); this includes ``conv_offset.bias``, at the full lr;
2. offset: the remaining names containing ``conv_offset`` (the DTM ``conv_offset.weight``), with its own
   absolute ``lr`` = lr x 0.01 and the normal weight decay;
3. decay: everything else (LIT-Ti's ``pos_embed1..4`` included, as the official run did).

The offset group carries an absolute ``'lr'`` rather than timm's ``lr_scale`` on purpose: timm's cosine
scheduler gives each group its own maximum but one shared ``min_lr``, so with lr x 0.01 = min_lr the offset
lr warms up to 1e-5 and then stays at 1e-5, which is what the official runs did (their logged learning rates).
"""
import functools
from typing import Dict, List

import torch
from torch import nn

from litcli.core.errors import LitError

FUSED_OPTIMIZERS = ('adam', 'adamw')
FUSED_DEVICES = ('cpu', 'cuda')  # torch >= 2.4 has fused Adam/AdamW kernels for both


def fused_kernel_available(model: nn.Module) -> bool:
    """Whether torch's fused Adam(W) can step every trainable parameter. Decided here because torch only checks
    at the first ``step()``, too late to fall back."""
    return all(p.device.type in FUSED_DEVICES and p.is_floating_point()
               for p in model.parameters() if p.requires_grad)


def lit_param_groups(model: nn.Module, weight_decay: float, offset_lr: float) -> List[Dict]:
    """The three official groups; weight_decay is set in every group (timm's default only fills missing ones)."""
    skip = set(model.no_weight_decay()) if hasattr(model, 'no_weight_decay') else set()
    decay, no_decay, offset = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith('.bias') or name in skip:
            no_decay.append(param)
        elif 'conv_offset' in name:
            offset.append(param)
        else:
            decay.append(param)
    groups = [dict(params=decay, weight_decay=weight_decay, group='decay'),
              dict(params=no_decay, weight_decay=0.0, group='no_decay')]
    if offset:  # models without DTM have no offset group
        groups.append(dict(params=offset, weight_decay=weight_decay, lr=offset_lr, group='offset'))
    return [g for g in groups if g['params']]


def create_optimizer(model: nn.Module, lr: float, weight_decay: float, offset_lr: float, opt: str = 'adamw',
                     eps: float = 1e-8, betas=(0.9, 0.999)) -> torch.optim.Optimizer:
    """timm's optimizer factory with the LIT param groups; Adam/AdamW use torch's fused kernel where it exists."""
    from timm.optim import create_optimizer_v2

    def build(**extra):
        return create_optimizer_v2(
            model, opt=opt, lr=lr, weight_decay=weight_decay, eps=eps, betas=tuple(betas),
            param_group_fn=lambda m: lit_param_groups(m, weight_decay, offset_lr), **extra)

    if opt.lower() in FUSED_OPTIMIZERS and fused_kernel_available(model):
        # One kernel over all tensors instead of ~10 ops per tensor: LIT-S's AdamW step on 2 CPU threads takes
        # 22 ms instead of 111 ms (the same update up to float rounding).
        return build(fused=True)
    return build()


def create_scheduler(optimizer: torch.optim.Optimizer, epochs: int, warmup_epochs: int, warmup_lr: float,
                     min_lr: float, updates_per_epoch: int, step_on_epochs: bool, sched: str = 'cosine'):
    """timm's cosine schedule with linear warmup and no cooldown; stepped per epoch (Ti) or per update (S/M/B)."""
    from timm.scheduler import create_scheduler_v2

    scheduler, _ = create_scheduler_v2(
        optimizer, sched=sched, num_epochs=epochs, warmup_epochs=warmup_epochs, warmup_lr=warmup_lr,
        min_lr=min_lr, cooldown_epochs=0, step_on_epochs=step_on_epochs, updates_per_epoch=updates_per_epoch)
    return scheduler


def group_lrs(optimizer: torch.optim.Optimizer) -> Dict[str, float]:
    """The current learning rate of each parameter group by its name (decay, no_decay, offset), else its index."""
    return {str(g.get('group', i)): float(g['lr']) for i, g in enumerate(optimizer.param_groups)}


# ---------------------------------------------------------------------------------------------------------------
# Dense prediction (RetinaNet / Mask R-CNN / Semantic FPN): the official mmdet 2.11 / mmseg 0.13 configs' rules

def _dense_backbone(model: nn.Module):
    """(prefix, module) of a dense model's LIT backbone: ``backbone.body`` of a detector, ``backbone`` of a
    SemanticFPN (litcli.models.detection.backbone_and_neck)."""
    from litcli.models.detection import backbone_and_neck

    body, _ = backbone_and_neck(model)
    prefix = next(name for name, module in model.named_modules() if module is body)
    return prefix, body


def dense_param_groups(model: nn.Module, weight_decay: float) -> List[Dict]:
    """mmcv's DefaultOptimizerConstructor as the official configs use it: every parameter decays (biases and norms
    included) except the backbone's ``no_weight_decay()`` names (LIT-S detection: its ``paramwise_cfg`` custom_keys
    relative_position_bias_table and norm; nothing for LIT-Ti nor for segmentation), which get weight decay 0.
    One lr for all: dense training gives the DTM offsets no lower lr."""
    prefix, body = _dense_backbone(model)
    exempt = {f'{prefix}.{name}' for name in (body.no_weight_decay() if hasattr(body, 'no_weight_decay') else ())}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if name in exempt else decay).append(param)
    groups = [dict(params=decay, weight_decay=weight_decay, group='decay'),
              dict(params=no_decay, weight_decay=0.0, group='no_decay')]
    return [g for g in groups if g['params']]


def create_dense_optimizer(model: nn.Module, cfg: Dict) -> torch.optim.Optimizer:
    """timm's optimizer factory with ``dense_param_groups`` and the config's lr, opt, eps, betas; Adam/AdamW use
    torch's fused kernel where it exists (as ``create_optimizer``)."""
    from timm.optim import create_optimizer_v2

    extra = dict(fused=True) if cfg['opt'].lower() in FUSED_OPTIMIZERS and fused_kernel_available(model) else {}
    return create_optimizer_v2(
        model, opt=cfg['opt'], lr=cfg['lr'], weight_decay=cfg['weight_decay'], eps=cfg['opt_eps'],
        betas=tuple(cfg['opt_betas']), param_group_fn=lambda m: dense_param_groups(m, cfg['weight_decay']), **extra)


@functools.lru_cache(maxsize=None)
def mmcv_scheduler_class():
    """The ``MMCVLRScheduler`` class (a timm Scheduler), built on first use: importing timm here would load it for
    every user of this module (the training loop imports ``group_lrs`` before any model exists)."""
    from timm.scheduler.scheduler import Scheduler

    class MMCVLRScheduler(Scheduler):
        """mmcv 1.x's LrUpdaterHook stepped per update: lr(t) = regular(t) x warmup(t), with
        regular(t) = lr x decay_rate ** (decay epochs <= t // updates_per_epoch)   ('multistep', mmcv StepLr by epoch)
                   = (lr - min_lr) x (1 - t / total) ** power + min_lr          ('poly', by iteration)
        warmup(t)  = 1 - (1 - t / warmup_iters) x (1 - warmup_ratio) for t < warmup_iters, else 1 (mmcv 'linear').
        Written here because timm's MultiStepLR/PolyLR schedulers warm up linearly towards the *undecayed* lr
        (warmup_lr_init + t x step), where mmcv scales the *scheduled* lr: they differ for poly with any warmup
        and for multistep when a decay epoch falls inside the warmup (a small set with 500 warmup updates).
        ``t`` is the number of updates done (mmcv's ``runner.iter``); the lr it gives is the next update's.
        State: plain attributes, saved and restored by timm's ``state_dict``/``load_state_dict``."""

        def __init__(self, optimizer, sched: str, total_updates: int, updates_per_epoch: int, decay_epochs=(),
                     decay_rate: float = 0.1, power: float = 1.0, min_lr: float = 0.0, warmup_iters: int = 0,
                     warmup_ratio: float = 0.001):
            self.sched = sched
            self.total_updates = int(total_updates)
            self.updates_per_epoch = int(updates_per_epoch)
            self.decay_epochs = list(decay_epochs or ())
            self.decay_rate = decay_rate
            self.power = power
            self.min_lr = min_lr
            self.warmup_iters = int(warmup_iters or 0)
            self.warmup_ratio = warmup_ratio
            super().__init__(optimizer, param_group_field='lr', t_in_epochs=False)
            self.update_groups(self._get_lr(0))  # the first update's lr (timm's base class set the full lr)

        def _regular(self, base_lr: float, t: int) -> float:
            if self.sched == 'multistep':
                epoch = t // self.updates_per_epoch
                return base_lr * self.decay_rate ** sum(epoch >= e for e in self.decay_epochs)
            progress = min(t, self.total_updates) / self.total_updates  # past the end: min_lr, never a complex power
            return (base_lr - self.min_lr) * (1 - progress) ** self.power + self.min_lr

        def _get_lr(self, t: int) -> List[float]:
            factor = 1.0
            if t < self.warmup_iters:
                factor = 1 - (1 - t / self.warmup_iters) * (1 - self.warmup_ratio)
            return [self._regular(base, t) * factor for base in self.base_values]

    return MMCVLRScheduler


def create_dense_scheduler(optimizer: torch.optim.Optimizer, cfg: Dict, updates_per_epoch: int):
    """The dense run's schedule (``cfg['sched']`` multistep | poly with mmcv's linear warmup), stepped per update
    with ``step_update(num_updates)``; ``updates_per_epoch`` is the run's (cfg's, or the loader's batches /
    grad_accum_steps when cfg's is None). The total is ``epochs x updates_per_epoch``."""
    if cfg['sched'] not in ('multistep', 'poly'):
        raise LitError(f'sched {cfg["sched"]!r} is not a dense schedule: use multistep or poly')
    if updates_per_epoch < 1:
        raise LitError(f'an epoch of {updates_per_epoch} updates: the training set holds fewer images than one '
                       f'batch; use a smaller batch_size or more data')
    return mmcv_scheduler_class()(
        optimizer, cfg['sched'], total_updates=cfg['epochs'] * updates_per_epoch, updates_per_epoch=updates_per_epoch,
        decay_epochs=cfg['decay_epochs'] if cfg['sched'] == 'multistep' else (),
        decay_rate=cfg['decay_rate'], power=cfg['poly_power'] or 1.0, min_lr=cfg['min_lr'] or 0.0,
        warmup_iters=cfg['warmup_iters'], warmup_ratio=cfg['warmup_ratio'])

"""Optimizer parameter groups and LR schedule of the official LIT recipes (docs/training.md, "Configuration").

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
from typing import Dict, List

import torch
from torch import nn

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

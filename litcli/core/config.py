"""What a run is configured with: the official recipes as data, the built-in demo configuration, variant names,
and the ONE merge of a new run's config (recipe < ``--config FILE.yaml`` < explicit flags).

A config is a flat dict of plain types (written to ``config.yaml`` and into every checkpoint). The recipes also ship
as YAML (``litcli/recipes/*.yaml``); a test keeps them equal to the dicts below.

Learning rates (docs/training.md, "Configuration"): ``lr`` is absolute; when it is None it is
``lr_base x global_batch / 512`` with global batch = per-device batch x world size x grad-accum steps.
``warmup_lr`` and ``min_lr`` are absolute for LIT-Ti (1e-6, 1e-5) and, for the Swin-style S/M/B recipe, base
values scaled the same way (``scale_lr_bounds``: 5e-7 and 5e-6, i.e. 1e-6 and 1e-5 at batch 1024).

Light on purpose (no torch): the CLI reads the variant names from here.
"""
import copy
import difflib
from pathlib import Path
from typing import Any, Dict, Optional

from litcli.core.errors import LitError, UsageError

RECIPE_DIR = Path(__file__).resolve().parent.parent / 'recipes'
BUILTIN_DATASETS = ('fashion-mnist', 'fashion-mnist-mini')

# Settings shared by both official trainers (the official ziplab/LIT training code; docs/training.md).
_COMMON = dict(
    variant=None,             # registered timm name, e.g. 'lit_s'
    model_kwargs={},          # extra timm.create_model kwargs (embed_dims, depths, ...), for non-paper sizes
    num_classes=None,         # None: from the dataset
    img_size=224,
    crop_pct=0.875,           # eval: resize 256, center crop 224
    interpolation='bicubic',
    epochs=300,
    batch_size=128,           # per device
    grad_accum_steps=1,
    opt='adamw',
    opt_eps=1e-8,
    opt_betas=[0.9, 0.999],
    lr=None,                  # absolute; None -> lr_base x global_batch / 512
    lr_base=5e-4,
    lr_base_size=512,
    offset_lr_mult=0.01,      # DTM conv_offset.weight group: its own absolute lr = lr x 0.01
    weight_decay=0.05,
    sched='cosine',
    drop_path=0.1,
    clip_grad=None,
    aa='rand-m9-mstd0.5-inc1',
    hflip=0.5,
    reprob=0.25,
    remode='pixel',
    recount=1,
    mixup=0.8,
    cutmix=1.0,
    mixup_prob=1.0,
    mixup_switch_prob=0.5,
    mixup_mode='batch',
    smoothing=0.1,
    aug_repeats=0,
    grad_checkpointing=False,
    amp=None,                 # None: on for CUDA, off for CPU; 'auto': also on for CPUs with native bf16
    amp_dtype=None,           # None: bfloat16 where supported, else float16 (with a grad scaler)
    model_ema=False,
    model_ema_decay=0.9998,
    model_ema_warmup=False,   # timm's EMA warmup: the decay ramps up over the first steps
    demo_config=False,        # set by lit train: the built-in demo configuration (a non-paper size)
    channels_last=False,
    torchcompile=False,
    seed=0,
    workers=4,
    device=None,              # None: cuda if available, else cpu
    log_interval=50,
    data=None,
    data_dir=None,
    fast_tensors=False,       # built-in sets only: batched uint8 tensors, crop+flip on the batch (no timm transforms)
    crop_padding=0,           # fast_tensors: random crop with this much zero padding (0: none)
    strict_data=False,
    shuffle_buffer=1000,      # WebDataset shards: samples each loader worker shuffles among (litcli.core.data.shards)
    threads=None,             # CPU: torch intra-op threads per process (None: torch's default, one per core)
)

RECIPES: Dict[str, Dict[str, Any]] = {
    # DeiT/PVT-style trainer: per-epoch cosine, 5 warmup epochs, absolute warmup/min LR, repeated augmentation.
    'lit_ti': {**_COMMON, 'variant': 'lit_ti', 'warmup_epochs': 5, 'warmup_lr': 1e-6, 'min_lr': 1e-5,
               'scale_lr_bounds': False, 'sched_on_epochs': True, 'drop_path': 0.1, 'clip_grad': None,
               'aug_repeats': 3},
}
for _name, _drop_path in (('lit_s', 0.2), ('lit_m', 0.3), ('lit_b', 0.5)):
    # Swin-style trainer: per-iteration cosine, 20 warmup epochs, warmup/min LR scaled with the batch, clip 5.0.
    RECIPES[_name] = {**_COMMON, 'variant': _name, 'warmup_epochs': 20, 'warmup_lr': 5e-7, 'min_lr': 5e-6,
                      'scale_lr_bounds': True, 'sched_on_epochs': False, 'drop_path': _drop_path, 'clip_grad': 5.0,
                      'aug_repeats': 0, 'grad_checkpointing': _name == 'lit_b'}

# The paper's ablation models train with the recipe of the trainer their family used: the DeiT/PVT-style one
# for the PVT-layout models, the Swin-style one for LIT-S* and Swin-Ti + DTM.
for _name, _base in (('lit_ti_star', 'lit_ti'), ('pvt_s_msa', 'lit_ti'), ('pvt_s_dtm', 'lit_ti'),
                     ('lit_s_star', 'lit_s'), ('swin_t_dtm', 'lit_s')):
    RECIPES[_name] = {**RECIPES[_base], 'variant': _name}



CONFIG_KEYS = frozenset(RECIPES['lit_ti'])

# ---------------------------------------------------------------------------------------------------------------
# Variant names (the registered timm names are litcli.models.spec's; a test keeps them equal to the recipes' keys)

PAPER_VARIANTS = ('lit_ti', 'lit_s', 'lit_m', 'lit_b')
ABLATIONS = tuple(name for name in RECIPES if name not in PAPER_VARIANTS)  # Tables 3-5, Figure 3
SHORT_NAMES = {name.removeprefix('lit_'): name for name in PAPER_VARIANTS}  # 'ti' -> 'lit_ti'
CLI_CHOICES = (*SHORT_NAMES, *ABLATIONS)


def model_name(name: str) -> str:
    """'s' | 'lit_s' | an ablation name -> the registered timm name; a UsageError with a suggestion otherwise."""
    key = str(name).strip().lower().replace('-', '_')
    if key in SHORT_NAMES:
        return SHORT_NAMES[key]
    if key in PAPER_VARIANTS or key in ABLATIONS:
        return key
    close = difflib.get_close_matches(key, CLI_CHOICES + PAPER_VARIANTS, n=1, cutoff=0.3)
    hint = f"; did you mean {close[0]!r}?" if close else ''
    raise UsageError(f"unknown variant {name!r}: choose one of {', '.join(CLI_CHOICES)}{hint}")


def checked_img_size(size: int, what: str = '--img-size', patch_size: int = 4) -> int:
    """``size`` when LIT accepts it (a positive multiple of 32, of 8 * ``patch_size`` in general), else a
    UsageError naming the nearest valid sizes. The rule itself is the model package's (litcli.models.spec)."""
    from litcli.models.spec import size_problem

    problem = size_problem(size, 8 * patch_size)
    if problem:
        raise UsageError(f'{what} {problem}')
    return size


# ---------------------------------------------------------------------------------------------------------------
# The built-in demo configuration

# `lit train` with no arguments: a small, non-paper size of the LIT-Ti layout (PVT style: patch stem, MLP-only
# stages 1-2, global MSA in stages 3-4, DTM between stages) trained on the built-in Fashion-MNIST on a 2-core CPU.
# Input: 28x28 zero-padded to 32x32 as in-memory uint8 tensors, flipped and normalised on the whole batch
# (``fast_tensors``). Tuned for accuracy at a fixed time on a 2-core CPU (issue 21; the runs tried are in the
# CHANGELOG):
# - a 2x2 patch stem (``patch_size=2``): stage grids 16/8/4/2 instead of 8/4/2/1, so the MLP stages see the garment
#   at 2 px a token and stage 3 attends over 4x4 tokens; the finest stage stays narrow (16) where it costs most,
#   the later ones wider (48/96/192: 1.3-1.4x the step time of 32/64/128; 92.1% over three seeds in 9 epochs, where
#   16/32/64/128 plateaus near 91.9% at 11-12 epochs);
# - an overlapping 6x6/s2 stem conv (``stem_kernel=6``, PVTv2's overlapping patch embedding): the MLP-only stage 1
#   mixes no tokens, so this is its only view of the neighbourhood (steadier early epochs, +0.1 at the end);
# - the head averages the final tokens (``global_pool='avg'``) instead of reading LIT-Ti's class token (+0.4 points);
# - bf16 autocast where the CPU computes it natively (``amp='auto'``: AVX512-BF16/AMX, e.g. Zen 4; 1.5-1.7x the
#   img/s of fp32), fp32 elsewhere; evaluation stays fp32 on a CPU; explicit attention (SDPA's CPU kernels are
#   slower for 4-16 token sequences); torch's default threads (two processes of one thread under torchrun were no
#   faster: gloo's gradient all-reduce takes the time the second core saves);
# - label smoothing 0.1 (+0.2 points); random crop hurt in this budget (-0.5).
DEMO_OVERRIDES = dict(
    variant='lit_ti',
    model_kwargs=dict(patch_size=2, stem_kernel=6, embed_dims=(16, 48, 96, 192), depths=(1, 1, 2, 1),
                      num_heads=(1, 2, 4, 8), mlp_ratios=(4, 4, 4, 4), global_pool='avg', fused_attn=False),
    img_size=32,
    fast_tensors=True,  # in-memory uint8 tensors; augment_batch + normalize_batch on the batch
    workers=0,
    batch_size=256,
    epochs=9,
    opt='adamw',
    opt_betas=(0.9, 0.999),
    lr=3e-3,  # as is, not scaled by batch size
    min_lr=1e-5,
    warmup_lr=1e-6,
    warmup_epochs=0.5,
    sched='cosine',
    sched_on_epochs=False,  # per-step warmup and cosine
    scale_lr_bounds=False,
    offset_lr_mult=0.1,  # the DTM offsets at 10% of the lr (1.0 made training unstable; 0.01, the official ratio,
                         # hardly moves them in a dozen epochs)
    weight_decay=0.05,
    drop_path=0.0,
    smoothing=0.1,
    mixup=0.0,
    cutmix=0.0,
    aa=None,
    reprob=0.0,
    aug_repeats=0,
    clip_grad=None,
    model_ema=False,
    hflip=0.5,
    crop_padding=0,  # random crop with this zero padding on the batch (0: flip only)
    amp='auto',
    demo_config=True,
)


def demo_config() -> Dict[str, Any]:
    """The full config of the built-in demo: LIT-Ti's recipe with ``DEMO_OVERRIDES``."""
    return {**recipe('lit_ti'), **copy.deepcopy(DEMO_OVERRIDES)}


# ---------------------------------------------------------------------------------------------------------------
# Resolution

def recipe(variant: str) -> Dict[str, Any]:
    """A fresh copy of the official recipe of ``variant`` ('lit_s' or 's')."""
    name = model_name(variant)
    if name not in RECIPES:
        raise LitError(f'no recipe for variant {variant!r}; choose one of {", ".join(sorted(RECIPES))}')
    return copy.deepcopy(RECIPES[name])


def load_config_file(path) -> Dict[str, Any]:
    """Read a YAML config; unknown keys are an error naming them (a typo must not be ignored silently)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise LitError(f'config file not found: {path}')
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise LitError(f'{path} is not valid YAML ({str(e).splitlines()[0]}); fix the file')
    if not isinstance(cfg, dict):
        raise LitError(f'{path} must hold a mapping of settings, not a {type(cfg).__name__}')
    unknown = sorted(set(cfg) - CONFIG_KEYS)
    if unknown:
        raise LitError(f'{path}: unknown setting(s) {", ".join(unknown)}; valid keys are those in config.yaml '
                       f'of a run or in litcli/recipes/lit_ti.yaml')
    if cfg.get('variant') is not None:
        cfg['variant'] = model_name(cfg['variant'])
    return cfg


AA_OFF = ('none', 'off', 'false', 'no', 'null', '')


def auto_augment_policy(value: Any) -> Optional[str]:
    """The one reading of the ``aa`` setting, the same from a flag, a YAML file or a saved run: None, False and
    'none' / 'off' / '' (any case) switch auto-augment off (None); anything else must be a policy timm's
    ``create_transform`` builds, checked here by building it, so an unknown one is a one-line LitError naming the
    valid forms instead of timm's AssertionError at the first training batch."""
    if value is None or value is False or str(value).strip().lower() in AA_OFF:
        return None
    policy = str(value).strip()
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

    build = (rand_augment_transform if policy.startswith('rand') else
             augment_and_mix_transform if policy.startswith('augmix') else auto_augment_transform)  # timm's dispatch
    try:
        build(policy, dict(translate_const=100, img_mean=(124, 116, 104)))
    except (AssertionError, ValueError, KeyError, IndexError):
        raise LitError(f'unknown auto-augment policy aa={value!r}; use a timm policy: rand-m9-mstd0.5-inc1 '
                       f'(RandAugment, rand-mM[-nN][-mstdS][-incI]), augmix-m3-w3 (AugMix), original, originalr, v0, '
                       f'v0r or 3a (AutoAugment), or none (off)') from None
    return policy


def resolve_config(variant: Optional[str] = None, config_file=None, overrides: Optional[Dict[str, Any]] = None,
                   base: Optional[Dict[str, Any]] = None, file_cfg: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """recipe(variant) < config file < overrides (None values in ``overrides`` mean "not given").

    ``base`` replaces the official recipe as the lowest layer (the built-in small demo config). The variant is
    taken from the flags, else the file, else ``base``, else LIT-Ti. ``file_cfg``: the file's settings, already
    read (instead of ``config_file``).
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(overrides) - CONFIG_KEYS)
    if unknown:
        raise LitError(f'unknown setting(s) {", ".join(unknown)}')
    if file_cfg is None:
        file_cfg = load_config_file(config_file) if config_file is not None else {}
    name = variant or overrides.get('variant') or file_cfg.get('variant') or (base or {}).get('variant') or 'lit_ti'
    name = model_name(name)
    cfg = recipe(name)
    if base is not None and base.get('variant') == name:
        # A saved config (resume) or the demo's; settings added since a checkpoint was written keep the recipe's
        # value, which leaves the run as it was (e.g. model_ema_warmup False, crop_padding 0).
        cfg.update(copy.deepcopy(base))
    cfg.update(copy.deepcopy(file_cfg))
    cfg.update(copy.deepcopy(overrides))
    cfg['variant'] = name
    cfg['aa'] = auto_augment_policy(cfg.get('aa'))
    return cfg


def scaled_lrs(cfg: Dict[str, Any], world_size: int = 1) -> Dict[str, float]:
    """The absolute learning rates a run uses: lr, warmup_lr, min_lr and the offset-group lr, plus the global batch."""
    global_batch = cfg['batch_size'] * world_size * cfg['grad_accum_steps']
    scale = global_batch / cfg['lr_base_size']
    lr = cfg['lr'] if cfg['lr'] is not None else cfg['lr_base'] * scale
    bound_scale = scale if cfg['scale_lr_bounds'] else 1.0
    return dict(lr=lr, warmup_lr=cfg['warmup_lr'] * bound_scale, min_lr=cfg['min_lr'] * bound_scale,
                offset_lr=lr * cfg['offset_lr_mult'], global_batch=global_batch)


def is_builtin(data: Optional[str]) -> bool:
    """No ``--data`` (the built-in default) or a built-in set's name."""
    return data is None or str(data) in BUILTIN_DATASETS


def new_run_config(config_file=None, overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The config of a new run: recipe < ``config_file`` < ``overrides`` (explicit flags; None = not given), where
    the file's ``data``/``variant`` count exactly like the flags. The built-in demo configuration is the base only
    when no variant is given anywhere and the data is built-in (or not given); an explicit variant always gets
    its own recipe and size, and a variant without data is refused."""
    overrides = dict(overrides or {})
    file_cfg = load_config_file(config_file) if config_file is not None else {}
    data = overrides.get('data') or file_cfg.get('data')
    variant = overrides.get('variant') or file_cfg.get('variant')
    if variant and data is None:
        raise LitError(f'--variant {variant.removeprefix("lit_")} without --data would train the 300-epoch '
                       f'ImageNet recipe of {variant} on Fashion-MNIST upsampled to 224 px (weeks on a CPU); '
                       f'pass --data DIR (an ImageFolder with train/ and val/), or run lit train with no arguments '
                       f'for the fast built-in demo')
    demo = variant is None and is_builtin(data)
    cfg = resolve_config(overrides=overrides, base=demo_config() if demo else None, file_cfg=file_cfg)
    cfg['demo_config'] = demo
    return cfg

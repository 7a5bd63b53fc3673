"""What a run is configured with: the official recipes as data, the built-in demo configuration, variant names,
and the ONE merge of a new run's config (recipe < ``--config FILE.yaml`` < explicit flags).

A config is a flat dict of plain types (written to ``config.yaml`` and into every checkpoint). The recipes also ship
as YAML (``litcli/recipes/*.yaml``); a test keeps them equal to the dicts below.

Learning rates (docs/training.md, "Configuration"): ``lr`` is absolute; when it is None it is
``lr_base x global_batch / 512`` with global batch = per-device batch x world size x grad-accum steps.
``warmup_lr`` and ``min_lr`` are absolute for LIT-Ti (1e-6, 1e-5) and, for the Swin-style S/M/B recipe, base
values scaled the same way (``scale_lr_bounds``: 5e-7 and 5e-6, i.e. 1e-6 and 1e-5 at batch 1024).

The dense tasks (RetinaNet, Mask R-CNN, Semantic FPN) have their own recipes, data presets and merge below
(``new_dense_run_config``: recipe < data preset < YAML < flags).

Light on purpose (no torch): the CLI reads the variant names from here.
"""
import copy
import difflib
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

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


def _read_config_mapping(path: Path) -> Dict[str, Any]:
    """The mapping a YAML config file holds; a one-line LitError when it is missing, not YAML or not a mapping."""
    import yaml

    if not path.is_file():
        raise LitError(f'config file not found: {path}')
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise LitError(f'{path} is not valid YAML ({str(e).splitlines()[0]}); fix the file')
    if not isinstance(cfg, dict):
        raise LitError(f'{path} must hold a mapping of settings, not a {type(cfg).__name__}')
    return cfg


def load_config_file(path) -> Dict[str, Any]:
    """Read a YAML config; unknown keys are an error naming them (a typo must not be ignored silently)."""
    path = Path(path)
    cfg = _read_config_mapping(path)
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


# ---------------------------------------------------------------------------------------------------------------
# Dense prediction (issue 30): RetinaNet / Mask R-CNN / Semantic FPN with LIT backbones
#
# The official recipes (the ziplab/LIT mmdet 2.11 / mmseg 0.13 configs; docs/detection-segmentation.md) as flat
# dicts of plain types, one per (task, variant); shipped as ``litcli/recipes/<task>_lit_<variant>.yaml`` (a test
# keeps them equal). One representation of the length of a run for every task:
#   ``epochs`` x ``updates_per_epoch`` optimizer updates, validation (and the epoch-end checkpoint) after each epoch;
#   ``updates_per_epoch`` None = one pass over the training set (detection: mmdet's epoch-based 1x schedule, 12
#   epochs), an int = that many updates whatever the set's size (segmentation: mmseg's 80k iterations = 10 periods
#   of 8000 updates, its evaluation interval). ``decay_epochs`` count in these epochs.
# Schedules (stepped per update, litcli.core.training.optim.create_dense_scheduler): 'multistep' (lr x decay_rate
# from each of decay_epochs on) or 'poly' ((lr - min_lr) x (1 - t/T) ** poly_power + min_lr), both with mmcv's
# linear warmup over ``warmup_iters`` updates from ``warmup_ratio`` x lr (0 updates: none).

DENSE_TASKS = ('retinanet', 'mask_rcnn', 'semantic_fpn')
DENSE_TASK_CLI = {task: task.replace('_', '-') for task in DENSE_TASKS}  # what the CLI shows: mask-rcnn, ...
DENSE_VARIANTS = ('ti', 's')  # the paper's dense backbones (Tables 6-8): LIT-Ti and LIT-S only
DENSE_SCHEDULES = ('multistep', 'poly')
DETECTION_TASKS = ('retinanet', 'mask_rcnn')

_DENSE_COMMON = dict(
    task=None,                # 'retinanet' | 'mask_rcnn' | 'semantic_fpn'
    variant=None,             # 'ti' | 's': the LIT backbone (the model is <task>_lit_<variant>)
    data=None,                # coco:ROOT, ade20k:ROOT, fashion-mnist-det/-seg (None: the task's built-in scenes)
    data_dir=None,
    num_classes=None,         # None: from the data
    pretrained=None,          # None: random init. The official runs start the backbone from the ImageNet LIT weights
                              # (lit train --pretrained); a part-1 dense model's name loads its full weights
    img_scale=[1333, 800],    # (long, short): keep-ratio resize to fit (mmcv's rescale rule), train and test
    epochs=12,
    updates_per_epoch=None,   # None: one pass over the training set (see above)
    batch_size=2,             # per device: the official global 16 = 2 x 8 GPUs
    grad_accum_steps=1,
    opt='adamw',
    opt_eps=1e-8,
    opt_betas=[0.9, 0.999],
    lr=1e-4,                  # absolute (not scaled with the batch: mmcv's configs give it for the global 16)
    weight_decay=1e-4,        # every parameter except the backbone's no_weight_decay() names (mmcv's rule)
    sched='multistep',
    decay_epochs=[8, 11],     # multistep: lr x decay_rate from the start of each of these epochs (0-based)
    decay_rate=0.1,
    poly_power=None,          # poly only
    min_lr=None,              # poly only
    warmup_iters=500,         # mmcv linear warmup over this many updates (0: none)
    warmup_ratio=0.001,       # ... starting at lr x warmup_ratio
    sched_on_epochs=False,    # dense schedules step per update (fixed; the run machinery reads it)
    drop_path=None,           # per variant: 0.1 Ti, 0.2 S
    clip_grad=None,
    hflip=0.5,
    crop_size=None,           # segmentation: random crop (h, w), padded to it (image 0, label 255)
    ratio_range=None,         # segmentation: random rescale of img_scale by U(ratio_range)
    cat_max_ratio=None,       # segmentation: a crop may hold at most this share of one class (mmseg: 10 tries)
    photometric=False,        # segmentation: mmseg's PhotoMetricDistortion
    amp=None,                 # None: on for CUDA, off for CPU (the official LIT-S runs used apex O1, Ti fp32)
    amp_dtype=None,
    model_ema=False,
    model_ema_decay=0.9998,
    model_ema_warmup=False,
    channels_last=False,
    torchcompile=False,
    grad_checkpointing=False, # the official LIT-S configs checkpoint activations (memory only: same results)
    seed=0,
    workers=2,
    device=None,
    log_interval=50,
    threads=None,
    strict_data=False,
    eval_batch_size=1,        # validation images per forward: 1, the official test (a batch pads images together)
    train_scenes=None,        # the built-in scenes only: canvases in the training / validation split (None: 4000 /
    val_scenes=None,          # 250, litcli.core.data.scenes)
    model_kwargs={},          # settings of the detector/segmenter (litcli.models.detection's RETINANET_SETTINGS,
                              # MASK_RCNN_SETTINGS: e.g. fewer RoIs for a CPU run); recorded in the checkpoints
)
_DENSE_TASK_SETTINGS = {
    # mmdet's 1x schedule: 12 epochs, x0.1 at 8 and 11, 500 warmup updates from 0.001 x lr.
    'retinanet': dict(lr=1e-4),
    'mask_rcnn': dict(lr=2e-4),
    # mmseg's schedule_80k (poly 0.9, no warmup) with LIT's AdamW and min_lr 1e-6; its train pipeline.
    'semantic_fpn': dict(img_scale=[2048, 512], epochs=10, updates_per_epoch=8000, lr=1e-4, sched='poly',
                         decay_epochs=None, decay_rate=None, poly_power=0.9, min_lr=1e-6, warmup_iters=0,
                         warmup_ratio=None, crop_size=[512, 512], ratio_range=[0.5, 2.0], cat_max_ratio=0.75,
                         photometric=True),
}
_DENSE_DROP_PATH = {'ti': 0.1, 's': 0.2}

DENSE_RECIPES: Dict[str, Dict[str, Dict[str, Any]]] = {
    task: {variant: {**_DENSE_COMMON, **settings, 'task': task, 'variant': variant,
                     'drop_path': _DENSE_DROP_PATH[variant]} for variant in DENSE_VARIANTS}
    for task, settings in _DENSE_TASK_SETTINGS.items()}
DENSE_CONFIG_KEYS = frozenset(_DENSE_COMMON)
# The settings whose change makes a saved LR schedule state meaningless (resume then follows the new config).
DENSE_SCHEDULE_KEYS = ('epochs', 'updates_per_epoch', 'lr', 'sched', 'decay_epochs', 'decay_rate', 'poly_power',
                       'min_lr', 'warmup_iters', 'warmup_ratio', 'batch_size', 'grad_accum_steps')

# The built-in synthetic scenes (128x160 canvases; litcli.core.data.scenes), applied over the recipe (below the
# YAML and the flags): the canvas is not resized (mmcv's rescale of 128x160 to fit the scale is x1), and a run is
# sized for about 15 minutes on a 2-core CPU from random weights (benchmarks/dense_scenes.py measures them): a small
# LIT-Ti layout (stages of 32/64/160/256 channels, depths 1/2/2/1: a quarter of LIT-Ti's cost), a 128-channel FPN,
# a batch of 8, a higher lr than COCO's with mmdet's gradient clip (max norm 35) for the random start.
SCENE_MODEL = dict(embed_dims=[32, 64, 160, 256], depths=[1, 2, 2, 1], num_heads=[1, 2, 5, 8], mlp_ratios=[4, 4, 4, 4])
DENSE_DATA_PRESETS: Dict[str, Dict[str, Any]] = {
    'fashion-mnist-det': dict(img_scale=[160, 128], epochs=13, updates_per_epoch=250, batch_size=8, lr=6e-4,
                              clip_grad=35.0, warmup_iters=200, decay_epochs=[10, 12], workers=0, log_interval=25,
                              eval_batch_size=8, model_kwargs=dict(SCENE_MODEL, fpn_channels=128)),
    'fashion-mnist-seg': dict(img_scale=[640, 128], crop_size=[128, 128], epochs=8, updates_per_epoch=250,
                              batch_size=8, lr=6e-4, clip_grad=35.0, warmup_iters=100, warmup_ratio=0.001,
                              workers=0, log_interval=25, eval_batch_size=8, model_kwargs=dict(SCENE_MODEL)),
}
# ... and per task where one data set feeds two: Mask R-CNN's official 2,000 / 1,000 proposals and 512 RoIs per image
# make a step several times RetinaNet's on a CPU; a few garments per canvas need far fewer (COCO keeps the official).
DENSE_TASK_PRESETS: Dict[Tuple[str, str], Dict[str, Any]] = {
    ('fashion-mnist-det', 'mask_rcnn'): dict(
        epochs=4, updates_per_epoch=340, batch_size=4, decay_epochs=[3], lr=5e-4, warmup_iters=100,
        model_kwargs=dict(SCENE_MODEL, fpn_channels=128, rpn_pre_nms_top_n_train=500, rpn_post_nms_top_n_train=200,
                          box_batch_size_per_image=64, rpn_pre_nms_top_n_test=500, rpn_post_nms_top_n_test=200,
                          box_fc_channels=256, mask_head_channels=[128, 128, 128, 128])),
}
_DENSE_DATA_KIND = {'fashion-mnist-det': 'detection', 'fashion-mnist-seg': 'segmentation',
                    'coco': 'detection', 'ade20k': 'segmentation'}  # data name or scheme -> the tasks it feeds


def _suggestion(value: str, choices) -> str:
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.4)
    return f'; did you mean {close[0]!r}?' if close else ''


def dense_task_name(value: str) -> str:
    """'retinanet' | 'mask-rcnn' | 'semantic-fpn' (any case, '-' or '_') -> the canonical task name."""
    key = str(value).strip().lower().replace('-', '_')
    if key in DENSE_TASKS:
        return key
    cli = DENSE_TASK_CLI.values()
    raise UsageError(f'unknown task {value!r}: choose one of {", ".join(cli)}'
                     f'{_suggestion(key.replace("_", "-"), cli)}')


def dense_variant_name(value: str) -> str:
    """'ti' | 's' from 'ti', 'lit_ti', 'LIT-Ti', ...; LIT-M/B (no dense backbones) and others: a UsageError."""
    key = str(value).strip().lower().replace('-', '_').removeprefix('lit_')
    if key in DENSE_VARIANTS:
        return key
    if key in ('m', 'b'):
        raise UsageError(f'--variant {value}: the paper has no detection or segmentation backbone for LIT-'
                         f'{key.upper()} (Tables 6-8 use LIT-Ti and LIT-S); choose ti or s')
    raise UsageError(f'unknown variant {value!r} for a dense task: choose ti or s{_suggestion(key, DENSE_VARIANTS)}')


def dense_model_name(task: str, variant: str) -> str:
    """The dense model a (task, variant) run trains: 'retinanet_lit_ti', ... (litcli.models.dense_zoo's names)."""
    return f'{dense_task_name(task)}_lit_{dense_variant_name(variant)}'


def dense_recipe(task: str, variant: str) -> Dict[str, Any]:
    """A fresh copy of the official recipe of ``task`` ('mask-rcnn' or 'mask_rcnn', ...) with ``variant`` ('ti'|'s')."""
    return copy.deepcopy(DENSE_RECIPES[dense_task_name(task)][dense_variant_name(variant)])


def _unknown_keys_message(unknown, keys) -> str:
    hints = [f'{k} (did you mean {c[0]}?)' if (c := difflib.get_close_matches(k, sorted(keys), n=1, cutoff=0.6))
             else k for k in unknown]
    return f'unknown setting(s) {", ".join(hints)}'


def load_dense_config_file(path) -> Dict[str, Any]:
    """Read a dense run's YAML config; unknown keys are an error naming them with the nearest valid key."""
    path = Path(path)
    cfg = _read_config_mapping(path)
    unknown = sorted(set(cfg) - DENSE_CONFIG_KEYS)
    if unknown:
        raise LitError(f'{path}: {_unknown_keys_message(unknown, DENSE_CONFIG_KEYS)}; valid keys are those of '
                       f'litcli/recipes/retinanet_lit_ti.yaml')
    return cfg


def _data_kind(data: str) -> Optional[str]:
    return _DENSE_DATA_KIND.get(data) or _DENSE_DATA_KIND.get(data.split(':', 1)[0])


def new_dense_run_config(task: Optional[str] = None, variant: Optional[str] = None, config_file=None,
                         overrides: Optional[Dict[str, Any]] = None,
                         base: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The config of a new dense run: recipe(task, variant) < data preset < ``config_file`` < ``overrides`` (explicit
    flags; None = not given). ``task``/``variant`` (the flags) win over the file's; the variant defaults to ti.
    No data anywhere: the task's built-in synthetic scenes (fashion-mnist-det / fashion-mnist-seg). ``base``: a
    resumed run's saved config, which replaces recipe and preset (settings added since keep the recipe's value)."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(overrides) - DENSE_CONFIG_KEYS)
    classification = [k for k in unknown if k in CONFIG_KEYS]
    if classification:  # a flag lit train takes for classifiers only
        flags = ', '.join('--' + k.replace('_', '-') for k in classification)
        raise UsageError(f'{flags}: classification setting(s), not used by a detection/segmentation run; drop '
                         f'{"it" if len(classification) == 1 else "them"} (the dense recipes: '
                         f'litcli/recipes/retinanet_lit_ti.yaml ...)')
    if unknown:
        raise LitError(_unknown_keys_message(unknown, DENSE_CONFIG_KEYS))
    file_cfg = load_dense_config_file(config_file) if config_file is not None else {}
    task = task or overrides.get('task') or file_cfg.get('task') or (base or {}).get('task')
    if task is None:
        raise UsageError(f'no task given: pass --task {"|".join(DENSE_TASK_CLI.values())}')
    task = dense_task_name(task)
    variant = dense_variant_name(variant or overrides.get('variant') or file_cfg.get('variant') or 'ti')
    kind = 'segmentation' if task == 'semantic_fpn' else 'detection'
    data = overrides.get('data') or file_cfg.get('data') or (base or {}).get('data') or f'fashion-mnist-{kind[:3]}'
    if _data_kind(str(data)) not in (None, kind):
        raise LitError(f'--data {data} is a {_data_kind(str(data))} set and {DENSE_TASK_CLI[task]} is a {kind} '
                       f'task; use ' + ('coco:ROOT or fashion-mnist-det' if kind == 'detection'
                                        else 'ade20k:ROOT or fashion-mnist-seg'))
    cfg = dense_recipe(task, variant)
    if base is None:
        cfg.update(copy.deepcopy(DENSE_DATA_PRESETS.get(str(data), {})))
        cfg.update(copy.deepcopy(DENSE_TASK_PRESETS.get((str(data), task), {})))
    else:
        cfg.update(copy.deepcopy(base))
    cfg.update(copy.deepcopy(file_cfg))
    cfg.update(copy.deepcopy(overrides))
    cfg.update(task=task, variant=variant, data=data)
    check_dense_config(cfg)
    return cfg


_DENSE_EXAMPLES = {'img_scale': (1333, 800), 'crop_size': (512, 512), 'ratio_range': (0.5, 2.0)}


def check_dense_config(cfg: Dict[str, Any]) -> None:
    """A one-line LitError for a setting a dense run cannot use (the schedule's and the sizes' shapes)."""
    def pair(key):
        value = cfg.get(key)
        if not (isinstance(value, (list, tuple)) and len(value) == 2
                and all(isinstance(v, (int, float)) and v > 0 for v in value)):
            raise LitError(f'{key} must be two positive numbers, e.g. [{", ".join(map(str, _DENSE_EXAMPLES[key]))}], '
                           f'not {value!r}')

    if cfg['sched'] not in DENSE_SCHEDULES:
        raise LitError(f'sched {cfg["sched"]!r} is not a dense schedule: use multistep or poly'
                       f'{_suggestion(str(cfg["sched"]), DENSE_SCHEDULES)}')
    if cfg['sched_on_epochs']:
        raise LitError('sched_on_epochs: dense schedules step per update; remove the setting')
    if not (isinstance(cfg['epochs'], int) and cfg['epochs'] > 0):
        raise LitError(f'epochs must be a positive whole number, not {cfg["epochs"]!r}')
    if cfg['updates_per_epoch'] is not None and not (isinstance(cfg['updates_per_epoch'], int)
                                                     and cfg['updates_per_epoch'] > 0):
        raise LitError(f'updates_per_epoch must be a positive whole number or null (one pass over the data), '
                       f'not {cfg["updates_per_epoch"]!r}')
    if cfg['sched'] == 'multistep' and (not isinstance(cfg['decay_epochs'], (list, tuple))
                                        or cfg['decay_rate'] is None):
        raise LitError('sched multistep needs decay_epochs (a list, e.g. [8, 11]) and decay_rate (e.g. 0.1)')
    if cfg['sched'] == 'poly' and (cfg['poly_power'] is None or cfg['min_lr'] is None):
        raise LitError('sched poly needs poly_power (e.g. 0.9) and min_lr (e.g. 1.0e-06)')
    if cfg['warmup_iters'] and cfg['warmup_ratio'] is None:
        raise LitError(f'warmup_iters {cfg["warmup_iters"]} needs warmup_ratio (the starting lr / lr, e.g. 0.001)')
    for key, least in (('batch_size', 1), ('grad_accum_steps', 1), ('eval_batch_size', 1), ('workers', 0),
                       ('warmup_iters', 0), ('seed', 0), ('log_interval', 1)):
        if not (isinstance(cfg[key], int) and not isinstance(cfg[key], bool) and cfg[key] >= least):
            raise LitError(f'{key} must be a whole number >= {least}, not {cfg[key]!r}')
    for key in ('lr', 'weight_decay', 'warmup_ratio', 'min_lr', 'poly_power', 'decay_rate', 'clip_grad', 'drop_path',
                'hflip', 'cat_max_ratio'):
        value = cfg.get(key)
        if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0):
            hint = ' (write YAML floats with a dot: 1.0e-4)' if isinstance(value, str) else ''
            raise LitError(f'{key} must be a number >= 0, not {value!r}{hint}')
    if not isinstance(cfg.get('model_kwargs') or {}, dict):
        raise LitError(f'model_kwargs must be a mapping of model settings, not {cfg["model_kwargs"]!r}')
    pair('img_scale')
    if cfg['task'] == 'semantic_fpn':
        pair('crop_size')
        pair('ratio_range')


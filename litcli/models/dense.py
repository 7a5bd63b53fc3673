"""The official LIT dense-prediction backbones (paper Tables 6-8): LIT-Ti and LIT-S as the detection
(RetinaNet, Mask R-CNN) and segmentation (Semantic FPN) backbones of ziplab/LIT, exact to that code.

``create_dense_backbone(variant, task)`` returns a module whose forward maps a (B, 3, H, W) image batch to the four
stage maps [(B, C_i, H_i, W_i)] at strides 4, 8, 16, 32 (channels 64/128/320/512 for Ti, 96/192/384/768 for S), whose
state-dict keys are those of the official dense backbones (``backbone.*`` of the released mmdet / mmseg checkpoints,
minus the prefix) and which takes any input of at least 32 (Ti) / 29 (S) pixels a side. What the dense mode changes
from the classification models of ``lit.py``, which it reuses (same blocks, same DTM, same keys):

- LIT-Ti (``detection/mmdet/models/backbones/lit_ti.py``, segmentation's copy is the same): no class token (stage 4
  attends over its tokens alone, with ``pos_embed4[:, 1:]``; ``pos_embed4`` keeps its (1, 50, 512) shape); the
  position embeddings stay at their 224-px shapes and are resampled to each input's grid bilinearly
  (``align_corners=False``, no antialias); the 4x4 stem and the 2x2 merges floor odd sizes (250x330 -> 62x82, 31x41,
  15x20, 7x10); block LayerNorm eps 1e-6, stem 1e-5.
- LIT-S (``detection/.../lit.py``, ``segmentation/mmseg/models/backbones/lit.py``): relative-position tables stored
  for a 800-px (detection: (9801, 12), (2401, 24)) or 512-px (segmentation: (3969, 12), (961, 24)) input and resampled
  bicubically (``align_corners=False``, no antialias) to (2h-1) x (2w-1) of each input's grid, the index built per
  grid (no ``relative_position_index`` buffer; state dicts that still hold one load, it is dropped); output LayerNorms
  (eps 1e-5) ``norm1..norm3`` (detection: stage 1 is returned raw) or ``norm0..norm3`` (segmentation); the stem pads
  the input right/bottom to a multiple of 4, the merges floor (250x330 -> 63x83, 31x41, 15x20, 7x10).
- Both: no final norm, no classifier.

One deliberate difference: the official LIT-Ti decides whether to resample a stage's position embedding by comparing
that stage's token count with stage 1's 3136 (56 x 56), so a stage-2/3/4 grid of exactly 3136 tokens crashes
(448x448 input) and a 3136-token stage-1 grid of another shape (196x256 input: 49x64) silently adds the
un-resampled 56x56 table. Here a stage is resampled whenever its grid differs from the stored one; every other
input gives the official numbers (parity-tested at <= 1e-8 in float64, tests/test_dense_backbones.py).

timm's ``features_only`` is not this backbone. ``timm.create_model('lit_s', features_only=True)`` gives the
*classification* backbone's stage maps: LIT-Ti keeps its class token in stage-4 attention, position tables are
resampled bicubically with antialias from their 224-px build, inputs must be multiples of 32 and LIT-S has no output
norms, so with the same weights its maps differ from the official dense backbone's (stage 4 of LIT-Ti by up to 1.2).
For detection and segmentation call ``litcli.models.create_dense_backbone('ti' | 's', 'detection' |
'segmentation')``: it loads the backbone of the official dense checkpoints strictly, and
``dense_state_dict_from_classification`` turns ``lit_ti.pth`` / ``lit_s.pth`` into its initial weights. The dense
backbones are not registered in timm: timm's registry holds image classifiers (and ``lit``'s ``--model`` accepts
any name in it), while these return feature maps and have no classifier to configure.
"""
import functools
import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .dtm import DeformableTokenMerging
from .lit import LIT_ARCHS, LITPvtStyle, LITSwinStyle, resize_rel_pos_table
from .spec import unwrap_state_dict

__all__ = ['DENSE_TASKS', 'DENSE_VARIANTS', 'DENSE_ARCHS', 'DENSE_KWARGS', 'DenseLITTi', 'DenseLITS',
           'FlooringTokenMerging', 'create_dense_backbone', 'dense_state_dict_from_classification']

DENSE_TASKS = ('detection', 'segmentation')
DENSE_VARIANTS = ('ti', 's')
_VARIANT_ALIASES = {'ti': 'ti', 'lit_ti': 'ti', 's': 's', 'lit_s': 's'}
# What create_dense_backbone's **kwargs may change: training settings only; the rest is the official layout.
# drop_path_rate, dtm_backend, fused_attn; and a smaller (or larger) layout than the official one, for quick CPU runs
# (the built-in scenes): embed_dims, depths, num_heads, mlp_ratios
DENSE_KWARGS = ('drop_path_rate', 'dtm_backend', 'fused_attn', 'embed_dims', 'depths', 'num_heads', 'mlp_ratios')


class FlooringTokenMerging(DeformableTokenMerging):
    """DTM that also takes odd maps, as the official dense backbones: the 2x2/stride-2 kernel floors (an odd map's
    last row/column is then only reached by samples the offsets move there). The classification DTM refuses odd maps
    because its inputs are multiples of 32. Same keys and arithmetic; both backends handle odd sizes."""

    def forward(self, x):
        return self.act(self.norm_layer(self.dconv(x)))


class DenseBackboneMixin:
    """What both dense layouts add to their classification layout (first in the bases, so its methods win).

    Subclasses define ``_stem_grid`` (the stem's token grid for an input size) and ``min_input_side``.
    """
    variant_name = 'LIT'
    min_input_side = 32
    rel_pos_index_buffer = False  # the index is built for each input's grid (lit.Attention)

    def _init_dense(self, task: str, output_norms: Sequence[int]):
        self.task = task
        self.out_channels = tuple(self.embed_dims)
        self.output_norms = tuple(output_norms)
        for i in self.output_norms:
            setattr(self, f'norm{i}', self.norm_layer(self.embed_dims[i]))

    # ---- construction overrides (called from the layouts' __init__) ----
    def _make_head(self):
        # No final norm and no classifier; identities (no state-dict keys) keep LITBase's token-level methods working.
        self.norm = nn.Identity()
        self.head = nn.Identity()

    def _make_merge(self, i: int) -> nn.Module:
        return FlooringTokenMerging(self.embed_dims[i], self.embed_dims[i + 1], backend=self.dtm_backend)

    # ---- sizes ----
    def _stem_grid(self, height: int, width: int) -> Tuple[int, int]:
        raise NotImplementedError

    def feature_sizes(self, height: int, width: int) -> List[Tuple[int, int]]:
        """The (h, w) of the four output maps for an input of height x width pixels."""
        h, w = self._stem_grid(height, width)
        sizes = [(h, w)]
        for _ in range(3):  # each merge is a 2x2/stride-2 conv without padding: floor
            h, w = h // 2, w // 2
            sizes.append((h, w))
        return sizes

    def _check_input(self, x: torch.Tensor):
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f'the {self.variant_name} {self.task} backbone expects a (B, {self.in_chans}, H, W) image '
                             f'batch, got shape {tuple(x.shape)}')
        height, width = x.shape[-2:]
        if min(height, width) < self.min_input_side:
            side = self.min_input_side
            raise ValueError(f'the {self.variant_name} {self.task} backbone needs an input of at least {side}x{side} '
                             f'pixels (a 1x1 stage-4 map), got {height}x{width}; resize or pad the image')

    def _crop_to_stem(self, x: torch.Tensor) -> torch.Tensor:
        return x

    # ---- forward ----
    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """(B, 3, H, W) -> the four stage maps (B, C_i, h_i, w_i), sizes as ``feature_sizes(H, W)``."""
        self._check_input(x)
        x = self._crop_to_stem(x)
        outs = []
        for i, tokens, (h, w) in self._iter_stages(x):  # tokens: B, h*w, C_i (no prefix tokens)
            if i in self.output_norms:
                tokens = getattr(self, f'norm{i}')(tokens)
            outs.append(tokens.reshape(tokens.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous())  # B, C_i, h, w
        return outs


class DenseLITTi(DenseBackboneMixin, LITPvtStyle):
    """The official LIT-Ti dense backbone (detection and segmentation alike). Build with ``create_dense_backbone``."""
    variant_name = 'LIT-Ti'
    num_prefix_tokens = 0  # no class token; pos_embed4 keeps its (unused) cls slot, as the official files
    min_input_side = 32  # the stem floors: 4 * 8 pixels give stage 4 one token

    def __init__(self, task: str = 'detection', output_norms: Sequence[int] = (), **kwargs):
        super().__init__(num_classes=0, **kwargs)
        self._init_dense(task, output_norms)

    def _stem_grid(self, height: int, width: int) -> Tuple[int, int]:
        return height // self.patch_size, width // self.patch_size

    def _crop_to_stem(self, x: torch.Tensor) -> torch.Tensor:
        # The official 4x4/stride-4 stem conv has no padding: pixels past the last whole patch are never seen.
        h, w = self._stem_grid(*x.shape[-2:])
        return x[..., :h * self.patch_size, :w * self.patch_size]

    def embed_tokens(self, i: int, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        pos_embed = getattr(self, f'pos_embed{i + 1}')
        if i == 3:
            pos_embed = pos_embed[:, 1:]  # the cls slot is unused: stage 4 has no class token
        stored = self.stage_grids[i]
        if tuple(grid) != tuple(stored):
            channels = pos_embed.shape[-1]
            pos_embed = pos_embed.reshape(1, *stored, channels).permute(0, 3, 1, 2)  # 1, C, h0, w0
            pos_embed = F.interpolate(pos_embed, size=grid, mode='bilinear', align_corners=False)
            pos_embed = pos_embed.flatten(2).transpose(1, 2)  # 1, h*w, C
        return x + pos_embed

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """None: the official LIT-Ti detection configs set no ``paramwise_cfg``, so AdamW decays every parameter."""
        return set()


def _drop_rel_pos_index(module, state_dict, prefix, *_args):
    """load_state_dict pre-hook: state dicts saved with the persistent index buffers (older ``lit`` releases, the
    classification layout) still load; the index is derived from the grid, so nothing is lost."""
    for key in [k for k in state_dict if k.startswith(prefix) and k.endswith('.relative_position_index')]:
        del state_dict[key]


class DenseLITS(DenseBackboneMixin, LITSwinStyle):
    """The official LIT-S dense backbone; ``img_size`` is the input size its tables are stored for (800 detection,
    512 segmentation, hard-coded in the official code). Build with ``create_dense_backbone``."""
    variant_name = 'LIT-S'
    min_input_side = 29  # the stem pads to a multiple of 4: ceil(29 / 4) = 8 tokens give stage 4 one

    def __init__(self, task: str = 'detection', output_norms: Sequence[int] = (1, 2, 3), **kwargs):
        super().__init__(num_classes=0, **kwargs)
        self._init_dense(task, output_norms)
        self.feature_info = [dict(info, module=f'norm{i}' if i in self.output_norms else info['module'])
                             for i, info in enumerate(self.feature_info)]
        self.register_load_state_dict_pre_hook(_drop_rel_pos_index)

    def _make_stem(self):
        stem = super()._make_stem()
        stem.dynamic_img_pad = True  # zero-pad right/bottom to a multiple of the patch, as the official PatchEmbed
        return stem

    def _stem_grid(self, height: int, width: int) -> Tuple[int, int]:
        return -(-height // self.patch_size), -(-width // self.patch_size)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """What the official LIT-S configs do not decay. Detection (``{retinanet,mask_rcnn}_lit_s_fpn_1x_coco.py``):
        mmcv's ``custom_keys`` 'relative_position_bias_table' and 'norm' (substrings of the name, so every LayerNorm,
        the output norms and the DTMs' BatchNorm ``norm_layer``). Segmentation (``lit_s_fpn_r50_512x512_80k_ade20k.py``)
        sets no ``paramwise_cfg``: nothing is exempt, as LIT-Ti's."""
        if self.task == 'segmentation':
            return set()
        return {n for n, _ in self.named_parameters() if 'relative_position_bias_table' in n or 'norm' in n}


# The four official backbones as data: the classification variant they reuse, what the dense code sets.
DENSE_ARCHS: Dict[Tuple[str, str], Dict] = {
    # img_size: the input size the position tables are stored for. drop_path_rate: the official configs' value.
    ('ti', 'detection'): dict(base='lit_ti', layout=DenseLITTi, img_size=224, drop_path_rate=0.1),
    ('ti', 'segmentation'): dict(base='lit_ti', layout=DenseLITTi, img_size=224, drop_path_rate=0.1),
    ('s', 'detection'): dict(base='lit_s', layout=DenseLITS, img_size=800, output_norms=(1, 2, 3),
                             drop_path_rate=0.2),
    ('s', 'segmentation'): dict(base='lit_s', layout=DenseLITS, img_size=512, output_norms=(0, 1, 2, 3),
                                drop_path_rate=0.2),
}


def _dense_arch(variant: str, task: str) -> Tuple[str, Dict]:
    key = _VARIANT_ALIASES.get(variant)
    if key is None:
        raise ValueError(f"unknown dense backbone variant {variant!r}; choose one of 'ti', 's' "
                         f"(or 'lit_ti', 'lit_s')")
    if task not in DENSE_TASKS:
        raise ValueError(f"unknown dense task {task!r}; choose one of {', '.join(repr(t) for t in DENSE_TASKS)}")
    return key, DENSE_ARCHS[key, task]


def create_dense_backbone(variant: str, task: str, **kwargs) -> nn.Module:
    """The official LIT dense backbone: ``variant`` 'ti' | 's' ('lit_ti' | 'lit_s'), ``task`` 'detection' |
    'segmentation'. ``kwargs``: ``drop_path_rate`` (default: the official configs' 0.1 for Ti, 0.2 for S),
    ``dtm_backend``, ``fused_attn``. Randomly initialised as the classification models; load an official dense
    backbone's state dict strictly, or ``dense_state_dict_from_classification(...)``'s.

    The module has ``out_channels`` (4 ints), timm-style ``feature_info``, ``feature_sizes(H, W)``,
    ``set_grad_checkpointing()`` (the official LIT-S configs train with activation checkpointing) and
    ``no_weight_decay()``; ``forward(x)`` returns the four NCHW maps at strides 4, 8, 16, 32.
    """
    key, arch = _dense_arch(variant, task)
    unknown = sorted(set(kwargs) - set(DENSE_KWARGS))
    if unknown:
        raise TypeError(f'create_dense_backbone() got unexpected keyword arguments {unknown}; it takes '
                        f'{", ".join(DENSE_KWARGS)} (the rest is the official layout)')
    arch = dict(arch)
    base, layout = arch.pop('base'), arch.pop('layout')
    shape = {k: v for k, v in LIT_ARCHS[base].items() if k != 'layout'}
    return layout(task=task, **{**shape, **arch, **kwargs})


@functools.lru_cache(maxsize=None)
def _dense_shapes(variant: str, task: str) -> Dict[str, Tuple[Tuple[int, ...], torch.dtype]]:
    """Key -> (shape, dtype) of a dense backbone's state dict (built on the meta device: no memory, no init)."""
    with torch.device('meta'):
        model = create_dense_backbone(variant, task)
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def dense_state_dict_from_classification(state_dict: Dict, variant: str, task: str) -> Dict[str, torch.Tensor]:
    """A classification checkpoint (official ``lit_ti.pth`` / ``lit_s.pth`` layout, bare or wrapped, as the state
    dicts of ``lit_ti()`` / ``lit_s()``) as the initial state dict of the dense backbone, the way the official dense
    init loads it: ``cls_token``, the final ``norm.*``, ``head.*`` and ``relative_position_index`` dropped; LIT-S's
    relative-position tables resized bicubically to the dense grid (Swin's loader, as ``resize_rel_pos_table``); the
    output norms, which the classification model lacks, at their initial values (weight 1, bias 0). Every other key
    must be there with the dense backbone's shape (ValueError otherwise), so the result loads with ``strict=True``.
    """
    key, _ = _dense_arch(variant, task)
    target = _dense_shapes(key, task)
    out = {}
    for k, v in unwrap_state_dict(state_dict).items():
        if k == 'cls_token' or k.split('.')[0] in ('norm', 'head') or k.endswith('relative_position_index'):
            continue
        if k.endswith('relative_position_bias_table') and k in target and tuple(v.shape) != target[k][0]:
            old_side = (math.isqrt(v.shape[0]) + 1) // 2  # the table has (2r-1)^2 rows for an r x r grid
            new_side = (math.isqrt(target[k][0][0]) + 1) // 2
            v = resize_rel_pos_table(v, (old_side, old_side), (new_side, new_side))
        out[k] = v
    for k, (shape, dtype) in target.items():
        if k in out:
            continue
        if k.split('.')[0].startswith('norm'):  # output norms: a fresh LayerNorm
            out[k] = (torch.ones if k.endswith('.weight') else torch.zeros)(shape, dtype=dtype)
        elif k.endswith('num_batches_tracked'):  # BN bookkeeping, not a weight
            out[k] = torch.zeros(shape, dtype=dtype)
    missing = sorted(set(target) - set(out))
    unexpected = sorted(set(out) - set(target))
    mismatched = sorted(k for k in set(out) & set(target) if tuple(out[k].shape) != target[k][0])
    if missing or unexpected or mismatched:
        problems = [f'{len(keys)} {what} (e.g. {keys[0]})' for what, keys in
                    (('missing keys', missing), ('unexpected keys', unexpected), ('shape mismatches', mismatched))
                    if keys]
        name = {'ti': 'LIT-Ti', 's': 'LIT-S'}[key]
        raise ValueError(f'the state dict is not a {name} classification checkpoint: {"; ".join(problems)}; pass one '
                         f'in the lit_{key}.pth layout (what lit_{key}().state_dict() holds)')
    return out

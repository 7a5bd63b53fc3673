"""Semantic FPN with a LIT backbone, as the official ADE20K models (paper Table 8; ziplab/LIT ``segmentation/``,
mmsegmentation 0.13): the dense LIT-Ti / LIT-S backbone, torchvision's FPN as the neck (4 levels, 256 channels,
no extra levels) and mmseg's ``FPNHead`` exactly, module for module, so an official checkpoint loads after a
prefix rename of the neck only.

    model = semantic_fpn_lit('s')                      # 150 ADE20K classes
    logits = model(images)                             # (B, 150, H, W), any H, W
    losses = model.train()(images, labels)             # {'loss_seg': ...}, labels (B, H, W), 255 = ignore
"""
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet50
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FeaturePyramidNetwork

from .dense import create_dense_backbone

IGNORE_INDEX = 255  # ADE20K labels after mmseg's reduce_zero_label: 0 ("other") becomes 255
FEATURE_STRIDES = (4, 8, 16, 32)  # of the backbone's four maps
NECK_CHANNELS = 256
HEAD_CHANNELS = 128
HEAD_DROPOUT = 0.1
# The official test pipeline (configs/_base_/datasets/ade20k.py): keep-ratio resize to fit (2048, 512) by mmcv's
# rule, ImageNet mean/std on RGB, no padding; the logits are resized back to the image.
TEST_SCALE = (2048, 512)

# The dense backbones' output channels, to recognise a checkpoint's variant without building one.
BACKBONE_CHANNELS = {'ti': (64, 128, 320, 512), 's': (96, 192, 384, 768)}
# A key only the official dense LIT backbone of each variant holds (a DTM offset conv), to tell LIT from other
# backbones with the same channels (PVT-Tiny: 64..512, Swin-T: 96..768).
BACKBONE_SIGNATURE = {'ti': 'backbone.patch_embed2.dconv.conv_offset.weight',
                      's': 'backbone.layers.0.downsample.dconv.conv_offset.weight'}


def head_steps(stride: int, base: int = FEATURE_STRIDES[0]) -> int:
    """Conv-BN-ReLU steps of FPNHead's scale head at ``stride``: max(1, log2(stride / base)), i.e. 1, 1, 2, 3."""
    return max(1, (stride // base).bit_length() - 1)


class ConvBNReLU(nn.Module):
    """mmcv's ``ConvModule`` with a BatchNorm: conv3x3 (no bias) -> BN -> ReLU, with its module names and init."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)  # SyncBN in the official multi-GPU runs: convert_sync_batchnorm
        self.activate = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode='fan_out', nonlinearity='relu')  # mmcv's kaiming_init

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.bn(self.conv(x)))


class FPNHead(nn.Module):
    """mmseg's ``FPNHead`` (Semantic FPN, Kirillov et al. 2019). Level i of stride s gets ``max(1, log2(s/s0))``
    conv-BN-ReLU steps (1, 1, 2, 3 for strides 4..32), the first from ``in_channels`` to ``channels``, each followed
    by a 2x bilinear upsample unless s = s0; the levels are summed at level 0's size, then dropout and a 1x1
    classifier give logits at stride s0. Module names are mmseg's (``scale_heads.{i}.{j}.conv/bn``,
    ``conv_seg``): the upsamples hold the odd positions j, as in mmseg's Sequential."""

    def __init__(self, num_classes: int, in_channels: int = NECK_CHANNELS, channels: int = HEAD_CHANNELS,
                 feature_strides: Sequence[int] = FEATURE_STRIDES, dropout: float = HEAD_DROPOUT):
        super().__init__()
        self.feature_strides = tuple(feature_strides)
        base = self.feature_strides[0]
        self.scale_heads = nn.ModuleList()
        for stride in self.feature_strides:
            layers = []
            for k in range(head_steps(stride, base)):
                layers.append(ConvBNReLU(in_channels if k == 0 else channels, channels))
                if stride != base:
                    layers.append(nn.Upsample(scale_factor=2, mode='bilinear', align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)  # mmseg BaseDecodeHead.init_weights
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """features: one (B, in_channels, H_i, W_i) map per stride -> logits (B, classes, H_0, W_0)."""
        out = self.scale_heads[0](features[0])
        for head, feature in zip(self.scale_heads[1:], features[1:]):
            # 2^k upsampling of a floored size can miss level 0's size by a pixel (odd inputs): resize, as mmseg
            out = out + F.interpolate(head(feature), size=out.shape[-2:], mode='bilinear', align_corners=False)
        return self.conv_seg(self.dropout(out))


class SemanticFPN(nn.Module):
    """backbone (4 maps) -> FPN neck -> FPNHead -> logits resized to the input.

    ``forward(images)`` -> logits (B, classes, H, W); ``forward(images, targets)`` with targets (B, H', W') long
    (255 = ignore) -> {'loss_seg': cross-entropy}, computed as mmseg 0.13 does: the stride-4 logits resized to the
    label size and the per-pixel losses averaged over all pixels, ignored ones counting as 0."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = backbone
        self.neck = FeaturePyramidNetwork(list(backbone.out_channels), NECK_CHANNELS)
        self.decode_head = FPNHead(num_classes)

    def forward_logits(self, images: Tensor) -> Tensor:
        """Logits at stride 4, (B, classes, h, w) with (h, w) the backbone's first map (H/4: LIT-S rounds up, LIT-Ti
        down)."""
        features = self.backbone(images)
        pyramid = self.neck(OrderedDict((str(i), f) for i, f in enumerate(features)))
        return self.decode_head(list(pyramid.values()))

    def forward(self, images: Tensor, targets: Optional[Tensor] = None) -> Union[Tensor, Dict[str, Tensor]]:
        logits = self.forward_logits(images)
        if targets is None:
            return F.interpolate(logits, size=images.shape[-2:], mode='bilinear', align_corners=False)
        return {'loss_seg': self.loss(logits, targets)}

    @staticmethod
    def loss(logits: Tensor, targets: Tensor) -> Tensor:
        if targets.dim() != 3 or targets.shape[0] != logits.shape[0]:
            raise ValueError(f'targets must be (B, H, W) class indices for {logits.shape[0]} images, got shape '
                             f'{tuple(targets.shape)}')
        logits = F.interpolate(logits, size=targets.shape[-2:], mode='bilinear', align_corners=False)
        per_pixel = F.cross_entropy(logits.float(), targets.long(), ignore_index=IGNORE_INDEX, reduction='none')
        # mmseg 0.13 (CrossEntropyLoss, reduction 'mean', no avg_factor) divides by every pixel, ignored ones
        # included, not by the valid ones as F.cross_entropy's own mean would; an all-ignored batch gives 0.
        return per_pixel.mean()


def semantic_fpn_lit(variant: str, num_classes: int = 150, **backbone_kwargs) -> SemanticFPN:
    """Semantic FPN LIT-Ti (``variant='ti'``) or LIT-S (``'s'``) with the official settings, randomly initialised.
    Keyword arguments go to ``create_dense_backbone`` (``drop_path_rate``: the official 0.1 / 0.2 by default)."""
    if num_classes < 1:
        raise ValueError(f'num_classes must be at least 1, got {num_classes}')
    return SemanticFPN(create_dense_backbone(variant, 'segmentation', **backbone_kwargs), num_classes)


class ResNetBody(nn.Module):
    """torchvision's ResNet-50 without its pooling and classifier, returning the four stage maps (strides 4..32) as
    a list with ``out_channels``, the interface ``SemanticFPN`` takes from a dense LIT backbone."""
    out_channels = (256, 512, 1024, 2048)

    def __init__(self):
        super().__init__()
        self.body = IntermediateLayerGetter(resnet50(weights=None),
                                            {f'layer{i}': str(i - 1) for i in range(1, 5)})

    def forward(self, x: Tensor) -> List[Tensor]:
        return list(self.body(x).values())


def semantic_fpn_resnet50(num_classes: int = 150) -> SemanticFPN:
    """The ResNet-50 Semantic FPN the paper compares with (Table 8), randomly initialised: torchvision's
    ``resnet50`` body with this module's neck and FPNHead (mmseg's uses ResNetV1c, a deep-stem ResNet-50)."""
    if num_classes < 1:
        raise ValueError(f'num_classes must be at least 1, got {num_classes}')
    return SemanticFPN(ResNetBody(), num_classes)


# --- official checkpoints (mmsegmentation layout) -------------------------------------------------------------

def mmseg_head_layout(variant: str, num_classes: int = 150) -> List[Tuple[str, Tuple[int, ...], torch.dtype]]:
    """The neck and decode-head rows (key, shape, dtype) of an official Semantic FPN state dict, in mmseg's order:
    mmseg's FPN (``lateral_convs`` then ``fpn_convs``, ConvModules holding ``conv``), then FPNHead (ConvModules
    holding a bias-free ``conv`` and a SyncBN named ``bn``; the Upsamples between them hold no weights) and
    ``conv_seg``."""
    rows = []
    for i, c in enumerate(BACKBONE_CHANNELS[variant]):
        rows += [(f'neck.lateral_convs.{i}.conv.weight', (NECK_CHANNELS, c, 1, 1)),
                 (f'neck.lateral_convs.{i}.conv.bias', (NECK_CHANNELS,))]
    for i in range(len(FEATURE_STRIDES)):
        rows += [(f'neck.fpn_convs.{i}.conv.weight', (NECK_CHANNELS, NECK_CHANNELS, 3, 3)),
                 (f'neck.fpn_convs.{i}.conv.bias', (NECK_CHANNELS,))]
    for i, stride in enumerate(FEATURE_STRIDES):
        for k in range(head_steps(stride)):
            j = 2 * k if stride != FEATURE_STRIDES[0] else k  # Upsample modules take the odd Sequential slots
            prefix = f'decode_head.scale_heads.{i}.{j}'
            rows.append((f'{prefix}.conv.weight', (HEAD_CHANNELS, NECK_CHANNELS if k == 0 else HEAD_CHANNELS, 3, 3)))
            rows += [(f'{prefix}.bn.{name}', (HEAD_CHANNELS,))
                     for name in ('weight', 'bias', 'running_mean', 'running_var')]
            rows.append((f'{prefix}.bn.num_batches_tracked', ()))
    rows += [('decode_head.conv_seg.weight', (num_classes, HEAD_CHANNELS, 1, 1)),
             ('decode_head.conv_seg.bias', (num_classes,))]
    return [(key, shape, torch.int64 if key.endswith('num_batches_tracked') else torch.float32)
            for key, shape in rows]


def mmseg_semantic_fpn_layout(variant: str, num_classes: int = 150
                              ) -> List[Tuple[str, Tuple[int, ...], torch.dtype]]:
    """Every row (key, shape, dtype) of an official Semantic FPN LIT state dict (``sem_fpn_lit_{ti,s}.pth``'s
    ``state_dict``): the dense backbone's own rows under ``backbone.`` (its key names are the official ones,
    checked against the official manifests by the dense-backbone tests), then ``mmseg_head_layout``. For tests
    that build an official-format state dict without downloading one."""
    backbone = create_dense_backbone(variant, 'segmentation')
    rows = [(f'backbone.{k}', tuple(v.shape), v.dtype) for k, v in backbone.state_dict().items()]
    return rows + mmseg_head_layout(variant, num_classes)


# mmcv FPN ConvModule -> torchvision FeaturePyramidNetwork's Conv2dNormActivation (a Sequential: conv at 0)
_NECK_KEY = re.compile(r'neck\.(lateral_convs|fpn_convs)\.(\d+)\.conv\.(weight|bias)')
_NECK_BLOCKS = {'lateral_convs': 'inner_blocks', 'fpn_convs': 'layer_blocks'}


def semantic_fpn_from_mmseg(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """An official (mmseg) Semantic FPN state dict in this module's key names: ``backbone.*`` and
    ``decode_head.*`` unchanged, ``neck.lateral_convs.{i}.conv`` -> ``neck.inner_blocks.{i}.0``,
    ``neck.fpn_convs.{i}.conv`` -> ``neck.layer_blocks.{i}.0``."""
    converted = {}
    for key, value in state_dict.items():
        if key.startswith(('backbone.', 'decode_head.')):
            converted[key] = value
        elif match := _NECK_KEY.fullmatch(key):
            block, index, param = match.groups()
            converted[f'neck.{_NECK_BLOCKS[block]}.{index}.0.{param}'] = value
        else:
            raise ValueError(f'unexpected key {key!r} in an mmseg Semantic FPN state dict (expected backbone.*, '
                             f'neck.lateral_convs/fpn_convs.*, decode_head.*)')
    return converted


def identify_semantic_fpn(state_dict: Dict[str, Tensor]) -> Tuple[str, int]:
    """(variant, num_classes) of an official mmseg Semantic FPN LIT state dict, read from its keys and shapes;
    ValueError when it is anything else (another backbone, a detector, a classifier)."""
    for key in ('decode_head.conv_seg.weight', 'decode_head.scale_heads.0.0.conv.weight',
                'neck.lateral_convs.0.conv.weight'):
        if key not in state_dict:
            raise ValueError(f'not an mmseg Semantic FPN state dict: it has no {key}')
    channels = tuple(state_dict[f'neck.lateral_convs.{i}.conv.weight'].shape[1]
                     if f'neck.lateral_convs.{i}.conv.weight' in state_dict else None for i in range(4))
    variant = next((v for v, c in BACKBONE_CHANNELS.items() if c == channels), None)
    if variant is None:
        raise ValueError(f'Semantic FPN neck inputs {channels} match neither LIT-Ti {BACKBONE_CHANNELS["ti"]} '
                         f'nor LIT-S {BACKBONE_CHANNELS["s"]}')
    if BACKBONE_SIGNATURE[variant] not in state_dict:
        raise ValueError(f'a Semantic FPN whose backbone is not LIT-{variant.capitalize()} '
                         f'(no {BACKBONE_SIGNATURE[variant]})')
    return variant, state_dict['decode_head.conv_seg.weight'].shape[0]

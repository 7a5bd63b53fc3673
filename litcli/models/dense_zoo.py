"""The paper's six dense-prediction models (Tables 6-8) as data: RetinaNet and Mask R-CNN on COCO, Semantic FPN on
ADE20K, each with a LIT-Ti and a LIT-S backbone. One entry per name says how to build the model, how to read the
official release file (mmdetection / mmsegmentation layout), where that file is, and what the paper reports.

    create_dense_model('semantic_fpn_lit_s')            # random weights, 150 ADE20K classes
    name, state_dict, num_classes = convert_official(torch.load('sem_fpn_lit_s.pth', weights_only=True)['state_dict'])
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn
from torchvision.models.detection import maskrcnn_resnet50_fpn, retinanet_resnet50_fpn

from . import detection, segmentation
from .dense_classes import ADE20K_CLASSES, COCO_CLASSES
from .spec import unwrap_state_dict

# The official dense weights: assets of GitHub release v2.0 of ziplab/LIT, mmdet/mmseg checkpoints
# ({'state_dict': ..., 'meta': ...}).
DENSE_RELEASE_URL = 'https://github.com/ziplab/LIT/releases/download/v2.0'

DATASET_CLASSES = {'coco': COCO_CLASSES, 'ade20k': ADE20K_CLASSES}


@dataclass(frozen=True)
class DenseFamily:
    """One architecture (both backbone variants): how to build it and how to read its official checkpoints.

    ``build(variant, num_classes=..., **kwargs) -> nn.Module``; ``from_official(state_dict) -> state_dict`` maps the
    mmdet/mmseg keys onto the module's; ``identify(state_dict) -> (variant, num_classes)`` reads an official state
    dict's keys and shapes and raises ValueError when it is not this architecture; ``official_layout(variant,
    num_classes) -> [(key, shape, dtype)]`` lists the official checkpoint's rows (what tests build a release-format
    state dict from, with no download)."""
    task: str  # 'retinanet' | 'mask_rcnn' | 'semantic_fpn'
    dataset: str  # 'coco' | 'ade20k': the default classes
    build: Callable[..., nn.Module]
    from_official: Callable[[Dict[str, Tensor]], Dict[str, Tensor]]
    identify: Callable[[Dict[str, Tensor]], Tuple[str, int]]
    official_layout: Callable[[str, int], List[Tuple[str, Tuple[int, ...], torch.dtype]]]


@dataclass(frozen=True)
class DenseModel:
    """One of the paper's dense models: ``name`` = ``<task>_lit_<variant>``."""
    name: str
    family: DenseFamily
    variant: str  # 'ti' | 's'
    release_stem: str  # <DENSE_RELEASE_URL>/<release_stem>.pth
    paper: Mapping[str, float] = field(default_factory=dict)  # the paper's results on the dataset's val split
    params: int = 0  # measured parameter count with the default classes (docs: dense.md section 6)

    @property
    def task(self) -> str:
        return self.family.task

    @property
    def dataset(self) -> str:
        return self.family.dataset

    @property
    def class_names(self) -> Tuple[str, ...]:
        return DATASET_CLASSES[self.dataset]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def url(self) -> str:
        return f'{DENSE_RELEASE_URL}/{self.release_stem}.pth'

    @property
    def backbone_task(self) -> str:
        """'detection' (RetinaNet, Mask R-CNN) or 'segmentation' (Semantic FPN): the dense backbone it is built on."""
        return 'segmentation' if self.task == 'semantic_fpn' else 'detection'


SEMANTIC_FPN = DenseFamily('semantic_fpn', 'ade20k', segmentation.semantic_fpn_lit,
                           segmentation.semantic_fpn_from_mmseg, segmentation.identify_semantic_fpn,
                           segmentation.mmseg_semantic_fpn_layout)

RETINANET = DenseFamily('retinanet', 'coco', detection.retinanet_lit, detection.retinanet_from_mmdet,
                        detection.identify_retinanet, detection.mmdet_retinanet_layout)
MASK_RCNN = DenseFamily('mask_rcnn', 'coco', detection.mask_rcnn_lit, detection.mask_rcnn_from_mmdet,
                        detection.identify_mask_rcnn, detection.mmdet_mask_rcnn_layout)

_MODELS = [
    DenseModel('retinanet_lit_ti', RETINANET, 'ti', 'retina_lit_ti', {'box_ap': 41.6}, 29_621_708),
    DenseModel('retinanet_lit_s', RETINANET, 's', 'retina_lit_s', {'box_ap': 41.6}, 38_904_292),
    DenseModel('mask_rcnn_lit_ti', MASK_RCNN, 'ti', 'mask_rcnn_lit_ti', {'box_ap': 42.0, 'mask_ap': 39.1}, 39_543_501),
    DenseModel('mask_rcnn_lit_s', MASK_RCNN, 's', 'mask_rcnn_lit_s', {'box_ap': 42.9, 'mask_ap': 39.6}, 48_244_453),
    DenseModel('semantic_fpn_lit_ti', SEMANTIC_FPN, 'ti', 'sem_fpn_lit_ti', {'miou': 41.3}, 23_638_382),
    DenseModel('semantic_fpn_lit_s', SEMANTIC_FPN, 's', 'sem_fpn_lit_s', {'miou': 41.7}, 31_850_502),
]

DENSE_MODELS: Dict[str, DenseModel] = {m.name: m for m in _MODELS}
DENSE_MODEL_NAMES = tuple(DENSE_MODELS)
DENSE_FAMILIES = tuple(dict.fromkeys(m.family for m in _MODELS))


def dense_model(name: str) -> DenseModel:
    """The registry entry of ``name``; ValueError listing the names when there is none."""
    try:
        return DENSE_MODELS[name]
    except KeyError:
        raise ValueError(f'unknown dense model {name!r}; choose one of: {", ".join(DENSE_MODEL_NAMES)}') from None


def create_dense_model(name: str, num_classes: Optional[int] = None, **kwargs) -> nn.Module:
    """A randomly initialised dense model by name; ``num_classes`` defaults to the dataset's (80 COCO, 150 ADE20K),
    other keyword arguments go to the builder (e.g. ``drop_path_rate``)."""
    entry = dense_model(name)
    num_classes = entry.num_classes if num_classes is None else num_classes
    return entry.family.build(entry.variant, num_classes=num_classes, **kwargs)


# The ResNet-50 counterpart of each architecture, the paper's baseline row in Tables 6-8 (``lit bench --task``),
# as torchvision builds it: name -> builder(num_classes, img_scale) with img_scale (long, short) the test resize.
def _torchvision_detector(builder: Callable[..., nn.Module], background: int):
    def build(num_classes: int, img_scale: Tuple[int, int] = (1333, 800)) -> nn.Module:
        # torchvision counts the background class in num_classes for Mask R-CNN (``background`` = 1): the heads
        # get the LIT model's shapes
        return builder(weights=None, weights_backbone=None, num_classes=num_classes + background,
                       min_size=min(img_scale), max_size=max(img_scale))
    return build


def _semantic_fpn_resnet50(num_classes: int, img_scale: Optional[Tuple[int, int]] = None) -> nn.Module:
    return segmentation.semantic_fpn_resnet50(num_classes)  # no resize inside: img_scale is the caller's


RESNET50_BASELINES: Dict[str, Tuple[str, Callable[..., nn.Module]]] = {
    'retinanet': ('retinanet_resnet50_fpn', _torchvision_detector(retinanet_resnet50_fpn, 0)),
    'mask_rcnn': ('maskrcnn_resnet50_fpn', _torchvision_detector(maskrcnn_resnet50_fpn, 1)),
    'semantic_fpn': ('semantic_fpn_resnet50', _semantic_fpn_resnet50),
}
RESNET50_BASELINE_NAMES = {name: task for task, (name, _) in RESNET50_BASELINES.items()}


def create_resnet50_baseline(name: str, num_classes: Optional[int] = None, **kwargs) -> nn.Module:
    """The ResNet-50 counterpart by name ('retinanet_resnet50_fpn', 'maskrcnn_resnet50_fpn',
    'semantic_fpn_resnet50'), randomly initialised, with the LIT model's classes (80 COCO, 150 ADE20K) by default;
    ``img_scale`` (long, short): the detectors' test resize, as the LIT detectors take it."""
    if name not in RESNET50_BASELINE_NAMES:
        raise ValueError(f'unknown ResNet-50 baseline {name!r}; choose one of: {", ".join(RESNET50_BASELINE_NAMES)}')
    task = RESNET50_BASELINE_NAMES[name]
    family = next(f for f in DENSE_FAMILIES if f.task == task)
    return RESNET50_BASELINES[task][1](len(DATASET_CLASSES[family.dataset]) if num_classes is None else num_classes,
                                       **kwargs)


def convert_official(state_dict: Dict[str, Tensor]) -> Tuple[str, Dict[str, Tensor], int]:
    """Recognise an official mmdet/mmseg checkpoint (the file's dict with ``state_dict`` and ``meta``, or the state
    dict itself) as one of the six models from its keys and shapes; return (name, the state dict in the model's key
    names, num_classes)."""
    state_dict = unwrap_state_dict(state_dict)
    for family in DENSE_FAMILIES:
        try:
            variant, num_classes = family.identify(state_dict)
        except ValueError:
            continue
        name = next(m.name for m in _MODELS if m.family is family and m.variant == variant)
        return name, family.from_official(state_dict), num_classes
    raise ValueError('not an official LIT dense checkpoint (RetinaNet / Mask R-CNN / Semantic FPN with a LIT-Ti or '
                     'LIT-S backbone, mmdetection/mmsegmentation key names); classification weights go to the '
                     'classification commands')

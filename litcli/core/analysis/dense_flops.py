"""Parameters and MACs of the dense models (paper Tables 6-8) by part: backbone, neck, heads (``lit flops --task``,
``lit bench --task``). The counting rules are ``core.analysis.flops``'s (fvcore, MACs, DTM as a plain conv).

What is counted is the network on one fixed-size tensor, called part by part so that torchvision's transform
(resize, normalise, pad) and the post-processing (anchors, box decoding, NMS, mask pasting) stay out:
- RetinaNet: backbone + FPN (with P6, P7) + the classification and box subnets on all five levels;
- Mask R-CNN: backbone + FPN + RPN head, then the box head (2 FC + predictor) on ``MASK_RCNN_BOX_ROIS`` fixed RoIs
  and the mask head (4 convs, deconv, predictor) on the first ``MASK_RCNN_MASK_ROIS`` of them: mmdet's
  ``get_flops`` convention (``TwoStageDetector.forward_dummy``), i.e. the test-time 1000 proposals and at most
  100 detections per image. RoIAlign has no MAC rule and is listed as uncounted;
- Semantic FPN: its whole forward (backbone, FPN, FPNHead, the bilinear resize of the logits to the input).
A detection input is counted as the detectors see it, padded to a multiple of 32 (800x1333 -> 800x1344).
"""
from typing import Dict, List, Optional, Sequence, Tuple

from litcli.core.errors import UsageError

# `lit flops --task` spelling -> the dense-model family (litcli.models.dense_zoo)
TASKS = {'retinanet': 'retinanet', 'mask-rcnn': 'mask_rcnn', 'semantic-fpn': 'semantic_fpn'}
DENSE_VARIANTS = ('ti', 's')
# The FLOPs sizes (H, W) of the papers these tables follow: COCO's "1280x800" (W x H, as mmdet's get_flops takes
# it; the test scale 1333x800 rounded) and ADE20K's 512x512.
PAPER_SIZES = {'retinanet': (800, 1280), 'mask_rcnn': (800, 1280), 'semantic_fpn': (512, 512)}
# Tables 6-8 as printed: parameters in M (our measured counts, rounded, must give these).
PAPER_PARAMS_M = {'retinanet_lit_ti': 30, 'retinanet_lit_s': 39, 'mask_rcnn_lit_ti': 40, 'mask_rcnn_lit_s': 48,
                  'semantic_fpn_lit_ti': 24, 'semantic_fpn_lit_s': 32}
MASK_RCNN_BOX_ROIS, MASK_RCNN_MASK_ROIS = 1000, 100
PAD_TO = 32  # the detectors' size_divisible
COUNTED = {
    'retinanet': 'backbone + FPN + head on the padded tensor; no transform, anchors, decoding or NMS',
    'mask_rcnn': f'backbone + FPN + RPN head, box head on {MASK_RCNN_BOX_ROIS} RoIs, mask head on '
                 f'{MASK_RCNN_MASK_ROIS} RoIs (mmdet get_flops); no transform, proposal NMS, RoIAlign or pasting',
    'semantic_fpn': 'backbone + FPN + FPNHead + resize of the logits to the input',
}


def dense_model_name(task: str, variant: str) -> str:
    """'mask-rcnn', 'ti' -> 'mask_rcnn_lit_ti'; a UsageError naming the choices otherwise."""
    if task not in TASKS:
        raise UsageError(f'unknown --task {task!r}; choose one of: {", ".join(TASKS)}')
    if variant not in DENSE_VARIANTS:
        raise UsageError(f'--task {task} takes --variant ti or s (the paper\'s dense backbones), got {variant!r}')
    return f'{TASKS[task]}_lit_{variant}'


def family_of(name: str) -> str:
    """'retinanet' | 'mask_rcnn' | 'semantic_fpn' of a dense LIT model or its ResNet-50 baseline."""
    from litcli.models.dense_zoo import DENSE_MODELS, RESNET50_BASELINE_NAMES
    if name in DENSE_MODELS:
        return DENSE_MODELS[name].task
    return RESNET50_BASELINE_NAMES[name]


def is_dense_name(name: str) -> bool:
    from litcli.models.dense_zoo import DENSE_MODELS, RESNET50_BASELINE_NAMES
    return name in DENSE_MODELS or name in RESNET50_BASELINE_NAMES


def baseline_of(name: str) -> str:
    """The ResNet-50 counterpart's name of a dense LIT model: 'retinanet_lit_ti' -> 'retinanet_resnet50_fpn'."""
    from litcli.models.dense_zoo import RESNET50_BASELINES
    return RESNET50_BASELINES[family_of(name)][0]


def create_dense(name: str, **kwargs):
    """A dense LIT model or a ResNet-50 baseline by name, through the factory, randomly initialised."""
    from litcli.core.modelio.factory import create_dense_baseline, create_dense_model
    from litcli.models.dense_zoo import DENSE_MODELS
    return create_dense_model(name, **kwargs) if name in DENSE_MODELS else create_dense_baseline(name, **kwargs)


def checked_dense_size(size) -> Tuple[int, int]:
    """(H, W) of N or (H, W), at least ``PAD_TO`` a side (the backbone's four stride levels); a UsageError
    otherwise."""
    h, w = (size, size) if isinstance(size, int) else size
    if min(h, w) < PAD_TO:
        raise UsageError(f'--img-size {h}x{w}: dense models need at least {PAD_TO} px a side')
    return h, w


def counted_size(name: str, img_size: Tuple[int, int]) -> Tuple[int, int]:
    """The input the network sees: a detector's padded to a multiple of 32, a Semantic FPN's as it is."""
    if family_of(name) == 'semantic_fpn':
        return tuple(img_size)
    return tuple(-(-side // PAD_TO) * PAD_TO for side in img_size)


def fixed_rois(count: int, img_size: Tuple[int, int]):
    """``count`` boxes (x1, y1, x2, y2) spread over an image of ``img_size``, from a fixed seed: where the counted
    RoIs lie changes only which FPN level RoIAlign reads, not the heads' MACs."""
    import torch
    h, w = img_size
    g = torch.Generator().manual_seed(0)
    corner = torch.rand(count, 2, generator=g) * torch.tensor([w / 2, h / 2])
    size = 16 + torch.rand(count, 2, generator=g) * torch.tensor([w / 2 - 16, h / 2 - 16]).clamp(min=1)
    return torch.cat([corner, corner + size], dim=1)


def counted_network(model, family: str, img_size: Tuple[int, int]):
    """A module whose forward(x) runs the counted part of ``model`` (module docstring) on an image tensor; the
    dense model is its ``model`` child, so fvcore names its parts ``model.backbone...``, ``model.head`` etc.
    (Defined in here: torch is imported lazily in ``core``, so that ``lit --help`` stays instant.)"""
    from torch import nn

    class Counted(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            if family == 'mask_rcnn':
                self.register_buffer('rois', fixed_rois(MASK_RCNN_BOX_ROIS, img_size), persistent=False)

        def forward(self, x):
            if family == 'semantic_fpn':
                return self.model(x)
            features = self.model.backbone(x)  # OrderedDict of the FPN levels
            maps = list(features.values())
            if family == 'retinanet':
                out = self.model.head(maps)
                return out['cls_logits'], out['bbox_regression']
            objectness, deltas = self.model.rpn.head(maps)
            heads, shapes = self.model.roi_heads, [tuple(x.shape[-2:])]
            boxes = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, [self.rois], shapes)))
            mask_rois = [self.rois[:MASK_RCNN_MASK_ROIS]]
            masks = heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(features, mask_rois, shapes)))
            return objectness, deltas, boxes, masks
    return Counted().eval()


def analyse_dense_model(name: str, img_size: Tuple[int, int], counter: str = 'auto', model=None) -> Dict:
    """Parameters and MACs by part (backbone, neck, heads, total) of one dense model (LIT or its ResNet-50
    baseline) at ``img_size`` (H, W), counted on ``counted_size`` (padded for the detectors). ``model``: an
    already built one (else built by name)."""
    import torch

    from litcli.core.analysis.flops import count_macs
    from litcli.models.detection import backbone_and_neck, parameter_counts

    family = family_of(name)
    model = create_dense(name) if model is None else model
    size = counted_size(name, img_size)
    network = counted_network(model.eval(), family, size)
    count = count_macs(network, torch.randn(1, 3, *size), counter)
    names = {id(m): n for n, m in network.named_modules()}
    backbone, neck = (count.by_module.get(names[id(part)], 0) for part in backbone_and_neck(model))
    macs = dict(backbone=backbone, neck=neck, heads=count.total - backbone - neck, total=count.total)
    params = parameter_counts(model)
    result = dict(model=name, task=family, img_size=list(img_size), input_size=list(size), counter=count.counter,
                  params=params, params_m=f"{params['total'] / 1e6:.2f}",
                  params_m_rounded=f"{params['total'] / 1e6:.0f}", macs=macs, counted=COUNTED[family],
                  dtm_sampling_macs=count.sampling, by_operator=count.by_operator,
                  unsupported_ops=count.unsupported_ops, notes=count.notes)
    if name in PAPER_PARAMS_M:
        result['paper_params_m'] = PAPER_PARAMS_M[name]
    return result


def dense_flops_report(task: str, variant: str, img_sizes: Optional[Sequence[Tuple[int, int]]] = None,
                       counter: str = 'auto') -> Dict:
    """Everything ``lit flops --task`` prints: the dense LIT model at each size (default: the paper's)."""
    from litcli.core.analysis.flops import fvcore_available

    name = dense_model_name(task, variant)
    family = TASKS[task]
    sizes = [checked_dense_size(s) for s in img_sizes] if img_sizes else [PAPER_SIZES[family]]
    if counter not in ('auto', 'fvcore', 'torch'):
        raise UsageError(f"--counter must be auto, fvcore or torch, got {counter!r}")
    if counter == 'fvcore' and not fvcore_available():
        raise UsageError("--counter fvcore needs fvcore: pip install 'litcli[flops]'")
    model = create_dense(name)
    results: List[Dict] = [analyse_dense_model(name, hw, counter, model) for hw in sizes]
    return dict(unit='MACs', task=task, variant=variant, model=name, paper_sizes=list(PAPER_SIZES[family]),
                results=results)

"""RetinaNet and Mask R-CNN with a LIT backbone, as the official COCO models (paper Tables 6-7; ziplab/LIT
``detection/``, mmdetection 2.11), on torchvision's detectors.

    model = retinanet_lit('ti').eval()                 # 80 COCO classes, random weights
    detections = model([image_chw_0_to_1, ...])        # [{'boxes', 'scores', 'labels'}] in each image's pixels
    losses = model.train()(images, targets)            # targets: [{'boxes': (N, 4) xyxy, 'labels': (N,)}]
    model.load_state_dict(retinanet_from_mmdet(torch.load('retina_lit_ti.pth', weights_only=True)['state_dict']))

Labels are 0..num_classes-1 for both models, in and out (mmdet's: the index into the class names); Mask R-CNN
adds torchvision's background class 0 inside its RoI heads only. Mask R-CNN also returns ``masks``, (N, 1, H, W)
bool, already binarised at 0.5 as mmdet does. Inputs are lists of (3, H, W) float images in [0, 1] of any size.

The modules are torchvision's (``FeaturePyramidNetwork``, ``RetinaNetHead``, ``RPNHead``, ``TwoMLPHead``,
``FastRCNNPredictor``, ``MaskRCNNHeads``, ``MaskRCNNPredictor``: one for one the official parameters, see
``../shared/docs/dense.md``), so an official checkpoint loads after a key rename (``retinanet_from_mmdet``,
``mask_rcnn_from_mmdet``). Where torchvision computes something else than mmdet with the same weights, this module
overrides it (dense.md section 3):

1. anchors: mmdet's float base anchors (``mmdet_base_anchors``; torchvision truncates sizes and rounds corners),
   in mmdet's order (ratio-major, matching the head's channels);
2. anchor strides: the configured ones (torchvision infers ``padded size // grid``: 61 instead of 64 for P6 of a
   800x1216 batch);
3. RetinaNet's P7 = conv(P6) without the ReLU torchvision puts between; P6 from C5 ("on input");
4. RetinaNet test: the top 1000 *anchors* per level by their best class score, then score > 0.05, class-wise NMS
   0.5 over all levels, 100 per image (torchvision ranks (anchor, class) pairs and keeps 300);
5. RoIAlign ``aligned=True, sampling_ratio=0`` with mmdet's level rule ``floor(log2(sqrt(area) / 56 + 1e-6))``;
6. RPN: 2000 / 1000 proposals before / after NMS in training (torchvision 2000 / 2000), every proposal kept, zero
   width or height included (mmdet 2.11's ``min_bbox_size=0`` filters nothing; 2.13 began dropping zero sizes;
   torchvision drops those under 1e-3 px); R-CNN test as mmdet's ``multiclass_nms`` (torchvision also drops boxes
   under 0.01 px);
7. masks pasted as mmdet (``grid_sample``, align_corners False, binarised at 0.5; torchvision grows each box by a
   pixel and returns soft masks);
8. resize: keep ratio to fit (1333, 800) with mmcv's size rule ``int(side * scale + 0.5)`` (torchvision floors),
   then ImageNet mean/std and zero padding to a multiple of 32.

Training losses as the official configs: RetinaNet focal loss (0.25, 2) and L1 box loss, both divided by the
batch's positive anchors (each image counting at least one; torchvision divides per image and averages images);
RPN and R-CNN box losses L1 (torchvision: smooth L1 with beta 1/9 and 1); mask targets cropped with RoIAlign
``aligned=True`` and binarised at 0.5, as mmdet's ``BitmapMasks.crop_and_resize`` (torchvision: soft,
``aligned=False``). What still differs from the official code (training only, or rounding):
- anchor assignment is torchvision's ``Matcher``: a low-quality match goes to the anchor's best GT (mmdet: to the
  GT it is the best anchor for) and the RPN's has no 0.3 IoU floor; anchors over the batch's padding count as
  negatives (mmdet ignores them); RPN / R-CNN samples draw from another random stream;
- initialisation is torchvision's (mmdet: Xavier for the FPN, N(0, 0.01) / N(0, 0.001) for the box classifier /
  regressor): only training from scratch sees it;
- images are resized as float tensors (mmcv: OpenCV on uint8, rounding each pixel), same sizes;
- NMS runs on boxes in resized-image pixels (mmdet: after scaling them back; the two axes' scales differ by under
  0.1%, so IoUs do too).
"""
import functools
import re
from collections import OrderedDict
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign, box_iou, roi_align, sigmoid_focal_loss
from torchvision.ops import boxes as box_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from .dense import DENSE_KWARGS, create_dense_backbone
from .segmentation import BACKBONE_CHANNELS, BACKBONE_SIGNATURE

__all__ = ['RETINANET_SETTINGS', 'MASK_RCNN_SETTINGS', 'DETECTION_TASKS', 'retinanet_lit', 'mask_rcnn_lit',
           'LITRetinaNet', 'LITMaskRCNN', 'LITFPNBackbone', 'backbone_and_neck', 'parameter_counts',
           'mmdet_base_anchors', 'mmdet_resize_size', 'paste_masks', 'mmdet_head_layout', 'mmdet_retinanet_layout',
           'mmdet_mask_rcnn_layout', 'retinanet_from_mmdet', 'mask_rcnn_from_mmdet',
           'identify_mmdet', 'identify_retinanet', 'identify_mask_rcnn']

DETECTION_TASKS = ('retinanet', 'mask_rcnn')

# The official test pipeline of all four models: mmcv keep-ratio resize to fit (1333, 800), Normalize with
# mean 123.675/116.28/103.53 and std 58.395/57.12/57.375 on RGB 0-255 (= ImageNet's on 0-1), Pad to 32.
_IMAGE_SETTINGS = dict(img_scale=(1333, 800), image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD,
                       size_divisible=32)

# detection/configs/_base_/models/retinanet_fpn_lit_{ti,s}.py (+ mmdet 2.11 defaults). The keys may be overridden
# through retinanet_lit(**kwargs), e.g. score_thresh=0.3 or img_scale=(640, 400).
RETINANET_SETTINGS = dict(
    fpn_levels=(1, 2, 3),  # C3..C5 (FPN start_level 1); P6, P7 = extra convs "on input" (C5)
    fpn_channels=256,
    anchor_strides=(8, 16, 32, 64, 128),
    anchor_scales=tuple(4 * 2 ** (i / 3) for i in range(3)),  # octave_base_scale 4, scales_per_octave 3
    anchor_ratios=(0.5, 1.0, 2.0),
    fg_iou_thresh=0.5, bg_iou_thresh=0.4,  # MaxIoUAssigner pos / neg
    topk_candidates=1000,  # test nms_pre: anchors per level
    score_thresh=0.05, nms_thresh=0.5, detections_per_img=100,
    **_IMAGE_SETTINGS)

# detection/configs/_base_/models/mask_rcnn_fpn_lit_{ti,s}.py
MASK_RCNN_SETTINGS = dict(
    fpn_levels=(0, 1, 2, 3),  # C2..C5; P6 = max-pool k1 s2 of P5
    fpn_channels=256,
    anchor_strides=(4, 8, 16, 32, 64),
    anchor_scales=(8,),
    anchor_ratios=(0.5, 1.0, 2.0),
    rpn_fg_iou_thresh=0.7, rpn_bg_iou_thresh=0.3, rpn_batch_size_per_image=256, rpn_positive_fraction=0.5,
    rpn_pre_nms_top_n_train=2000, rpn_post_nms_top_n_train=1000,  # per level before NMS / per image after
    rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_test=1000,
    rpn_nms_thresh=0.7,
    roi_strides=(4, 8, 16, 32), roi_finest_scale=56,  # SingleRoIExtractor: levels P2..P5
    box_roi_size=7, box_fc_channels=1024,
    box_fg_iou_thresh=0.5, box_bg_iou_thresh=0.5, box_batch_size_per_image=512, box_positive_fraction=0.25,
    bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),  # 1 / target_stds (0.1, 0.1, 0.2, 0.2)
    box_score_thresh=0.05, box_nms_thresh=0.5, box_detections_per_img=100,
    mask_roi_size=14, mask_head_channels=(256, 256, 256, 256), mask_threshold=0.5,
    **_IMAGE_SETTINGS)


# --- the parts mmdet computes differently ---------------------------------------------------------------------

def mmdet_base_anchors(stride: int, scales: Sequence[float], ratios: Sequence[float]) -> Tensor:
    """mmdet's ``AnchorGenerator.gen_single_level_base_anchors`` (base size = stride, centre offset 0,
    scale-major): (len(ratios) * len(scales), 4) corners (x1, y1, x2, y2) around (0, 0), float32, unrounded;
    anchor index = ratio index * len(scales) + scale index, the layout of the heads' output channels."""
    scales = torch.tensor(scales, dtype=torch.float32)
    h_ratios = torch.sqrt(torch.tensor(ratios, dtype=torch.float32))
    w_ratios = 1 / h_ratios
    widths = (stride * w_ratios[:, None] * scales[None, :]).reshape(-1)
    heights = (stride * h_ratios[:, None] * scales[None, :]).reshape(-1)
    return torch.stack([-0.5 * widths, -0.5 * heights, 0.5 * widths, 0.5 * heights], dim=1)


class MMDetAnchorGenerator(AnchorGenerator):
    """torchvision's generator with mmdet's base anchors and the configured strides (torchvision infers each
    level's stride as padded size // grid size, which is wrong for levels whose grid was rounded up)."""

    def __init__(self, strides: Sequence[int], scales: Sequence[float], ratios: Sequence[float]):
        super().__init__(sizes=tuple(tuple(stride * s for s in scales) for stride in strides),
                         aspect_ratios=(tuple(ratios),) * len(strides))
        self.strides = tuple(strides)
        self.cell_anchors = [mmdet_base_anchors(stride, scales, ratios) for stride in self.strides]

    def forward(self, image_list: ImageList, feature_maps: List[Tensor]) -> List[Tensor]:
        if len(feature_maps) != len(self.strides):
            raise ValueError(f'{len(feature_maps)} feature maps for anchors at {len(self.strides)} strides')
        device = feature_maps[0].device
        self.set_cell_anchors(feature_maps[0].dtype, device)
        strides = [[torch.tensor(stride, device=device)] * 2 for stride in self.strides]
        # (sum over levels of H_l * W_l * A, 4): location-major, anchor-minor, as the heads flatten their outputs
        anchors = torch.cat(self.grid_anchors([f.shape[-2:] for f in feature_maps], strides))
        return [anchors] * len(image_list.image_sizes)


class LastLevelP6P7NoReLU(LastLevelP6P7):
    """mmdet FPN's extra levels with ``add_extra_convs='on_input'``: P6 = conv3x3/s2(C5), P7 = conv3x3/s2(P6)
    without a ReLU between (``relu_before_extra_convs=False``); torchvision's LastLevelP6P7 applies one."""

    def forward(self, p: List[Tensor], c: List[Tensor], names: List[str]) -> Tuple[List[Tensor], List[str]]:
        p6 = self.p6(c[-1])
        return p + [p6, self.p7(p6)], names + ['p6', 'p7']


def mmdet_roi_levels(boxes: Tensor, num_levels: int, finest_scale: int = 56) -> Tensor:
    """mmdet's ``SingleRoIExtractor.map_roi_levels``: level floor(log2(sqrt(area) / finest_scale + 1e-6)),
    clamped to [0, num_levels - 1]. (torchvision adds its 1e-6 after the log2.)"""
    scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    return torch.floor(torch.log2(scale / finest_scale + 1e-6)).clamp(0, num_levels - 1).long()


class MMDetRoIAlign(MultiScaleRoIAlign):
    """Multi-level RoIAlign as mmcv's ``RoIAlign(aligned=True, sampling_ratio=0)`` in mmdet's
    ``SingleRoIExtractor``: the configured strides and mmdet's level rule (torchvision: ``aligned=False``,
    ``sampling_ratio=2``, scales inferred from the feature sizes)."""

    def __init__(self, featmap_names: Sequence[str], output_size: int, strides: Sequence[int],
                 finest_scale: int = 56):
        super().__init__(list(featmap_names), output_size, sampling_ratio=0)
        self.strides = tuple(strides)
        self.finest_scale = finest_scale
        self.aligned = True

    def forward(self, x: Dict[str, Tensor], boxes: List[Tensor], image_shapes: List[Tuple[int, int]]) -> Tensor:
        features = [x[name] for name in self.featmap_names]
        # (R, 5): image index, x1, y1, x2, y2
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
        levels = mmdet_roi_levels(rois[:, 1:], len(features), self.finest_scale)
        pooled = features[0].new_zeros((len(rois), features[0].shape[1], *self.output_size))
        for level, (feature, stride) in enumerate(zip(features, self.strides)):
            index = torch.where(levels == level)[0]
            if len(index):
                pooled[index] = roi_align(feature, rois[index], self.output_size, 1.0 / stride,
                                          self.sampling_ratio, self.aligned).to(pooled.dtype)
        return pooled


def mmdet_resize_size(height: int, width: int, img_scale: Tuple[int, int] = (1333, 800)) -> Tuple[int, int]:
    """(height, width) after mmcv's keep-ratio rescale to fit ``img_scale``: the largest factor that keeps the
    long side within max(img_scale) and the short side within min(img_scale); sides ``int(side * f + 0.5)``."""
    factor = min(max(img_scale) / max(height, width), min(img_scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def paste_masks(masks: Tensor, boxes: Tensor, image_size: Tuple[int, int], threshold: float = 0.5) -> Tensor:
    """mmdet's ``FCNMaskHead.get_seg_masks`` (its CPU path): each (M, M) mask probability map is resampled into
    its box with ``grid_sample`` (align_corners False, zeros outside), over the box's pixels grown by one pixel
    each side, and binarised at ``>= threshold``. masks (N, 1, M, M), boxes (N, 4) in image pixels ->
    (N, 1, H, W) bool. (Beyond that window no sample reaches 0.5, so mmdet's whole-image GPU path agrees.)"""
    height, width = image_size
    pasted = torch.zeros((len(masks), 1, height, width), dtype=torch.bool, device=masks.device)
    for mask, box, canvas in zip(masks, boxes.float(), pasted):
        x0, y0, x1, y1 = box
        left, top = max(int(x0.floor()) - 1, 0), max(int(y0.floor()) - 1, 0)
        right, bottom = min(int(x1.ceil()) + 1, width), min(int(y1.ceil()) + 1, height)
        if right <= left or bottom <= top:
            continue
        # pixel centres in the box's normalised coordinates (-1 and 1 at its edges); a zero-width box gives inf,
        # which mmdet replaces by 0
        xs = (torch.arange(left, right, dtype=torch.float32, device=masks.device) + 0.5 - x0) / (x1 - x0) * 2 - 1
        ys = (torch.arange(top, bottom, dtype=torch.float32, device=masks.device) + 0.5 - y0) / (y1 - y0) * 2 - 1
        xs, ys = (torch.where(torch.isinf(t), torch.zeros_like(t), t) for t in (xs, ys))
        grid = torch.stack([xs[None, :].expand(len(ys), -1), ys[:, None].expand(-1, len(xs))], dim=-1)  # (h, w, 2)
        sampled = F.grid_sample(mask[None].float(), grid[None], align_corners=False)  # (1, 1, h, w)
        canvas[:, top:bottom, left:right] = sampled[0] >= threshold
    return pasted


class MMDetTransform(GeneralizedRCNNTransform):
    """torchvision's normalise / resize / batch-and-pad with mmcv's resize rule (sizes ``int(x * s + 0.5)``,
    torchvision floors), mmdet's ground-truth scaling (boxes clipped to the image, masks nearest) and mmdet's
    mask pasting."""

    def __init__(self, img_scale: Tuple[int, int], image_mean: Sequence[float], image_std: Sequence[float],
                 size_divisible: int = 32, mask_threshold: float = 0.5):
        super().__init__(min(img_scale), max(img_scale), list(image_mean), list(image_std), size_divisible)
        self.img_scale = tuple(img_scale)
        self.mask_threshold = mask_threshold

    def resize(self, image: Tensor, target: Dict[str, Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
        height, width = image.shape[-2:]
        new_height, new_width = mmdet_resize_size(height, width, self.img_scale)
        image = F.interpolate(image[None], size=(new_height, new_width), mode='bilinear', align_corners=False)[0]
        if target is None:
            return image, target
        boxes = target['boxes'] * target['boxes'].new_tensor([new_width / width, new_height / height] * 2)
        target['boxes'] = torch.stack([boxes[:, 0].clamp(0, new_width), boxes[:, 1].clamp(0, new_height),
                                       boxes[:, 2].clamp(0, new_width), boxes[:, 3].clamp(0, new_height)], dim=1)
        if 'masks' in target:
            masks = target['masks']
            target['masks'] = (F.interpolate(masks[:, None].float(), size=(new_height, new_width))[:, 0].byte()
                               if len(masks) else masks.new_zeros((0, new_height, new_width)))
        return image, target

    def postprocess(self, result: List[Dict[str, Tensor]], image_shapes: List[Tuple[int, int]],
                    original_image_sizes: List[Tuple[int, int]]) -> List[Dict[str, Tensor]]:
        if self.training:
            return result
        for prediction, resized, original in zip(result, image_shapes, original_image_sizes):
            prediction['boxes'] = resize_boxes(prediction['boxes'], resized, original)
            if 'masks' in prediction:
                prediction['masks'] = paste_masks(prediction['masks'], prediction['boxes'], original,
                                                  self.mask_threshold)
        return result


def multiclass_nms(boxes: Tensor, scores: Tensor, score_thresh: float, nms_thresh: float,
                   max_detections: int) -> Tuple[Tensor, Tensor, Tensor]:
    """mmdet's ``multiclass_nms``: every (box, class) pair scoring above ``score_thresh``, NMS within each class,
    the best ``max_detections``. boxes (M, 4) shared by the classes or (M, K, 4) one per class, scores (M, K)
    -> boxes (D, 4), scores (D,), labels (D,) in 0..K-1."""
    index, labels = torch.where(scores > score_thresh)  # row-major: mmdet's flattened order
    boxes = boxes[index] if boxes.dim() == 2 else boxes[index, labels]
    scores = scores[index, labels]
    keep = box_ops.batched_nms(boxes, scores, labels, nms_thresh)[:max_detections]
    return boxes[keep], scores[keep], labels[keep]


# --- the backbone wrapper ---------------------------------------------------------------------------------------

class LITFPNBackbone(nn.Module):
    """The dense LIT backbone (``body``: four maps at strides 4..32) and torchvision's FPN (``fpn``) over the
    maps of ``levels``, returning the OrderedDict of 256-channel maps torchvision's detectors take (keys: the
    level indices, then the extra levels' names)."""

    def __init__(self, body: nn.Module, levels: Sequence[int], extra_blocks: nn.Module, out_channels: int = 256):
        super().__init__()
        self.body = body
        self.levels = tuple(levels)
        self.fpn = FeaturePyramidNetwork([body.out_channels[i] for i in self.levels], out_channels, extra_blocks)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        maps = self.body(x)
        return self.fpn(OrderedDict((str(i), maps[i]) for i in self.levels))


def backbone_and_neck(model: nn.Module) -> Tuple[nn.Module, nn.Module]:
    """(backbone, neck) of a dense model: a torchvision detector's ``backbone.body`` and ``backbone.fpn`` (LIT's
    ``LITFPNBackbone`` or torchvision's ``BackboneWithFPN``), or a ``SemanticFPN``'s ``backbone`` and ``neck``."""
    if hasattr(model, 'neck'):
        return model.backbone, model.neck
    return model.backbone.body, model.backbone.fpn


def parameter_counts(model: nn.Module) -> Dict[str, int]:
    """Parameters of a dense model by part, as dense.md section 6 counts them: backbone (the LIT or ResNet body),
    neck (the FPN with its extra levels), heads (all the rest) and total."""
    def count(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())
    body, fpn = backbone_and_neck(model)
    total, backbone, neck = count(model), count(body), count(fpn)
    return {'backbone': backbone, 'neck': neck, 'heads': total - backbone - neck, 'total': total}


# --- RetinaNet ----------------------------------------------------------------------------------------------------

class LITRetinaNet(RetinaNet):
    """torchvision's RetinaNet with mmdet's transform, test post-processing and loss normalisation."""

    def __init__(self, backbone: nn.Module, num_classes: int, transform: MMDetTransform, **kwargs):
        super().__init__(backbone, num_classes, **kwargs)
        self.transform = transform

    def compute_loss(self, targets: List[Dict[str, Tensor]], head_outputs: Dict[str, Tensor],
                     anchors: List[Tensor]) -> Dict[str, Tensor]:
        """Focal loss over the anchors that are not ignored and L1 on the positives' deltas, each summed over the
        batch and divided by its number of positive anchors, an image without any counting one (mmdet's
        ``num_total_pos``)."""
        cls_loss, box_loss, num_positive = 0.0, 0.0, 0
        for target, logits, deltas, image_anchors in zip(targets, head_outputs['cls_logits'],
                                                         head_outputs['bbox_regression'], anchors):
            # logits (A, K), deltas (A, 4), image_anchors (A, 4) over all levels
            gt_boxes = target['boxes']
            if len(gt_boxes):
                matched = self.proposal_matcher(box_iou(gt_boxes, image_anchors))  # GT index, -1 neg, -2 ignored
            else:
                matched = torch.full((len(image_anchors),), self.proposal_matcher.BELOW_LOW_THRESHOLD,
                                     device=logits.device)
            positive = torch.where(matched >= 0)[0]
            class_targets = torch.zeros_like(logits)
            class_targets[positive, target['labels'][matched[positive]]] = 1.0
            counted = matched != self.proposal_matcher.BETWEEN_THRESHOLDS
            cls_loss = cls_loss + sigmoid_focal_loss(logits[counted], class_targets[counted], reduction='sum')
            box_targets = self.box_coder.encode_single(gt_boxes[matched[positive]], image_anchors[positive])
            box_loss = box_loss + F.l1_loss(deltas[positive], box_targets, reduction='sum')
            num_positive += max(len(positive), 1)
        return {'classification': cls_loss / num_positive, 'bbox_regression': box_loss / num_positive}

    def postprocess_detections(self, head_outputs: Dict[str, List[Tensor]], anchors: List[List[Tensor]],
                               image_shapes: List[Tuple[int, int]]) -> List[Dict[str, Tensor]]:
        """mmdet 2.11's ``AnchorHead.get_bboxes``: per level the ``topk_candidates`` anchors with the highest
        best-class score, decoded and clipped; then ``multiclass_nms`` over all levels."""
        detections = []
        for index, image_shape in enumerate(image_shapes):
            boxes, scores = [], []
            for logits, deltas, level_anchors in zip(head_outputs['cls_logits'], head_outputs['bbox_regression'],
                                                     anchors[index]):
                level_scores, level_deltas = logits[index].sigmoid(), deltas[index]  # (H*W*A, K), (H*W*A, 4)
                if len(level_scores) > self.topk_candidates:
                    top = level_scores.max(dim=1).values.topk(self.topk_candidates).indices
                    level_scores, level_deltas, level_anchors = level_scores[top], level_deltas[top], level_anchors[top]
                level_boxes = self.box_coder.decode_single(level_deltas, level_anchors)
                boxes.append(box_ops.clip_boxes_to_image(level_boxes, image_shape))
                scores.append(level_scores)
            boxes, scores, labels = multiclass_nms(torch.cat(boxes), torch.cat(scores), self.score_thresh,
                                                   self.nms_thresh, self.detections_per_img)
            detections.append({'boxes': boxes, 'scores': scores, 'labels': labels})
        return detections


# --- Mask R-CNN -----------------------------------------------------------------------------------------------------

class MMDetRPN(RegionProposalNetwork):
    """torchvision's RPN with mmdet's box loss: L1 on the sampled positives' deltas (not smooth L1, beta 1/9),
    divided by the number of sampled anchors."""

    def compute_loss(self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: List[Tensor],
                     regression_targets: List[Tensor]) -> Tuple[Tensor, Tensor]:
        sampled_positive, sampled_negative = self.fg_bg_sampler(labels)
        positive = torch.where(torch.cat(sampled_positive))[0]
        sampled = torch.cat([positive, torch.where(torch.cat(sampled_negative))[0]])
        labels, regression_targets = torch.cat(labels), torch.cat(regression_targets)
        box_loss = F.l1_loss(pred_bbox_deltas[positive], regression_targets[positive], reduction='sum') / len(sampled)
        objectness_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels[sampled])
        return objectness_loss, box_loss


def mmdet_mask_targets(gt_masks: Tensor, boxes: Tensor, matched_idxs: Tensor, size: int) -> Tensor:
    """mmdet's ``BitmapMasks.crop_and_resize``: each RoI's GT mask (G, H, W) cut out with RoIAlign
    (``aligned=True``, ``sampling_ratio=0``) to (size, size) and binarised at 0.5 -> (P, size, size) float."""
    rois = torch.cat([matched_idxs[:, None].to(boxes), boxes], dim=1)  # the GT index plays the image index
    crops = roi_align(gt_masks[:, None].to(boxes), rois, (size, size), 1.0, sampling_ratio=0, aligned=True)
    return (crops[:, 0] >= 0.5).to(boxes.dtype)


class MMDetRoIHeads(RoIHeads):
    """torchvision's box and mask branches with mmdet's losses (L1 box regression, binary mask targets) and test
    post-processing (``multiclass_nms``). Takes and returns labels 0..K-1; torchvision's class 0 = background
    exists only in here (predictor row 0)."""

    def forward(self, features: Dict[str, Tensor], proposals: List[Tensor], image_shapes: List[Tuple[int, int]],
                targets: List[Dict[str, Tensor]] = None) -> Tuple[List[Dict[str, Tensor]], Dict[str, Tensor]]:
        if self.training:
            targets = [{**t, 'labels': t['labels'] + 1} for t in targets]  # to torchvision's 1..K
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        class_logits, box_regression = self.box_predictor(self.box_head(self.box_roi_pool(features, proposals,
                                                                                         image_shapes)))
        if not self.training:
            boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals,
                                                                image_shapes)
            mask_probs = maskrcnn_inference(self._mask_logits(features, boxes, image_shapes),
                                            [label + 1 for label in labels])  # [(N_i, 1, 28, 28)]
            return [{'boxes': b, 'scores': s, 'labels': label, 'masks': m}
                    for b, s, label, m in zip(boxes, scores, labels, mask_probs)], {}

        all_labels = torch.cat(labels)  # (R,) 0 = background
        positive = torch.where(all_labels > 0)[0]
        # (R, (K+1) * 4) -> the labelled class's 4 deltas of each positive RoI
        deltas = box_regression.reshape(len(all_labels), -1, 4)[positive, all_labels[positive]]
        box_loss = F.l1_loss(deltas, torch.cat(regression_targets)[positive], reduction='sum') / len(all_labels)
        losses = {'loss_classifier': F.cross_entropy(class_logits, all_labels), 'loss_box_reg': box_loss}

        positives = [torch.where(image_labels > 0)[0] for image_labels in labels]
        mask_boxes = [p[i] for p, i in zip(proposals, positives)]
        mask_logits = self._mask_logits(features, mask_boxes, image_shapes)  # (P, K+1, 28, 28)
        mask_targets = torch.cat([mmdet_mask_targets(t['masks'], b, m[i], mask_logits.shape[-1])
                                  for t, b, m, i in zip(targets, mask_boxes, matched_idxs, positives)])
        mask_labels = torch.cat([t['labels'][m[i]] for t, m, i in zip(targets, matched_idxs, positives)])
        if len(mask_labels):
            selected = mask_logits[torch.arange(len(mask_labels), device=mask_labels.device), mask_labels]
            losses['loss_mask'] = F.binary_cross_entropy_with_logits(selected, mask_targets)
        else:
            losses['loss_mask'] = mask_logits.sum() * 0
        return [], losses

    def _mask_logits(self, features: Dict[str, Tensor], boxes: List[Tensor],
                     image_shapes: List[Tuple[int, int]]) -> Tensor:
        return self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))

    def postprocess_detections(self, class_logits: Tensor, box_regression: Tensor, proposals: List[Tensor],
                               image_shapes: List[Tuple[int, int]]) -> Tuple[List[Tensor], ...]:
        """mmdet's ``BBoxHead.get_bboxes``: softmax, class-specific boxes decoded and clipped, background
        dropped, ``multiclass_nms``. Returns per-image lists of boxes, scores and labels (0..K-1)."""
        per_image = [len(p) for p in proposals]
        # (R, K+1, 4); the shape is given explicitly since torchvision's decode leaves R = 0 as (0, (K+1)*4)
        all_boxes = self.box_coder.decode(box_regression, proposals).reshape(len(class_logits), -1, 4) \
            if len(class_logits) else box_regression.new_zeros(0, class_logits.shape[-1], 4)
        all_scores = F.softmax(class_logits, dim=-1)
        kept_boxes, kept_scores, kept_labels = [], [], []
        for boxes, scores, image_shape in zip(all_boxes.split(per_image), all_scores.split(per_image),
                                              image_shapes):
            boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
            boxes, scores, labels = multiclass_nms(boxes[:, 1:], scores[:, 1:], self.score_thresh, self.nms_thresh,
                                                   self.detections_per_img)  # column 0 = background
            kept_boxes.append(boxes)
            kept_scores.append(scores)
            kept_labels.append(labels)
        return kept_boxes, kept_scores, kept_labels


class LITMaskRCNN(MaskRCNN):
    """torchvision's Mask R-CNN assembled from explicitly built parts. ``MaskRCNN.__init__`` only builds
    torchvision's default parts, so the common base ``GeneralizedRCNN`` is initialised directly."""

    def __init__(self, backbone: nn.Module, rpn: MMDetRPN, roi_heads: MMDetRoIHeads, transform: MMDetTransform):
        GeneralizedRCNN.__init__(self, backbone, rpn, roi_heads, transform)


# --- factories ----------------------------------------------------------------------------------------------------

def _split_kwargs(settings: Dict, kwargs: Dict, factory: str) -> Tuple[Dict, Dict]:
    """(official settings with the overrides among kwargs, the kwargs for the dense backbone)."""
    unknown = sorted(set(kwargs) - set(settings) - set(DENSE_KWARGS))
    if unknown:
        raise ValueError(f'{factory}() got unknown settings {unknown}; it takes the backbone\'s '
                         f'{", ".join(DENSE_KWARGS)} and the detector\'s {", ".join(settings)}')
    return ({**settings, **{k: v for k, v in kwargs.items() if k in settings}},
            {k: v for k, v in kwargs.items() if k in DENSE_KWARGS})


def _check_num_classes(num_classes: int):
    if num_classes < 1:
        raise ValueError(f'num_classes must be at least 1, got {num_classes}')


def _transform(settings: Dict, mask_threshold: float = 0.5) -> MMDetTransform:
    return MMDetTransform(settings['img_scale'], settings['image_mean'], settings['image_std'],
                          settings['size_divisible'], mask_threshold)


def retinanet_lit(variant: str = 'ti', num_classes: int = 80, **kwargs) -> LITRetinaNet:
    """RetinaNet LIT-Ti (``variant='ti'``) or LIT-S (``'s'``) with the official settings, randomly initialised.
    ``kwargs``: any key of ``RETINANET_SETTINGS`` (e.g. ``score_thresh``, ``img_scale``) and the backbone's
    ``drop_path_rate`` (official 0.1 / 0.2), ``dtm_backend``, ``fused_attn``."""
    _check_num_classes(num_classes)
    settings, backbone_kwargs = _split_kwargs(RETINANET_SETTINGS, kwargs, 'retinanet_lit')
    body = create_dense_backbone(variant, 'detection', **backbone_kwargs)
    channels = settings['fpn_channels']
    backbone = LITFPNBackbone(body, settings['fpn_levels'], LastLevelP6P7NoReLU(body.out_channels[-1], channels),
                              channels)
    anchors = MMDetAnchorGenerator(settings['anchor_strides'], settings['anchor_scales'], settings['anchor_ratios'])
    head = RetinaNetHead(channels, anchors.num_anchors_per_location()[0], num_classes)
    return LITRetinaNet(backbone, num_classes, _transform(settings), anchor_generator=anchors, head=head,
                        score_thresh=settings['score_thresh'], nms_thresh=settings['nms_thresh'],
                        detections_per_img=settings['detections_per_img'],
                        fg_iou_thresh=settings['fg_iou_thresh'], bg_iou_thresh=settings['bg_iou_thresh'],
                        topk_candidates=settings['topk_candidates'])


def mask_rcnn_lit(variant: str = 'ti', num_classes: int = 80, **kwargs) -> LITMaskRCNN:
    """Mask R-CNN LIT-Ti (``variant='ti'``) or LIT-S (``'s'``) with the official settings, randomly initialised;
    ``num_classes`` object classes (the predictors add torchvision's background row). ``kwargs``: any key of
    ``MASK_RCNN_SETTINGS`` (e.g. ``rpn_post_nms_top_n_test``, ``box_score_thresh``) and the backbone's
    ``drop_path_rate`` (official 0.1 / 0.2), ``dtm_backend``, ``fused_attn``."""
    _check_num_classes(num_classes)
    s, backbone_kwargs = _split_kwargs(MASK_RCNN_SETTINGS, kwargs, 'mask_rcnn_lit')
    body = create_dense_backbone(variant, 'detection', **backbone_kwargs)
    channels = s['fpn_channels']
    backbone = LITFPNBackbone(body, s['fpn_levels'], LastLevelMaxPool(), channels)
    anchors = MMDetAnchorGenerator(s['anchor_strides'], s['anchor_scales'], s['anchor_ratios'])
    rpn = MMDetRPN(anchors, RPNHead(channels, anchors.num_anchors_per_location()[0]),
                   s['rpn_fg_iou_thresh'], s['rpn_bg_iou_thresh'], s['rpn_batch_size_per_image'],
                   s['rpn_positive_fraction'],
                   dict(training=s['rpn_pre_nms_top_n_train'], testing=s['rpn_pre_nms_top_n_test']),
                   dict(training=s['rpn_post_nms_top_n_train'], testing=s['rpn_post_nms_top_n_test']),
                   s['rpn_nms_thresh'])
    # mmdet 2.11's RPNHead filters proposals only when min_bbox_size > 0, so the official 0 keeps all of them, clipped
    # zero-width / zero-height ones too; torchvision's filter keeps width, height >= min_size: 0 keeps all
    rpn.min_size = 0.0
    roi_names = [str(i) for i in s['fpn_levels']]
    box_size, mask_size = s['box_roi_size'], s['mask_roi_size']
    mask_channels = s['mask_head_channels']
    roi_heads = MMDetRoIHeads(
        MMDetRoIAlign(roi_names, box_size, s['roi_strides'], s['roi_finest_scale']),
        TwoMLPHead(channels * box_size ** 2, s['box_fc_channels']),
        FastRCNNPredictor(s['box_fc_channels'], num_classes + 1),
        s['box_fg_iou_thresh'], s['box_bg_iou_thresh'], s['box_batch_size_per_image'], s['box_positive_fraction'],
        s['bbox_reg_weights'], s['box_score_thresh'], s['box_nms_thresh'], s['box_detections_per_img'],
        mask_roi_pool=MMDetRoIAlign(roi_names, mask_size, s['roi_strides'], s['roi_finest_scale']),
        mask_head=MaskRCNNHeads(channels, list(mask_channels), dilation=1),
        mask_predictor=MaskRCNNPredictor(mask_channels[-1], mask_channels[-1], num_classes + 1))
    return LITMaskRCNN(backbone, rpn, roi_heads, _transform(s, s['mask_threshold']))


# --- official checkpoints (mmdetection 2.11 layout) ---------------------------------------------------------------

def mmdet_head_layout(task: str, variant: str,
                      num_classes: int = 80) -> List[Tuple[str, Tuple[int, ...], torch.dtype]]:
    """The neck and head rows (key, shape, dtype) of an official mmdet state dict, in mmdet's module order: mmcv's
    FPN (``lateral_convs`` then ``fpn_convs``, ConvModules holding ``conv``; RetinaNet's P6/P7 convs are
    ``fpn_convs.3/4``), then ``RetinaHead``, or ``RPNHead`` and ``StandardRoIHead`` (``Shared2FCBBoxHead``: ``fc_cls``
    with K+1 rows, background last, class-specific ``fc_reg``; ``FCNMaskHead``)."""
    if task not in DETECTION_TASKS:
        raise ValueError(f'unknown detection task {task!r}; choose one of {", ".join(DETECTION_TASKS)}')
    s = RETINANET_SETTINGS if task == 'retinanet' else MASK_RCNN_SETTINGS
    c, k = s['fpn_channels'], num_classes
    anchors = len(s['anchor_scales']) * len(s['anchor_ratios'])

    def conv(key, out_channels, in_channels, kernel):
        return [(f'{key}.weight', (out_channels, in_channels, kernel, kernel)), (f'{key}.bias', (out_channels,))]

    def linear(key, out_features, in_features):
        return [(f'{key}.weight', (out_features, in_features)), (f'{key}.bias', (out_features,))]

    inputs = [BACKBONE_CHANNELS[variant][i] for i in s['fpn_levels']]
    rows = [row for i, channels in enumerate(inputs) for row in conv(f'neck.lateral_convs.{i}.conv', c, channels, 1)]
    rows += [row for i in range(len(inputs)) for row in conv(f'neck.fpn_convs.{i}.conv', c, c, 3)]
    if task == 'retinanet':
        rows += conv(f'neck.fpn_convs.{len(inputs)}.conv', c, inputs[-1], 3)  # P6 on C5
        rows += conv(f'neck.fpn_convs.{len(inputs) + 1}.conv', c, c, 3)  # P7 on P6
        for branch in ('cls_convs', 'reg_convs'):
            rows += [row for i in range(4) for row in conv(f'bbox_head.{branch}.{i}.conv', c, c, 3)]
        rows += conv('bbox_head.retina_cls', anchors * k, c, 3) + conv('bbox_head.retina_reg', anchors * 4, c, 3)
    else:
        fc, box_in = s['box_fc_channels'], c * s['box_roi_size'] ** 2
        rows += conv('rpn_head.rpn_conv', c, c, 3) + conv('rpn_head.rpn_cls', anchors, c, 1)
        rows += conv('rpn_head.rpn_reg', anchors * 4, c, 1)
        rows += linear('roi_head.bbox_head.fc_cls', k + 1, fc) + linear('roi_head.bbox_head.fc_reg', 4 * k, fc)
        rows += linear('roi_head.bbox_head.shared_fcs.0', fc, box_in)
        rows += linear('roi_head.bbox_head.shared_fcs.1', fc, fc)
        mask_channels = s['mask_head_channels']
        for i, (out_channels, in_channels) in enumerate(zip(mask_channels, (c,) + tuple(mask_channels[:-1]))):
            rows += conv(f'roi_head.mask_head.convs.{i}.conv', out_channels, in_channels, 3)
        # ConvTranspose2d weights are (in, out, k, k)
        rows += [('roi_head.mask_head.upsample.weight', (mask_channels[-1], mask_channels[-1], 2, 2)),
                 ('roi_head.mask_head.upsample.bias', (mask_channels[-1],))]
        rows += conv('roi_head.mask_head.conv_logits', k, mask_channels[-1], 1)
    return [(key, shape, torch.float32) for key, shape in rows]


def _mmdet_layout(task: str, variant: str, num_classes: int) -> List[Tuple[str, Tuple[int, ...], torch.dtype]]:
    """Every row (key, shape, dtype) of an official mmdet checkpoint's ``state_dict``: the dense backbone's own rows
    under ``backbone.`` (its key names are the official ones, checked against the official manifests by the
    dense-backbone tests), then ``mmdet_head_layout``. For tests that build an official-format state dict without
    downloading one."""
    return list(_backbone_layout(variant)) + mmdet_head_layout(task, variant, num_classes)


@functools.lru_cache(maxsize=None)
def _backbone_layout(variant: str) -> Tuple[Tuple[str, Tuple[int, ...], torch.dtype], ...]:
    backbone = create_dense_backbone(variant, 'detection')
    return tuple((f'backbone.{k}', tuple(v.shape), v.dtype) for k, v in backbone.state_dict().items())


def mmdet_retinanet_layout(variant: str, num_classes: int = 80) -> List[Tuple[str, Tuple[int, ...], torch.dtype]]:
    """Every row of an official RetinaNet LIT checkpoint (``retina_lit_{ti,s}.pth``), see ``_mmdet_layout``."""
    return _mmdet_layout('retinanet', variant, num_classes)


def mmdet_mask_rcnn_layout(variant: str, num_classes: int = 80) -> List[Tuple[str, Tuple[int, ...], torch.dtype]]:
    """Every row of an official Mask R-CNN LIT checkpoint (``mask_rcnn_lit_{ti,s}.pth``), see ``_mmdet_layout``."""
    return _mmdet_layout('mask_rcnn', variant, num_classes)


def _background_first(rows: Tensor) -> Tensor:
    """mmdet's classifier has the background row last, torchvision's first."""
    return torch.cat([rows[-1:], rows[:-1]])


def _zero_rows_first(count: int) -> Callable[[Tensor], Tensor]:
    """Prepend ``count`` zero rows: torchvision's background slot of a class-specific layer mmdet lacks."""
    return lambda rows: torch.cat([rows.new_zeros((count, *rows.shape[1:])), rows])


def _keep(rows: Tensor) -> Tensor:
    return rows


_NECK_KEYS = [
    (r'backbone\.(.+)', r'backbone.body.\1', _keep),
    (r'neck\.lateral_convs\.(\d+)\.conv\.(weight|bias)', r'backbone.fpn.inner_blocks.\1.0.\2', _keep),
]
# (mmdet key pattern, torchvision key template, value transform); RetinaNet's FPN has 3 inputs, Mask R-CNN's 4
_RETINANET_KEYS = _NECK_KEYS + [
    (r'neck\.fpn_convs\.([0-2])\.conv\.(weight|bias)', r'backbone.fpn.layer_blocks.\1.0.\2', _keep),
    (r'neck\.fpn_convs\.3\.conv\.(weight|bias)', r'backbone.fpn.extra_blocks.p6.\1', _keep),
    (r'neck\.fpn_convs\.4\.conv\.(weight|bias)', r'backbone.fpn.extra_blocks.p7.\1', _keep),
    (r'bbox_head\.cls_convs\.(\d+)\.conv\.(weight|bias)', r'head.classification_head.conv.\1.0.\2', _keep),
    (r'bbox_head\.reg_convs\.(\d+)\.conv\.(weight|bias)', r'head.regression_head.conv.\1.0.\2', _keep),
    (r'bbox_head\.retina_cls\.(weight|bias)', r'head.classification_head.cls_logits.\1', _keep),
    (r'bbox_head\.retina_reg\.(weight|bias)', r'head.regression_head.bbox_reg.\1', _keep),
]
_MASK_RCNN_KEYS = _NECK_KEYS + [
    (r'neck\.fpn_convs\.([0-3])\.conv\.(weight|bias)', r'backbone.fpn.layer_blocks.\1.0.\2', _keep),
    (r'rpn_head\.rpn_conv\.(weight|bias)', r'rpn.head.conv.0.0.\1', _keep),
    (r'rpn_head\.rpn_cls\.(weight|bias)', r'rpn.head.cls_logits.\1', _keep),
    (r'rpn_head\.rpn_reg\.(weight|bias)', r'rpn.head.bbox_pred.\1', _keep),
    (r'roi_head\.bbox_head\.shared_fcs\.0\.(weight|bias)', r'roi_heads.box_head.fc6.\1', _keep),
    (r'roi_head\.bbox_head\.shared_fcs\.1\.(weight|bias)', r'roi_heads.box_head.fc7.\1', _keep),
    (r'roi_head\.bbox_head\.fc_cls\.(weight|bias)', r'roi_heads.box_predictor.cls_score.\1', _background_first),
    (r'roi_head\.bbox_head\.fc_reg\.(weight|bias)', r'roi_heads.box_predictor.bbox_pred.\1', _zero_rows_first(4)),
    (r'roi_head\.mask_head\.convs\.(\d+)\.conv\.(weight|bias)', r'roi_heads.mask_head.\1.0.\2', _keep),
    (r'roi_head\.mask_head\.upsample\.(weight|bias)', r'roi_heads.mask_predictor.conv5_mask.\1', _keep),
    (r'roi_head\.mask_head\.conv_logits\.(weight|bias)', r'roi_heads.mask_predictor.mask_fcn_logits.\1',
     _zero_rows_first(1)),
]


def _convert(state_dict: Dict[str, Tensor], key_map: List[Tuple], model: str) -> Dict[str, Tensor]:
    converted = {}
    for key, value in state_dict.items():
        for pattern, template, transform in key_map:
            if match := re.fullmatch(pattern, key):
                converted[match.expand(template)] = transform(value)
                break
        else:
            raise ValueError(f'unexpected key {key!r} in an mmdet {model} state dict; pass the official checkpoint\'s '
                             f'state_dict (backbone.*, neck.*, and the {model} heads)')
    return converted


def retinanet_from_mmdet(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """An official (mmdet) RetinaNet state dict in ``retinanet_lit``'s key names (dense.md section 5): backbone
    and heads renamed one for one, FPN ``fpn_convs.3/4`` -> ``extra_blocks.p6/p7``."""
    return _convert(state_dict, _RETINANET_KEYS, 'RetinaNet')


def mask_rcnn_from_mmdet(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """An official (mmdet) Mask R-CNN state dict in ``mask_rcnn_lit``'s key names (dense.md section 5): renamed
    one for one, except the classifier (mmdet's background row 80 becomes row 0) and the class-specific box
    regressor and mask logits (a zero background slot first: rows 0-3 / row 0)."""
    return _convert(state_dict, _MASK_RCNN_KEYS, 'Mask R-CNN')


def _identify_variant(state_dict: Dict[str, Tensor], levels: Sequence[int], model: str) -> str:
    channels = tuple(state_dict[key].shape[1] if key in state_dict else None
                     for key in (f'neck.lateral_convs.{i}.conv.weight' for i in range(len(levels))))
    variant = next((v for v, c in BACKBONE_CHANNELS.items() if tuple(c[i] for i in levels) == channels), None)
    if variant is None:
        raise ValueError(f'{model} neck inputs {channels} match neither LIT-Ti '
                         f'{tuple(BACKBONE_CHANNELS["ti"][i] for i in levels)} nor LIT-S '
                         f'{tuple(BACKBONE_CHANNELS["s"][i] for i in levels)}')
    if BACKBONE_SIGNATURE[variant] not in state_dict:
        raise ValueError(f'a {model} whose backbone is not LIT-{variant.capitalize()} '
                         f'(no {BACKBONE_SIGNATURE[variant]})')
    return variant


def identify_retinanet(state_dict: Dict[str, Tensor]) -> Tuple[str, int]:
    """(variant, num_classes) of an official mmdet RetinaNet LIT state dict, from its keys and shapes;
    ValueError for anything else."""
    for key in ('bbox_head.retina_cls.weight', 'bbox_head.retina_reg.weight'):
        if key not in state_dict:
            raise ValueError(f'not an mmdet RetinaNet state dict: it has no {key}')
    variant = _identify_variant(state_dict, RETINANET_SETTINGS['fpn_levels'], 'RetinaNet')
    anchors = len(RETINANET_SETTINGS['anchor_scales']) * len(RETINANET_SETTINGS['anchor_ratios'])
    cls_rows, reg_rows = (state_dict[f'bbox_head.retina_{n}.weight'].shape[0] for n in ('cls', 'reg'))
    if reg_rows != 4 * anchors or cls_rows % anchors:
        raise ValueError(f'a RetinaNet head with {cls_rows} class / {reg_rows} box channels, not the official '
                         f'{anchors} anchors per location (9 x classes / 36)')
    return variant, cls_rows // anchors


def identify_mask_rcnn(state_dict: Dict[str, Tensor]) -> Tuple[str, int]:
    """(variant, num_classes) of an official mmdet Mask R-CNN LIT state dict, from its keys and shapes;
    ValueError for anything else."""
    for key in ('rpn_head.rpn_cls.weight', 'roi_head.bbox_head.fc_cls.weight', 'roi_head.bbox_head.fc_reg.weight',
                'roi_head.mask_head.conv_logits.weight'):
        if key not in state_dict:
            raise ValueError(f'not an mmdet Mask R-CNN state dict: it has no {key}')
    variant = _identify_variant(state_dict, MASK_RCNN_SETTINGS['fpn_levels'], 'Mask R-CNN')
    num_classes = state_dict['roi_head.bbox_head.fc_cls.weight'].shape[0] - 1  # + background
    box_rows = state_dict['roi_head.bbox_head.fc_reg.weight'].shape[0]
    mask_rows = state_dict['roi_head.mask_head.conv_logits.weight'].shape[0]
    if box_rows != 4 * num_classes or mask_rows != num_classes:
        raise ValueError(f'a Mask R-CNN with {num_classes} classes but {box_rows} box-regression rows and {mask_rows} '
                         f'mask logits; the official heads are class-specific ({4 * num_classes} / {num_classes})')
    return variant, num_classes


def identify_mmdet(state_dict: Dict[str, Tensor]) -> Tuple[str, str, int]:
    """(task, variant, num_classes) of an official mmdet state dict: task 'retinanet' | 'mask_rcnn', variant
    'ti' | 's'; ValueError for anything else (another backbone, a segmenter, a classifier)."""
    if 'bbox_head.retina_cls.weight' in state_dict:
        return ('retinanet',) + identify_retinanet(state_dict)
    if 'roi_head.bbox_head.fc_cls.weight' in state_dict:
        return ('mask_rcnn',) + identify_mask_rcnn(state_dict)
    raise ValueError('not an mmdet RetinaNet / Mask R-CNN state dict: it has neither bbox_head.retina_cls nor '
                     'roi_head.bbox_head.fc_cls')

"""Training and evaluating the dense models (RetinaNet, Mask R-CNN, Semantic FPN): what ``lit train --task`` and
``lit eval`` add to the classification run machinery, which they otherwise share (run folders, step checkpoints,
resume, stop signals, torchrun, AMP, trackers).

- ``forward_loss``: one training batch -> (the summed loss, images), as the official models compute it (the
  detectors' and Semantic FPN's own losses, ``litcli.models``);
- ``evaluate_detection``: COCO box (and mask) AP of the official test pipeline over a validation split, every rank
  its share, pycocotools on the gathered detections (``dense_metrics.coco_evaluate``);
- ``evaluate_segmentation``: mmseg's single-scale whole-image test and mIoU summed over the split;
- ``predict_class_map``: that test for one image (``lit segment`` uses it too).
"""
import contextlib
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

AP_FIELDS = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl')
SEGMENTATION_FIELDS = ('mIoU', 'mAcc', 'aAcc')


def iou_types(task: str) -> Tuple[str, ...]:
    return ('bbox', 'segm') if task == 'mask_rcnn' else ('bbox',)


def metric_fields(task: str) -> Tuple[str, ...]:
    """The metric columns of a task's metrics.csv and eval.json: bbox_AP ... (segm_AP ...) or mIoU, mAcc, aAcc."""
    if task == 'semantic_fpn':
        return SEGMENTATION_FIELDS
    return tuple(f'{kind}_{field}' for kind in iou_types(task) for field in AP_FIELDS)


def main_metric(task: str) -> str:
    """What ranks a task's epochs (best.pt, --keep-best): box AP for the detectors (mmdet's ``save_best``
    default for COCO), mIoU for segmentation."""
    return 'mIoU' if task == 'semantic_fpn' else 'bbox_AP'


# ---------------------------------------------------------------------------------------------------------------
# Training step


def detection_forward_loss(model: nn.Module, batch) -> Tuple[torch.Tensor, int]:
    """(images, targets) on the device -> (sum of the detector's losses, images): uint8 images become the [0, 1]
    floats the detectors take (they resize, normalise and pad inside, as mmdet's pipeline)."""
    images, targets = batch
    losses = model([image.float().div_(255) for image in images], [dict(t) for t in targets])
    return sum(losses.values()), len(images)


def segmentation_forward_loss(model: nn.Module, batch) -> Tuple[torch.Tensor, int]:
    """(normalised, padded crops (B, 3, h, w), labels (B, h, w)) -> (Semantic FPN's cross-entropy, images)."""
    images, labels = batch
    return model(images, labels)['loss_seg'], images.shape[0]


def forward_loss(task: str) -> Callable:
    return segmentation_forward_loss if task == 'semantic_fpn' else detection_forward_loss


# ---------------------------------------------------------------------------------------------------------------
# Evaluation


def _gathered(items: List, world) -> List:
    """Every rank's list, concatenated in rank order (on every rank)."""
    if world is None or not world.distributed:
        return items
    from litcli.core.runtime import all_gather_object
    return [item for part in all_gather_object(items, world) for item in part]


def _count(n: int, world, device) -> int:
    if world is None or not world.distributed:
        return n
    from litcli.core.runtime import all_reduce_sum
    return int(all_reduce_sum([n], world, device)[0])


@torch.no_grad()
def evaluate_detection(model: nn.Module, loader, device: torch.device, *, task: str, gt: Dict,
                       class_names: Sequence[str], category_ids: Sequence[int], world=None,
                       autocast: Callable = contextlib.nullcontext, per_class: bool = False) -> Dict:
    """COCO AP of ``model`` over the loader's split (``gt``: its COCO-format ground truth): each rank detects its
    share with the official test pipeline (``model``'s own resize, score 0.05, NMS, 100 per image), the detections
    are gathered and pycocotools scores them once on rank 0, and every rank returns the result: ``bbox_AP``...
    (and ``segm_AP``... for Mask R-CNN) in percent, ``per_class`` ({'bbox': {name: AP}} on request),
    ``results`` (the detections in COCO's results format, every image's), ``num_images``, ``img_per_s``."""
    from litcli.core.runtime import broadcast_object
    from litcli.core.training.dense_metrics import coco_evaluate, coco_results

    model.eval()
    results, scored = [], []
    start = time.perf_counter()
    for batch in loader:
        if batch is None:  # every image of the batch was unreadable
            continue
        images, targets = batch
        scored += [int(target['image_id']) for target in targets]
        with autocast():
            outputs = model([image.float().div_(255) for image in images])
        for target, output in zip(targets, outputs):
            detections = {k: v.float().cpu() if k in ('boxes', 'scores') else v.cpu() for k, v in output.items()}
            if 'masks' in detections:
                detections['masks'] = detections['masks'][:, 0].bool()  # (N, 1, H, W) -> (N, H, W)
            results += coco_results(int(target['image_id']), detections, category_ids)
    if device.type == 'cuda':
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    results, scored = _gathered(results, world), set(_gathered(scored, world))
    count = len(scored)
    if count < len(gt['images']):  # unreadable images (counted and reported by the caller) are not scored either
        gt = dict(gt, images=[i for i in gt['images'] if i['id'] in scored],
                  annotations=[a for a in gt['annotations'] if a['image_id'] in scored])
    metrics = None
    if world is None or world.is_main:
        scores = coco_evaluate(gt, results, iou_types(task), class_names=list(class_names), per_class=per_class)
        metrics = {f'{kind}_{field}': scores[kind][field] for kind in iou_types(task) for field in AP_FIELDS}
        if per_class:
            metrics['per_class'] = {kind: scores[kind]['per_class'] for kind in iou_types(task)}
    if world is not None and world.distributed:
        metrics = broadcast_object(metrics, world)
    return dict(metrics, results=results, num_images=count, img_per_s=count / max(elapsed, 1e-9),
                eval_time_s=elapsed)


def predict_class_map(model: nn.Module, image: torch.Tensor, img_scale: Tuple[int, int], mean: Sequence[float],
                      std: Sequence[float], autocast: Callable = contextlib.nullcontext) -> torch.Tensor:
    """mmseg 0.13's single-scale whole-image test of one uint8 (3, H, W) image on the model's device: keep-ratio
    resize to fit ``img_scale`` (mmcv's sizes), normalise (``mean``/``std`` on [0, 1]), logits resized back to
    (H, W) bilinearly, argmax -> (H, W) long on the same device."""
    from litcli.models.detection import mmdet_resize_size

    device = next(model.parameters()).device
    height, width = image.shape[-2:]
    size = tuple(max(1, side) for side in mmdet_resize_size(height, width, img_scale))
    x = F.interpolate(image[None].to(device).float() / 255, size=size, mode='bilinear', align_corners=False)
    mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in (mean, std))
    # a very elongated image resizes below the backbone's smallest input (one stage-4 token), where the official
    # code fails: pad it (after normalising, with 0, as mmseg pads) for the network and crop the logits back
    least = getattr(getattr(model, 'backbone', None), 'min_input_side', 1)
    pad = (0, max(0, least - size[1]), 0, max(0, least - size[0]))
    with autocast():
        logits = model(F.pad((x - mean) / std, pad))[..., :size[0], :size[1]]
    logits = F.interpolate(logits.float(), size=(height, width), mode='bilinear', align_corners=False)
    return logits.argmax(dim=1)[0]


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, loader, device: torch.device, *, class_names: Sequence[str],
                          img_scale: Tuple[int, int], world=None, autocast: Callable = contextlib.nullcontext,
                          per_class: bool = False) -> Dict:
    """mIoU, mAcc and aAcc (percent) of ``model`` over the loader's split as mmseg 0.13 computes them: every image
    at its own size through ``predict_class_map``, intersections and unions summed over the split (every rank its
    share, then summed across ranks), the mean over the classes present; ``per_class``: IoU and accuracy of
    each class by name."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from litcli.core.training.dense_metrics import SegmentationMeter

    model.eval()
    meter = SegmentationMeter(len(class_names), device=device)
    count, start = 0, time.perf_counter()
    for batch in loader:
        if batch is None:
            continue
        for image, label in zip(*batch):
            prediction = predict_class_map(model, image, img_scale, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD,
                                           autocast)
            meter.update(prediction, label.to(prediction.device))
            count += 1
    if device.type == 'cuda':
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    if world is not None and world.distributed:
        meter.all_reduce(world, device)
    scores = meter.result(list(class_names))
    metrics = {field: scores[field] for field in SEGMENTATION_FIELDS}
    if per_class:
        metrics['per_class'] = scores['per_class']
    return dict(metrics, num_images=_count(count, world, device), img_per_s=count / max(elapsed, 1e-9),
                eval_time_s=elapsed)


def evaluate_dense(model: nn.Module, loader, device: torch.device, *, task: str, dataset, img_scale,
                   world=None, autocast: Callable = contextlib.nullcontext, per_class: bool = False) -> Dict:
    """The task's evaluation of ``model`` on ``dataset``'s split (``loader`` over it)."""
    if task == 'semantic_fpn':
        return evaluate_segmentation(model, loader, device, class_names=dataset.class_names,
                                     img_scale=tuple(img_scale), world=world, autocast=autocast, per_class=per_class)
    return evaluate_detection(model, loader, device, task=task, gt=dataset.coco_gt(),
                              class_names=dataset.class_names, category_ids=dataset.category_ids, world=world,
                              autocast=autocast, per_class=per_class)

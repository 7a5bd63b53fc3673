"""The dense models' metrics, computed as the paper's numbers were: COCO box/mask AP by pycocotools' COCOeval (what
mmdet 2.11 calls) and mmseg 0.13's mIoU (intersections and unions summed over the whole split, then the mean over
classes). Also the detections' COCO results format (``coco_results``), which both ``lit detect`` and the
evaluation write.

Every metric is returned in percent (41.6, the paper's scale).
"""
import contextlib
import io
import math
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from litcli.core.errors import LitError

IOU_TYPES = ('bbox', 'segm')
# COCOeval.stats, in its order (summarize(): AP at IoU .5:.95, .5, .75, per area range; AR at 1/10/100 detections)
COCO_STAT_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')
PYCOCOTOOLS_MISSING = "COCO AP needs pycocotools, which is not installed: pip install 'litcli[dense]' (or pycocotools)"


def check_pycocotools():
    """A one-line LitError when pycocotools is missing: a detection run checks it before its first epoch."""
    try:
        import pycocotools.cocoeval  # noqa: F401
    except ImportError:
        raise LitError(PYCOCOTOOLS_MISSING) from None


def coco_results(image_id: int, detections: Dict[str, torch.Tensor], category_ids: Sequence[int]) -> List[Dict]:
    """Detections in COCO's results format: {image_id, category_id, bbox [x, y, w, h], score} per detection, plus
    ``segmentation`` (compressed RLE, pycocotools) for masks when pycocotools is installed."""
    encode = mask_encoder() if 'masks' in detections else None
    results = []
    for k, (box, score, label) in enumerate(zip(detections['boxes'].tolist(), detections['scores'].tolist(),
                                                detections['labels'].tolist())):
        x0, y0, x1, y1 = box
        item = dict(image_id=image_id, category_id=int(category_ids[label]),
                    bbox=[round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)], score=round(score, 5))
        if encode is not None:
            item['segmentation'] = encode(detections['masks'][k])
        results.append(item)
    return results


def mask_encoder():
    """A function (H, W) bool mask -> COCO compressed RLE {'size', 'counts' (str)}, or None without pycocotools."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        return None

    def encode(mask: torch.Tensor) -> Dict:
        rle = mask_utils.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
        return dict(size=[int(s) for s in rle['size']], counts=rle['counts'].decode('ascii'))
    return encode


def coco_evaluate(gt: Dict, results: List[Dict], iou_types: Sequence[str] = ('bbox',),
                  class_names: Optional[Sequence[str]] = None, per_class: bool = False) -> Dict[str, Dict]:
    """COCO AP of ``results`` (COCO results format, e.g. from ``coco_results``) against the ground truth ``gt``
    (a COCO-format dict: images, annotations, categories), by pycocotools' COCOeval, its printing silenced.

    Returns {iou type: {'AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl'}} in
    percent; a metric COCOeval leaves undefined (-1: no ground truth object in that area range) is nan. With
    ``per_class``, also 'per_class': {class name: AP} as mmdet's ``classwise`` computes it (nan for a class with no
    ground truth); names are ``class_names`` (one per category, in the order of sorted category ids) or the
    categories' own names.

    The evaluation covers exactly the images of ``gt`` (an image with no result counts its objects as missed), so a
    distributed evaluation gathers every process's results first and calls this once. A result for an image or a
    category that ``gt`` does not hold is rejected (LitError): it means the results belong to another split.
    Crowd annotations (iscrowd=1) are COCOeval's: a detection matching one is ignored, not a false positive.
    Mask AP ('segm') needs 'segmentation' (compressed RLE; counts str or bytes) in every result and in every
    ground truth annotation; it uses the masks' areas for APs/APm/APl (mmdet >= 2.12; mmdet 2.11, the paper's,
    used the boxes' areas there: AP, AP50 and AP75 are the same either way).
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise LitError(PYCOCOTOOLS_MISSING)
    unknown = [t for t in iou_types if t not in IOU_TYPES]
    if unknown:
        raise ValueError(f'unknown COCO iou type {unknown[0]!r}; use one of {IOU_TYPES}')
    categories = sorted(gt['categories'], key=lambda c: c['id'])
    names = list(class_names) if class_names is not None else [c['name'] for c in categories]
    if len(names) != len(categories):
        raise ValueError(f'{len(names)} class names for {len(categories)} ground truth categories')
    check_results(gt, results, iou_types)

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and the summary table
        coco_gt = COCO()
        # COCOeval writes into the annotations (an 'ignore' key; masks as RLE): it gets copies
        coco_gt.dataset = dict(gt, annotations=[dict(a) for a in gt['annotations']])
        coco_gt.createIndex()
        metrics = {}
        for iou_type in iou_types:
            coco_dt = load_results(coco_gt, results, iou_type)
            evaluator = COCOeval(coco_gt, coco_dt, iou_type)
            evaluator.params.imgIds = sorted(coco_gt.getImgIds())  # COCOeval's default, stated: gt's images only
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            metrics[iou_type] = {name: percent(value) for name, value in zip(COCO_STAT_NAMES, evaluator.stats)}
            if per_class:
                metrics[iou_type]['per_class'] = class_aps(evaluator.eval['precision'], names)
    return metrics


def check_results(gt: Dict, results: List[Dict], iou_types: Sequence[str]):
    """One-line errors for results COCOeval would assert on or silently drop."""
    image_ids = {image['id'] for image in gt['images']}
    category_ids = {c['id'] for c in gt['categories']}
    stray = [r['image_id'] for r in results if r['image_id'] not in image_ids]
    if stray:
        raise LitError(f'{len(stray)} detection(s) are for images the ground truth does not hold (image_id '
                       f'{stray[0]}): the results belong to another split or annotation file; evaluate them against '
                       f'that one')
    stray = [r['category_id'] for r in results if r['category_id'] not in category_ids]
    if stray:
        raise LitError(f'{len(stray)} detection(s) have a category the ground truth does not hold (category_id '
                       f'{stray[0]}): the model was trained on other classes than this annotation file\'s')
    if 'segm' in iou_types:
        if any('segmentation' not in r for r in results):
            raise LitError('mask AP needs a segmentation (RLE) in every detection; these are boxes only '
                           '(a RetinaNet model, or pycocotools was missing when they were written)')
        if any('segmentation' not in a for a in gt['annotations']):
            raise LitError('mask AP needs ground truth masks (segmentation) in every annotation; this ground truth '
                           'has boxes only: evaluate box AP')


def load_results(coco_gt, results: List[Dict], iou_type: str):
    """pycocotools' results object for ``iou_type``. loadRes adds keys to the dicts it gets, so it gets copies;
    for masks without their boxes, so that the area ranges use the masks' areas (loadRes takes the box's area
    when a box is there). No results: an empty results object (loadRes fails on an empty list), so every metric
    with ground truth is 0."""
    from pycocotools.coco import COCO

    if not results:
        empty = COCO()
        empty.dataset = dict(images=list(coco_gt.dataset['images']), categories=list(coco_gt.dataset['categories']),
                             annotations=[])
        empty.createIndex()
        return empty
    drop = {'bbox'} if iou_type == 'segm' else set()
    return coco_gt.loadRes([{k: v for k, v in r.items() if k not in drop} for r in results])


def class_aps(precision: np.ndarray, names: Sequence[str]) -> Dict[str, float]:
    """mmdet's classwise AP: precision (iou thresholds, recall thresholds, classes, area ranges, max detections)
    at area 'all' and 100 detections, mean of the defined (> -1) values, nan when none; in percent."""
    aps = {}
    for k, name in enumerate(names):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        aps[name] = float(np.mean(values)) * 100 if values.size else math.nan
    return aps


def percent(value: float) -> float:
    """COCOeval's fraction in percent; its -1 (undefined) as nan."""
    return float(value) * 100 if value > -1 else math.nan


class SegmentationMeter:
    """mmseg 0.13's mIoU over a split: ``intersect_and_union`` of each image (pixels labelled ``ignore_index``
    left out) summed per class, then ``total_area_to_metrics``. Counts are int64 on ``device`` (None: the device
    of the first prediction), exact at any split size, with no host sync per image."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device=None):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.device = torch.device(device) if device is not None else None
        self.counts = None  # (3, K): intersection, prediction, label pixels per class

    def update(self, pred: torch.Tensor, label: torch.Tensor):
        """Add one image: ``pred`` and ``label`` (H, W) long class maps (any equal shapes)."""
        if pred.shape != label.shape:
            raise ValueError(f'prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ in shape')
        if self.counts is None:
            self.device = self.device or pred.device
            self.counts = torch.zeros(3, self.num_classes, dtype=torch.int64, device=self.device)
        pred = pred.to(self.device).reshape(-1)
        label = label.to(self.device).reshape(-1)
        valid = label != self.ignore_index
        self.counts[0] += self.histogram(label, valid & (pred == label))
        self.counts[1] += self.histogram(pred, valid)
        self.counts[2] += self.histogram(label, valid)

    def histogram(self, values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Pixels per class among ``values[keep]``; values outside 0..K-1 are not counted, as torch.histc(min=0,
        max=K-1) in mmseg drops them. scatter_add_ into a spare bin K rather than boolean indexing or
        torch.bincount, which both wait for the device to size their output."""
        k = self.num_classes
        index = torch.where(keep & (values >= 0) & (values < k), values, k)
        counts = torch.zeros(k + 1, dtype=torch.int64, device=values.device)
        return counts.scatter_add_(0, index, torch.ones_like(index))[:k]

    def all_reduce(self, world, device: torch.device):
        """Sum the counts of every process (once, after the whole split); a no-op outside a distributed run."""
        from litcli.core.runtime import all_reduce_sum

        if self.counts is None:
            self.counts = torch.zeros(3, self.num_classes, dtype=torch.int64, device=self.device or 'cpu')
        summed = all_reduce_sum(self.counts.flatten().tolist(), world, device)  # float64, exact below 2**53
        self.counts = torch.tensor(summed, dtype=torch.float64).round().to(torch.int64).view(3, -1).to(self.counts)
        return self

    def areas(self) -> Dict[str, np.ndarray]:
        """mmseg's total areas (K,) float64: area_intersect, area_union, area_pred_label, area_label."""
        counts = (self.counts if self.counts is not None else torch.zeros(3, self.num_classes, dtype=torch.int64))
        intersect, predicted, labelled = counts.cpu().double().numpy()
        return dict(area_intersect=intersect, area_union=predicted + labelled - intersect, area_pred_label=predicted,
                    area_label=labelled)

    def result(self, class_names: Optional[Sequence[str]] = None) -> Dict:
        """{'mIoU', 'aAcc', 'mAcc', 'per_class': {name: {'IoU', 'Acc'}}} in percent, as mmseg 0.13: IoU = intersection /
        union (nan where the class is in neither prediction nor label), Acc = intersection / label pixels (nan
        where the class is not in the label), mIoU and mAcc their nan-means, aAcc = all intersections / all
        labelled pixels. ``class_names``: one per class (default '0', '1', ...)."""
        names = list(class_names) if class_names is not None else [str(k) for k in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f'{len(names)} class names for {self.num_classes} classes')
        a = self.areas()
        with np.errstate(divide='ignore', invalid='ignore'):
            iou = a['area_intersect'] / a['area_union']
            acc = a['area_intersect'] / a['area_label']
            all_acc = a['area_intersect'].sum() / a['area_label'].sum()
        return dict(mIoU=nanmean_percent(iou), aAcc=float(all_acc) * 100, mAcc=nanmean_percent(acc),
                    per_class={name: dict(IoU=float(i) * 100, Acc=float(c) * 100)
                               for name, i, c in zip(names, iou, acc)})


def nanmean_percent(values: np.ndarray) -> float:
    """np.nanmean in percent (mmseg's mean over classes), nan without a warning when every value is nan."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) * 100 if defined.size else math.nan

"""The dense metrics (core/training/dense_metrics.py): COCO AP through pycocotools (100 on the ground truth, a case
worked by hand from COCOeval's 101-point interpolation, crowd boxes, empty and stray results) and mmseg 0.13's
mIoU (a hand case, the ground truth, a numpy re-implementation of mmseg's formulas)."""
import copy
import math

import numpy as np
import pytest
import torch

from litcli.core.errors import LitError
from litcli.core.runtime import World
from litcli.core.training.dense_metrics import SegmentationMeter, coco_evaluate, coco_results

mask_utils = pytest.importorskip('pycocotools.mask')

CATEGORIES = [dict(id=1, name='shirt'), dict(id=3, name='bag'), dict(id=7, name='boot')]


def disk(height, width, cx, cy, r):
    yy, xx = np.mgrid[:height, :width]
    return ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r).astype(np.uint8)


def rectangle(height, width, x, y, w, h):
    mask = np.zeros((height, width), np.uint8)
    mask[y:y + h, x:x + w] = 1
    return mask


def rle(mask: np.ndarray, counts=str):
    encoded = mask_utils.encode(np.asfortranarray(mask))
    return dict(size=[int(s) for s in encoded['size']],
                counts=encoded['counts'].decode('ascii') if counts is str else encoded['counts'])


# image id -> (height, width, [(category id, mask)]): small (area < 32^2), medium and large objects of 3 classes,
# disks (mask area below the box's) and rectangles, and an image without objects
H, W = 160, 200
SCENES = {
    11: (H, W, [(1, rectangle(H, W, 5, 5, 20, 20)),       # small: 400 px
                (3, disk(H, W, 100, 80, 30)),             # medium: ~2,800 px
                (7, rectangle(H, W, 140, 10, 55, 140))]),  # medium: 7,700 px
    12: (H, W, [(7, disk(H, W, 80, 80, 70)),              # large: ~15,400 px
                (1, disk(H, W, 180, 20, 10))]),           # small
    13: (H, W, [(3, rectangle(H, W, 0, 0, 120, 100)),     # large: 12,000 px
                (1, rectangle(H, W, 150, 120, 40, 30))]),  # medium: 1,200 px
    14: (H, W, []),
}


def scenes_gt(scenes=SCENES):
    images, annotations = [], []
    for image_id, (height, width, objects) in scenes.items():
        images.append(dict(id=image_id, width=width, height=height, file_name=f'{image_id}.jpg'))
        for category_id, mask in objects:
            segmentation = rle(mask)
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id, category_id=category_id,
                                    bbox=[float(v) for v in mask_utils.toBbox(segmentation)],
                                    area=float(mask.sum()), iscrowd=0, segmentation=segmentation))
    return dict(images=images, annotations=annotations, categories=CATEGORIES)


def test_ground_truth_as_results_scores_100_for_boxes_and_masks(capsys):
    gt = scenes_gt()
    areas = sorted(a['area'] for a in gt['annotations'])
    assert areas[0] < 32 ** 2 and any(32 ** 2 < a < 96 ** 2 for a in areas) and areas[-1] > 96 ** 2
    # masks with bytes counts (what pycocotools' encode returns) as well as the str counts of the ground truth
    results = [dict(image_id=a['image_id'], category_id=a['category_id'], bbox=a['bbox'], score=1.0,
                    segmentation=dict(a['segmentation'], counts=a['segmentation']['counts'].encode('ascii')))
               for a in gt['annotations']]
    before, gt_before = copy.deepcopy(results), copy.deepcopy(gt)
    metrics = coco_evaluate(gt, results, iou_types=('bbox', 'segm'), per_class=True)
    for iou_type in ('bbox', 'segm'):
        m = metrics[iou_type]
        for name in ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100'):
            assert m[name] == pytest.approx(100), (iou_type, name)
        assert m['per_class'] == pytest.approx({'shirt': 100, 'bag': 100, 'boot': 100})
    assert results == before and gt == gt_before  # pycocotools adds keys to what it gets: it got copies
    assert capsys.readouterr().out == ''  # pycocotools' printing silenced


def test_coco_results_round_trip_scores_100():
    """Detections as the detectors give them (xyxy boxes, labels 0..K-1, bool masks) -> coco_results -> 100."""
    gt = scenes_gt()
    category_ids = [c['id'] for c in CATEGORIES]
    results = []
    for image_id, (_, _, objects) in SCENES.items():
        if not objects:
            continue
        masks = torch.stack([torch.from_numpy(m).bool() for _, m in objects])
        boxes = []
        for _, m in objects:
            ys, xs = np.nonzero(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])  # pixel edges, as COCO's boxes
        detections = dict(boxes=torch.tensor(boxes, dtype=torch.float32), scores=torch.full((len(objects),), .9),
                          labels=torch.tensor([category_ids.index(c) for c, _ in objects]), masks=masks)
        results += coco_results(image_id, detections, category_ids)
    assert all(isinstance(r['segmentation']['counts'], str) for r in results)
    metrics = coco_evaluate(gt, results, iou_types=('bbox', 'segm'))
    assert metrics['bbox']['AP'] == pytest.approx(100) and metrics['segm']['AP'] == pytest.approx(100)


def box_gt(boxes, categories=CATEGORIES, width=400, height=400):
    """One image (id 1) with boxes [(category id, [x, y, w, h], iscrowd)]."""
    annotations = [dict(id=i + 1, image_id=1, category_id=c, bbox=list(b), area=float(b[2] * b[3]), iscrowd=crowd)
                   for i, (c, b, crowd) in enumerate(boxes)]
    return dict(images=[dict(id=1, width=width, height=height)], annotations=annotations, categories=categories)


def test_hand_computed_ap_and_per_class_ap():
    """'shirt': 2 GT boxes (large, 100x100); detections: a false positive scoring .9, then one at IoU .625 with
    the first GT box scoring .8. 'bag': 1 GT box found exactly. 'boot': nothing, in GT or detections.

    shirt, at IoU thresholds .50 .55 .60 (the match counts: .625 >= t), detections by score: FP, TP ->
      recall [0, 1/2], precision [0, 1/2] -> envelope (max to the right) [1/2, 1/2]; COCO's 101 recall points
      0, .01, ..., 1: points 0..0.50 (51 of them) take precision 1/2, points above 0.5 recall are never reached: 0.
      AP at that threshold = 51 * 0.5 / 101 = 25.5 / 101 = 0.25248 -> AP50 = 25.248.
    at thresholds .65 ... .95 (7 of 10): no match, precision 0 everywhere -> 0; AP75 = 0.
    shirt AP = (3 * 25.5 / 101) / 10 = 7.5743; bag: 100 at every threshold; boot: no GT -> -1 -> nan, left out.
    AP = mean(shirt, bag) = (7.5743 + 100) / 2 = 53.787; AP50 = (25.248 + 100) / 2; AP75 = (0 + 100) / 2.
    All boxes large (area > 96^2): APl = AP; no small or medium GT: APs, APm undefined (nan).
    """
    gt = box_gt([(1, [0, 0, 100, 100], 0), (1, [200, 200, 100, 100], 0), (3, [0, 200, 120, 120], 0)])
    results = [dict(image_id=1, category_id=1, bbox=[200, 0, 100, 100], score=.9),   # overlaps nothing
               dict(image_id=1, category_id=1, bbox=[0, 0, 100, 62.5], score=.8),    # IoU 6250 / 10000 = .625
               dict(image_id=1, category_id=3, bbox=[0, 200, 120, 120], score=.7)]
    m = coco_evaluate(gt, results, per_class=True)['bbox']
    shirt, shirt50 = 3 * 25.5 / 101 / 10 * 100, 25.5 / 101 * 100
    assert m['per_class']['shirt'] == pytest.approx(shirt) and m['per_class']['bag'] == pytest.approx(100)
    assert math.isnan(m['per_class']['boot'])
    assert m['AP'] == pytest.approx((shirt + 100) / 2) and m['AP'] == pytest.approx(53.787, abs=1e-3)
    assert m['AP50'] == pytest.approx((shirt50 + 100) / 2) and m['AP75'] == pytest.approx(50)
    assert m['APl'] == pytest.approx(m['AP']) and math.isnan(m['APs']) and math.isnan(m['APm'])
    # without the false positive, shirt's precision is 1 up to recall 1/2: 51 / 101 at .50-.60
    m = coco_evaluate(gt, results[1:], class_names=['a', 'b', 'c'], per_class=True)['bbox']
    assert m['per_class']['a'] == pytest.approx(3 * 51 / 101 / 10 * 100)


def test_a_detection_on_a_crowd_box_is_ignored_not_a_false_positive():
    results = [dict(image_id=1, category_id=1, bbox=[250, 250, 40, 40], score=.95),  # inside the crowd region
               dict(image_id=1, category_id=1, bbox=[10, 10, 50, 50], score=.9)]
    crowd = box_gt([(1, [10, 10, 50, 50], 0), (1, [200, 200, 150, 150], 1)])
    assert coco_evaluate(crowd, results)['bbox']['AP'] == pytest.approx(100)
    not_crowd = box_gt([(1, [10, 10, 50, 50], 0), (1, [200, 200, 150, 150], 0)])
    # the same boxes with iscrowd 0: the first detection is a false positive, and the big box a missed object
    assert coco_evaluate(not_crowd, results)['bbox']['AP'] < 50


def test_empty_results_give_zero_and_missing_images_count_as_missed():
    gt = scenes_gt()
    metrics = coco_evaluate(gt, [], iou_types=('bbox', 'segm'), per_class=True)
    for m in metrics.values():
        assert m['AP'] == m['AP50'] == m['APs'] == m['APm'] == m['APl'] == m['AR100'] == 0
        assert m['per_class'] == {'shirt': 0, 'bag': 0, 'boot': 0}
    # exact results for image 11 only: the objects of 12 and 13 are missed. Image 11 holds 1 of the 3 shirts, 1 of
    # the 2 bags, 1 of the 2 boots: recall 1/3, 1/2, 1/2 at precision 1 (at every IoU threshold) -> the 101 recall
    # points up to .33 (34 points) and up to .50 (51) have precision 1: AP = (34 + 51 + 51) / 101 / 3
    results = [dict(image_id=a['image_id'], category_id=a['category_id'], bbox=a['bbox'], score=1.0)
               for a in gt['annotations'] if a['image_id'] == 11]
    m = coco_evaluate(gt, results)['bbox']
    assert m['AP'] == pytest.approx((34 + 51 + 51) / 101 / 3 * 100)
    assert m['AR100'] == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 3 * 100)


def test_results_for_other_images_or_classes_are_rejected():
    gt = box_gt([(1, [0, 0, 100, 100], 0)])
    with pytest.raises(LitError, match='images the ground truth does not hold .image_id 99.'):
        coco_evaluate(gt, [dict(image_id=99, category_id=1, bbox=[0, 0, 10, 10], score=.5)])
    with pytest.raises(LitError, match='category_id 2'):
        coco_evaluate(gt, [dict(image_id=1, category_id=2, bbox=[0, 0, 10, 10], score=.5)])
    with pytest.raises(LitError, match='mask AP needs a segmentation'):
        coco_evaluate(scenes_gt(), [dict(image_id=11, category_id=1, bbox=[0, 0, 10, 10], score=.5)],
                      iou_types=('segm',))
    with pytest.raises(LitError, match='ground truth masks'):
        coco_evaluate(gt, [], iou_types=('segm',))


# ---- SegmentationMeter ----

def test_segmentation_hand_case_with_an_absent_class_and_ignored_pixels():
    """3 classes, class 2 in neither label nor prediction; two pixels ignored (255; their predictions 0 and 1
    would count otherwise).
      class 0: label 2 px, predicted 2 px, both 1 px -> IoU 1 / (2 + 2 - 1) = 1/3, Acc 1/2
      class 1: label 4 px, predicted 4 px, both 3 px -> IoU 3 / (4 + 4 - 3) = 3/5, Acc 3/4
      class 2: union 0 -> IoU nan, Acc nan: left out of the means
      mIoU = (1/3 + 3/5) / 2 = 46.667; mAcc = (1/2 + 3/4) / 2 = 62.5; aAcc = 4 / 6 = 66.667"""
    label = torch.tensor([[0, 0, 1, 1], [1, 255, 1, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [1, 0, 0, 1]])
    meter = SegmentationMeter(3)
    meter.update(pred, label)
    r = meter.result(['bg', 'shirt', 'bag'])
    assert r['mIoU'] == pytest.approx((1 / 3 + 3 / 5) / 2 * 100) and r['mAcc'] == pytest.approx(62.5)
    assert r['aAcc'] == pytest.approx(4 / 6 * 100)
    assert r['per_class']['bg'] == pytest.approx(dict(IoU=100 / 3, Acc=50))
    assert r['per_class']['shirt'] == pytest.approx(dict(IoU=60, Acc=75))
    assert math.isnan(r['per_class']['bag']['IoU']) and math.isnan(r['per_class']['bag']['Acc'])
    # split into two updates (the two rows as two images): the same sums
    halves = SegmentationMeter(3)
    for row in range(2):
        halves.update(pred[row:row + 1], label[row:row + 1])
    assert halves.result()['mIoU'] == pytest.approx(r['mIoU'])


def test_segmentation_ground_truth_gives_100():
    g = torch.Generator().manual_seed(0)
    meter = SegmentationMeter(5)
    for _ in range(3):
        label = torch.randint(0, 5, (17, 23), generator=g)
        meter.update(label.clone(), torch.where(torch.rand(17, 23, generator=g) < .1, 255, label))
    r = meter.result()
    assert r['mIoU'] == r['mAcc'] == r['aAcc'] == 100


def mmseg_mean_iou(results, gt_seg_maps, num_classes, ignore_index):
    """mmseg 0.13's mean_iou in numpy: intersect_and_union per image (torch.histc(bins=K, min=0, max=K-1) ==
    np.histogram(bins=K, range=(0, K-1))), summed, then total_area_to_metrics; the dataset's table takes nanmeans."""
    total = np.zeros((4, num_classes))
    for pred_label, label in zip(results, gt_seg_maps):
        mask = label != ignore_index
        pred_label, label = pred_label[mask], label[mask]
        intersect = pred_label[pred_label == label]

        def hist(x):
            return np.histogram(x, bins=num_classes, range=(0, num_classes - 1))[0]
        area_intersect, area_pred_label, area_label = hist(intersect), hist(pred_label), hist(label)
        area_union = area_pred_label + area_label - area_intersect
        total += [area_intersect, area_union, area_pred_label, area_label]
    total_area_intersect, total_area_union, _, total_area_label = total
    all_acc = total_area_intersect.sum() / total_area_label.sum()
    acc = total_area_intersect / total_area_label
    iou = total_area_intersect / total_area_union
    return all_acc, acc, iou


def test_segmentation_matches_mmseg_mean_iou_on_random_maps():
    rng = np.random.default_rng(3)
    num_classes = 6
    preds, labels = [], []
    for height, width in [(31, 40), (64, 17), (9, 9), (50, 50)]:
        label = rng.integers(0, 5, (height, width))  # class 5 never labelled: IoU 0 where predicted, Acc nan
        label[rng.random((height, width)) < .15] = 255
        pred = np.where(rng.random((height, width)) < .6, label, rng.integers(0, 6, (height, width)))
        pred[pred == 255] = 1
        preds.append(pred)
        labels.append(label)
    meter = SegmentationMeter(num_classes)
    for pred, label in zip(preds, labels):
        meter.update(torch.from_numpy(pred), torch.from_numpy(label))
    with np.errstate(divide='ignore', invalid='ignore'):
        all_acc, acc, iou = mmseg_mean_iou(preds, labels, num_classes, 255)
    assert iou[5] == 0 and np.isnan(acc[5])
    r = meter.result()
    assert r['aAcc'] == pytest.approx(all_acc * 100)
    assert r['mIoU'] == pytest.approx(np.nanmean(iou) * 100) and r['mAcc'] == pytest.approx(np.nanmean(acc) * 100)
    ious = [r['per_class'][str(k)]['IoU'] for k in range(num_classes)]
    assert np.allclose(ious, iou * 100)
    assert 20 < r['mIoU'] < 90  # neither trivial extreme


def test_segmentation_all_reduce_outside_a_distributed_run_keeps_the_sums():
    meter = SegmentationMeter(3)
    meter.update(torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 1]]))
    before = meter.areas()
    meter.all_reduce(World(), torch.device('cpu'))
    after = meter.areas()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert after['area_union'].tolist() == [1, 2, 1] and after['area_intersect'].dtype == np.float64


def _reduce_in_process(rank, init_file, out_file):
    import torch.distributed as dist
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2)
    try:
        meter = SegmentationMeter(3)
        if rank == 0:
            meter.update(torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 1]]))
            meter.update(torch.tensor([[2, 2]]), torch.tensor([[2, 255]]))
        else:
            meter.update(torch.tensor([[1]]), torch.tensor([[1]]))
        meter.all_reduce(World(rank, 2, rank, True), torch.device('cpu'))
        torch.save(meter.areas(), f'{out_file}.{rank}')
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_segmentation_all_reduce_sums_two_processes(tmp_path):
    """Two gloo processes: both end with the sums of both shards. Rank 0: intersections [1, 1, 0] + [0, 0, 1],
    labels [1, 2, 0] + [0, 0, 1], predictions [1, 1, 1] + [0, 0, 1] (the 255 pixel and its prediction left out);
    rank 1: class 1 once in all three."""
    import torch.multiprocessing as mp
    mp.spawn(_reduce_in_process, args=(str(tmp_path / 'init'), str(tmp_path / 'areas')), nprocs=2)
    for rank in range(2):
        areas = torch.load(tmp_path / f'areas.{rank}', weights_only=False)
        assert areas['area_intersect'].tolist() == [1, 2, 1] and areas['area_label'].tolist() == [1, 3, 1]
        assert areas['area_pred_label'].tolist() == [1, 2, 2]

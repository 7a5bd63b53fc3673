"""The dense training transforms (core/data/dense_transforms.py: mmdet's flip, mmseg 0.13's train pipeline) and the
built-in synthetic scenes (core/data/scenes.py: fashion-mnist-det / fashion-mnist-seg)."""
import contextlib
import io

import numpy as np
import pytest
import torch

from litcli.core.data import scenes
from litcli.core.data.dense_transforms import (IMAGENET_MEAN_255, IMAGENET_STD_255, DetectionTrainTransform,
                                               PhotoMetricDistortion, SegmentationTrainTransform, hsv_to_rgb_uint8,
                                               rgb_to_hsv_uint8)
from litcli.core.data.scenes import FashionScenes, instance_annotations, render_canvas
from litcli.core.errors import LitError


def random_image(height, width, seed=0):
    return torch.randint(0, 256, (3, height, width), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


# ---------------------------------------------------------------- transforms

def test_detection_flip_is_exact():
    image = random_image(4, 6)
    masks = torch.zeros(1, 4, 6, dtype=torch.uint8)
    masks[0, 0:2, 1:3] = 1  # columns 1..2 -> box x 1..3
    target = dict(boxes=torch.tensor([[1., 0., 3., 2.]]), labels=torch.tensor([4]), image_id=7, masks=masks)
    flipped, out = DetectionTrainTransform(hflip=1.0)(image, target)
    assert torch.equal(flipped, image.flip(-1))
    assert out['boxes'].tolist() == [[3., 0., 5., 2.]]  # x0' = 6 - 3, x1' = 6 - 1
    assert out['masks'][0].nonzero()[:, 1].unique().tolist() == [3, 4]  # inside the flipped box
    assert out['labels'].tolist() == [4] and out['image_id'] == 7
    assert target['boxes'].tolist() == [[1., 0., 3., 2.]]  # the input is not changed in place
    same, kept = DetectionTrainTransform(hflip=0.0)(image, target)
    assert same is image and kept is target


def test_detection_flip_draws_from_torch_global_generator():
    image = random_image(4, 6)
    target = dict(boxes=torch.tensor([[1., 0., 3., 2.]]), labels=torch.tensor([0]), image_id=1)
    flips = []
    for seed in range(20):
        torch.manual_seed(seed)
        flips.append(DetectionTrainTransform(0.5)(image, target)[1]['boxes'][0, 0].item() == 3.0)
        torch.manual_seed(seed)
        assert (DetectionTrainTransform(0.5)(image, target)[1]['boxes'][0, 0].item() == 3.0) == flips[-1]
    assert 3 <= sum(flips) <= 17


def test_hsv_conversion_on_known_colours():
    # (R, G, B) -> OpenCV's 8-bit HSV (H in degrees / 2)
    colours = {(255, 0, 0): (0, 255, 255), (0, 255, 0): (60, 255, 255), (0, 0, 255): (120, 255, 255),
               (255, 255, 0): (30, 255, 255), (128, 128, 128): (0, 0, 128), (0, 0, 0): (0, 0, 0),
               (255, 128, 128): (0, 127, 255)}  # S = round(127 * 255 / 255)
    rgb = torch.tensor(list(colours), dtype=torch.uint8).T.reshape(3, 1, -1)
    hsv = rgb_to_hsv_uint8(rgb)
    assert hsv.reshape(3, -1).T.tolist() == [list(v) for v in colours.values()]
    back = hsv_to_rgb_uint8(hsv)
    assert (back.int() - rgb.int()).abs().max() <= 1


def test_photometric_distortion_changes_pixels_keeps_dtype():
    image = random_image(16, 16, seed=3) // 2 + 64  # room to move both ways
    changed = 0
    for seed in range(8):
        torch.manual_seed(seed)
        out = PhotoMetricDistortion()(image)
        assert out.dtype == torch.uint8 and out.shape == image.shape
        changed += not torch.equal(out, image)
        torch.manual_seed(seed)
        assert torch.equal(PhotoMetricDistortion()(image), out)
    assert changed >= 6  # each of 8 draws leaves the image alone with probability 1/16
    # a brightness step: float + beta, clipped, truncated (mmseg's convert)
    torch.manual_seed(0)
    step = PhotoMetricDistortion(brightness_delta=32)
    flat = torch.full((3, 2, 2), 250, dtype=torch.uint8)
    outs = {int(step.brightness(flat)[0, 0, 0]) for _ in range(50)}
    assert max(outs) == 255 and min(outs) >= 218 and 250 in outs  # clipped at 255; untouched half of the time


def test_photometric_distortion_follows_mmseg_order():
    """mmseg 0.13's PhotoMetricDistortion.__call__ transcribed, numpy's random replaced by the same torch draws."""
    from litcli.core.data.dense_transforms import _convert

    def randint(low, high=None):
        return int(torch.randint(low, high, ())) if high is not None else int(torch.randint(low, ()))

    def uniform(low, high):
        return low + float(torch.rand(())) * (high - low)

    def mmseg(img):
        if randint(2):  # brightness
            img = _convert(img, beta=uniform(-32, 32))
        mode = randint(2)

        def contrast(img):
            return _convert(img, alpha=uniform(0.5, 1.5)) if randint(2) else img
        if mode == 1:
            img = contrast(img)
        if randint(2):  # saturation
            hsv = rgb_to_hsv_uint8(img)
            hsv[1] = _convert(hsv[1], alpha=uniform(0.5, 1.5))
            img = hsv_to_rgb_uint8(hsv)
        if randint(2):  # hue
            hsv = rgb_to_hsv_uint8(img)
            hsv[0] = ((hsv[0].long() + randint(-18, 18)) % 180).to(torch.uint8)
            img = hsv_to_rgb_uint8(hsv)
        if mode == 0:
            img = contrast(img)
        return img

    image = random_image(8, 8, seed=5)
    for seed in range(30):
        torch.manual_seed(seed)
        expected = mmseg(image)
        torch.manual_seed(seed)
        assert torch.equal(PhotoMetricDistortion()(image), expected), seed


def test_segmentation_pipeline_shapes_dtypes():
    image, label = random_image(60, 90), torch.randint(0, 5, (60, 90))
    t = SegmentationTrainTransform(img_scale=(120, 60), ratio_range=(0.5, 2.0), crop_size=(48, 64))
    for seed in range(5):
        torch.manual_seed(seed)
        x, y = t(image, label)
        assert x.dtype == torch.float32 and x.shape == (3, 48, 64)
        assert y.dtype == torch.int64 and y.shape == (48, 64)
        assert set(y.unique().tolist()) <= {0, 1, 2, 3, 4, 255}


def test_segmentation_pad_normalise_and_resize_rule():
    image, label = random_image(20, 40), torch.randint(0, 3, (20, 40))
    # scale (40, 20) at ratio 1 keeps 20x40 (mmcv's rescale); nothing random left but the flip (off)
    t = SegmentationTrainTransform(img_scale=(40, 20), ratio_range=(1.0, 1.0), crop_size=(32, 64), hflip=0.0,
                                   photometric=False)
    x, y = t(image, label)
    mean = torch.tensor(IMAGENET_MEAN_255).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD_255).view(3, 1, 1)
    assert torch.allclose(x[:, :20, :40], (image.float() - mean) / std)
    assert torch.equal(y[:20, :40], label)
    assert (x[:, 20:] == 0).all() and (x[:, :, 40:] == 0).all()
    assert (y[20:] == 255).all() and (y[:, 40:] == 255).all()
    assert IMAGENET_MEAN_255 == (123.675, 116.28, 103.53) and IMAGENET_STD_255 == (58.395, 57.12, 57.375)
    # ratio 2: scale (80, 40) -> 40x80 (both limits reached); the crop then cuts 32x64
    t2 = SegmentationTrainTransform(img_scale=(40, 20), ratio_range=(2.0, 2.0), crop_size=(32, 64),
                                    photometric=False, cat_max_ratio=1.0)
    assert t2.resize(image, label)[0].shape == (3, 40, 80)
    assert t2.resize(image, label)[1].dtype == torch.int64


def test_cat_max_ratio_rule_ignores_255():
    t = SegmentationTrainTransform(cat_max_ratio=0.75)

    def crop(**shares):  # a 10x10 crop with the given number of pixels per value
        values = [v for name, n in shares.items() for v in [int(name[1:])] * n]
        return torch.tensor(values).view(10, 10)

    assert not t._crop_is_varied(crop(c1=100))  # one class
    assert not t._crop_is_varied(crop(c1=60, c255=40))  # one class once 255 is left out
    assert t._crop_is_varied(crop(c1=60, c2=40))
    assert not t._crop_is_varied(crop(c1=80, c2=20))
    assert t._crop_is_varied(crop(c1=50, c2=30, c255=20))  # 50 / 80
    assert not t._crop_is_varied(crop(c1=65, c2=20, c255=15))  # 65 / 85 > 0.75 (65 / 100 if 255 counted)


def test_cat_max_ratio_respected_on_crafted_label():
    label = torch.ones(100, 100, dtype=torch.int64)
    label[:, 70:] = 2  # a 50x50 crop at column offset l holds class 2 in max(0, l - 20) columns: varied iff l > 32
    image = random_image(100, 100)

    def ratio_ok(y):
        counts = torch.bincount(y.flatten(), minlength=3)[1:3].float()
        return (counts > 0).all() and counts.max() / counts.sum() < 0.75

    def accepted(cat_max_ratio):
        t = SegmentationTrainTransform(img_scale=(100, 100), ratio_range=(1.0, 1.0), crop_size=(50, 50),
                                       cat_max_ratio=cat_max_ratio, hflip=0.0, photometric=False)
        n = 0
        for seed in range(40):
            torch.manual_seed(seed)
            n += bool(ratio_ok(t(image, label)[1]))
        return n

    # one crop in three is varied: 10 tries find one with probability 0.98, a single crop 0.35
    assert accepted(0.75) >= 35
    assert accepted(1.0) <= 22


def test_segmentation_transform_is_deterministic_under_torch_seed():
    image, label = random_image(64, 80, seed=1), torch.randint(0, 4, (64, 80))
    t = SegmentationTrainTransform(img_scale=(160, 64), crop_size=(48, 48))
    outs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        outs.append(t(image, label))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert not torch.equal(outs[0][0], outs[2][0])


# ---------------------------------------------------------------- scenes

def test_instance_annotations_hand_case():
    instances = torch.zeros(5, 6, dtype=torch.int64)
    instances[1:3, 2:5] = 1
    instances[4, 0] = 2
    masks, boxes = instance_annotations(instances, 2)
    assert boxes.tolist() == [[2., 1., 5., 3.], [0., 4., 1., 5.]]
    assert masks.sum((1, 2)).tolist() == [6, 1]


def test_scene_determinism():
    a, b = FashionScenes('val', 'detection', masks=True), FashionScenes('val', 'detection', masks=True)
    x0, t0 = a[3]
    x1, t1 = b[3]
    assert torch.equal(x0, x1) and torch.equal(t0['boxes'], t1['boxes']) and torch.equal(t0['masks'], t1['masks'])
    assert not torch.equal(a[4][0], x0)
    assert not torch.equal(FashionScenes('train', 'detection')[3][0], x0)  # the split changes the content
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a[5]
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is not touched


def test_scene_annotations_are_consistent():
    det = FashionScenes('train', 'detection', masks=True, size=30)
    seg = FashionScenes('train', 'segmentation', size=30)
    counts = []
    for i in range(30):
        image, target = det[i]
        assert image.dtype == torch.uint8 and image.shape == (3, 128, 160)
        masks, boxes, labels = target['masks'], target['boxes'], target['labels']
        assert masks.dtype == torch.uint8 and boxes.dtype == torch.float32 and labels.dtype == torch.int64
        assert target['image_id'] == i + 1 and 1 <= len(labels) <= 4 and labels.max() <= 9
        assert masks.sum(0).max() <= 1  # no two masks overlap
        assert (masks.sum((1, 2)) >= scenes.MIN_VISIBLE_PIXELS).all()
        for mask, box in zip(masks, boxes.long().tolist()):
            ys, xs = mask.nonzero(as_tuple=True)
            assert box == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
        semantic = (masks.long() * (labels + 1).view(-1, 1, 1)).sum(0)
        seg_image, seg_label = seg[i]
        assert torch.equal(seg_image, image) and seg_label.dtype == torch.int64
        assert torch.equal(seg_label, semantic)
        counts.append(len(labels))
    assert len(set(counts)) >= 3  # 1-4 garments vary


def test_garment_source_follows_split(monkeypatch):
    def fake(split):  # constant square garments whose class names the Fashion-MNIST split
        label = {'train': 5, 'test': 7}[split]
        return torch.full((3, 28, 28), 200, dtype=torch.uint8), np.full(3, label), 'fake'
    monkeypatch.setattr(scenes, 'garment_arrays', fake)
    for split, label in (('train', 5), ('val', 7)):
        for i in range(5):
            _, target = FashionScenes(split, 'detection', masks=True)[i]
            assert set(target['labels'].tolist()) == {label}
            box_area = (target['boxes'][:, 2] - target['boxes'][:, 0]) * (target['boxes'][:, 3] - target['boxes'][:, 1])
            assert (target['masks'].sum((1, 2)) <= box_area).all()


def test_real_garment_source():
    images, labels, kind = scenes.garment_arrays('test')
    assert kind in ('fashion-mnist', 'fashion-mnist-mini') and images.shape[1:] == (28, 28)
    assert len(images) == len(labels) in (1000, 10000)
    assert scenes.garment_arrays('test')[0] is images  # cached per process


def test_scene_attributes():
    det = FashionScenes('val', 'detection')
    assert len(det) == 250 and len(FashionScenes('train', 'segmentation')) == 4000
    assert det.class_names[0] == 'T-shirt/top' and len(det.class_names) == 10 and det.category_ids == list(range(1, 11))
    seg = FashionScenes('val', 'segmentation', size=7)
    assert seg.class_names[:2] == ['background', 'T-shirt/top'] and len(seg.class_names) == 11
    assert seg.ignore_index == 255 and len(seg) == 7
    assert det.aspect_flags() == [1] * 250
    assert FashionScenes('val', 'detection', size=3, canvas=(160, 128)).aspect_flags() == [0, 0, 0]
    assert det.skipped == 0 and det.skipped_message() is None and det.dropped_boxes == 0
    det.reset_skipped()
    assert det.description.startswith('fashion-mnist-det val: 250 synthetic 160x128 canvases')
    assert 'masks' not in det[0][1]
    with pytest.raises(IndexError):
        det[250]
    for kwargs in (dict(split='test', task='detection'), dict(split='val', task='instance'),
                   dict(split='val', task='detection', size=0), dict(split='val', task='detection', canvas=(20, 64))):
        with pytest.raises(LitError):
            FashionScenes(**kwargs)


def test_coco_gt_evaluates_to_ap_one():
    pytest.importorskip('pycocotools')
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dataset = FashionScenes('val', 'detection', masks=True, size=12)
    gt = dataset.coco_gt()
    assert [im['id'] for im in gt['images']] == list(range(1, 13))
    assert {c['id'] for c in gt['categories']} == set(range(1, 11))
    _, target = dataset[0]
    first = [a for a in gt['annotations'] if a['image_id'] == 1]
    assert len(first) == len(target['labels'])
    x0, y0, x1, y1 = target['boxes'][0].tolist()
    assert first[0]['bbox'] == [x0, y0, x1 - x0, y1 - y0] and first[0]['area'] == int(target['masks'][0].sum())
    assert isinstance(first[0]['segmentation']['counts'], str) and first[0]['iscrowd'] == 0
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        results = [dict(image_id=a['image_id'], category_id=a['category_id'], bbox=a['bbox'],
                        segmentation=a['segmentation'], score=1.0) for a in gt['annotations']]
        detections = coco.loadRes(results)
        stats = {}
        for iou_type in ('bbox', 'segm'):
            evaluator = COCOeval(coco, detections, iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            stats[iou_type] = evaluator.stats
    for iou_type in ('bbox', 'segm'):
        assert stats[iou_type][0] == pytest.approx(1.0) and stats[iou_type][1] == pytest.approx(1.0)
    assert 'segmentation' not in FashionScenes('val', 'detection', size=2).coco_gt()['annotations'][0]


def test_scene_items_pass_through_train_transforms():
    det = FashionScenes('train', 'detection', masks=True, size=4, transform=DetectionTrainTransform(hflip=1.0))
    plain = FashionScenes('train', 'detection', masks=True, size=4)
    image, target = det[1]
    plain_image, plain_target = plain[1]
    assert torch.equal(image, plain_image.flip(-1)) and torch.equal(target['masks'], plain_target['masks'].flip(-1))
    for mask, box in zip(target['masks'], target['boxes'].long().tolist()):
        ys, xs = mask.nonzero(as_tuple=True)
        assert box == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
    seg = FashionScenes('train', 'segmentation', size=4,
                        transform=SegmentationTrainTransform(img_scale=(160, 128), crop_size=(96, 96)))
    torch.manual_seed(0)
    x, y = seg[2]
    assert x.dtype == torch.float32 and x.shape == (3, 96, 96) and y.dtype == torch.int64 and y.shape == (96, 96)
    assert set(y.unique().tolist()) <= set(range(11)) | {255}


def test_canvas_is_a_function_of_split_and_index():
    image, instances, classes = render_canvas('val', 9)
    again = render_canvas('val', 9)
    assert torch.equal(image, again[0]) and torch.equal(instances, again[1]) and torch.equal(classes, again[2])
    assert instances.max() == len(classes)

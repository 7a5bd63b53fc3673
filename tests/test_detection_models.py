"""RetinaNet and Mask R-CNN with LIT backbones (models/detection.py): the official parameter counts, each place
where the official mmdet code computes something else than torchvision checked against an independent
computation, official-layout checkpoints loaded strictly, and forward passes in both modes on tiny images."""
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection import MaskRCNN, RetinaNet
from torchvision.models.detection._utils import Matcher
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou, roi_align

from litcli.models import lit_ti
from litcli.models.dense_zoo import convert_official
from litcli.models.detection import (identify_mmdet, mask_rcnn_from_mmdet, mask_rcnn_lit, mmdet_mask_rcnn_layout,
                                     mmdet_resize_size, mmdet_retinanet_layout, parameter_counts, paste_masks,
                                     retinanet_from_mmdet, retinanet_lit)
from litcli.models.segmentation import mmseg_semantic_fpn_layout

# dense.md section 6: measured with torchvision, the official settings
PARAMS = {
    ('retinanet', 'ti'): dict(total=29_621_708, backbone=19_371_736, neck=3_786_752, heads=6_463_220),
    ('retinanet', 's'): dict(total=38_904_292, backbone=27_966_192, neck=4_474_880, heads=6_463_220),
    ('mask_rcnn', 'ti'): dict(total=39_543_501, backbone=19_371_736, neck=2_623_488, heads=17_548_277),
    ('mask_rcnn', 's'): dict(total=48_244_453, backbone=27_966_192, neck=2_729_984, heads=17_548_277),
}
BUILD = {'retinanet': retinanet_lit, 'mask_rcnn': mask_rcnn_lit}
LAYOUT = {'retinanet': mmdet_retinanet_layout, 'mask_rcnn': mmdet_mask_rcnn_layout}
CONVERT = {'retinanet': retinanet_from_mmdet, 'mask_rcnn': mask_rcnn_from_mmdet}
# small test-time settings: a 128-pixel short side and few RoIs, so a CPU runs a forward pass in about a second
SMALL = {'retinanet': dict(img_scale=(200, 128)),
         'mask_rcnn': dict(img_scale=(200, 128), rpn_post_nms_top_n_test=30, rpn_post_nms_top_n_train=64,
                           box_batch_size_per_image=32, box_detections_per_img=5)}


def official_state_dict(task, variant, num_classes=80, seed=0):
    """An mmdet-format state dict: the official key names and shapes, random values."""
    g = torch.Generator().manual_seed(seed)
    return {key: torch.randn(shape, generator=g) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)
            for key, shape, dtype in LAYOUT[task](variant, num_classes)}


@pytest.mark.parametrize('task, variant', list(PARAMS))
def test_parameter_counts_are_the_official_ones(task, variant):
    model = BUILD[task](variant)
    assert isinstance(model, {'retinanet': RetinaNet, 'mask_rcnn': MaskRCNN}[task])
    assert parameter_counts(model) == PARAMS[task, variant]


@pytest.mark.parametrize('task, variant', list(PARAMS))
def test_official_state_dict_loads_strictly(task, variant):
    official = official_state_dict(task, variant)
    assert identify_mmdet(official) == (task, variant, 80)
    model = BUILD[task](variant)
    converted = CONVERT[task](official)
    model.load_state_dict(converted, strict=True)
    state = model.state_dict()
    signature = {'ti': 'patch_embed2.dconv.conv_offset.weight', 's': 'layers.0.downsample.dconv.conv_offset.weight'}
    assert torch.equal(state[f'backbone.body.{signature[variant]}'], official[f'backbone.{signature[variant]}'])
    assert torch.equal(state['backbone.fpn.inner_blocks.0.0.weight'], official['neck.lateral_convs.0.conv.weight'])
    if task == 'retinanet':
        assert torch.equal(state['backbone.fpn.extra_blocks.p6.weight'], official['neck.fpn_convs.3.conv.weight'])
        assert torch.equal(state['backbone.fpn.extra_blocks.p7.bias'], official['neck.fpn_convs.4.conv.bias'])
        assert torch.equal(state['head.classification_head.cls_logits.weight'], official['bbox_head.retina_cls.weight'])
        assert torch.equal(state['head.regression_head.conv.3.0.weight'], official['bbox_head.reg_convs.3.conv.weight'])
        return
    fc_cls, fc_reg = official['roi_head.bbox_head.fc_cls.weight'], official['roi_head.bbox_head.fc_reg.bias']
    cls_score = state['roi_heads.box_predictor.cls_score.weight']
    bbox_pred = state['roi_heads.box_predictor.bbox_pred.bias']
    assert torch.equal(cls_score[0], fc_cls[80]) and torch.equal(cls_score[1:], fc_cls[:80])  # background first
    assert torch.equal(bbox_pred[4:8], fc_reg[0:4]) and not bbox_pred[:4].any()  # class c at rows 4(c+1)..
    logits, mmdet_logits = (state['roi_heads.mask_predictor.mask_fcn_logits.weight'],
                            official['roi_head.mask_head.conv_logits.weight'])
    assert torch.equal(logits[1:], mmdet_logits) and not logits[0].any()
    assert torch.equal(state['roi_heads.mask_predictor.conv5_mask.weight'],
                       official['roi_head.mask_head.upsample.weight'])
    assert torch.equal(state['rpn.head.conv.0.0.weight'], official['rpn_head.rpn_conv.weight'])
    assert torch.equal(state['roi_heads.box_head.fc6.weight'], official['roi_head.bbox_head.shared_fcs.0.weight'])


def test_identify_reads_classes_and_refuses_other_checkpoints():
    for task in BUILD:
        assert identify_mmdet(official_state_dict(task, 's', num_classes=3)) == (task, 's', 3)
    name, converted, classes = convert_official({'state_dict': official_state_dict('mask_rcnn', 'ti', 5), 'meta': {}})
    assert (name, classes) == ('mask_rcnn_lit_ti', 5)
    mask_rcnn_lit('ti', num_classes=5).load_state_dict(converted, strict=True)

    segmenter = {k: torch.zeros(s) for k, s, _ in mmseg_semantic_fpn_layout('ti', 150)}
    other_backbone = official_state_dict('retinanet', 'ti')
    other_backbone['neck.lateral_convs.0.conv.weight'] = torch.zeros(256, 512, 1, 1)  # ResNet-50's C3
    no_lit = official_state_dict('retinanet', 's')
    del no_lit['backbone.layers.0.downsample.dconv.conv_offset.weight']
    for state_dict, message in ((lit_ti().state_dict(), 'neither'), (segmenter, 'neither'),
                                (other_backbone, 'match neither LIT-Ti'), (no_lit, 'backbone is not LIT-S')):
        with pytest.raises(ValueError, match=message):
            identify_mmdet(state_dict)
    with pytest.raises(ValueError, match="unexpected key 'decode_head"):
        retinanet_from_mmdet(segmenter)


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match=r"unknown settings \['score_thr'\].*score_thresh"):
        retinanet_lit('ti', score_thr=0.3)
    with pytest.raises(ValueError, match='num_classes must be at least 1'):
        mask_rcnn_lit('ti', num_classes=0)
    with pytest.raises(ValueError, match="unknown dense backbone variant 'm'"):
        retinanet_lit('m')


# --- the overrides, each against its own computation ------------------------------------------------------------

def test_anchors_are_mmdets_unrounded_floats_in_its_order():
    retina = retinanet_lit('ti').anchor_generator
    # mmdet: base size 8, octave scales 4 * 2^(i/3), ratio r = h/w: w = 8 * scale / sqrt(r), h = 8 * scale * sqrt(r);
    # anchor index = ratio index * 3 + scale index
    expected = [(-w / 2, -h / 2, w / 2, h / 2) for r in (0.5, 1.0, 2.0) for i in range(3)
                for w, h in [(8 * 4 * 2 ** (i / 3) / math.sqrt(r), 8 * 4 * 2 ** (i / 3) * math.sqrt(r))]]
    assert torch.allclose(retina.cell_anchors[0], torch.tensor(expected), atol=1e-5, rtol=0)
    assert torch.allclose(retina.cell_anchors[0][0], torch.tensor([-22.6274, -11.3137, 22.6274, 11.3137]), atol=1e-4)
    rpn = mask_rcnn_lit('ti').rpn.anchor_generator  # scale 8 at strides 4..64: one size per level
    assert torch.allclose(rpn.cell_anchors[0][0], torch.tensor([-22.6274, -11.3137, 22.6274, 11.3137]), atol=1e-4)
    assert torch.allclose(rpn.cell_anchors[4][2], torch.tensor([-181.0193, -362.0387, 181.0193, 362.0387]), atol=1e-3)


def test_anchor_strides_are_the_configured_ones_on_a_padded_batch():
    generator = retinanet_lit('ti').anchor_generator
    images = ImageList(torch.zeros(2, 3, 800, 1216), [(800, 1200), (790, 1216)])
    grids = [(100, 152), (50, 76), (25, 38), (13, 19), (7, 10)]  # P3..P7 of a 800x1216 batch
    anchors = generator(images, [torch.zeros(2, 256, h, w) for h, w in grids])
    assert len(anchors) == 2 and torch.equal(anchors[0], anchors[1])
    for level, ((h, w), stride) in enumerate(zip(grids, (8, 16, 32, 64, 128))):
        start = sum(gh * gw * 9 for gh, gw in grids[:level])
        level_anchors = anchors[0][start:start + h * w * 9].reshape(h, w, 9, 4)
        assert torch.equal(level_anchors[0, 0], generator.cell_anchors[level])  # centre offset 0
        assert torch.allclose(level_anchors[1:, :] - level_anchors[:-1, :], torch.tensor([0., stride, 0., stride]))
        assert torch.allclose(level_anchors[:, 1:] - level_anchors[:, :-1], torch.tensor([stride, 0., stride, 0.]))


def test_p7_is_a_conv_of_p6_without_relu():
    model = retinanet_lit('ti')
    extra = model.backbone.fpn.extra_blocks
    c5 = torch.randn(1, 512, 6, 8)
    p, names = extra([torch.zeros(1, 256, 6, 8)], [torch.zeros(1, 128, 24, 32), c5], ['3'])
    p6 = F.conv2d(c5, extra.p6.weight, extra.p6.bias, stride=2, padding=1)  # on C5 ("on input")
    p7 = F.conv2d(p6, extra.p7.weight, extra.p7.bias, stride=2, padding=1)
    assert names == ['3', 'p6', 'p7'] and (p6 < 0).any()
    assert torch.allclose(p[1], p6, atol=1e-5) and torch.allclose(p[2], p7, atol=1e-5)
    with_relu = F.conv2d(p6.relu(), extra.p7.weight, extra.p7.bias, stride=2, padding=1)
    assert not torch.allclose(p[2], with_relu, atol=1e-3)


def test_retinanet_test_postprocessing_ranks_anchors_then_class_wise_nms():
    model = retinanet_lit('ti', num_classes=2, topk_candidates=2)
    box_a, box_b, box_c = [0., 0., 10., 10.], [50., 50., 70., 70.], [20., 20., 30., 30.]
    # level 0: three anchors; scores per class. The top 2 anchors by their best class are A and B, so C (0.7 in
    # both classes) is dropped while A's weaker class (0.6) stays. Level 1: one anchor on A's box.
    levels = [([box_a, box_b, box_c], [[0.9, 0.6], [0.8, 0.01], [0.7, 0.7]]), ([box_a], [[0.5, 0.3]])]
    head_outputs = {'cls_logits': [torch.logit(torch.tensor([s])) for _, s in levels],
                    'bbox_regression': [torch.zeros(1, len(a), 4) for a, _ in levels]}  # zero deltas: boxes = anchors
    anchors = [[torch.tensor(a) for a, _ in levels]]
    [result] = model.postprocess_detections(head_outputs, anchors, [(100, 100)])
    # above 0.05: A/0 .9, A/1 .6, B/0 .8 (level 0), A/0 .5, A/1 .3 (level 1); class-wise NMS 0.5 across levels
    # removes level 1's copies of A in both classes
    assert torch.allclose(result['scores'], torch.tensor([0.9, 0.8, 0.6]))
    assert result['labels'].tolist() == [0, 0, 1]
    assert result['boxes'].tolist() == [box_a, box_b, box_a]
    model.detections_per_img = 2
    [result] = model.postprocess_detections(head_outputs, anchors, [(100, 100)])
    assert result['labels'].tolist() == [0, 0] and result['boxes'].tolist() == [box_a, box_b]


def test_mask_rcnn_box_postprocessing_drops_background_and_labels_from_zero():
    model = mask_rcnn_lit('ti', num_classes=2)
    proposals = [torch.tensor([[10., 10., 50., 40.]])]
    probs = torch.tensor([[0.5, 0.3, 0.2]])  # torchvision's order: background first
    boxes, scores, labels = model.roi_heads.postprocess_detections(probs.log(), torch.zeros(1, 12), proposals,
                                                                   [(100, 100)])
    assert torch.allclose(scores[0], torch.tensor([0.3, 0.2]))
    assert labels[0].tolist() == [0, 1] and boxes[0].tolist() == [[10., 10., 50., 40.]] * 2


def test_mask_rcnn_without_proposals_returns_no_detections():
    """An image whose RPN keeps no proposal (e.g. every one below the score floor) gets empty results, not a crash
    in the box decoding (torchvision's decode leaves zero RoIs as a (0, (K+1)*4) tensor)."""
    model = mask_rcnn_lit('ti', num_classes=3, **SMALL['mask_rcnn']).eval()
    model.rpn.forward = lambda images, features, targets=None: ([torch.zeros(0, 4) for _ in images.tensors], {})
    with torch.no_grad():
        results = model([IMAGES[0]])
    assert results[0]['boxes'].shape == (0, 4) and results[0]['labels'].shape == (0,)
    assert results[0]['masks'].shape[0] == 0 and results[0]['scores'].shape == (0,)


def test_roi_align_is_aligned_with_adaptive_sampling_and_mmdets_levels():
    pool = mask_rcnn_lit('ti').roi_heads.box_roi_pool
    assert (pool.sampling_ratio, pool.aligned, pool.strides, pool.output_size) == (0, True, (4, 8, 16, 32), (7, 7))
    features = {str(i): torch.randn(2, 8, 256 // s, 320 // s) for i, s in enumerate((4, 8, 16, 32))}
    sides = [10., 55.9, 56., 111.9, 112., 224., 447., 448., 1000.]
    boxes = [torch.tensor([[3., 5., 3 + s, 5 + s] for s in sides]), torch.tensor([[30.5, 20.25, 90., 60.]])]
    pooled = pool(features, boxes, [(256, 320)] * 2)
    for image, image_boxes in enumerate(boxes):
        for box in image_boxes:
            scale = math.sqrt(float((box[2] - box[0]) * (box[3] - box[1])))
            level = min(max(math.floor(math.log2(scale / 56 + 1e-6)), 0), 3)  # mmdet's map_roi_levels
            roi = torch.cat([torch.tensor([float(image)]), box])[None]
            expected = roi_align(features[str(level)], roi, 7, 1 / (4 * 2 ** level), sampling_ratio=0, aligned=True)
            index = sum(len(b) for b in boxes[:image]) + image_boxes.tolist().index(box.tolist())
            assert torch.allclose(pooled[index], expected[0], atol=1e-6), (box, level)


def test_rpn_settings_and_l1_loss():
    rpn = mask_rcnn_lit('ti').rpn
    assert rpn._pre_nms_top_n == dict(training=2000, testing=1000)
    assert rpn._post_nms_top_n == dict(training=1000, testing=1000)
    assert rpn.nms_thresh == 0.7 and rpn.min_size == 0
    labels = [torch.tensor([1., 0., -1.])]  # one positive, one negative, one ignored: all are sampled
    targets = [torch.zeros(3, 4)]
    deltas = torch.tensor([[0.05, -0.05, 0.05, 0.05], [9., 9., 9., 9.], [9., 9., 9., 9.]])
    _, box_loss = rpn.compute_loss(torch.zeros(3, 1), deltas, labels, targets)
    assert torch.isclose(box_loss, torch.tensor(4 * 0.05 / 2))  # L1 over the positive / 2 sampled anchors


def test_rpn_keeps_zero_size_proposals_as_mmdet_2_11():
    # mmdet 2.11 RPNHead._get_bboxes filters only when min_bbox_size > 0: with the official 0, a proposal clipped to
    # zero width (here one past the right edge) still goes through NMS and counts against max_per_img (mmdet 2.13+
    # and torchvision drop it)
    rpn = mask_rcnn_lit('ti').rpn.eval()
    proposals = torch.tensor([[[70., 10., 90., 30.], [10., 10., 30., 40.], [5., 50., 25., 50.]]])  # (1, 3, 4)
    objectness = torch.tensor([[3.], [2.], [1.]])
    boxes, scores = rpn.filter_proposals(proposals, objectness, [(60, 64)], [3])
    assert boxes[0].tolist() == [[64., 10., 64., 30.], [10., 10., 30., 40.], [5., 50., 25., 50.]]
    assert torch.allclose(scores[0], torch.sigmoid(torch.tensor([3., 2., 1.])))


def test_retinanet_losses_are_normalised_over_the_batch_positives():
    model = retinanet_lit('ti', num_classes=3).train()
    grids = [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]
    anchors = model.anchor_generator(ImageList(torch.zeros(2, 3, 128, 160), [(128, 160)] * 2),
                                     [torch.zeros(2, 256, h, w) for h, w in grids])
    g = torch.Generator().manual_seed(0)
    total = len(anchors[0])
    head_outputs = {'cls_logits': torch.randn(2, total, 3, generator=g),
                    'bbox_regression': torch.randn(2, total, 4, generator=g)}
    targets = [{'boxes': torch.tensor([[10., 10., 60., 50.]]), 'labels': torch.tensor([1])},
               {'boxes': torch.tensor([[20., 30., 120., 110.], [5., 5., 40., 70.]]), 'labels': torch.tensor([0, 2])}]
    matcher = Matcher(0.5, 0.4, allow_low_quality_matches=True)
    positives = [int((matcher(box_iou(t['boxes'], a)) >= 0).sum()) for t, a in zip(targets, anchors)]
    assert positives[0] != positives[1]
    single = [model.compute_loss([t], {k: v[i:i + 1] for k, v in head_outputs.items()}, [anchors[i]])
              for i, t in enumerate(targets)]
    batch = model.compute_loss(targets, head_outputs, anchors)
    for key in ('classification', 'bbox_regression'):
        summed = sum(s[key] * n for s, n in zip(single, positives))  # each image's sum
        assert torch.isclose(batch[key], summed / sum(positives))  # mmdet; torchvision averages per-image means
        assert not torch.isclose(batch[key], (single[0][key] + single[1][key]) / 2)


def test_resize_uses_mmcvs_size_rule_and_pads_to_32():
    assert mmdet_resize_size(375, 500) == (800, 1067)  # 500 * 800/375 = 1066.67: torchvision floors to 1066
    assert mmdet_resize_size(480, 640) == (800, 1067) and mmdet_resize_size(100, 1000) == (133, 1333)
    transform = retinanet_lit('ti').transform.eval()
    images, _ = transform([torch.rand(3, 375, 500), torch.rand(3, 300, 250)])
    assert images.image_sizes == [(800, 1067), (960, 800)] and images.tensors.shape == (2, 3, 960, 1088)
    assert not images.tensors[1, :, :, 800:].any()  # zero padding after normalisation, as mmdet's Pad
    image = torch.full((3, 10, 10), 0.5)
    normalised, _ = transform([image])
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(normalised.tensors[0, :, 0, 0], (0.5 - mean) / std)


def test_masks_are_pasted_as_mmdet_with_a_threshold():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(2, 1, 28, 28, generator=g)
    # a 28-pixel box at integer corners samples every mask cell at its centre: the paste is the mask itself
    boxes = torch.tensor([[10., 20., 38., 48.], [0., 0., 0., 5.]])  # the second has zero width: nothing pasted
    pasted = paste_masks(probs, boxes, (60, 50))
    assert pasted.shape == (2, 1, 60, 50) and pasted.dtype == torch.bool
    expected = torch.zeros(60, 50, dtype=torch.bool)
    expected[20:48, 10:38] = probs[0, 0] >= 0.5
    assert torch.equal(pasted[0, 0], expected) and not pasted[1].any()


# --- forward passes ---------------------------------------------------------------------------------------------

IMAGES = [torch.rand(3, 100, 150, generator=torch.Generator().manual_seed(1)),
          torch.rand(3, 128, 90, generator=torch.Generator().manual_seed(2))]


@pytest.mark.parametrize('task', list(BUILD))
def test_eval_forward_returns_detections_in_original_pixels(task):
    torch.manual_seed(0)
    # random heads score everything near their prior: keep all, and few classes so class-wise NMS stays cheap
    threshold = {'retinanet': dict(score_thresh=0.0, detections_per_img=20), 'mask_rcnn': dict(box_score_thresh=0.0)}
    model = BUILD[task]('ti', num_classes=3, **SMALL[task], **threshold[task]).eval()
    with torch.no_grad():
        results = model(IMAGES)
    for result, image in zip(results, IMAGES):
        height, width = image.shape[-2:]
        boxes = result['boxes']
        assert len(boxes) == {'retinanet': 20, 'mask_rcnn': 5}[task]
        assert (boxes[:, 2:] >= boxes[:, :2]).all() and (boxes >= 0).all()
        assert (boxes[:, 0::2] <= width).all() and (boxes[:, 1::2] <= height).all()
        assert (result['labels'] >= 0).all() and (result['labels'] < 3).all()
        assert (result['scores'][:-1] >= result['scores'][1:]).all() and (result['scores'] <= 1).all()
        if task == 'mask_rcnn':
            masks = result['masks']
            assert masks.shape == (len(boxes), 1, height, width) and masks.dtype == torch.bool
            for mask, (x0, y0, x1, y1) in zip(masks[:, 0], boxes.tolist()):  # only within the box (+1 px)
                ys, xs = torch.where(mask)
                assert len(xs) == 0 or (xs.min() >= math.floor(x0) - 1 and xs.max() < math.ceil(x1) + 1
                                        and ys.min() >= math.floor(y0) - 1 and ys.max() < math.ceil(y1) + 1)


@pytest.mark.parametrize('task', list(BUILD))
def test_train_forward_gives_finite_losses_that_backpropagate(task):
    torch.manual_seed(0)
    model = BUILD[task]('ti', num_classes=4, **SMALL[task]).train()
    masks = torch.zeros(2, 100, 150, dtype=torch.uint8)
    masks[0, 20:80, 10:60] = 1
    masks[1, 5:40, 70:140] = 1
    targets = [{'boxes': torch.tensor([[10., 20., 60., 80.], [70., 5., 140., 40.]]), 'labels': torch.tensor([0, 3]),
                'masks': masks},
               {'boxes': torch.zeros(0, 4), 'labels': torch.zeros(0, dtype=torch.long),
                'masks': torch.zeros(0, 128, 90, dtype=torch.uint8)}]
    losses = model(IMAGES, targets)
    expected = {'retinanet': {'classification', 'bbox_regression'},
                'mask_rcnn': {'loss_classifier', 'loss_box_reg', 'loss_mask', 'loss_objectness', 'loss_rpn_box_reg'}}
    assert set(losses) == expected[task]
    assert all(torch.isfinite(v) for v in losses.values())
    if task == 'mask_rcnn':  # labels are 0-based: class 0 is an object (GT boxes are positive proposals)
        assert losses['loss_mask'] > 0 and losses['loss_box_reg'] > 0
    sum(losses.values()).backward()
    assert model.backbone.body.patch_embed1.proj.weight.grad.abs().sum() > 0
    head = model.head.classification_head.cls_logits if task == 'retinanet' else model.roi_heads.mask_predictor[-1]
    assert head.weight.grad.abs().sum() > 0

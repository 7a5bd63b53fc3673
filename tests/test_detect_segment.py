"""`lit detect` / `lit segment` and the dense models through the one factory: lit dense checkpoints and official
release files (built from the zoo's official layouts) via --checkpoint, the released weights by name through the
download/cache/verify path (a local server, no network), classification weights into a dense backbone, the PVT-S
w/ MSA release, the drawing code on known boxes / masks / maps, the COCO results file, and every bad input as one
line with a non-zero exit."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import lit
from test_dense_zoo import official_state_dict
from test_weights import serve, use_cache
from litcli.core.analysis import dense
from litcli.core.errors import CheckpointError, LitError, UsageError
from litcli.core.modelio import weights
from litcli.core.modelio.checkpoint import detect_variant, save_checkpoint
from litcli.core.modelio.factory import (create_dense_model, create_model, dense_checkpoint, load_dense_model,
                                         load_model)
from litcli.models.dense import dense_state_dict_from_classification
from litcli.models.dense_classes import ADE20K_CLASSES, COCO_CATEGORY_IDS, COCO_CLASSES

PHOTOS = Path(__file__).parents[1] / 'assets' / 'photos'
CAT = PHOTOS / 'chelsea.jpg'
SMALL = (256, 160)  # --img-scale of the tests: the official pipeline at a CPU-friendly size


def release_file(name: str) -> dict:
    """An official release file of ``name`` as mmdet / mmseg write it: official key names and shapes, random
    values of a trained network's scale (N(0, 0.05^2); BatchNorm variances positive: at N(0, 1) the features reach
    1e7 and the RPN proposes nothing), and the checkpoint's ``meta``."""
    state_dict = official_state_dict(name, 150 if name.startswith('semantic') else 80)
    state_dict = {k: v.abs() + 0.5 if k.endswith('running_var') else v * 0.05 if v.is_floating_point() else v
                  for k, v in state_dict.items()}
    return {'state_dict': state_dict, 'meta': {'mmdet_version': '2.11.0', 'epoch': 12}}


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """Randomly initialised models saved as lit dense checkpoints (recording a small test scale), official release
    files of two models, a classification checkpoint and a file that is not an image."""
    folder = tmp_path_factory.mktemp('dense')
    torch.manual_seed(0)
    paths = {}
    for name in ('retinanet_lit_ti', 'mask_rcnn_lit_ti', 'semantic_fpn_lit_ti'):
        paths[name] = folder / f'{name}.pt'
        save_checkpoint(dense_checkpoint(create_dense_model(name), name, img_scale=SMALL), paths[name])
    for name in ('mask_rcnn_lit_ti', 'semantic_fpn_lit_ti'):
        paths[f'official_{name}'] = folder / f'official_{name}.pth'
        torch.save(release_file(name), paths[f'official_{name}'])
    paths['classifier'] = folder / 'lit_ti.pth'
    torch.save({'model': create_model('lit_ti').state_dict()}, paths['classifier'])
    paths['not_an_image'] = folder / 'photo.jpg'
    paths['not_an_image'].write_text('not a JPEG')
    return paths


def one_line_error(result, code: int, *fragments):
    """A one-line error (no traceback) with exit ``code`` that says each of ``fragments``."""
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith('Error: '), result.output
    assert all(f in lines[0] for f in fragments), result.output
    return lines[0]


# ---- the drawing code on known inputs ----

def test_drawn_boxes_and_masks_have_their_class_colour():
    image = torch.full((3, 60, 80), 100, dtype=torch.uint8)
    mask = torch.zeros((1, 60, 80), dtype=torch.bool)
    mask[0, 25:45, 15:35] = True
    found = dict(boxes=torch.tensor([[10., 20., 40., 50.]]), scores=torch.tensor([0.9]), labels=torch.tensor([3]),
                 masks=mask)
    colours = dense.class_colours(80)
    drawn = dense.draw_detections(image, found, COCO_CLASSES, colours, mask_alpha=0.5, line_px=2)
    assert drawn.shape == image.shape and drawn.dtype == torch.uint8
    box_colour = torch.tensor(colours[3], dtype=torch.uint8)
    for y, x in ((35, 10), (35, 11), (35, 40), (49, 25), (50, 25)):  # the left, right and bottom edges
        assert torch.equal(drawn[:, y, x], box_colour), (y, x, drawn[:, y, x])
    blended = ((100 + torch.tensor(colours[3], dtype=torch.float32)) / 2)
    assert (drawn[:, 40, 30].float() - blended).abs().max() <= 1  # inside the mask, off the label and lines
    assert torch.equal(drawn[:, 5, 70], image[:, 5, 70]) and torch.equal(drawn[:, 55, 5], image[:, 55, 5])


def test_legend_lists_exactly_the_classes_present():
    label_map = torch.full((40, 50), 7, dtype=torch.long)
    label_map[:, :30] = 3  # 60% class 3, 40% class 7
    image = torch.full((3, 40, 50), 200, dtype=torch.uint8)
    colours = dense.class_colours(150)
    picture, legend = dense.draw_segmentation(image, label_map, ADE20K_CLASSES, colours, alpha=1.0)
    assert [(e['index'], e['name'], e['fraction']) for e in legend] == [(3, 'floor', 0.6), (7, 'bed', 0.4)]
    assert tuple(picture[10, 5]) == colours[3] and tuple(picture[10, 45]) == colours[7]  # alpha 1: the colours
    for row, entry in enumerate(legend):
        x0, y0, x1, y1 = dense.legend_swatch_box(50, row)
        assert (picture[y0:y1 + 1, x0:x1 + 1] == colours[entry['index']]).all()
    x0, y0, x1, y1 = dense.legend_swatch_box(50, len(legend))  # no third swatch
    assert (picture[y0:y1 + 1, x0:x1 + 1] == 255).all()


def test_label_map_png_holds_the_labels_and_the_palette(tmp_path):
    label_map = torch.tensor([[0, 1, 149], [5, 5, 0]])
    colours = dense.class_colours(150)
    dense.label_map_image(label_map, colours).save(tmp_path / 'labels.png')
    with Image.open(tmp_path / 'labels.png') as saved:
        assert saved.mode == 'P'
        assert np.array_equal(np.asarray(saved), label_map.numpy())
        palette = saved.getpalette()
    assert [tuple(palette[3 * i:3 * i + 3]) for i in (0, 1, 149)] == [colours[0], colours[1], colours[149]]


def test_coco_results_fields_and_ids():
    found = dict(boxes=torch.tensor([[10., 20., 40., 70.], [0., 0., 5., 5.]]), scores=torch.tensor([0.9, 0.25]),
                 labels=torch.tensor([0, 79]))
    results = dense.coco_results(397133, found, COCO_CATEGORY_IDS)
    assert results == [dict(image_id=397133, category_id=1, bbox=[10.0, 20.0, 30.0, 50.0], score=0.9),
                       dict(image_id=397133, category_id=90, bbox=[0.0, 0.0, 5.0, 5.0], score=0.25)]
    assert dense.image_ids(['000000397133', '000000000139']) == [397133, 139]
    assert dense.image_ids(['cat', '000000000139']) == [1, 2]


# ---- lit detect / lit segment on the asset photos ----

@pytest.mark.slow
def test_detect_draws_and_writes_coco_results(files, tmp_path):
    out = tmp_path / 'detect'
    result = lit('detect', CAT, PHOTOS / 'coffee.jpg', '--checkpoint', files['retinanet_lit_ti'], '--score-thr', 0,
                 '--out', out, '--json')
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report['model']['name'] == 'retinanet_lit_ti' and report['model']['preprocessing']['img_scale'] == [256, 160]
    coco = json.loads((out / 'detections.json').read_text())
    assert coco and {tuple(sorted(d)) for d in coco} == {('bbox', 'category_id', 'image_id', 'score')}
    for item, image_id in zip(report['images'], (1, 2)):
        with Image.open(item['image']) as photo:
            width, height = photo.size
        with Image.open(item['png']) as png:
            assert png.size == (width, height)  # drawn on the original photo
        mine = [d for d in coco if d['image_id'] == image_id]
        assert len(mine) == len(item['detections']) > 0
        for d in mine:  # original-image pixels, not the 256x160 the model saw
            x, y, w, h = d['bbox']
            assert 0 <= x and 0 <= y and w >= 0 and h >= 0 and x + w <= width + 0.01 and y + h <= height + 0.01
            assert d['category_id'] in COCO_CATEGORY_IDS and 0 <= d['score'] <= 1
        assert max(d['bbox'][0] + d['bbox'][2] for d in mine) > 256  # spans beyond the resized width
    again = lit('detect', CAT, '--checkpoint', files['retinanet_lit_ti'], '--out', out)
    one_line_error(again, 1, 'chelsea.png exists', '--force')
    assert lit('detect', CAT, '--checkpoint', files['retinanet_lit_ti'], '--out', out, '--force').exit_code == 0


@pytest.mark.slow
def test_detect_mask_rcnn_from_an_official_release_file(files, tmp_path):
    """The mmdet file as it is, recognised as Mask R-CNN LIT-Ti; masks are drawn (RLEs need pycocotools)."""
    result = lit('detect', CAT, '--checkpoint', files['official_mask_rcnn_lit_ti'], '--score-thr', 0,
                 '--img-scale', '256x160', '--out', tmp_path, '--json')
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report['model']['name'] == 'mask_rcnn_lit_ti' and report['images'][0]['detections']
    coco = json.loads((tmp_path / 'detections.json').read_text())
    has_rle = dense.mask_encoder() is not None
    assert all(('segmentation' in d) == has_rle for d in coco)
    assert report['masks'].startswith('RLE in' if has_rle else 'drawn; not in detections.json (pip install pycocotools')


def test_segment_writes_overlay_legend_and_label_map(files, tmp_path):
    result = lit('segment', CAT, '--checkpoint', files['semantic_fpn_lit_ti'], '--out', tmp_path, '--json')
    assert result.exit_code == 0, result.output
    item = json.loads(result.output)['images'][0]
    with Image.open(CAT) as photo, Image.open(item['label_map']) as labels, Image.open(item['png']) as png:
        assert labels.size == photo.size and labels.mode == 'P'
        assert png.size[1] >= photo.size[1] and png.size[0] > photo.size[0]  # the legend to the right
        present = np.unique(np.asarray(labels))
    assert sorted(c['index'] for c in item['classes']) == present.tolist()
    assert all(c['name'] == ADE20K_CLASSES[c['index']] for c in item['classes'])
    assert abs(sum(c['fraction'] for c in item['classes']) - 1) < 1e-9


def test_segment_an_official_release_file(files, tmp_path):
    loaded = load_dense_model(files['official_semantic_fpn_lit_ti'], kind='segmentation')
    assert (loaded.name, loaded.num_classes, loaded.class_names[0]) == ('semantic_fpn_lit_ti', 150, 'wall')
    expected = release_file('semantic_fpn_lit_ti')['state_dict']['decode_head.conv_seg.weight']
    assert torch.equal(loaded.model.state_dict()['decode_head.conv_seg.weight'], expected)
    assert loaded.preprocessing['img_scale'] == (2048, 512) and loaded.preprocessing['size_divisible'] is None
    result = lit('segment', CAT, '--checkpoint', files['official_semantic_fpn_lit_ti'], '--img-scale', '256x160',
                 '--out', tmp_path)
    assert result.exit_code == 0 and (tmp_path / 'chelsea-labels.png').is_file(), result.output


# ---- bad input: one line, non-zero exit ----

def test_bad_input_is_one_line(files, tmp_path):
    cat = str(CAT)
    one_line_error(lit('detect', cat, '--pretrained', 'retinanet_lit_xl'), 2, "unknown dense model 'retinanet_lit_xl'",
                   'retinanet_lit_ti')
    one_line_error(lit('detect', cat, '--checkpoint', files['classifier']), 1, 'lit_ti image-classification',
                   'lit predict --checkpoint')
    one_line_error(lit('detect', cat, '--checkpoint', files['semantic_fpn_lit_ti']), 1, 'semantic_fpn_lit_ti',
                   'use lit segment')
    one_line_error(lit('segment', cat, '--pretrained', 'retinanet_lit_ti'), 2, 'use lit detect')
    one_line_error(lit('predict', cat, '--checkpoint', files['official_mask_rcnn_lit_ti']), 1,
                   'mask_rcnn_lit_ti (detection) checkpoint', 'use lit detect')
    one_line_error(lit('detect', files['not_an_image'], '--checkpoint', files['retinanet_lit_ti']), 1,
                   'cannot read', 'as an image')
    for bad in ('1.5', '-0.1'):
        one_line_error(lit('detect', cat, '--checkpoint', files['retinanet_lit_ti'], '--score-thr', bad), 2,
                       f'--score-thr {bad} is outside [0, 1]')
    one_line_error(lit('detect', cat), 2, '--checkpoint PATH or --pretrained NAME')
    one_line_error(lit('segment', cat, '--checkpoint', files['semantic_fpn_lit_ti'], '--img-scale', '512x16'), 2,
                   "--img-scale '512x16'", 'at least 32')
    with pytest.raises(UsageError, match='outside'):  # the checks are run()'s, for Python callers too
        from litcli.commands import detect
        detect.run([cat], files['retinanet_lit_ti'], score_thr=2)
    with pytest.raises(CheckpointError, match='holds mask_rcnn_lit_ti weights, not retinanet_lit_ti'):
        load_dense_model(files['official_mask_rcnn_lit_ti'], 'retinanet_lit_ti')


# ---- the released weights by name: one download / cache / verify path ----

@pytest.mark.slow
def test_released_dense_weights_download_verify_and_list(monkeypatch, tmp_path):
    """--pretrained NAME downloads the release file once (verified: recognised as that model, strict load),
    then loads from the cache; a file of another model is refused and nothing cached; lit weights lists both."""
    import io

    body = io.BytesIO()
    torch.save(release_file('semantic_fpn_lit_ti'), body)
    with serve({'sem_fpn_lit_ti.pth': body.getvalue(), 'sem_fpn_lit_s.pth': body.getvalue()}) as server:
        use_cache(monkeypatch, tmp_path, server.base)
        assert weights.weights_url('semantic_fpn_lit_ti') == f'{server.base}/sem_fpn_lit_ti.pth'
        loaded = load_dense_model(name='semantic_fpn_lit_ti', pretrained=True, log=lambda m: None)
        assert loaded.pretrained == f'{server.base}/sem_fpn_lit_ti.pth' and loaded.weights == 'model'
        cache = tmp_path / 'torch' / 'hub' / 'checkpoints'
        assert weights.cached('semantic_fpn_lit_ti') == cache / 'sem_fpn_lit_ti.pth'
        expected = release_file('semantic_fpn_lit_ti')['state_dict']['backbone.pos_embed1']
        assert torch.equal(loaded.model.state_dict()['backbone.pos_embed1'], expected)
        load_dense_model(name='semantic_fpn_lit_ti', pretrained=True)
        assert server.requests == ['/v1.0/sem_fpn_lit_ti.pth']  # the second load: from the cache
        with pytest.raises(LitError, match='holds semantic_fpn_lit_ti weights, not the semantic_fpn_lit_s release'):
            load_dense_model(name='semantic_fpn_lit_s', pretrained=True, log=lambda m: None)
        assert weights.cached('semantic_fpn_lit_s') is None
        listed = json.loads(lit('weights', '--json').output)
        rows = {m['name']: m for m in listed['dense']}
        assert rows['semantic_fpn_lit_ti']['cached'] and not rows['retinanet_lit_ti']['cached']
        assert rows['mask_rcnn_lit_s']['paper'] == {'box_ap': 42.9, 'mask_ap': 39.6}
        assert rows['retinanet_lit_ti']['params'] == 29_621_708
    monkeypatch.delenv(weights.URL_ENV)
    assert weights.weights_url('retinanet_lit_s') == \
        'https://github.com/ziplab/LIT/releases/download/v2.0/retina_lit_s.pth'
    one_line_error(lit('weights', '--download', 'retinanet_lit_xl'), 2, 'retinanet_lit_xl has no released weights')


@pytest.mark.slow
def test_classification_weights_initialise_a_dense_backbone(monkeypatch, tmp_path):
    """backbone_weights='lit_s' takes the cached lit_s.pth (no download: LIT_WEIGHTS_URL points nowhere) into
    retinanet_lit_s's backbone: tables resampled to the dense grid, the rest as in the file; a path works too;
    LIT-Ti weights into a LIT-S backbone are refused in one line."""
    use_cache(monkeypatch, tmp_path, 'http://127.0.0.1:9/v1.0')
    torch.manual_seed(1)
    classifier = create_model('lit_s').state_dict()
    weights.cache_path('lit_s').parent.mkdir(parents=True)
    torch.save({'model': classifier}, weights.cache_path('lit_s'))
    model = create_dense_model('retinanet_lit_s', backbone_weights='lit_s')
    expected = dense_state_dict_from_classification(classifier, 's', 'detection')
    body = model.backbone.body.state_dict()
    assert set(body) == set(expected) and all(torch.equal(body[k], v) for k, v in expected.items())
    table = 'layers.2.blocks.0.attn.relative_position_bias_table'
    assert classifier[table].shape == (27 ** 2, 12) and body[table].shape == (99 ** 2, 12)  # 224 px -> 800 px grid
    assert torch.equal(body['patch_embed.proj.weight'], classifier['patch_embed.proj.weight'])
    from_path = create_dense_model('retinanet_lit_s', backbone_weights=weights.cache_path('lit_s'))
    assert torch.equal(from_path.backbone.body.state_dict()[table], body[table])
    ti = tmp_path / 'lit_ti.pth'
    torch.save(create_model('lit_ti').state_dict(), ti)
    with pytest.raises(CheckpointError, match='cannot initialise the backbone of semantic_fpn_lit_s'):
        create_dense_model('semantic_fpn_lit_s', backbone_weights=ti)


# The official PVT-S w/ MSA (classification/code_for_lit_ti/pvt_full_msa.py, ``pvt_small_full_msa``): patch
# embeddings conv + LayerNorm (4x4 then 2x2), absolute position embeddings (stage 4 with the class token), blocks
# of full attention (qkv with bias) and MLP in every stage, final norm, classifier.
PVT_DIMS, PVT_DEPTHS, PVT_MLP = (64, 128, 320, 512), (3, 4, 6, 3), (8, 8, 4, 4)


def official_pvt_s_msa_layout():
    rows, previous, tokens = [], 3, (56 * 56, 28 * 28, 14 * 14, 7 * 7 + 1)
    for i, (dim, depth, ratio) in enumerate(zip(PVT_DIMS, PVT_DEPTHS, PVT_MLP), 1):
        patch = 4 if i == 1 else 2
        rows += [(f'patch_embed{i}.proj.weight', (dim, previous, patch, patch)), (f'patch_embed{i}.proj.bias', (dim,)),
                 (f'patch_embed{i}.norm.weight', (dim,)), (f'patch_embed{i}.norm.bias', (dim,)),
                 (f'pos_embed{i}', (1, tokens[i - 1], dim))]
        for j in range(depth):
            b = f'block{i}.{j}'
            rows += [(f'{b}.norm1.weight', (dim,)), (f'{b}.norm1.bias', (dim,)),
                     (f'{b}.attn.qkv.weight', (3 * dim, dim)), (f'{b}.attn.qkv.bias', (3 * dim,)),
                     (f'{b}.attn.proj.weight', (dim, dim)), (f'{b}.attn.proj.bias', (dim,)),
                     (f'{b}.norm2.weight', (dim,)), (f'{b}.norm2.bias', (dim,)),
                     (f'{b}.mlp.fc1.weight', (dim * ratio, dim)), (f'{b}.mlp.fc1.bias', (dim * ratio,)),
                     (f'{b}.mlp.fc2.weight', (dim, dim * ratio)), (f'{b}.mlp.fc2.bias', (dim,))]
        previous = dim
    return rows + [('norm.weight', (512,)), ('norm.bias', (512,)), ('cls_token', (1, 1, 512)),
                   ('head.weight', (1000, 512)), ('head.bias', (1000,))]


def test_pvt_s_msa_release_loads_strictly(monkeypatch, tmp_path):
    """pvt_full_msa.pth (official names and shapes) is recognised as pvt_s_msa and loads strictly by name."""
    import io
    import timm

    g = torch.Generator().manual_seed(0)
    official = {k: torch.randn(shape, generator=g) for k, shape in official_pvt_s_msa_layout()}
    assert detect_variant(official) == 'pvt_s_msa'
    url = 'https://github.com/zhuang-group/LIT/releases/download/v2.1/pvt_full_msa.pth'
    assert weights.published_url('pvt_s_msa') == url == timm.models.get_pretrained_cfg('pvt_s_msa').url
    body = io.BytesIO()
    torch.save({'model': official}, body)
    with serve({'pvt_full_msa.pth': body.getvalue()}) as server:
        use_cache(monkeypatch, tmp_path, server.base)
        loaded = load_model(variant='pvt_s_msa', pretrained=True, log=lambda m: None)
        assert server.requests == ['/v1.0/pvt_full_msa.pth']
    got = loaded.model.state_dict()
    assert set(got) == set(official) and all(torch.equal(got[k], v) for k, v in official.items())
    assert weights.cached('pvt_s_msa') == tmp_path / 'torch' / 'hub' / 'checkpoints' / 'pvt_full_msa.pth'


def test_a_file_that_does_not_fit_names_the_keys(tmp_path):
    broken = release_file('semantic_fpn_lit_ti')
    del broken['state_dict']['decode_head.scale_heads.3.4.conv.weight']
    torch.save(broken, tmp_path / 'broken.pth')
    with pytest.raises(CheckpointError, match=r'does not fit semantic_fpn_lit_ti: 1 missing keys '
                                              r'\(decode_head\.scale_heads\.3\.4\.conv\.weight\)'):
        load_dense_model(tmp_path / 'broken.pth')


def test_a_safetensors_file_of_a_dense_model_loads(tmp_path):
    """A safetensors state dict with the lit dense checkpoint's metadata in its header (what an export holds)."""
    from safetensors.torch import save_file

    torch.manual_seed(2)
    model = create_dense_model('semantic_fpn_lit_ti', num_classes=3)
    saved = dense_checkpoint(model, 'semantic_fpn_lit_ti', ['sky', 'road', 'tree'], img_scale=SMALL)
    config = {k: v for k, v in saved.items() if k != 'model'}
    save_file({k: v.contiguous() for k, v in saved['model'].items()}, tmp_path / 'sem.safetensors',
              metadata={'lit_config': json.dumps(config)})
    loaded = load_dense_model(tmp_path / 'sem.safetensors')
    assert (loaded.name, loaded.class_names, loaded.category_ids) == ('semantic_fpn_lit_ti', ['sky', 'road', 'tree'],
                                                                      [1, 2, 3])
    assert loaded.preprocessing['img_scale'] == SMALL
    got = loaded.model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in model.state_dict().items())


def test_segment_a_very_wide_image():
    """A 700x10 image resized to fit 256x160 is 4 px high, below the backbone's one stage-4 token: it is padded
    for the network (the logits cropped back), not a traceback; the map covers the original image."""
    torch.manual_seed(0)
    model = create_dense_model('semantic_fpn_lit_ti', num_classes=3).eval()
    preprocessing = dict(img_scale=SMALL, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    for height, width in ((10, 700), (700, 10)):
        image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
        label_map = dense.segment(model, image, torch.device('cpu'), preprocessing)
        assert label_map.shape == (height, width) and 0 <= label_map.min() and label_map.max() < 3


def test_no_output_file_takes_another_images_name(files, tmp_path):
    """x.png's label map and the overlay of x-labels.png would both be x-labels.png: each image gets its own
    files (and 'a', 'a' from two folders plus 'a-1' likewise)."""
    photos = tmp_path / 'photos'
    (photos / 'sub').mkdir(parents=True)
    with Image.open(CAT) as cat:
        for name, size in (('x.png', (40, 30)), ('x-labels.png', (50, 30)), ('a.png', (30, 40)),
                           ('sub/a.png', (30, 50)), ('a-1.png', (30, 60))):
            cat.resize(size).save(photos / name)
    result = lit('segment', photos, '--checkpoint', files['semantic_fpn_lit_ti'], '--out', tmp_path / 'out', '--json')
    assert result.exit_code == 0, result.output
    images = json.loads(result.output)['images']
    written = [item[k] for item in images for k in ('png', 'label_map')]
    assert len(set(written)) == len(written) == 10, written
    for item in images:
        with Image.open(item['image']) as photo, Image.open(item['label_map']) as labels, \
                Image.open(item['png']) as png:
            assert labels.mode == 'P' and labels.size == photo.size and png.size[0] > photo.size[0]
    assert stems_unique_for(['x', 'x-labels'], lambda s: [f'{s}.png', f'{s}-labels.png'])


def stems_unique_for(names, outputs):
    stems = dense.unique_stems([Path(f'{n}.jpg') for n in names], outputs)
    files = [f for s in stems for f in outputs(s)]
    return len(set(files)) == len(files)


def test_a_folder_is_read_one_image_at_a_time(files, tmp_path, monkeypatch):
    """Every image is checked before any work, but only the one being segmented is held decoded: a folder of many
    photos does not need them all in memory at once."""
    import gc
    import weakref

    for i in range(3):
        with Image.open(CAT) as cat:
            cat.resize((40, 30)).save(tmp_path / f'{i}.png')
    alive, real_segment = [], dense.segment

    def segment(model, picture, *args):
        gc.collect()
        assert all(ref() is None for ref in alive), 'an earlier picture is still held'
        alive.append(weakref.ref(picture))
        return real_segment(model, picture, *args)

    monkeypatch.setattr(dense, 'segment', segment)
    from litcli.commands import segment as command
    result = command.run([str(tmp_path)], files['semantic_fpn_lit_ti'], out=tmp_path / 'out')
    assert len(alive) == len(result['images']) == 3


def test_a_checkpoint_of_a_model_with_other_classes_loads(tmp_path):
    """dense_checkpoint records the model's own number of classes (not the dataset's) when no names are given:
    the file loads back strictly, the classes named 'class i'; names of another count are refused."""
    for name, classes in (('semantic_fpn_lit_ti', 3), ('retinanet_lit_ti', 5), ('mask_rcnn_lit_ti', 2)):
        torch.manual_seed(0)
        model = create_dense_model(name, num_classes=classes)
        saved = dense_checkpoint(model, name)
        assert saved['num_classes'] == classes and saved['class_names'] == [f'class {i}' for i in range(classes)]
        torch.save(saved, tmp_path / f'{name}.pth')
        loaded = load_dense_model(tmp_path / f'{name}.pth')
        assert loaded.num_classes == classes and loaded.category_ids == list(range(1, classes + 1))
        got = loaded.model.state_dict()
        assert all(torch.equal(got[k], v) for k, v in model.state_dict().items())
    with pytest.raises(UsageError, match='2 class names for a model of 3 classes'):
        dense_checkpoint(create_dense_model('semantic_fpn_lit_ti', num_classes=3), 'semantic_fpn_lit_ti', ['a', 'b'])


def test_an_input_in_out_is_read_before_it_is_overwritten(files, tmp_path):
    """--out the photos' own folder with --force: x.png's label map replaces x-labels.png, an input named after it;
    that input is segmented as it was, not as the label map written over it."""
    with Image.open(CAT) as cat:
        cat.resize((40, 30)).save(tmp_path / 'x.png')
        cat.resize((50, 36)).save(tmp_path / 'x-labels.png')
    result = lit('segment', tmp_path / 'x.png', tmp_path / 'x-labels.png', '--checkpoint', files['semantic_fpn_lit_ti'],
                 '--out', tmp_path, '--force', '--json')
    assert result.exit_code == 0, result.output
    assert [(i['width'], i['height']) for i in json.loads(result.output)['images']] == [(40, 30), (50, 36)]

"""COCO-format detection data and ADE20K segmentation data (litcli.core.data.coco / ade20k), on tiny folders."""
import json
import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from litcli.core.data.ade20k import ADE20KSegmentation
from litcli.core.data.coco import CocoDetection, coco_splits
from litcli.core.errors import LitError

CATEGORIES = [{'id': 12, 'name': 'c'}, {'id': 3, 'name': 'a'}, {'id': 7, 'name': 'b'}]  # sorted: 3, 7, 12
# (id, file, width, height)
IMAGES = [(1, 'one.png', 48, 32), (2, 'two.png', 36, 48), (5, 'empty.png', 48, 40), (4, 'small.png', 20, 20),
          (6, 'crowd.png', 40, 40)]


def _rle_bytes(mask):
    from pycocotools import mask as coco_mask
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': rle['size'], 'counts': rle['counts'].decode()}


def _column_mask():
    """32 x 48 with rows 10..19 of column 5 set: the uncompressed RLE below (column-major counts)."""
    m = np.zeros((32, 48), np.uint8)
    m[10:20, 5] = 1
    return m


TWO_MASK = np.zeros((48, 36), np.uint8)
TWO_MASK[4:20, 6:30] = 1
CROWD_MASK = np.zeros((40, 40), np.uint8)
CROWD_MASK[0:10, 0:10] = 1


def _annotations():
    return [
        # image 1: a polygon (category 7 -> label 1), an uncompressed RLE (3 -> 0), a crowd, two degenerate boxes
        dict(id=10, image_id=1, category_id=7, bbox=[2, 3, 10, 6], area=60, iscrowd=0,
             segmentation=[[2, 3, 12, 3, 12, 9, 2, 9]]),
        dict(id=11, image_id=1, category_id=3, bbox=[5, 10, 1, 10], area=10, iscrowd=0,
             segmentation={'size': [32, 48], 'counts': [5 * 32 + 10, 10, 48 * 32 - 5 * 32 - 20]}),
        dict(id=12, image_id=1, category_id=3, bbox=[0, 0, 48, 32], area=1536, iscrowd=1,
             segmentation=_rle_bytes(np.ones((32, 48)))),
        dict(id=13, image_id=1, category_id=7, bbox=[5, 5, 0, 10], area=0, iscrowd=0,
             segmentation=[[5, 5, 5, 15, 5, 5]]),
        dict(id=14, image_id=1, category_id=12, bbox=[100, 100, 5, 5], area=25, iscrowd=0,
             segmentation=[[100, 100, 105, 100, 105, 105]]),
        # image 2: a compressed RLE (12 -> 2)
        dict(id=20, image_id=2, category_id=12, bbox=[6, 4, 24, 16], area=384, iscrowd=0,
             segmentation=_rle_bytes(TWO_MASK)),
        # image 4 (under 32 px): one box; image 6: only a crowd region
        dict(id=40, image_id=4, category_id=3, bbox=[1, 1, 5, 5], area=25, iscrowd=0,
             segmentation=[[1, 1, 6, 1, 6, 6, 1, 6]]),
        dict(id=60, image_id=6, category_id=3, bbox=[0, 0, 10, 10], area=100, iscrowd=1,
             segmentation=_rle_bytes(CROWD_MASK)),
    ]


def make_coco(root, split='val2017', images=IMAGES, annotations=None, categories=CATEGORIES, write=True):
    """A COCO-layout folder: ROOT/<split>/*.png and ROOT/annotations/instances_<split>.json."""
    image_dir = root / split
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for _, name, w, h in images:
        if write:
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(image_dir / name)
    data = dict(images=[dict(id=i, file_name=n, width=w, height=h) for i, n, w, h in images],
                annotations=_annotations() if annotations is None else annotations, categories=categories)
    ann_file = root / 'annotations' / f'instances_{split}.json'
    ann_file.parent.mkdir(exist_ok=True)
    ann_file.write_text(json.dumps(data))
    return image_dir, ann_file


@pytest.fixture
def coco(tmp_path):
    return make_coco(tmp_path)


def test_labels_boxes_and_dropped(coco):
    ds = CocoDetection(*coco)
    assert ds.category_ids == [3, 7, 12] and ds.class_names == ['a', 'b', 'c']
    assert len(ds) == 5  # evaluation keeps every image of the json
    image, target = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 48)
    assert target['image_id'] == 1
    assert target['labels'].tolist() == [1, 0]  # crowd (id 12) and the two degenerate boxes are not targets
    assert target['boxes'].dtype == torch.float32
    assert target['boxes'].tolist() == [[2, 3, 12, 9], [5, 10, 6, 20]]
    assert ds.dropped_boxes == 2 and 'masks' not in target
    assert ds[1][1]['labels'].tolist() == [2]
    _, empty = ds[2]  # no annotation: empty targets
    assert empty['boxes'].shape == (0, 4) and empty['labels'].shape == (0,) and empty['labels'].dtype == torch.int64
    assert ds.aspect_flags() == [1, 0, 1, 0, 0]
    assert 'COCO val2017' in ds.description and '5 images, 3 classes' in ds.description
    assert '2 degenerate boxes dropped' in ds.description


def test_train_filters_as_mmdet(coco):
    ds = CocoDetection(*coco, train=True)
    # left out: empty.png (no annotation) and small.png (under 32 px); crowd.png stays with empty targets (mmdet's
    # filter_empty_gt counts every annotation, crowd included)
    assert [ds[i][1]['image_id'] for i in range(len(ds))] == [1, 2, 6]
    assert ds[2][1]['boxes'].shape == (0, 4)
    assert ds.aspect_flags() == [1, 0, 0]
    assert ds.left_out == 2 and '2 left out' in ds.description
    assert [im['id'] for im in ds.coco_gt()['images']] == [1, 2, 6]


def test_masks_decode(coco):
    ds = CocoDetection(*coco, masks=True)
    _, target = ds[0]
    masks = target['masks']
    assert masks.dtype == torch.uint8 and masks.shape == (2, 32, 48)
    polygon = np.zeros((32, 48), np.uint8)
    polygon[3:9, 2:12] = 1  # the rectangle polygon covers pixels x 2..11, y 3..8
    assert np.array_equal(masks[0].numpy(), polygon)
    assert np.array_equal(masks[1].numpy(), _column_mask())  # the uncompressed RLE
    assert np.array_equal(ds[1][1]['masks'][0].numpy(), TWO_MASK)  # the compressed RLE
    assert ds[2][1]['masks'].shape == (0, 40, 48)


def test_transform_runs_last(coco):
    def flip(image, target):
        return image.flip(-1), dict(target, flipped=True)

    plain, flipped = CocoDetection(*coco)[0], CocoDetection(*coco, transform=flip)[0]
    assert flipped[1]['flipped'] and torch.equal(flipped[0], plain[0].flip(-1))


@pytest.mark.filterwarnings('ignore::DeprecationWarning')  # pycocotools 2.0.x's annToMask under numpy 2
def test_coco_gt_loads_in_pycocotools(coco):
    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = CocoDetection(*coco, masks=True).coco_gt()
    gt.createIndex()
    assert sorted(gt.getImgIds()) == [1, 2, 4, 5, 6]
    assert sorted(gt.getCatIds()) == [3, 7, 12]
    assert len(gt.getAnnIds()) == 8  # every annotation, crowd and degenerate included, as COCOeval expects
    assert gt.loadAnns([12])[0]['iscrowd'] == 1
    assert np.array_equal(gt.annToMask(gt.loadAnns([11])[0]), _column_mask())


def _message(excinfo):
    message = str(excinfo.value)
    assert '\n' not in message
    return message


def test_bad_json(tmp_path, coco):
    image_dir, ann_file = coco
    with pytest.raises(LitError) as e:
        CocoDetection(image_dir, tmp_path / 'nope.json')
    assert 'nope.json not found' in _message(e)
    ann_file.write_text('{"images": [')
    with pytest.raises(LitError) as e:
        CocoDetection(image_dir, ann_file)
    assert str(ann_file) in _message(e) and 'not valid JSON' in _message(e)
    ann_file.write_text('{"images": [], "annotations": []}')
    with pytest.raises(LitError) as e:
        CocoDetection(image_dir, ann_file)
    assert str(ann_file) in _message(e) and 'no "categories"' in _message(e)


def test_unknown_category_and_image(tmp_path):
    bad = _annotations() + [dict(id=99, image_id=1, category_id=5, bbox=[1, 1, 3, 3], area=9, iscrowd=0)]
    image_dir, ann_file = make_coco(tmp_path, annotations=bad)
    with pytest.raises(LitError) as e:
        CocoDetection(image_dir, ann_file)
    assert str(ann_file) in _message(e) and 'annotation 99 has category_id 5' in _message(e)
    assert 'ids 3, 7, 12' in _message(e)
    bad[-1].update(category_id=3, image_id=77)
    image_dir, ann_file = make_coco(tmp_path, annotations=bad, write=False)
    with pytest.raises(LitError) as e:
        CocoDetection(image_dir, ann_file)
    assert 'annotation 99 refers to image_id 77' in _message(e)


def test_missing_images_listed(tmp_path):
    image_dir, ann_file = make_coco(tmp_path)
    (image_dir / 'two.png').unlink()
    (image_dir / 'empty.png').unlink()
    with pytest.raises(LitError) as e:
        CocoDetection(image_dir, ann_file)
    assert f'2 images named in {ann_file} missing from {image_dir}: two.png, empty.png' in _message(e)
    # training leaves empty.png out, so only two.png is missing
    with pytest.raises(LitError) as e:
        CocoDetection(image_dir, ann_file, train=True)
    assert '1 image named' in _message(e)


def _corrupt(path):
    path.write_bytes(b'not an image at all')


def test_unreadable_image_train_eval_strict(tmp_path):
    image_dir, ann_file = make_coco(tmp_path)
    _corrupt(image_dir / 'one.png')
    train = CocoDetection(image_dir, ann_file, train=True)
    with pytest.warns(RuntimeWarning, match='one.png'):
        _, target = train[0]
    assert target['image_id'] == 2  # replaced by the next readable image
    assert train.skipped == 1 and 'one.png' in train.skipped_message() and '--strict-data' in train.skipped_message()
    train.reset_skipped()
    assert train.skipped == 0 and train.skipped_message() is None

    val = CocoDetection(image_dir, ann_file)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        batch = [val[i] for i in range(len(val))]
    assert batch[0] is None and [s[1]['image_id'] for s in batch if s is not None] == [2, 5, 4, 6]
    assert val.skipped == 1 and 'left out of the evaluation' in val.skipped_message()

    with pytest.raises(LitError) as e:
        CocoDetection(image_dir, ann_file, strict=True)[0]
    assert 'one.png' in _message(e) and 'without --strict-data' in _message(e)


def test_skips_counted_across_loader_workers(tmp_path):
    image_dir, ann_file = make_coco(tmp_path)
    _corrupt(image_dir / 'two.png')
    val = CocoDetection(image_dir, ann_file)
    loader = torch.utils.data.DataLoader(val, batch_size=2, num_workers=1,
                                         collate_fn=lambda b: [s for s in b if s is not None])
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        ids = [target['image_id'] for batch in loader for _, target in batch]
    assert ids == [1, 5, 4, 6] and val.skipped == 1  # the worker's flag is seen here


def test_mask_without_segmentation(tmp_path):
    annotations = [dict(id=1, image_id=1, category_id=3, bbox=[1, 1, 5, 5], area=25, iscrowd=0)]
    image_dir, ann_file = make_coco(tmp_path, annotations=annotations)
    assert len(CocoDetection(image_dir, ann_file)) == 5  # boxes only: fine
    with pytest.raises(LitError) as e:
        CocoDetection(image_dir, ann_file, masks=True)
    assert str(ann_file) in _message(e) and 'annotation 1 (image 1) has no segmentation' in _message(e)


def test_size_differs_from_json(tmp_path):
    images = [(1, 'one.png', 48, 32), (2, 'two.png', 36, 48)]
    annotations = [a for a in _annotations() if a['image_id'] in (1, 2)]
    image_dir, ann_file = make_coco(tmp_path, images=images, annotations=annotations)
    data = json.loads(ann_file.read_text())
    data['images'][0]['width'] = 49
    ann_file.write_text(json.dumps(data))
    val = CocoDetection(image_dir, ann_file)
    with pytest.warns(RuntimeWarning, match='48x32 but'):
        assert val[0] is None
    assert val.skipped == 1
    with pytest.raises(LitError) as e:
        CocoDetection(image_dir, ann_file, strict=True)[0]
    assert f'one.png is 48x32 but {ann_file} says 49x32' in _message(e)


def test_datasets_pickle_for_spawned_workers(coco, tmp_path):
    """spawn/forkserver DataLoader workers get the dataset pickled; the skip table stays shared."""
    ds = CocoDetection(*coco, train=True)
    copy = pickle.loads(pickle.dumps(ds))
    assert copy[0][1]['image_id'] == 1 and copy.image_path(1) == coco[0] / 'two.png'
    ade = pickle.loads(pickle.dumps(ADE20KSegmentation(make_ade(tmp_path), 'training')))
    assert ade[1][1].tolist() == [[2, 2, 2], [2, 2, 2]]


def test_coco_splits(tmp_path):
    make_coco(tmp_path, 'val2017', write=False)
    with pytest.raises(LitError) as e:
        coco_splits(tmp_path)
    assert f'expected {tmp_path}/annotations/instances_train2017.json' in _message(e)
    assert coco_splits(tmp_path, ['val']) == {
        'val': (tmp_path / 'val2017', tmp_path / 'annotations' / 'instances_val2017.json')}
    custom = tmp_path / 'custom'
    make_coco(custom, 'train_cars', write=False)
    make_coco(custom, 'val_cars', write=False)
    assert coco_splits(custom)['train'] == (custom / 'train_cars', custom / 'annotations' / 'instances_train_cars.json')
    (custom / 'val_cars').rmdir()
    with pytest.raises(LitError) as e:
        coco_splits(custom)
    assert f'expected the image folder {custom}/val_cars' in _message(e)


# ---------------------------------------------------------------------------------------------------------------
# ADE20K


def make_ade(root, split='training', labels=None):
    """ROOT/ADEChallengeData2016/{images,annotations}/<split>/: a.jpg + a.png (palette mode), b.jpg + b.png."""
    base = root / 'ADEChallengeData2016'
    labels = labels or {'a': np.array([[0, 1, 150], [255, 7, 0]], np.uint8),
                        'b': np.full((2, 3), 3, np.uint8)}
    for folder in ('images', 'annotations'):
        (base / folder / split).mkdir(parents=True, exist_ok=True)
    for stem, label in labels.items():
        h, w = label.shape
        Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(base / 'images' / split / f'{stem}.jpg')
        im = Image.fromarray(label, 'L').convert('P')
        im.putpalette([255 - (i % 256) for i in range(768)])  # colours unlike the indices: must not be used
        im.save(base / 'annotations' / split / f'{stem}.png')
    return base


def test_ade_reduce_zero_label(tmp_path):
    base = make_ade(tmp_path)
    ds = ADE20KSegmentation(tmp_path, 'training')
    assert len(ds) == 2 and ds.ignore_index == 255 and len(ds.class_names) == 150 and ds.class_names[0] == 'wall'
    image, label = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 2, 3)
    assert label.dtype == torch.int64 and label.tolist() == [[255, 0, 149], [255, 6, 255]]
    assert ADE20KSegmentation(base, 'training').root == base  # the ADEChallengeData2016 folder itself works too
    assert 'ADE20K training' in ds.description and '2 images, 150 classes' in ds.description


def test_ade_raw_labels_and_transform(tmp_path):
    labels = {'a': np.array([[0, 1, 149], [255, 7, 0]], np.uint8)}
    base = make_ade(tmp_path, labels=labels)
    raw = ADE20KSegmentation(base, 'training', reduce_zero_label=False)
    assert raw[0][1].tolist() == [[0, 1, 149], [255, 7, 0]]
    seen = ADE20KSegmentation(base, 'training', transform=lambda x, y: (x.float(), y + 1000))[0]
    assert seen[0].dtype == torch.float32 and seen[1][0, 1] == 1000


def test_ade_missing_folders_and_labels(tmp_path):
    with pytest.raises(LitError) as e:
        ADE20KSegmentation(tmp_path, 'training')
    assert f'expected {tmp_path}/ADEChallengeData2016/images' in _message(e)
    base = make_ade(tmp_path)
    with pytest.raises(LitError) as e:
        ADE20KSegmentation(tmp_path, 'validation')
    assert f'{base}/images/validation' in _message(e)
    (base / 'annotations' / 'training' / 'b.png').unlink()
    with pytest.raises(LitError) as e:
        ADE20KSegmentation(tmp_path, 'training')
    assert f'1 image in {base}/images/training without a label PNG' in _message(e) and 'b.png' in _message(e)


def test_ade_wrong_size_and_outside_classes(tmp_path):
    base = make_ade(tmp_path, labels={'a': np.ones((2, 3), np.uint8), 'b': np.full((2, 3), 200, np.uint8),
                                      'c': np.ones((4, 4), np.uint8)})
    Image.new('L', (5, 4)).save(base / 'annotations' / 'training' / 'c.png')  # c.jpg stays 4x4
    val = ADE20KSegmentation(tmp_path, 'training')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        samples = [val[i] for i in range(3)]
    assert samples[0] is not None and samples[1] is None and samples[2] is None
    assert val.skipped == 2 and 'b.jpg' in val.skipped_message()

    train = ADE20KSegmentation(tmp_path, 'training', train=True)
    with pytest.warns(RuntimeWarning):
        assert train[1][1].tolist() == [[0, 0, 0], [0, 0, 0]]  # c fails too: wrapped round to a
    assert train.skipped == 1

    with pytest.raises(LitError) as e:
        ADE20KSegmentation(tmp_path, 'training', strict=True)[2]
    message = _message(e)
    assert f'{base}/annotations/training/c.png is 5x4 but its image {base}/images/training/c.jpg is 4x4' in message
    with pytest.raises(LitError) as e:
        ADE20KSegmentation(tmp_path, 'training', strict=True)[1]
    assert 'b.png holds value 200, outside the 150 ADE20K classes' in _message(e)


def test_ade_unreadable_image(tmp_path):
    base = make_ade(tmp_path)
    _corrupt(base / 'images' / 'training' / 'a.jpg')
    train = ADE20KSegmentation(tmp_path, 'training', train=True)
    with pytest.warns(RuntimeWarning, match='a.jpg'):
        assert train[0][1].tolist() == [[2, 2, 2], [2, 2, 2]]  # b instead
    assert train.skipped == 1
    with pytest.raises(LitError) as e:
        ADE20KSegmentation(tmp_path, 'training', strict=True)[0]
    assert 'a.jpg' in _message(e)

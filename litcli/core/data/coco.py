"""COCO-format detection data (``--data coco:ROOT``): mmdetection 2.11's ``CocoDataset`` as a torch Dataset.

Item i -> (uint8 (3, H, W) RGB image, target dict(boxes float32 (N, 4) x0,y0,x1,y1, labels int64 (N,) in 0..K-1,
image_id int, masks uint8 (N, H, W) with ``masks=True``)), the contract of the dense design.

As mmdet's ``CocoDataset`` (the pipeline the paper's numbers came from):
- classes are the json's categories sorted by id, labels 0..K-1 in that order;
- an annotation is a target only when its box overlaps the image, ``area > 0``, ``w >= 1`` and ``h >= 1`` (the others
  are dropped and counted in ``dropped_boxes``), and it is not ``iscrowd`` (crowd regions stay in ``coco_gt()`` only,
  where COCOeval ignores matches to them); boxes are ``[x, y, x + w, y + h]``, not clipped;
- training (``train=True``) leaves out the images no annotation refers to (``filter_empty_gt``: an image with only a
  crowd or degenerate annotation stays, with empty targets, as in mmdet) and those under 32 px on a side;
  evaluation keeps every image of the json;
- masks: polygons, uncompressed and compressed RLE decoded with pycocotools as mmdet's ``LoadAnnotations``.

Per-image faults found when an image is read (it cannot be decoded, its size is not the json's) are counted skips as
``litcli.core.data.datasets.SkipUnreadable`` does (training: the next readable image instead; evaluation: None, which
the collate drops), or a LitError under ``strict`` (``--strict-data``). Everything else wrong with the files is a
one-line LitError when the dataset is built.
"""
import json
import os
import pickle
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from litcli.core.errors import LitError
from litcli.core.data.images import load_image
from litcli.core.report import counted

MIN_TRAIN_SIZE = 32  # mmdet's _filter_imgs(min_size=32) for the training set
COCO_KEYS = ('images', 'annotations', 'categories')
SPLITS = ('train', 'val')
MAX_TRIES = 100  # readable-image search in training, as SkipUnreadable


def mask_utils():
    """pycocotools.mask, imported when needed (a one-line LitError when it is not installed)."""
    try:
        from pycocotools import mask
    except ImportError:
        raise LitError("COCO masks and evaluation need pycocotools: pip install 'litcli[dense]' (or pycocotools)"
                       ) from None
    return mask


class SampleFault(LitError):
    """One sample that cannot be used (unreadable image, size not the annotation's): counted or, strict, raised."""


class SkipTable:
    """Counted per-sample skips shared by the dense datasets, as ``SkipUnreadable``: each bad index is flagged in a
    shared-memory table (exact with DataLoader workers: setting a flag twice cannot over-count); ``replace`` (training)
    serves the next good sample instead, else None (dropped by the collate); ``strict`` raises at the first."""

    def __init__(self, size: int, root, name_of: Callable[[int], object], strict: bool, replace: bool):
        self.root = root
        self.name_of = name_of
        self.strict = strict
        self.replace = replace
        self.flags = torch.zeros(size, dtype=torch.bool).share_memory_()
        self.warned = set()  # per process: indices already warned about

    @property
    def skipped(self) -> int:
        return int(self.flags.sum())

    def reset(self):
        self.flags.zero_()

    def message(self) -> Optional[str]:
        n = self.skipped
        if not n:
            return None
        bad = self.flags.nonzero().flatten()[:3].tolist()
        shown = ', '.join(str(self.name_of(i)) for i in bad) + (' ...' if n > 3 else '')
        what = 'replaced by the next good image' if self.replace else 'left out of the evaluation'
        return (f'skipped {counted(n, "image")} in {self.root} that could not be read or do not match their '
                f'annotations ({what}): {shown}; fix or remove them, or pass --strict-data to stop at the first one')

    def fetch(self, index: int, read: Callable[[int], object]):
        """``read(index)``, or on a SampleFault: the next good sample (replace), None, or a LitError (strict)."""
        try:
            return read(index)
        except SampleFault as e:
            if self.strict:
                raise LitError(f'{e}; fix or remove it, or run without --strict-data to skip such images') from None
            self.flags[index] = True  # only the index the sampler drew counts, not the neighbours tried instead
            if index not in self.warned:
                self.warned.add(index)
                warnings.warn(f'skipping {e}', RuntimeWarning, stacklevel=3)
        if not self.replace:
            return None
        n = len(self.flags)
        for attempt in range(1, min(n, MAX_TRIES)):
            try:
                return read((index + attempt) % n)
            except SampleFault:
                continue
        raise LitError(f'{min(n, MAX_TRIES)} images in a row could not be used in {self.root}; check the data folder')


def read_coco_json(ann_file: Path) -> dict:
    """The annotation file as a dict with lists ``images``, ``annotations`` and ``categories``, or a LitError."""
    ann_file = Path(ann_file)
    fix = 'give a COCO-format instances json (images, annotations, categories)'
    if not ann_file.is_file():
        raise LitError(f'annotation file {ann_file} not found; {fix}, e.g. ROOT/annotations/instances_val2017.json')
    try:
        with open(ann_file, 'rb') as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise LitError(f'{ann_file} is not valid JSON (line {e.lineno} column {e.colno}: {e.msg}); {fix}') from None
    except UnicodeDecodeError:
        raise LitError(f'{ann_file} is not a JSON text file; {fix}') from None
    except OSError as e:
        raise LitError(f'cannot read {ann_file} ({e.strerror or e}); {fix}') from None
    if not isinstance(data, dict):
        raise LitError(f'{ann_file} is not a COCO annotation file (its top level is not an object); {fix}')
    missing = [k for k in COCO_KEYS if not isinstance(data.get(k), list)]
    if missing:
        raise LitError(f'{ann_file} is not a COCO annotation file (no "{missing[0]}" list); {fix}')
    return data


def _field(ann_file: Path, what: str, record: dict, key: str, position: int):
    if not isinstance(record, dict) or key not in record:
        raise LitError(f'{ann_file}: {what} #{position} has no "{key}"; every COCO {what} needs it, fix the file')
    return record[key]


class CocoDetection(Dataset):
    """A COCO-format image folder + instances json (see the module docstring)."""

    def __init__(self, image_dir: Path, ann_file: Path, masks: bool = False, train: bool = False, transform=None,
                 strict: bool = False):
        self.image_dir, self.ann_file = Path(image_dir), Path(ann_file)
        self.masks, self.train, self.transform = masks, train, transform
        data = read_coco_json(self.ann_file)
        categories = self._categories(data['categories'])
        self.category_ids = [c['id'] for c in categories]
        self.class_names = [str(c.get('name', c['id'])) for c in categories]
        label_of = {cid: label for label, cid in enumerate(self.category_ids)}
        images = self._images(data['images'])
        anns_of = self._annotations_by_image(data['annotations'], images, label_of)

        self.dropped_boxes = 0
        self.left_out = 0
        records, kept_images, flags = [], [], []
        for image in images:
            image_anns = anns_of.get(image['id'], [])
            # mmdet's _filter_imgs: any annotation of the classes keeps an image, crowd or degenerate included
            if train and (not image_anns or min(image['width'], image['height']) < MIN_TRAIN_SIZE):
                self.left_out += 1
                continue
            boxes, labels, segments = self._targets(image, image_anns, label_of)
            records.append((image['file_name'], image['width'], image['height'], image['id'], boxes, labels,
                            segments))
            kept_images.append(image)
            flags.append(1 if image['width'] / image['height'] > 1 else 0)
        self._check_files([r[0] for r in records])
        self._flags = flags
        # Records live in one byte buffer, not in Python objects: DataLoader workers forked from this process would
        # otherwise copy the pages of a COCO-sized annotation list as they touch its reference counts.
        self._records, self._offsets = _serialize(records)
        self._image_ids = np.array([image['id'] for image in kept_images])
        # The evaluation set keeps its ground truth as JSON bytes (one buffer, as the records); a training set, whose
        # json is COCO's largest, builds it only when asked (coco_gt() reads the file again)
        self._gt = None if train else np.frombuffer(json.dumps(self._ground_truth(data)).encode(), dtype=np.uint8)
        # a bound method, not a lambda: spawn/forkserver DataLoader workers get the dataset pickled
        self._skips = SkipTable(len(records), self.image_dir, self.image_path, strict, replace=train)

        detail = []
        if self.left_out:
            detail.append(f'{self.left_out:,} left out (no annotation or under {MIN_TRAIN_SIZE} px)')
        if self.dropped_boxes:
            detail.append(f'{counted(self.dropped_boxes, "degenerate box", "degenerate boxes")} dropped')
        self.description = (f'COCO {self.image_dir.name} at {self.image_dir.parent} ({self.ann_file.name}): '
                            f'{len(records):,} images, {counted(len(self.category_ids), "class", "classes")}'
                            + (f' ({"; ".join(detail)})' if detail else ''))

    # -- reading the json ------------------------------------------------------------------------------------------

    def _categories(self, categories: list) -> List[dict]:
        ids = [_field(self.ann_file, 'category', c, 'id', i) for i, c in enumerate(categories)]
        if not categories:
            raise LitError(f'{self.ann_file} has no categories; a COCO instances json lists its classes in '
                           f'"categories"')
        if len(set(ids)) != len(ids):
            raise LitError(f'{self.ann_file} lists a category id twice; give each category its own id')
        return sorted(categories, key=lambda c: c['id'])

    def _images(self, images: list) -> List[dict]:
        for i, image in enumerate(images):
            for key in ('id', 'file_name', 'width', 'height'):
                _field(self.ann_file, 'image', image, key, i)
            if not isinstance(image['id'], int):
                raise LitError(f'{self.ann_file}: image #{i} has id {image["id"]!r}; COCO image ids are integers')
            size = (image['width'], image['height'])
            if not all(isinstance(v, int) and v > 0 for v in size):
                raise LitError(f'{self.ann_file}: image {image["id"]} ({image["file_name"]}) has size '
                               f'{image["width"]}x{image["height"]}; fix its width/height')
        if len({image['id'] for image in images}) != len(images):
            raise LitError(f'{self.ann_file} lists an image id twice; give each image its own id')
        return images

    def _annotations_by_image(self, annotations: list, images: List[dict], label_of: Dict[int, int]):
        image_ids = {image['id'] for image in images}
        by_image = {}
        for i, ann in enumerate(annotations):
            for key in ('id', 'image_id', 'category_id', 'bbox'):
                _field(self.ann_file, 'annotation', ann, key, i)
            if ann['category_id'] not in label_of:
                known = ', '.join(map(str, sorted(label_of)[:10])) + (' ...' if len(label_of) > 10 else '')
                raise LitError(f'{self.ann_file}: annotation {ann["id"]} has category_id {ann["category_id"]}, '
                               f'which is not among its categories (ids {known}); fix the annotation or add the '
                               f'category')
            if ann['image_id'] not in image_ids:
                raise LitError(f'{self.ann_file}: annotation {ann["id"]} refers to image_id {ann["image_id"]}, '
                               f'which is not in its images; fix the annotation or add the image')
            bbox = ann['bbox']
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
                raise LitError(f'{self.ann_file}: annotation {ann["id"]} has bbox {bbox!r}; a COCO bbox is '
                               f'[x, y, width, height]')
            by_image.setdefault(ann['image_id'], []).append(ann)
        if len({ann['id'] for ann in annotations}) != len(annotations):  # mmdet asserts it; COCO() would overwrite
            raise LitError(f'{self.ann_file} lists an annotation id twice; give each annotation its own id')
        return by_image

    def _targets(self, image: dict, anns: List[dict], label_of: Dict[int, int]):
        """mmdet 2.11's CocoDataset._parse_ann_info: (boxes (N, 4) float32, labels (N,) int64, segmentations)."""
        boxes, labels, segments = [], [], []
        width, height = image['width'], image['height']
        for ann in anns:
            if ann.get('ignore', False):
                continue
            x, y, w, h = ann['bbox']
            inter_w = max(0, min(x + w, width) - max(x, 0))
            inter_h = max(0, min(y + h, height) - max(y, 0))
            crowd = bool(ann.get('iscrowd', False))
            # a COCO export without "area" (some converters) gets the box's area
            if inter_w * inter_h == 0 or ann.get('area', w * h) <= 0 or w < 1 or h < 1:
                self.dropped_boxes += not crowd
                continue
            if crowd:
                continue
            if self.masks and not ann.get('segmentation'):
                raise LitError(f'{self.ann_file}: annotation {ann["id"]} (image {image["id"]}) has no segmentation; '
                               f'Mask R-CNN needs one per object: add it, or train a box model (retinanet)')
            boxes.append([x, y, x + w, y + h])
            labels.append(label_of[ann['category_id']])
            segments.append(ann.get('segmentation') if self.masks else None)
        return (np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64),
                segments if self.masks else None)

    def _check_files(self, file_names: Sequence[str]):
        """Every image the dataset uses is in the folder: one scandir of it (names with a folder part: one stat)."""
        if not self.image_dir.is_dir():
            raise LitError(f'image folder {self.image_dir} not found (the images of {self.ann_file}); put them '
                           f'there or give the COCO folder that holds it')
        present = {entry.name for entry in os.scandir(self.image_dir)}
        missing = [name for name in file_names
                   if not (name in present if '/' not in name else (self.image_dir / name).is_file())]
        if missing:
            shown = ', '.join(missing[:3]) + (' ...' if len(missing) > 3 else '')
            raise LitError(f'{counted(len(missing), "image")} named in {self.ann_file} missing from '
                           f'{self.image_dir}: {shown}; put them there or remove them from the json')

    # -- samples ---------------------------------------------------------------------------------------------------

    def _record(self, index: int):
        return pickle.loads(self._records[self._offsets[index]:self._offsets[index + 1]].tobytes())

    def image_path(self, index: int) -> Path:
        return self.image_dir / self._record(index)[0]

    def __len__(self):
        return len(self._offsets) - 1

    def _read(self, index: int):
        from torchvision.transforms.functional import pil_to_tensor

        file_name, width, height, image_id, boxes, labels, segments = self._record(index)
        path = self.image_dir / file_name
        try:
            image = pil_to_tensor(load_image(path))  # 3, H, W uint8
        except LitError as e:
            raise SampleFault(f'unreadable image {path} ({e})') from None
        if image.shape[1:] != (height, width):
            raise SampleFault(f'image {path} is {image.shape[2]}x{image.shape[1]} but {self.ann_file} says '
                              f'{width}x{height} (image id {image_id})')
        target = dict(boxes=torch.from_numpy(boxes), labels=torch.from_numpy(labels), image_id=int(image_id))
        if self.masks:
            target['masks'] = self._decode_masks(segments, height, width, path)
        return image, target

    def _decode_masks(self, segments: list, height: int, width: int, path: Path):
        """mmdet's LoadAnnotations._poly2mask for each object: uint8 (N, H, W) of 0/1."""
        coco_mask = mask_utils()
        masks = np.zeros((len(segments), height, width), dtype=np.uint8)
        for i, segment in enumerate(segments):
            if isinstance(segment, list):  # polygons: one RLE each, merged
                rle = coco_mask.merge(coco_mask.frPyObjects(segment, height, width))
            elif isinstance(segment['counts'], list):  # uncompressed RLE
                rle = coco_mask.frPyObjects(segment, height, width)
            else:  # compressed RLE
                rle = segment
            with warnings.catch_warnings():  # pycocotools 2.0.x's own DeprecationWarning under numpy 2
                warnings.simplefilter('ignore', DeprecationWarning)
                decoded = coco_mask.decode(rle)
            if decoded.shape != (height, width):
                raise SampleFault(f'a mask of {path} in {self.ann_file} is {decoded.shape[1]}x{decoded.shape[0]}, '
                                  f'not the image\'s {width}x{height}')
            masks[i] = decoded
        return torch.from_numpy(masks)

    def __getitem__(self, index: int):
        sample = self._skips.fetch(index, self._read)
        if sample is None or self.transform is None:
            return sample
        return self.transform(*sample)

    # -- what the trainer and evaluator need ---------------------------------------------------------------------

    def aspect_flags(self) -> List[int]:
        """mmdet's GroupSampler flag per image: 1 where width / height > 1 (from the json: nothing is decoded)."""
        return list(self._flags)

    def coco_gt(self) -> dict:
        """The ground truth of this dataset's images as the json has it (crowd and degenerate annotations included,
        COCOeval ignores matches to crowd regions), for pycocotools' COCO()."""
        if self._gt is None:
            return self._ground_truth(read_coco_json(self.ann_file))
        return json.loads(self._gt.tobytes())

    def _ground_truth(self, data: dict) -> dict:
        """The json's images of this dataset (in its order), their annotations and the categories sorted by id."""
        order = {image_id: i for i, image_id in enumerate(self._image_ids.tolist())}
        images = sorted((im for im in data['images'] if im['id'] in order), key=lambda im: order[im['id']])
        categories = sorted(data['categories'], key=lambda c: c['id'])
        return dict(images=[{k: im[k] for k in ('id', 'width', 'height', 'file_name')} for im in images],
                    annotations=[a for a in data['annotations'] if a['image_id'] in order],
                    categories=[{'id': c['id'], 'name': str(c.get('name', c['id']))} for c in categories])

    @property
    def skipped(self) -> int:
        return self._skips.skipped

    def skipped_message(self) -> Optional[str]:
        return self._skips.message()

    def reset_skipped(self):
        self._skips.reset()


def _serialize(records: list) -> Tuple[np.ndarray, np.ndarray]:
    """Records -> (uint8 buffer of their pickles, int64 offsets (N + 1,))."""
    blobs = [pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in records]
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in blobs], out=offsets[1:])
    return np.frombuffer(b''.join(blobs), dtype=np.uint8), offsets


def coco_splits(root: Path, splits: Sequence[str] = SPLITS) -> Dict[str, Tuple[Path, Path]]:
    """{split: (image folder, instances json)} of a COCO-layout folder: ROOT/train2017 + ROOT/annotations/
    instances_train2017.json, ROOT/val2017 + .../instances_val2017.json; a custom COCO-format set may instead hold
    exactly one ``annotations/instances_<split>*.json`` per split with its image folder ``ROOT/<split>*`` named as the
    json (instances_val_cars.json -> ROOT/val_cars). ``splits``: the ones needed (a LitError names what is missing)."""
    root = Path(root)
    layout = (f'lay it out as COCO 2017: {root}/train2017/, {root}/val2017/ and '
              f'{root}/annotations/instances_{{train,val}}2017.json')
    if not root.is_dir():
        raise LitError(f'COCO folder {root} not found; {layout}')
    found = {}
    for split in splits:
        ann_file = root / 'annotations' / f'instances_{split}2017.json'
        if not ann_file.is_file():
            candidates = sorted((root / 'annotations').glob(f'instances_{split}*.json'))
            if len(candidates) > 1:
                raise LitError(f'{root}/annotations holds several {split} annotation files '
                               f'({", ".join(c.name for c in candidates[:4])}); keep one, or {layout}')
            if not candidates:
                raise LitError(f'expected {ann_file} in the COCO folder {root}; {layout}')
            ann_file = candidates[0]
        image_dir = root / ann_file.stem[len('instances_'):]
        if not image_dir.is_dir():
            raise LitError(f'expected the image folder {image_dir} beside {ann_file}; {layout}')
        found[split] = (image_dir, ann_file)
    return found

"""ADE20K (SceneParse150) semantic segmentation data (``--data ade20k:ROOT``): mmsegmentation 0.13's
``ADE20KDataset`` as a torch Dataset.

ROOT is the folder ``ADEChallengeData2016`` or the folder holding it: ``images/<split>/*.jpg`` with
``annotations/<split>/*.png`` of the same stems, split ``training`` or ``validation``. Item i -> (uint8 image
(3, H, W), int64 label (H, W)), then ``transform(image, label)`` when given. Labels are the PNG's raw indices (mode L
or P: no palette conversion), with mmseg's ``reduce_zero_label``: 0 ("other") -> 255 (ignored), 1..150 -> 0..149.

A label PNG of another size than its image, or with values outside the 150 classes, or an unreadable file, is a
counted skip as ``litcli.core.data.datasets.SkipUnreadable``'s (training: the next good sample; evaluation: None,
dropped by the collate), or a LitError under ``strict`` (``--strict-data``).
"""
import os
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from litcli.core.errors import LitError
from litcli.core.data.coco import SampleFault, SkipTable
from litcli.core.data.images import load_image
from litcli.core.report import counted
from litcli.models.dense_classes import ADE20K_CLASSES

ADE20K_FOLDER = 'ADEChallengeData2016'
ADE20K_SPLITS = ('training', 'validation')
IGNORE_INDEX = 255
IMAGE_SUFFIX, LABEL_SUFFIX = '.jpg', '.png'  # mmseg's ADE20KDataset img_suffix / seg_map_suffix


def ade20k_root(root: Path) -> Path:
    """The ADEChallengeData2016 folder given it or the folder holding it (a LitError naming what is expected)."""
    root = Path(root)
    for candidate in (root / ADE20K_FOLDER, root):
        if (candidate / 'images').is_dir() and (candidate / 'annotations').is_dir():
            return candidate
    raise LitError(f'expected {root / ADE20K_FOLDER}/images and .../annotations (or {root}/images and '
                   f'{root}/annotations); give the ADEChallengeData2016 folder or the folder holding it')


def _files(folder: Path, suffix: str) -> List[str]:
    """Paths (relative, without the suffix) of the files ending in ``suffix`` under ``folder``, sorted, as mmseg's
    recursive scandir."""
    found = []
    for parent, _, names in os.walk(folder):
        rel = os.path.relpath(parent, folder)
        found += [os.path.normpath(os.path.join(rel, n[:-len(suffix)])) for n in names if n.endswith(suffix)]
    return sorted(found)


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """mmseg's LoadAnnotations(reduce_zero_label=True) on a uint8 map: 0 -> 255, the rest minus 1, 255 stays 255."""
    label = label.copy()
    label[label == 0] = 255
    label = label - 1  # uint8: 255 -> 254, turned back into 255 below
    label[label == 254] = 255
    return label


class ADE20KSegmentation(Dataset):
    """One split of ADE20K (see the module docstring)."""

    def __init__(self, root: Path, split: str, transform=None, strict: bool = False, reduce_zero_label: bool = True,
                 train: Optional[bool] = None):
        """``train``: a bad sample is replaced by the next good one (else returned as None); by default when a
        transform is given (the training pipeline)."""
        if split not in ADE20K_SPLITS:
            raise LitError(f'unknown ADE20K split {split!r}; use one of {", ".join(ADE20K_SPLITS)}')
        self.root = ade20k_root(root)
        self.split, self.transform, self.reduce_zero_label = split, transform, reduce_zero_label
        self.class_names = list(ADE20K_CLASSES)
        self.ignore_index = IGNORE_INDEX
        self.image_dir = self.root / 'images' / split
        self.label_dir = self.root / 'annotations' / split
        for folder in (self.image_dir, self.label_dir):
            if not folder.is_dir():
                raise LitError(f'expected the folder {folder} in {self.root}; ADE20K holds images/{split}/*.jpg '
                               f'and annotations/{split}/*.png')
        self.stems = _files(self.image_dir, IMAGE_SUFFIX)
        if not self.stems:
            raise LitError(f'no {IMAGE_SUFFIX} images in {self.image_dir}; ADE20K holds images/{split}/*.jpg')
        labels = set(_files(self.label_dir, LABEL_SUFFIX))
        missing = [s for s in self.stems if s not in labels]
        if missing:
            shown = ', '.join(s + LABEL_SUFFIX for s in missing[:3]) + (' ...' if len(missing) > 3 else '')
            raise LitError(f'{counted(len(missing), "image")} in {self.image_dir} without a label PNG in '
                           f'{self.label_dir}: {shown}; add the labels or remove those images')
        self._skips = SkipTable(len(self.stems), self.image_dir, self.image_path, strict,
                                replace=transform is not None if train is None else train)
        self.description = (f'ADE20K {split} at {self.root}: {len(self.stems):,} images, '
                            f'{len(self.class_names)} classes')

    def image_path(self, index: int) -> Path:
        return self.image_dir / (self.stems[index] + IMAGE_SUFFIX)

    def label_path(self, index: int) -> Path:
        return self.label_dir / (self.stems[index] + LABEL_SUFFIX)

    def __len__(self):
        return len(self.stems)

    def _read(self, index: int):
        from PIL import Image
        from torchvision.transforms.functional import pil_to_tensor

        image_path, label_path = self.image_path(index), self.label_path(index)
        try:
            image = pil_to_tensor(load_image(image_path))  # 3, H, W uint8
        except LitError as e:
            raise SampleFault(f'unreadable image {image_path} ({e})') from None
        try:
            with Image.open(label_path) as im:
                mode = im.mode
                label = np.array(im)  # L or P: the raw indices (mmseg reads 'unchanged' with pillow)
        except Exception as e:  # PIL's many ways to say the file cannot be decoded (see images.load_image)
            raise SampleFault(f'unreadable label {label_path} ({type(e).__name__}: {e})') from None
        if mode not in ('L', 'P'):
            raise SampleFault(f'label {label_path} is a {mode} image, not a map of class indices (mode L or P)')
        if label.shape != tuple(image.shape[1:]):
            raise SampleFault(f'label {label_path} is {label.shape[1]}x{label.shape[0]} but its image {image_path} '
                              f'is {image.shape[2]}x{image.shape[1]}')
        num_classes = len(self.class_names) + self.reduce_zero_label  # raw values: 0 = "other", 1..150
        outside = (label >= num_classes) & (label != IGNORE_INDEX)
        if outside.any():
            raise SampleFault(f'label {label_path} holds value {int(label[outside].max())}, outside the '
                              f'{len(self.class_names)} ADE20K classes (0..{num_classes - 1}, 255 ignored)')
        if self.reduce_zero_label:
            label = reduce_zero_label(label)
        return image, torch.from_numpy(label.astype(np.int64))  # H, W

    def __getitem__(self, index: int):
        sample = self._skips.fetch(index, self._read)
        if sample is None or self.transform is None:
            return sample
        return self.transform(*sample)

    @property
    def skipped(self) -> int:
        return self._skips.skipped

    def skipped_message(self) -> Optional[str]:
        return self._skips.message()

    def reset_skipped(self):
        self._skips.reset()

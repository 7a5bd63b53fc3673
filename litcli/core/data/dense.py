"""The data of detection and segmentation runs: ``--data`` names, the datasets with their training transforms, and
the loaders that feed ``core.training.engine`` batch by batch, resumable at any batch as the classification ones.

    coco:ROOT           COCO layout: ROOT/train2017, ROOT/val2017, ROOT/annotations/instances_{train,val}2017.json
    ade20k:ROOT         ROOT/ADEChallengeData2016/{images,annotations}/{training,validation} (or that folder itself)
    fashion-mnist-det   built-in scenes of garments (boxes, masks), made on the fly from Fashion-MNIST
    fashion-mnist-seg   the same scenes with their class maps (11 classes: background + the 10 garments)

Samples (``core.data.scenes``/``coco``/``ade20k`` document them): detection ``(uint8 (3, H, W), target dict)``;
segmentation ``(float (3, h, w) normalised and padded, int64 (h, w))`` in training, ``(uint8 image, int64 label)``
in evaluation. Batching:

- detection training: mmdet's ``GroupSampler``: images of the same orientation (width > height or not) batched
  together, so a padded batch wastes little; the order depends only on (seed, epoch), every sample's random
  transform on its own seed (``SeededSamples``), so a run resumed at batch k repeats the rest bit for bit;
- segmentation training: mmseg's iteration-based schedule as periods of ``updates_per_epoch`` updates over an
  endless stream of shuffled passes (pass p shuffled by (seed, p)), so the same resume rule holds;
- evaluation: rank r of W takes images r, r + W, ... (each image once, ``ShardSampler``); unreadable ones dropped.
"""
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Sampler

from litcli.core.errors import LitError, UsageError
from litcli.core.runtime import ShardSampler, World
from litcli.core.seeding import sample_seed

DETECTION, SEGMENTATION = 'detection', 'segmentation'
TASK_KINDS = {'retinanet': DETECTION, 'mask_rcnn': DETECTION, 'semantic_fpn': SEGMENTATION}
BUILTIN_SCENES = {'fashion-mnist-det': DETECTION, 'fashion-mnist-seg': SEGMENTATION}
PREFIXED = {'coco': DETECTION, 'ade20k': SEGMENTATION}  # --data coco:ROOT, ade20k:ROOT
DATA_FORMS = 'coco:ROOT, ade20k:ROOT, fashion-mnist-det or fashion-mnist-seg'


@dataclass
class DenseDataSpec:
    """What a dense data set is: its name and root, its kind and classes, sizes and a line for the log."""
    name: str  # 'coco', 'ade20k', 'fashion-mnist-det', 'fashion-mnist-seg'
    root: Optional[str]
    kind: str  # 'detection' | 'segmentation'
    class_names: List[str]
    category_ids: List[int]  # what a COCO results file calls each label
    train_size: int
    val_size: int
    description: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def recorded(self) -> str:
        """The ``--data`` value that names this set from any folder (checkpoints and config.yaml hold it)."""
        return f'{self.name}:{self.root}' if self.root else self.name


def parse_dense_data(data: Optional[str]) -> Tuple[str, Optional[str], str]:
    """``--data`` of a dense run -> (name, absolute root or None, kind); a one-line UsageError otherwise."""
    if not data:
        raise UsageError(f'a detection or segmentation run needs --data: {DATA_FORMS}')
    if data in BUILTIN_SCENES:
        return data, None, BUILTIN_SCENES[data]
    prefix, sep, rest = data.partition(':')
    if sep and prefix.lower() in PREFIXED:
        if not rest:
            raise UsageError(f'--data {data} names no folder; write {prefix}:ROOT')
        root = Path(rest).expanduser()
        if not root.is_dir():
            raise LitError(f'--data {data}: folder {root} not found; give the {prefix.upper()} root folder')
        return prefix.lower(), str(root.resolve()), PREFIXED[prefix.lower()]
    raise UsageError(f'--data {data} is not a detection/segmentation data set; give {DATA_FORMS} (classification '
                     f'folders and built-ins train without --task)')


def check_data_task(kind: str, task: str, data: str):
    """A detection set for RetinaNet / Mask R-CNN, a segmentation set for Semantic FPN."""
    if TASK_KINDS[task] != kind:
        other = 'fashion-mnist-det or coco:ROOT' if kind == SEGMENTATION else 'fashion-mnist-seg or ade20k:ROOT'
        raise UsageError(f'--data {data} is a {kind} set but --task {task.replace("_", "-")} needs '
                         f'{TASK_KINDS[task]} data ({other})')


def _train_transform(cfg: Dict, kind: str):
    from litcli.core.data.dense_transforms import DetectionTrainTransform, SegmentationTrainTransform

    if kind == DETECTION:
        return DetectionTrainTransform(hflip=cfg['hflip'])
    return SegmentationTrainTransform(img_scale=tuple(cfg['img_scale']), ratio_range=tuple(cfg['ratio_range']),
                                      crop_size=tuple(cfg['crop_size']), cat_max_ratio=cfg['cat_max_ratio'],
                                      hflip=cfg['hflip'], photometric=cfg['photometric'])


def build_dense_datasets(data: str, task: str, cfg: Optional[Dict] = None, *, train: bool = True,
                         masks: Optional[bool] = None, strict_data: bool = False):
    """(train set or None, validation set, spec) of ``--data`` for ``task``; ``cfg`` gives the training transform
    (None: no training set). ``masks``: instance masks (Mask R-CNN; default: the task's)."""
    name, root, kind = parse_dense_data(data)
    check_data_task(kind, task, data)
    masks = task == 'mask_rcnn' if masks is None else masks
    train_tf = _train_transform(cfg, kind) if train and cfg is not None else None
    if name in BUILTIN_SCENES:
        from litcli.core.data.scenes import FashionScenes
        sizes = {split: (cfg or {}).get(f'{split}_scenes') for split in ('train', 'val')}  # None: the default
        make = (lambda split, tf: FashionScenes(split, kind, masks=masks, transform=tf, size=sizes[split]))
    elif name == 'coco':
        from litcli.core.data.coco import CocoDetection, coco_splits
        splits = coco_splits(Path(root), splits=('train', 'val') if train_tf is not None else ('val',))
        make = (lambda split, tf: CocoDetection(*splits[split], masks=masks, train=split == 'train', transform=tf,
                                                strict=strict_data))
    else:
        from litcli.core.data.ade20k import ADE20KSegmentation
        folder = {'train': 'training', 'val': 'validation'}
        make = (lambda split, tf: ADE20KSegmentation(Path(root), folder[split], transform=tf, strict=strict_data))
    train_ds = make('train', train_tf) if train_tf is not None else None
    val_ds = make('val', None)
    class_names = list(val_ds.class_names)
    category_ids = list(getattr(val_ds, 'category_ids', range(1, len(class_names) + 1)))
    if train_ds is not None and list(train_ds.class_names) != class_names:
        raise LitError(f'--data {data}: the training and validation annotations list different classes; use one '
                       f'category list for both')
    description = '; '.join(d.description for d in (train_ds, val_ds) if d is not None)
    spec = DenseDataSpec(name, root, kind, class_names, category_ids, len(train_ds) if train_ds is not None else 0,
                         len(val_ds), description)
    return train_ds, val_ds, spec


# ---------------------------------------------------------------------------------------------------------------
# Samplers: per-rank batches of (index, seed) items for SeededSamples


class _SeededBatches(Sampler):
    """Base of the training batch samplers: ``batches(epoch)`` lists this rank's batches of dataset indices for an
    epoch; iteration yields them from batch ``skip`` on as ``[(index, seed), ...]`` with the k-th sample's seed
    ``sample_seed(seed, epoch, rank, k)`` (k counted from the epoch's start, also after a resume)."""

    def __init__(self, batch_size: int, world: World, seed: int):
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, world.rank, world.world_size, seed
        self.epoch, self.skip = 0, 0

    def batches(self, epoch: int) -> List[List[int]]:
        raise NotImplementedError

    def set_epoch(self, epoch: int, skip_batches: int = 0):
        self.epoch, self.skip = epoch, skip_batches

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        for k, batch in enumerate(self.batches(self.epoch)[self.skip:], start=self.skip):
            yield [(index, sample_seed(self.seed, self.epoch, self.rank, k * self.batch_size + j))
                   for j, index in enumerate(batch)]

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.skip)

    def batches_per_epoch(self) -> int:
        raise NotImplementedError


class GroupedBatchSampler(_SeededBatches):
    """mmdet 2.11's ``DistributedGroupSampler`` (``GroupSampler`` on one process): per epoch, each orientation
    group's indices shuffled and padded with random repeats to a multiple of batch x processes, cut into batches,
    the batches shuffled; rank r takes its contiguous share. Written here because torchvision's
    ``GroupedBatchSampler`` (references only, not in the package) is neither seeded per epoch nor resumable."""

    def __init__(self, flags: Sequence[int], batch_size: int, world: World, seed: int):
        super().__init__(batch_size, world, seed)
        self.groups = [[i for i, f in enumerate(flags) if f == g] for g in sorted(set(flags))]
        chunk = batch_size * world.world_size
        self.total_batches = sum(math.ceil(len(g) / chunk) * world.world_size for g in self.groups)

    def batches_per_epoch(self) -> int:
        return self.total_batches // self.world_size

    def batches(self, epoch: int) -> List[List[int]]:
        g = torch.Generator().manual_seed(sample_seed(self.seed, epoch))
        chunk = self.batch_size * self.world_size
        batches = []
        for group in self.groups:
            order = [group[i] for i in torch.randperm(len(group), generator=g).tolist()]
            extra = math.ceil(len(order) / chunk) * chunk - len(order)
            order += [order[i] for i in torch.randint(len(order), (extra,), generator=g).tolist()]
            batches += [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        per_rank = len(batches) // self.world_size
        return batches[self.rank * per_rank:(self.rank + 1) * per_rank]


class IterationBatchSampler(_SeededBatches):
    """mmseg's iteration-based training as periods ("epochs") of ``updates_per_epoch`` updates: the data is an
    endless stream of passes, pass p a permutation drawn from (seed, p); update u takes the stream's samples
    [u * B * W, (u + 1) * B * W), rank r the r-th batch of them."""

    def __init__(self, length: int, batch_size: int, world: World, seed: int, updates_per_epoch: int):
        super().__init__(batch_size, world, seed)
        self.length, self.updates_per_epoch = length, updates_per_epoch
        self._passes: Dict[int, List[int]] = {}

    def batches_per_epoch(self) -> int:
        return self.updates_per_epoch

    def _sample(self, position: int) -> int:
        n, offset = divmod(position, self.length)
        if n not in self._passes:
            if len(self._passes) > 2:  # a period spans a few passes at most: keep the recent ones
                self._passes.pop(min(self._passes))
            g = torch.Generator().manual_seed(sample_seed(self.seed, n))
            self._passes[n] = torch.randperm(self.length, generator=g).tolist()
        return self._passes[n][offset]

    def batches(self, epoch: int) -> List[List[int]]:
        per_update = self.batch_size * self.world_size
        first = epoch * self.updates_per_epoch * per_update + self.rank * self.batch_size
        return [[self._sample(first + u * per_update + j) for j in range(self.batch_size)]
                for u in range(self.updates_per_epoch)]


# ---------------------------------------------------------------------------------------------------------------
# Loaders


def collate_lists(batch):
    """A list of (image, target) -> (images tuple, targets tuple); unreadable samples (None) dropped, None when
    none is left. Images of different sizes stay separate: the detectors resize and pad them themselves, and a
    segmentation test image is inferred at its own size."""
    batch = [b for b in batch if b is not None]
    return tuple(zip(*batch)) if batch else None


def collate_segmentation_train(batch):
    from torch.utils.data import default_collate
    return default_collate(batch)


def _to_device(batch, device: torch.device):
    """Every tensor of a (nested) batch moved to ``device``."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


class DenseLoader:
    """A DataLoader whose batches arrive on ``device``; ``set_epoch(epoch, skip_batches)`` goes to its batch
    sampler (training) so a resumed epoch starts at the batch it stopped at."""

    def __init__(self, loader: DataLoader, device: torch.device, batch_sampler=None):
        self.loader, self.device, self.batch_sampler = loader, device, batch_sampler

    @property
    def dataset(self):
        return self.loader.dataset

    def set_epoch(self, epoch: int, skip_batches: int = 0):
        if self.batch_sampler is not None:
            self.batch_sampler.set_epoch(epoch, skip_batches)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield None if batch is None else _to_device(batch, self.device)


def build_dense_train_loader(dataset, kind: str, cfg: Dict, world: World, device: torch.device,
                             updates_per_epoch: Optional[int]) -> DenseLoader:
    """The training loader: grouped batches over whole passes (detection, ``updates_per_epoch`` None) or periods of
    ``updates_per_epoch`` optimizer updates (of ``grad_accum_steps`` batches each) over an endless stream
    (segmentation, the built-in scenes), seeded per sample, ``cfg['workers']`` persistent workers."""
    from litcli.core.data.loaders import SeededSamples, loader_kwargs

    if updates_per_epoch:  # a period of that many optimizer updates, each of grad_accum_steps batches
        sampler = IterationBatchSampler(len(dataset), cfg['batch_size'], world, cfg['seed'],
                                        updates_per_epoch * cfg['grad_accum_steps'])
    else:
        sampler = GroupedBatchSampler(dataset.aspect_flags(), cfg['batch_size'], world, cfg['seed'])
    collate = collate_lists if kind == DETECTION else collate_segmentation_train
    loader = DataLoader(SeededSamples(dataset), batch_sampler=sampler, collate_fn=collate,
                        **loader_kwargs(cfg['workers'], device, cfg.get('prefetch_factor')))
    return DenseLoader(loader, device, sampler)


def build_dense_eval_loader(dataset, kind: str, batch_size: int, workers: int, world: World,
                            device: torch.device) -> DenseLoader:
    """This rank's disjoint share of the validation set, each image once across ranks, batches of lists."""
    from litcli.core.data.loaders import loader_kwargs

    loader = DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), world.rank,
                                                                              world.world_size),
                        collate_fn=collate_lists, **loader_kwargs(workers, device, None))
    return DenseLoader(loader, device)

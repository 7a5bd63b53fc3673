"""The registry of the paper's dense models (models/dense_zoo.py): every name builds with its measured parameter
count, official release files are recognised from their keys and shapes, anything else is refused in one line."""
import pytest
import torch

from litcli.models import lit_ti
from litcli.models.dense_classes import ADE20K_CLASSES, ADE20K_PALETTE, COCO_CATEGORY_IDS, COCO_CLASSES
from litcli.models.dense_zoo import (DENSE_MODEL_NAMES, DENSE_MODELS, DENSE_RELEASE_URL, convert_official,
                                     create_dense_model, dense_model)

# the paper's six dense models, by task: the release-file stem and the reported results (Tables 6-8)
PAPER = {
    'retinanet_lit_ti': ('retina_lit_ti', {'box_ap': 41.6}), 'retinanet_lit_s': ('retina_lit_s', {'box_ap': 41.6}),
    'mask_rcnn_lit_ti': ('mask_rcnn_lit_ti', {'box_ap': 42.0, 'mask_ap': 39.1}),
    'mask_rcnn_lit_s': ('mask_rcnn_lit_s', {'box_ap': 42.9, 'mask_ap': 39.6}),
    'semantic_fpn_lit_ti': ('sem_fpn_lit_ti', {'miou': 41.3}), 'semantic_fpn_lit_s': ('sem_fpn_lit_s', {'miou': 41.7}),
}


def official_state_dict(name: str, num_classes: int) -> dict:
    """A release-format (mmdet / mmseg) state dict of ``name``: official key names and shapes, random values."""
    entry = dense_model(name)
    g = torch.Generator().manual_seed(0)
    return {key: torch.randn(shape, generator=g) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)
            for key, shape, dtype in entry.family.official_layout(entry.variant, num_classes)}


def test_entries_are_the_papers():
    assert set(DENSE_MODEL_NAMES) == set(PAPER)
    for name in DENSE_MODEL_NAMES:
        entry = DENSE_MODELS[name]
        stem, results = PAPER[name]
        assert entry.url == f'https://github.com/ziplab/LIT/releases/download/v2.0/{stem}.pth'
        assert DENSE_RELEASE_URL in entry.url and dict(entry.paper) == results
        assert name == f'{entry.task}_lit_{entry.variant}'
        assert entry.num_classes == {'coco': 80, 'ade20k': 150}[entry.dataset]


def test_class_tables():
    assert len(COCO_CLASSES) == len(set(COCO_CLASSES)) == len(COCO_CATEGORY_IDS) == 80
    assert (COCO_CLASSES[0], COCO_CLASSES[-1], COCO_CATEGORY_IDS[-1]) == ('person', 'toothbrush', 90)
    assert list(COCO_CATEGORY_IDS) == sorted(set(COCO_CATEGORY_IDS))
    assert len(ADE20K_CLASSES) == len(set(ADE20K_CLASSES)) == len(ADE20K_PALETTE) == 150
    assert (ADE20K_CLASSES[0], ADE20K_CLASSES[7], ADE20K_CLASSES[-1]) == ('wall', 'bed', 'flag')
    assert ADE20K_PALETTE[0] == (120, 120, 120) and ADE20K_PALETTE[-1] == (92, 0, 255)
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in ADE20K_PALETTE)


@pytest.mark.parametrize('name', DENSE_MODEL_NAMES)
def test_every_name_builds_with_its_measured_parameter_count(name):
    model = create_dense_model(name)
    assert sum(p.numel() for p in model.parameters()) == DENSE_MODELS[name].params


def test_unknown_name_lists_the_names():
    with pytest.raises(ValueError, match="unknown dense model 'semantic_fpn_lit_m'") as info:
        create_dense_model('semantic_fpn_lit_m')
    assert all(name in str(info.value) for name in DENSE_MODEL_NAMES)


@pytest.mark.parametrize('name', DENSE_MODEL_NAMES)
def test_convert_official_recognises_each_release_layout(name):
    num_classes = 7  # not the default: read from the shapes
    official = official_state_dict(name, num_classes)
    found, converted, classes = convert_official({'state_dict': official, 'meta': {}})  # as the release files
    assert (found, classes) == (name, num_classes)
    model = create_dense_model(found, num_classes=classes)
    assert model.load_state_dict(converted, strict=True)


def test_convert_official_refuses_a_classification_checkpoint():
    with pytest.raises(ValueError, match='not an official LIT dense checkpoint') as info:
        convert_official({'model': lit_ti().state_dict()})
    assert '\n' not in str(info.value)

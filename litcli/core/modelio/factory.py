"""The ONE way to get a model: ``create_model`` by name (a LIT variant or any timm model), ``load_model`` from any
checkpoint (an official ``.pth``, a ``lit train`` checkpoint, a ``lit export`` safetensors file) or with random
weights.

``load_model`` is also the one place that decides, from a checkpoint, which weights to load (raw or EMA), the eval
preprocessing, the class names and the input size; every command that takes ``--checkpoint`` goes through it.
"""
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from litcli.core.modelio.checkpoint import (apply_checkpoint, detect_variant, is_train_checkpoint, key_examples,
                                           read_checkpoint)
from litcli.core.errors import CheckpointError, LitError, UsageError

RANDOM = 'random initialisation'


def create_model(name: str, optional: Optional[Dict[str, Any]] = None, **kwargs):
    """``timm.create_model(name, **kwargs)`` with the LIT variants registered, and ``optional`` keyword arguments
    passed only to models that take them (``img_size`` and ``drop_path_rate`` to a CNN, say: timm raises
    TypeError for an argument a model does not have). An unknown name is a UsageError."""
    import timm

    import litcli.models  # noqa: F401  (registers lit_* in timm)

    optional = dict(optional or {})
    while True:
        try:
            return timm.create_model(name, **kwargs, **optional)
        except TypeError as e:
            rejected = re.search(r"unexpected keyword argument '(\w+)'", str(e))
            if rejected is None or rejected.group(1) not in optional:
                raise
            del optional[rejected.group(1)]
        except RuntimeError as e:  # timm: "Unknown model (name)"
            if 'Unknown model' not in str(e):
                raise
            raise UsageError(f'unknown model {name!r}; `python -c "import timm; print(timm.list_models(\'*swin*\'))"` '
                             f'lists timm names') from None


def check_model_names(names) -> List[str]:
    """The names, when timm knows them all (LIT variants included); else a UsageError with a did-you-mean."""
    import difflib

    import timm

    import litcli.models  # noqa: F401  (registers lit_*)
    known = set(timm.list_models())
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else \
                "; `python -c \"import timm; print(timm.list_models('*swin*'))\"` lists names"
            raise UsageError(f'unknown timm model {name!r}{hint}')
    return list(names)


def create_dense_baseline(name: str, **kwargs):
    """The ResNet-50 counterpart of a dense LIT model by name (``litcli.models.dense_zoo.RESNET50_BASELINES``:
    torchvision's ``retinanet_resnet50_fpn`` / ``maskrcnn_resnet50_fpn``, ``semantic_fpn_resnet50``), randomly
    initialised: nothing is downloaded. An unknown name is a UsageError."""
    from litcli.models.dense_zoo import create_resnet50_baseline

    try:
        return create_resnet50_baseline(name, **kwargs)
    except ValueError as e:
        raise UsageError(str(e)) from None


def param_counts(model) -> Dict[str, int]:
    """Exact parameter counts with and without the classifier (the paper's 19/27/48/86M are the latter)."""
    total = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for p in model.get_classifier().parameters())
    return {'params': total, 'params_without_head': total - head}


def model_size_note(cfg: Dict, model) -> Optional[str]:
    """One line when a run's model is not the paper's size of its variant (the demo configuration, model_kwargs)."""
    kwargs = {k: v for k, v in (cfg.get('model_kwargs') or {}).items() if k != 'img_size'}
    if not kwargs:
        return None
    shape = ', '.join(f'{k}={tuple(v) if isinstance(v, list) else v}' for k, v in kwargs.items())
    what = 'the built-in demo configuration' if cfg.get('demo_config') else 'model_kwargs of the config'
    return (f'model: {what}, the {cfg["variant"]} layout with {shape}: {param_counts(model)["params"] / 1e6:.2f}M '
            f'parameters (not the paper\'s {cfg["variant"]})')


@dataclass
class LoadedModel:
    """A model and what its checkpoint says about it."""
    model: Any  # torch.nn.Module, in eval mode
    variant: str  # the registered name, e.g. 'lit_s'
    num_classes: int
    class_names: Optional[List[str]]  # None: 'class N'
    data_config: Dict  # the eval preprocessing, for litcli.core.data.transforms.eval_transform
    weights: str  # 'model', 'ema' or 'random'
    source: str  # the checkpoint's path, or 'random initialisation'
    checkpoint: Dict = field(default_factory=dict)  # the file's metadata (config, model_kwargs, ...); {} for random
    pretrained: Optional[str] = None  # the release URL when these are the released weights (load_model(pretrained=))

    @property
    def img_size(self) -> int:
        return int(self.data_config['input_size'][-1])

    @property
    def train_config(self) -> Optional[Dict]:
        """The ``lit train`` config the weights came from (None for official files and random weights)."""
        config = self.checkpoint.get('config')
        return config if isinstance(config, dict) and 'variant' in self.checkpoint else None

    def describe(self) -> str:
        """'checkpoint PATH', with ' (EMA weights)' where it applies, or 'random initialisation'."""
        if self.weights == 'random':
            return RANDOM
        if self.pretrained:
            return f'the released {self.variant} ImageNet-1k weights ({self.source})'
        return f'checkpoint {self.source}' + (' (EMA weights)' if self.weights == 'ema' else '')


def select_weights(raw: Dict, use_ema: Optional[bool] = None, source: Any = 'checkpoint') -> Tuple[Dict, str]:
    """(checkpoint whose ``'model'`` holds the weights to load, 'ema' or 'model').

    A ``lit train --model-ema`` checkpoint holds the raw weights and their EMA; its metrics (and the choice of
    ``best.pt``) came from the weights named by ``eval_weights``, so those load by default (files written before
    that key existed evaluated the EMA whenever they have one). ``use_ema`` True/False overrides. A ``lit export``
    holds the one set it was made from.
    """
    if not any(isinstance(raw.get(k), dict) for k in ('model', 'state_dict')):
        raw = {'model': raw}  # a bare (official) state dict: wrapped, so metadata can sit beside the weights
    has_ema = isinstance(raw.get('ema'), dict) and bool(raw['ema'])
    if not has_ema and raw.get('weights') in ('ema', 'model'):
        if use_ema is not None and use_ema != (raw['weights'] == 'ema'):
            raise CheckpointError(f'{source} is an export of the {"EMA" if raw["weights"] == "ema" else "raw"} '
                                  f'weights only; drop --{"no-" if use_ema is False else ""}use-ema or export again '
                                  f'from the training checkpoint')
        return raw, raw['weights']
    if use_ema is None:
        use_ema = has_ema and raw.get('eval_weights', 'ema') == 'ema'
    if use_ema and not has_ema:
        raise CheckpointError(f'{source} holds no EMA weights (it was not trained with --model-ema); drop --use-ema')
    if use_ema:
        return {**raw, 'model': raw['ema']}, 'ema'
    return raw, 'model'


def inference_data_config(raw: Dict, model, img_size: Optional[int] = None, crop_pct: Optional[float] = None) -> Dict:
    """The eval preprocessing of a checkpoint's model, as timm data-config keys (input_size, interpolation,
    crop_pct, crop_mode, mean, std; ``crop_mode='pad'``: see litcli.core.data.transforms).

    ``lit train`` checkpoints and exports record the one the run evaluated with (``data_config``); a ``lit train``
    checkpoint written before that key existed gets it rebuilt from its config (the built-in sets' pad-to-size
    and mean/std); official files get the variant's registered cfg. ``img_size``/``crop_pct`` override.
    """
    from timm.data import resolve_model_data_config

    from litcli.core.config import is_builtin
    from litcli.core.data.datasets import run_data_config
    from litcli.core.data.transforms import normalize_data_config

    recorded = raw.get('data_config') if isinstance(raw.get('data_config'), dict) else None
    if is_train_checkpoint(raw):
        cfg = raw['config']
        derived = run_data_config(cfg, 'builtin' if is_builtin(cfg.get('data')) else 'folder')
        # Exports written before the pad mode existed recorded timm's resize + crop for a padded run: keep their
        # size, take the run's real preprocessing.
        stale = recorded is not None and derived['crop_mode'] == 'pad' and recorded.get('crop_mode') != 'pad'
        dc = {**derived, 'input_size': tuple(recorded['input_size'])} if stale else recorded or derived
    elif recorded is not None:
        dc = dict(recorded)
    else:
        dc = resolve_model_data_config(model)
    return normalize_data_config(dc, img_size, crop_pct)


def class_names_for(raw: Dict, num_classes: int) -> Optional[List[str]]:
    """The checkpoint's own class names (``lit train``/export); ImageNet-1k names from timm's bundled metadata
    for a 1000-class model; else None (labels print as 'class N')."""
    names = raw.get('class_names')
    if names is not None and len(names) == num_classes:
        return [str(n) for n in names]
    if num_classes == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo('imagenet-1k')
        return [info.index_to_description(i) for i in range(num_classes)]
    return None


def _variant_of(raw: Dict, variant: Optional[str], source, require_variant: bool) -> str:
    """The variant a checkpoint holds: recorded (lit checkpoints, exports), or given, or recognised by its keys
    (unless ``require_variant``: official files then need ``--variant``, with the recognised one suggested)."""
    from litcli.models.spec import unwrap_state_dict

    recorded = raw.get('variant')
    if variant is not None and recorded is not None and variant != recorded:
        raise CheckpointError(f'{source} is a {recorded} checkpoint, not {variant}; '
                              f'drop --variant or pass --variant {recorded.removeprefix("lit_")}')
    if variant or recorded:
        return variant or recorded
    guess = detect_variant(unwrap_state_dict(raw))
    if require_variant or guess is None:
        hint = f'it looks like {guess}: pass --variant {guess.removeprefix("lit_")}' if guess else \
            'pass --variant ti|s|m|b'
        raise LitError(f'{source} is an official-format file without its variant; {hint}')
    return guess


def load_model(checkpoint: Optional[Path] = None, variant: Optional[str] = None, *, use_ema: Optional[bool] = None,
               img_size: Optional[int] = None, crop_pct: Optional[float] = None, default_variant: str = 'lit_s',
               require_variant: bool = False, pretrained: bool = False, log: Optional[Callable[[str], None]] = None,
               **model_kwargs) -> LoadedModel:
    """A model in eval mode with what its checkpoint says about it.

    ``checkpoint`` None: ``variant`` (else ``default_variant``) with random weights and its registered eval
    preprocessing. Otherwise the variant comes from ``variant``, else the file (``lit train`` checkpoints and
    exports record it; official files are recognised by their keys unless ``require_variant``); the class count
    from the file's classifier; a ``lit train`` checkpoint's recorded ``model_kwargs`` apply (explicit
    ``model_kwargs`` win). The model is built at ``img_size`` (default: the checkpoint's) and position tables
    trained at another size are resampled on load. ``use_ema``: see ``select_weights``.

    ``pretrained``: the released ImageNet-1k weights of ``variant`` (else ``default_variant``) instead of a
    ``checkpoint`` (giving both is a UsageError), downloaded into the cache on first use (``core.weights``) and
    loaded strictly; with another ``num_classes`` the classifier starts freshly initialised, which ``log`` (default:
    stderr) is told.
    """
    from litcli.core.config import checked_img_size
    from litcli.models.spec import unwrap_state_dict

    def check_size(kwargs):  # sides are multiples of 8 x the stem patch: the checkpoint's own, 4 in official models
        if img_size is not None:
            checked_img_size(img_size, patch_size=kwargs.get('patch_size', 4))

    if img_size is not None:
        model_kwargs['img_size'] = img_size
    if pretrained:
        if checkpoint is not None:
            raise UsageError('--checkpoint and --pretrained both name the weights; pass one (--pretrained: the '
                             'released ImageNet-1k weights of --variant)')
        if use_ema:
            raise UsageError('the released weights are one set (no EMA copy); drop --use-ema')
        check_size(model_kwargs)
        return _load_released(variant or default_variant, img_size, crop_pct, log, model_kwargs)
    if checkpoint is None:
        name = variant or default_variant
        check_size(model_kwargs)
        model = create_model(name, **model_kwargs).eval()
        data_config = inference_data_config({}, model, img_size, crop_pct)
        return LoadedModel(model, name, model.num_classes, class_names_for({}, model.num_classes), data_config,
                           'random', RANDOM)
    raw, weights = select_weights(_refuse_dense(read_checkpoint(checkpoint), checkpoint), use_ema, checkpoint)
    name = _variant_of(raw, variant, checkpoint, require_variant)
    state_dict = unwrap_state_dict(raw)
    kwargs = {**(raw.get('model_kwargs') or {}), **model_kwargs}
    check_size(kwargs)
    head = state_dict.get('head.weight')
    if head is not None and head.ndim == 2:
        kwargs.setdefault('num_classes', head.shape[0])
    model = create_model(name, **kwargs)
    apply_checkpoint(raw, model, source=checkpoint)
    model.eval()
    metadata = {k: v for k, v in raw.items() if k not in ('model', 'state_dict', 'ema', 'optimizer')}
    return LoadedModel(model, name, model.num_classes, class_names_for(raw, model.num_classes),
                       inference_data_config(raw, model, img_size, crop_pct), weights, str(checkpoint), metadata)


def load_dropping_head(model, path: Path) -> Optional[int]:
    """Load a file's weights (an official ``.pth`` too) strictly, except a classifier of another number of classes,
    which is left freshly initialised; returns the file's class count when its classifier was dropped, else None."""
    from litcli.models.spec import unwrap_state_dict

    raw = read_checkpoint(path)
    head = unwrap_state_dict(raw).get('head.weight')
    file_classes = head.shape[0] if head is not None and head.ndim == 2 else None
    num_classes = model.num_classes
    if file_classes is not None and file_classes != num_classes:
        # Load strictly into a head of the file's size (every other key must fit), then start a new classifier.
        model.reset_classifier(file_classes)
        apply_checkpoint(raw, model, source=path)
        model.reset_classifier(num_classes)
        return file_classes
    apply_checkpoint(raw, model, source=path)
    return None


def load_initial_weights(model, path: Path, log) -> None:
    """Start training from a file's weights only (an official ``.pth`` too): strictly, except the classifier,
    which is re-initialised (and said so) when the file has another number of classes (fine-tuning)."""
    dropped = load_dropping_head(model, path)
    if dropped is not None:
        log(f'initial weights from {path} (classifier of {dropped} classes dropped, new head of {model.num_classes})')
    else:
        log(f'initial weights from {path}')


def pretrained_file(variant: str, log: Optional[Callable[[str], None]] = None) -> Path:
    """The cached file of ``variant``'s released weights, downloaded and verified first when not cached (a UsageError
    for a model without released weights; a one-line LitError naming the URL and the ways out when offline).
    ``variant``: a classification variant ('lit_s') or a dense model ('retinanet_lit_ti')."""
    from litcli.core.modelio.weights import fetch
    from litcli.models.dense_zoo import DENSE_MODELS

    verify = _verify_dense_release if variant in DENSE_MODELS else _verify_release
    return fetch(variant, lambda path, url: verify(path, url, variant), log)


def _verify_release(path: Path, source: str, variant: str) -> None:
    """A downloaded file is ``variant``'s release when it is recognised as that variant and loads strictly into it
    (1000 classes, 224 px), as the official files do; a CheckpointError otherwise."""
    from litcli.core.modelio.weights import release_mismatch

    raw = read_checkpoint(path)
    problem = release_mismatch(raw, variant, source)
    if problem is not None:
        raise CheckpointError(problem)
    apply_checkpoint(raw, create_model(variant), source=source)


def _load_released(name: str, img_size: Optional[int], crop_pct: Optional[float], log, model_kwargs) -> LoadedModel:
    """``load_model(pretrained=True)``: the released weights of ``name`` in a model built with ``model_kwargs``."""
    from litcli.core.modelio.weights import weights_url

    log = log or _stderr
    url = weights_url(name)  # also refuses a model without released weights, before any download
    path = pretrained_file(name, log)
    model = create_model(name, **model_kwargs)
    try:
        dropped = load_dropping_head(model, path)
    except CheckpointError as e:
        raise CheckpointError(f'{e} ({path} is the cached download of {url}: if it is damaged, delete it to download '
                              f'it again)') from None
    if dropped is not None:
        log(f'released {name} weights: the ImageNet classifier ({dropped} classes) is not loaded; the head of '
            f'{model.num_classes} classes starts freshly initialised (fine-tune it)')
    model.eval()
    return LoadedModel(model, name, model.num_classes, class_names_for({}, model.num_classes),
                       inference_data_config({}, model, img_size, crop_pct), 'model', str(path), {}, pretrained=url)


def _stderr(message: str):
    import sys

    print(message, file=sys.stderr, flush=True)


# ---- the dense models (paper Tables 6-8): RetinaNet, Mask R-CNN, Semantic FPN with a LIT backbone ----

DENSE_COMMANDS = {'detection': 'lit detect', 'segmentation': 'lit segment'}
DENSE_PREFIXES = ('retinanet_', 'mask_rcnn_', 'semantic_fpn_')  # of the dense models' names (dense_zoo)


@dataclass
class LoadedDenseModel:
    """A dense model in eval mode with what its weights say about it. ``preprocessing``: the official test
    pipeline, ``img_scale`` (keep-ratio resize to fit), ``size_divisible`` (pad; None: none), ``mean``/``std`` (on
    0-1 RGB) and ``in_model`` (True: the detectors resize, normalise and pad inside, and take 0-1 RGB images)."""
    model: Any  # torch.nn.Module, in eval mode
    name: str  # 'retinanet_lit_ti', ...
    task: str  # 'retinanet' | 'mask_rcnn' | 'semantic_fpn'
    kind: str  # 'detection' | 'segmentation'
    class_names: List[str]
    category_ids: List[int]  # what a COCO results file calls each label (COCO's own ids for the 80 COCO classes)
    preprocessing: Dict
    weights: str  # 'model', 'ema' or 'random'
    source: str  # the file, or 'random initialisation'
    checkpoint: Dict = field(default_factory=dict)  # the file's metadata (lit checkpoints; official files: 'meta')
    pretrained: Optional[str] = None  # the release URL when these are the released weights

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> str:
        if self.weights == 'random':
            return f'{self.name}, {RANDOM}'
        if self.pretrained:
            return f'{self.name}, the released weights ({self.source})'
        return f'{self.name} from {self.source}' + (' (EMA weights)' if self.weights == 'ema' else '')


def dense_checkpoint(model, name: str, class_names: Optional[List[str]] = None, **metadata) -> Dict:
    """The plain dict a lit dense checkpoint holds (``save_checkpoint`` writes it; ``load_dense_model`` reads it):
    ``{'model': state_dict, 'variant': name, 'task', 'num_classes', 'class_names', **metadata}``, the keys a
    ``lit train`` classification checkpoint records its model with. ``class_names`` default to the dataset's (for
    a model of the dataset's classes; 'class 0', ... otherwise)."""
    from litcli.models.dense_zoo import dense_model

    entry = dense_model(name)
    if entry.task == 'semantic_fpn':
        num_classes = model.num_classes
    elif entry.task == 'retinanet':
        num_classes = model.head.classification_head.num_classes
    else:  # Mask R-CNN: torchvision's background row 0 besides the classes
        num_classes = model.roi_heads.box_predictor.cls_score.out_features - 1
    if class_names is None:
        class_names = entry.class_names if num_classes == entry.num_classes else \
            [f'class {i}' for i in range(num_classes)]
    names = list(class_names)
    if len(names) != num_classes:
        raise UsageError(f'{len(names)} class names for a model of {num_classes} classes')
    return {'model': model.state_dict(), 'variant': name, 'task': entry.task, 'num_classes': len(names),
            'class_names': names, **metadata}


def create_dense_model(name: str, num_classes: Optional[int] = None, *, backbone_weights: Any = None,
                       log: Optional[Callable[[str], None]] = None, **kwargs):
    """A dense model by name (``litcli.models.dense_zoo``: 'retinanet_lit_ti' ... 'semantic_fpn_lit_s'), randomly
    initialised, its backbone optionally from classification weights: ``backbone_weights`` = a variant name with
    released weights ('lit_ti' / 'lit_s', downloaded into the cache once) or a classification checkpoint file
    (``lit_s.pth``, a ``lit train`` checkpoint). The backbone loads strictly after
    ``dense_state_dict_from_classification`` (LIT-S's tables resampled to the dense grid, output norms fresh); the
    neck and heads stay random. An unknown name is a UsageError; weights of the other backbone a CheckpointError."""
    from litcli.models import dense_zoo

    try:
        model = dense_zoo.create_dense_model(name, num_classes, **kwargs)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if backbone_weights is None:
        return model
    if isinstance(backbone_weights, str) and not Path(backbone_weights).is_file():  # a name: its released file
        path = pretrained_file(backbone_weights, log)
    else:
        path = Path(backbone_weights)
    load_backbone_weights(model, name, read_checkpoint(path), path)
    return model


def load_backbone_weights(model, name: str, raw: Dict, source) -> None:
    """Load classification weights (``raw``: a checkpoint dict, official or ``lit train``) into the LIT backbone of
    the dense model ``name``, strictly after ``dense_state_dict_from_classification``."""
    from litcli.models import dense_zoo
    from litcli.models.dense import dense_state_dict_from_classification

    entry = dense_zoo.dense_model(name)
    weights, _ = select_weights(raw, source=source)
    try:
        state_dict = dense_state_dict_from_classification(weights, entry.variant, entry.backbone_task)
    except ValueError as e:
        raise CheckpointError(f'{source} cannot initialise the backbone of {name}: {e}') from None
    body = getattr(model.backbone, 'body', model.backbone)  # detectors wrap the LIT body with the FPN
    body.load_state_dict(state_dict)


# The dense models' tensors whose shape follows the class count (RetinaNet's classifier, Mask R-CNN's box classifier
# and regressor and mask logits, Semantic FPN's last conv)
CLASS_SPECIFIC = ('cls_logits', 'cls_score', 'bbox_pred', 'mask_fcn_logits', 'conv_seg')


def load_dense_start_weights(model, name: str, source, log: Callable[[str], None]) -> str:
    """The weights a dense training run starts from, loaded into ``model`` (the dense model ``name``): ``source`` a
    dense model's name (its released file, downloaded once), a dense checkpoint (official mmdet/mmseg file or a lit
    one: every tensor whose shape fits; with other classes the class-specific head rows stay random), or a
    classification checkpoint (the backbone only). Returns what was loaded, for the log."""
    from litcli.models.dense_zoo import DENSE_MODEL_NAMES

    if str(source) in DENSE_MODEL_NAMES and not Path(source).is_file():
        path = pretrained_file(str(source), log)
    else:
        path = Path(source)
    raw = read_checkpoint(path)
    found = _dense_entry_of(raw)
    if found is None:
        load_backbone_weights(model, name, raw, path)
        return f'backbone from the classification weights {path}'
    entry, state_dict, _ = found
    if entry.name != name:
        raise CheckpointError(f'{path} holds {entry.name} weights, not {name}; start {name} from its own kind of '
                              f'weights (or pass --pretrained for ImageNet backbone weights)')
    if isinstance(raw.get('model'), dict):  # a lit dense checkpoint: the weights its metrics came from (EMA...)
        state_dict = select_weights(raw, source=path)[0]['model']
    target = model.state_dict()
    unknown = sorted(set(state_dict) - set(target))
    if unknown:
        raise CheckpointError(f'{path} does not fit {name}: {len(unknown)} unexpected keys '
                              f'({key_examples(unknown)}); pass a checkpoint of {name}')
    fitting = {k: v for k, v in state_dict.items() if v.shape == target[k].shape}
    fresh = sorted(set(target) - set(fitting))
    other = [k for k in fresh if not any(part in k for part in CLASS_SPECIFIC)]
    if other:  # not a class count: another layout (model_kwargs: widths, depths, FPN channels)
        built = raw.get('model_kwargs') or 'the official settings'
        raise CheckpointError(f'{path} holds {name} of another size ({len(other)} tensors differ, e.g. '
                              f'{key_examples(other)}; it was built with {built}): start from a checkpoint of '
                              f'this layout, or set model_kwargs as it was')
    model.load_state_dict(fitting, strict=False)
    return f'{name} weights from {path}' + (f' (the class-specific head rows stay random for the other class count: '
                                             f'{key_examples(fresh)})' if fresh else '')


def _dense_entry_of(raw: Dict):
    """(registry entry, state dict in the model's key names, num_classes) of a dense checkpoint dict: a lit one
    (``variant`` recorded) or an official mmdet/mmseg release file as it is; None for anything else."""
    from litcli.models.spec import unwrap_state_dict

    recorded = raw.get('variant')
    state_dict = unwrap_state_dict(raw)
    if not (isinstance(recorded, str) and recorded.startswith(DENSE_PREFIXES)) and \
            not any(k.startswith('backbone.') for k in state_dict):
        return None  # not a dense model's state dict: spare the import of the detectors
    from litcli.models.dense_zoo import DENSE_MODELS, convert_official

    if recorded in DENSE_MODELS:
        head_classes = raw.get('num_classes') or len(raw.get('class_names') or ()) or None
        return DENSE_MODELS[recorded], state_dict, head_classes
    try:
        name, converted, num_classes = convert_official(state_dict)
    except ValueError:
        return None
    return DENSE_MODELS[name], converted, num_classes


def is_dense_checkpoint(path) -> bool:
    """Whether the file holds a dense model (lit or official mmdet/mmseg); False for anything else, unreadable
    files included (the caller's own loading then says what is wrong)."""
    try:
        return _dense_entry_of(read_checkpoint(Path(path), mmap=True)) is not None
    except LitError:
        return False


def _refuse_dense(raw: Dict, source) -> Dict:
    """``raw`` unless it is a dense model's checkpoint, which the classification commands cannot use."""
    found = _dense_entry_of(raw)
    if found is not None:
        entry = found[0]
        raise CheckpointError(f'{source} is a {entry.name} ({entry.backbone_task}) checkpoint, not an image '
                              f'classifier; use {DENSE_COMMANDS[entry.backbone_task]} --checkpoint {source}')
    return raw


def _dense_preprocessing(model, kind: str, img_scale: Optional[Tuple[int, int]] = None) -> Dict:
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from litcli.models.segmentation import TEST_SCALE

    if kind == 'detection':
        t = model.transform
        return dict(img_scale=tuple(t.img_scale), size_divisible=t.size_divisible, mean=tuple(t.image_mean),
                    std=tuple(t.image_std), in_model=True)
    return dict(img_scale=tuple(img_scale or TEST_SCALE), size_divisible=None, mean=IMAGENET_DEFAULT_MEAN,
                std=IMAGENET_DEFAULT_STD, in_model=False)


def _category_ids(raw: Dict, class_names: List[str]) -> List[int]:
    from litcli.models.dense_classes import COCO_CATEGORY_IDS, COCO_CLASSES

    recorded = raw.get('category_ids')
    if recorded is not None and len(recorded) == len(class_names):
        return [int(i) for i in recorded]
    if tuple(class_names) == COCO_CLASSES:
        return list(COCO_CATEGORY_IDS)
    return list(range(1, len(class_names) + 1))  # COCO's convention: ids from 1


def _load_dense_strict(model, state_dict: Dict, source, name: str):
    target = model.state_dict()
    missing = sorted(set(target) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(target))
    mismatched = sorted(k for k in set(target) & set(state_dict) if target[k].shape != state_dict[k].shape)
    if missing or unexpected or mismatched:
        parts = [f'{len(keys)} {what} ({key_examples(keys)})' for what, keys in
                 (('missing keys', missing), ('unexpected keys', unexpected), ('shape mismatches', mismatched))
                 if keys]
        raise CheckpointError(f'{source} does not fit {name}: {"; ".join(parts)}; pass the checkpoint the model was '
                              f'saved in (an official release file or a lit dense checkpoint)')
    model.load_state_dict(state_dict)


def load_dense_model(checkpoint: Optional[Path] = None, name: Optional[str] = None, *, pretrained: bool = False,
                     kind: Optional[str] = None, use_ema: Optional[bool] = None,
                     img_scale: Optional[Tuple[int, int]] = None, log: Optional[Callable[[str], None]] = None,
                     **model_kwargs) -> LoadedDenseModel:
    """A dense model in eval mode: the released weights of ``name`` (``pretrained``: downloaded into the weights
    cache once, verified, loaded strictly after the mmdet/mmseg key map), or ``checkpoint`` (an official release
    file as it is, recognised from its keys and shapes; a lit dense checkpoint, see ``dense_checkpoint``; a
    safetensors export of one), or ``name`` with random weights. ``kind`` 'detection' | 'segmentation': what the
    caller can use; weights of the other kind, or of an image classifier, are a one-line CheckpointError naming
    the command that takes them. ``img_scale``: the test resize (keep ratio, fit into (long, short)) instead of
    the one the checkpoint records (``img_scale``), else the official (1333, 800) / (2048, 512). ``model_kwargs``
    go to the builder (e.g. ``score_thresh``)."""
    from litcli.models.dense_zoo import DENSE_MODEL_NAMES, dense_model

    if checkpoint is not None and pretrained:
        raise UsageError('--checkpoint and --pretrained both name the weights; pass one')
    if name is not None and name not in DENSE_MODEL_NAMES:
        raise UsageError(f'unknown dense model {name!r}; choose one of: {", ".join(DENSE_MODEL_NAMES)}')
    if name is not None and kind is not None and dense_model(name).backbone_task != kind:
        task = dense_model(name).backbone_task
        raise UsageError(f'{name} is a {task} model; use {DENSE_COMMANDS[task]} for it')
    if pretrained:
        if name is None:
            raise UsageError(f'--pretrained needs a model name: one of {", ".join(DENSE_MODEL_NAMES)}')
        from litcli.core.modelio.weights import weights_url

        url = weights_url(name)
        path = pretrained_file(name, log)
        raw, weights = read_checkpoint(path), 'model'
    elif checkpoint is not None:
        raw, weights = select_weights(read_checkpoint(checkpoint), use_ema, checkpoint)
        url, path = None, checkpoint
    else:
        if name is None:
            raise UsageError(f'name a dense model ({", ".join(DENSE_MODEL_NAMES)}) or pass --checkpoint')
        raw, weights, url, path = {}, 'random', None, RANDOM
    requested_classes = model_kwargs.pop('num_classes', None)  # random weights only: a file fixes its classes
    if raw:
        found = _dense_entry_of(raw)
        if found is None:
            raise CheckpointError(_not_dense(raw, path, kind))
        entry, state_dict, num_classes = found
        if name is not None and entry.name != name:
            raise CheckpointError(f'{path} holds {entry.name} weights, not {name}; drop the model name or pass '
                                  f'{entry.name}')
    else:
        entry, state_dict, num_classes = dense_model(name), None, requested_classes
    if kind is not None and entry.backbone_task != kind:
        raise CheckpointError(f'{path if raw else entry.name} is a {entry.name} ({entry.backbone_task}) model; use '
                              f'{DENSE_COMMANDS[entry.backbone_task]} for it')
    img_scale = img_scale or raw.get('img_scale')
    if img_scale is not None and entry.backbone_task == 'detection':  # the detectors resize inside
        model_kwargs['img_scale'] = tuple(img_scale)
    model = create_dense_model(entry.name, num_classes, **{**(raw.get('model_kwargs') or {}), **model_kwargs})
    if state_dict is not None:
        _load_dense_strict(model, state_dict, path, entry.name)
    model.eval()
    names = raw.get('class_names')
    num = num_classes or entry.num_classes
    if names is None or len(names) != num:
        names = list(entry.class_names) if num == entry.num_classes else [f'class {i}' for i in range(num)]
    metadata = {k: v for k, v in raw.items() if k not in ('model', 'state_dict', 'ema', 'optimizer')}
    return LoadedDenseModel(model, entry.name, entry.task, entry.backbone_task, [str(n) for n in names],
                            _category_ids(raw, names), _dense_preprocessing(model, entry.backbone_task, img_scale),
                            weights,
                            str(path), metadata, url)


def _not_dense(raw: Dict, source, kind: Optional[str]) -> str:
    """Why a checkpoint is not a dense model's: a classifier's (and which command takes it), or unrecognised."""
    from litcli.models.spec import unwrap_state_dict

    command = DENSE_COMMANDS.get(kind, 'lit detect / lit segment')
    recorded = raw.get('variant')
    classifier = recorded if isinstance(recorded, str) and not recorded.startswith(DENSE_PREFIXES) else \
        detect_variant(unwrap_state_dict(raw))
    if classifier:
        return (f'{source} is a {classifier} image-classification checkpoint, not a detection or segmentation '
                f'model; classify with lit predict --checkpoint {source} ({command} takes the weights of a dense '
                f'model: --pretrained NAME, an official release file or a lit dense checkpoint)')
    return (f'{source} is not a LIT detection or segmentation checkpoint (RetinaNet / Mask R-CNN / Semantic FPN, '
            f'official mmdet/mmseg release or lit dense checkpoint); {command} --pretrained NAME downloads one')


def _verify_dense_release(path: Path, source: str, name: str) -> None:
    """A downloaded dense file is ``name``'s release when it is recognised as that model and loads strictly."""
    from litcli.core.modelio.weights import release_mismatch

    raw = read_checkpoint(path)
    problem = release_mismatch(raw, name, source)
    if problem is not None:
        raise CheckpointError(problem)
    entry, state_dict, num_classes = _dense_entry_of(raw)
    _load_dense_strict(create_dense_model(name, num_classes), state_dict, source, name)

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

from litcli.core.modelio.checkpoint import apply_checkpoint, detect_variant, is_train_checkpoint, read_checkpoint
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
    raw, weights = select_weights(read_checkpoint(checkpoint), use_ema, checkpoint)
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
    for a model without released weights; a one-line LitError naming the URL and the ways out when offline)."""
    from litcli.core.modelio.weights import fetch

    return fetch(variant, lambda path, url: _verify_release(path, url, variant), log)


def _verify_release(path: Path, source: str, variant: str) -> None:
    """A downloaded file is ``variant``'s release when it is recognised as that variant and loads strictly into it
    (1000 classes, 224 px), as the official files do; a CheckpointError otherwise."""
    from litcli.models.spec import unwrap_state_dict

    raw = read_checkpoint(path)
    found = detect_variant(unwrap_state_dict(raw))
    if found != variant:
        what = f'{found} weights' if found else 'no LIT weights this package recognises'
        raise CheckpointError(f'{source} holds {what}, not the {variant} release')
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

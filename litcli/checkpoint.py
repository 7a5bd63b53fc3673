"""Reading and writing checkpoints: official LIT ``.pth`` files and this project's own plain-dict files.

Every read uses ``torch.load(weights_only=True)``, so an untrusted file can never run code. Writes are atomic
(temporary file in the same folder, fsync, rename), so a kill at any instant leaves the old or the new file.
"""
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

from litcli.errors import CheckpointError

PathLike = Union[str, Path]


def read_checkpoint(path: PathLike) -> Dict:
    """Load a checkpoint file onto the CPU with ``weights_only=True``; any failure is a CheckpointError.

    A ``.safetensors`` file (``lit export``) is read with its JSON config into the same shape as a ``lit train``
    checkpoint (``{'model': state_dict, 'variant': ..., ...}``), so every ``--checkpoint`` accepts it.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint not found: {path}')
    if path.suffix == '.safetensors':
        return read_safetensors(path)
    if path.suffix == '.onnx':
        raise CheckpointError(f'{path} is an exported ONNX model, not a checkpoint; pass the original checkpoint '
                              f'or a .safetensors export (lit export --format safetensors)')
    if is_torchscript_file(path):
        raise CheckpointError(f'{path} is a TorchScript module (lit export --format torchscript), not a checkpoint: '
                              f'run it with torch.jit.load({str(path)!r}), or pass the checkpoint it was exported '
                              f'from (or a .safetensors export)')
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f'{path} holds objects other than tensors and plain types, refused for safety '
                              f'({first}); re-save it as a plain state dict')
    except Exception as e:  # truncated zip, not a torch file, ...
        raise CheckpointError(f'{path} is not a readable PyTorch checkpoint (truncated or corrupt?): '
                              f'{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ""}')
    if not isinstance(obj, dict):
        raise CheckpointError(f'{path} holds a {type(obj).__name__}, not a state dict')
    return obj


def is_torchscript_file(path: PathLike) -> bool:
    """A ``torch.jit.save`` archive (a zip with ``code/`` and ``constants.pkl``), whatever its name."""
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as z:
            return any(n.endswith('/constants.pkl') or '/code/' in n for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def save_checkpoint(obj: Dict, path: PathLike):
    """Write ``obj`` with torch.save atomically: a reader sees the old file or the complete new one."""
    import torch

    atomic_write(path, lambda name: torch.save(obj, name))


def atomic_write(path: PathLike, write: Callable[[str], None]):
    """Create ``path`` atomically: ``write(name)`` fills a temporary file in the same folder, which is fsynced
    and renamed over ``path``; on any failure the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the result gets a normal file's permissions
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def detect_variant(state_dict: Dict) -> Optional[str]:
    """Which registered LIT variant a (model) state dict belongs to, from its keys and shapes; None if unknown."""
    from litcli.models.lit import _unwrap_state_dict

    sd = _unwrap_state_dict(state_dict)
    if 'pos_embed1' in sd and 'patch_embed1.proj.weight' in sd:
        return 'lit_ti' if sd['patch_embed1.proj.weight'].shape[0] == 64 else None
    if 'patch_embed.proj.weight' in sd:
        width = sd['patch_embed.proj.weight'].shape[0]
        stage3_depth = len({m.group(1) for k in sd for m in [re.match(r'layers\.2\.blocks\.(\d+)\.', k)] if m})
        return {(96, 6): 'lit_s', (96, 18): 'lit_m', (128, 18): 'lit_b'}.get((width, stage3_depth))
    return None


def _examples(keys, n=3):
    keys = sorted(keys)
    return ', '.join(keys[:n]) + (f' (+{len(keys) - n} more)' if len(keys) > n else '')


def select_weights(raw: Dict, use_ema: Optional[bool] = None, source: PathLike = 'checkpoint') -> Tuple[Dict, str]:
    """(checkpoint whose ``'model'`` holds the weights to load, 'ema' or 'model').

    A ``lit train --model-ema`` checkpoint holds the raw weights and their EMA; its metrics (and the choice of
    ``best.pt``) came from the weights named by ``eval_weights``, so those load by default (files written before
    that key existed evaluated the EMA whenever they have one). ``use_ema`` True/False overrides.
    """
    if not any(isinstance(raw.get(k), dict) for k in ('model', 'state_dict')):
        raw = {'model': raw}  # a bare (official) state dict: wrapped, so metadata can sit beside the weights
    has_ema = isinstance(raw.get('ema'), dict) and bool(raw['ema'])
    if not has_ema and raw.get('weights') in ('ema', 'model'):  # a lit export holds the one set it was made from
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


def load_checkpoint(path: PathLike, model, strict: bool = True, use_ema: Optional[bool] = None) -> Dict:
    """Load weights from ``path`` into ``model`` and return the raw checkpoint (for its metadata).

    Accepts official files (bare or ``{'model': ...}``/``{'state_dict': ...}``, ``module.`` prefixes) and
    ``lit train`` checkpoints. Position tables are resampled when the file was trained at another size. A file
    that does not fit raises CheckpointError naming the missing/unexpected/mismatched keys and, where it can
    tell, the variant the file belongs to.
    """
    raw, weights = select_weights(read_checkpoint(path), use_ema, path)
    apply_checkpoint(raw, model, source=path, strict=strict)
    return {**raw, 'loaded_weights': weights}


def apply_checkpoint(raw: Dict, model, source: PathLike = 'checkpoint', strict: bool = True):
    """Load an already-read checkpoint dict into ``model`` (see ``load_checkpoint``)."""
    from litcli.models.lit import checkpoint_filter_fn

    state_dict = checkpoint_filter_fn(raw, model)
    target = model.state_dict()
    missing = set(target) - set(state_dict)
    unexpected = set(state_dict) - set(target)
    mismatched = {k for k in set(target) & set(state_dict) if tuple(target[k].shape) != tuple(state_dict[k].shape)}
    if strict and (missing or unexpected or mismatched):
        variant = raw.get('variant') or detect_variant(raw)
        model_name = getattr(model, 'pretrained_cfg', {}).get('architecture', type(model).__name__)
        parts = []
        if missing:
            parts.append(f'{len(missing)} missing keys ({_examples(missing)})')
        if unexpected:
            parts.append(f'{len(unexpected)} unexpected keys ({_examples(unexpected)})')
        if mismatched:
            shown = sorted(mismatched)[:2]
            parts.append(f'{len(mismatched)} shape mismatches (' + ', '.join(
                f'{k}: file {tuple(state_dict[k].shape)} vs model {tuple(target[k].shape)}' for k in shown) + ')')
        if variant and variant != model_name:
            hint = f'the file looks like a {variant} checkpoint: pass --variant {variant.removeprefix("lit_")}'
        elif mismatched and all(k.startswith('head.') for k in mismatched):
            hint = 'the classifier has another number of classes: set --num-classes to match the file'
        else:
            hint = 'check that the file is a LIT checkpoint and matches --variant'
        raise CheckpointError(f'{source} does not fit {model_name}: ' + '; '.join(parts) + f'; {hint}')
    model.load_state_dict({k: v for k, v in state_dict.items() if k not in mismatched}, strict=strict)


def model_from_checkpoint(path: PathLike, variant: Optional[str] = None, use_ema: Optional[bool] = None,
                          **model_kwargs):
    """Build the model a checkpoint belongs to and load it. Returns ``(model, raw_checkpoint)``.

    The variant comes from ``variant`` (e.g. 'lit_s'), else from the file (``lit train`` checkpoints record it,
    official files are recognised by their keys). The class count comes from the file's classifier, and a
    ``lit train`` checkpoint's recorded ``model_kwargs`` are applied (explicit ``model_kwargs`` win). The weights
    are those ``select_weights`` picks (``use_ema``); ``raw['loaded_weights']`` says which.
    """
    import timm

    import litcli.models  # noqa: F401  (registers the variants)
    from litcli.models.lit import _unwrap_state_dict

    raw, weights = select_weights(read_checkpoint(path), use_ema, path)
    raw['loaded_weights'] = weights  # which weights the model holds: 'model' or 'ema'
    state_dict = _unwrap_state_dict(raw)
    recorded = raw.get('variant')
    if variant is not None and recorded is not None and variant != recorded:
        raise CheckpointError(f'{path} is a {recorded} checkpoint, not {variant}; '
                              f'drop --variant or pass --variant {recorded.removeprefix("lit_")}')
    name = variant or recorded or detect_variant(state_dict)
    if name is None:
        raise CheckpointError(f'cannot tell which LIT variant {path} holds; pass --variant ti|s|m|b')
    kwargs = {**(raw.get('model_kwargs') or {}), **model_kwargs}
    if 'head.weight' in state_dict:
        kwargs.setdefault('num_classes', state_dict['head.weight'].shape[0])
    model = timm.create_model(name, **kwargs)
    apply_checkpoint(raw, model, source=path)
    return model, raw


def sidecar_path(path: PathLike) -> Path:
    """The JSON config written next to an exported model: ``lit_s.safetensors`` -> ``lit_s.safetensors.json``
    (the full name, so the ONNX and safetensors exports of one checkpoint do not share a config file)."""
    path = Path(path)
    return path.with_name(path.name + '.json')


def read_safetensors(path: PathLike) -> Dict:
    """A ``lit export`` safetensors file as a checkpoint dict: ``{'model': state_dict, **config}``.

    The config comes from the JSON file next to it, else from the copy in the file's own header (so a file
    moved without its sidecar still loads); a plain safetensors state dict without either loads as an
    official-format file (pass --variant).
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        state_dict = load_file(path, device='cpu')
        with safe_open(path, framework='pt') as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f'{path} is not a readable safetensors file (truncated or corrupt?): {e}')
    sidecar = sidecar_path(path)
    try:
        if sidecar.is_file():
            config = json.loads(sidecar.read_text())
        else:
            config = json.loads(header['lit_config']) if 'lit_config' in header else {}
    except (json.JSONDecodeError, OSError) as e:
        raise CheckpointError(f'cannot read the config of {path} ({sidecar}: {e}); re-export it with lit export')
    if not isinstance(config, dict):
        raise CheckpointError(f'{sidecar} is not a lit export config (a JSON object); re-export it with lit export')
    return {**{k: v for k, v in config.items() if k != 'model'}, 'model': state_dict}


def is_train_checkpoint(raw: Dict) -> bool:
    """A ``lit train`` checkpoint (or an export of one): carries its training config, variant and weights."""
    return isinstance(raw.get('config'), dict) and isinstance(raw.get('model'), dict) and 'variant' in raw


def inference_data_config(raw: Dict, model, img_size: Optional[int] = None, crop_pct: Optional[float] = None) -> Dict:
    """The eval preprocessing of a checkpoint's model, as timm data-config keys (input_size, interpolation,
    crop_pct, crop_mode, mean, std; ``crop_mode='pad'``: see litcli.transforms).

    ``lit train`` checkpoints and exports record the one the run evaluated with (``data_config``); a ``lit train``
    checkpoint written before that key existed gets it rebuilt from its config (the built-in sets' pad-to-size
    and mean/std); official files get the variant's registered cfg. ``img_size``/``crop_pct`` override.
    """
    from timm.data import resolve_model_data_config

    from litcli.transforms import normalize_data_config

    recorded = raw.get('data_config') if isinstance(raw.get('data_config'), dict) else None
    if is_train_checkpoint(raw):
        from litcli.train import is_builtin, run_data_config

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

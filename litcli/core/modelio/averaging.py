"""Averaging the weights of several checkpoints of one model (timm's ``avg_checkpoints.py``), into a checkpoint
every ``--checkpoint`` accepts.

What is averaged: the weights each checkpoint's metrics came from (``core.factory.select_weights``: the EMA of a
``--model-ema`` run, else the raw weights; ``use_ema`` overrides), so the average is of the models that were
ranked. Floating-point tensors, BatchNorm running means/variances included, are averaged (in float64, stored in
their own dtype); integer buffers (``num_batches_tracked``) are taken from the best member. The result keeps the
``lit train`` layout (variant, model_kwargs, class names, data_config, config) of the best member, without the
optimizer state: it is a model to evaluate, predict with or export, not a run to resume.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from litcli.core.modelio.checkpoint import detect_variant, read_checkpoint
from litcli.core.errors import LitError

METADATA_KEYS = ('variant', 'model_kwargs', 'class_names', 'num_classes', 'data_config', 'config')


@dataclass
class Member:
    """One checkpoint to average: its file and, where known, its own eval metric and epoch."""
    path: Path
    metric: Optional[float] = None
    epoch: Optional[int] = None


def _describe(raw: Dict, path: Path) -> Tuple[str, Dict]:
    """(variant, model kwargs) of a checkpoint: recorded, else recognised from the keys."""
    from litcli.models.spec import unwrap_state_dict

    variant = raw.get('variant') or detect_variant(unwrap_state_dict(raw))
    if variant is None:
        raise LitError(f'{path} does not record its variant and its keys match none of lit_ti/s/m/b; average lit '
                       f'train checkpoints or official LIT files')
    return variant, dict(raw.get('model_kwargs') or {})


def _plain(value):
    """Tuples as lists, recursively: a data config read back from a file compares equal to the one recorded."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def check_same_data(first: Tuple[Path, Dict], other: Tuple[Path, Dict]):
    """Refuse (one-line LitError naming both files and the difference) two checkpoints trained on different label
    sets or evaluated with different preprocessing: the same weights shapes do not make the same classes, and an
    average across them scores below both. Compared where both record them: the class names (their order is the
    label numbering) and the data config (size, crop, interpolation, mean/std)."""
    (path0, raw0), (path, raw) = first, other
    names0, names = raw0.get('class_names'), raw.get('class_names')
    if names0 is not None and names is not None and list(names0) != list(names):
        if len(names0) != len(names):
            difference = f'{len(names0)} classes vs {len(names)}'
        else:
            i = next(i for i, (a, b) in enumerate(zip(names0, names)) if a != b)
            difference = f'class {i} is {names0[i]!r} in {path0} but {names[i]!r} in {path}'
        raise LitError(f'{path0} and {path} were trained on different label sets ({difference}); average '
                       f'checkpoints of runs on the same classes')
    dc0, dc = raw0.get('data_config'), raw.get('data_config')
    if isinstance(dc0, dict) and isinstance(dc, dict) and _plain(dc0) != _plain(dc):
        changed = sorted(k for k in set(dc0) | set(dc) if _plain(dc0.get(k)) != _plain(dc.get(k)))
        shown = ', '.join(f'{k} {_plain(dc0.get(k))} vs {_plain(dc.get(k))}' for k in changed[:3])
        raise LitError(f'{path0} and {path} were trained with different data configs ({shown}); average '
                       f'checkpoints of runs on the same data')


def average_checkpoints(members: Sequence[Member], best: int = 0, use_ema: Optional[bool] = None) -> Dict:
    """The averaged checkpoint of ``members`` (``best``: the index of the member whose integer buffers and
    metadata are kept). Files are read one at a time into a running float64 sum, so memory does not grow with
    the number of files. Different variants, sizes, key sets, class names or data configs are a one-line
    LitError."""
    from litcli.core.modelio.factory import select_weights
    from litcli.models.spec import unwrap_state_dict

    if len(members) < 2:
        raise LitError(f'nothing to average: {len(members)} checkpoint(s); give at least two')
    sums: Dict = {}  # key -> float64 running sum
    kept: Dict = {}  # integer buffers of the best member
    metadata: Dict = {}
    ref = shapes = dtypes = None  # the first member: (path, variant, model kwargs, weights kind), its keys
    data0 = None  # the first member: (path, its labels and data config)
    for i, member in enumerate(members):
        raw, weights = select_weights(read_checkpoint(member.path), use_ema, member.path)
        variant, kwargs = _describe(raw, member.path)
        state = unwrap_state_dict(raw)
        if ref is None:
            data0 = (member.path, {k: raw.get(k) for k in ('class_names', 'data_config')})
            ref = (member.path, variant, kwargs, weights)
            shapes = {k: tuple(v.shape) for k, v in state.items()}
            dtypes = {k: v.dtype for k, v in state.items()}
        else:
            path0, variant0, kwargs0, weights0 = ref
            if variant != variant0:
                raise LitError(f'checkpoints of different variants: {path0} is {variant0}, {member.path} is '
                               f'{variant}; average checkpoints of one model')
            if kwargs != kwargs0:
                changed = sorted(k for k in set(kwargs) | set(kwargs0) if kwargs.get(k) != kwargs0.get(k))
                raise LitError(f'{path0} and {member.path} are {variant} models of different configurations '
                               f'({", ".join(changed)} differ); average checkpoints of one model')
            check_same_data(data0, (member.path, raw))
            if weights != weights0:
                raise LitError(f'{path0} holds {weights0} weights but {member.path} {weights} weights; pass '
                               f'--use-ema or --no-use-ema to average the same kind')
            if set(state) != set(shapes):
                diff = sorted(set(state) ^ set(shapes))
                raise LitError(f'{path0} and {member.path} have different keys ({", ".join(diff[:3])}); average '
                               f'checkpoints of one model')
            for key, value in state.items():
                if tuple(value.shape) != shapes[key]:
                    raise LitError(f'{key} has shape {tuple(value.shape)} in {member.path} but {shapes[key]} in '
                                   f'{path0} (another number of classes?); average checkpoints of one model')
        for key, value in state.items():
            if value.is_floating_point():
                sums[key] = value.double().clone() if i == 0 else sums[key].add_(value.double())
        if i == best:
            kept = {k: v.clone() for k, v in state.items() if not v.is_floating_point()}
            metadata = {k: raw[k] for k in METADATA_KEYS if k in raw}
            metadata['variant'] = variant
        del raw, state
    n = len(members)
    averaged = {k: (sums[k] / n).to(dtypes[k]) if k in sums else kept[k] for k in dtypes}
    return dict(model=averaged, **metadata, weights=ref[3], averaged_from=[str(m.path) for m in members],
                averaged_best=str(members[best].path))

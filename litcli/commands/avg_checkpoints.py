"""``lit avg-checkpoints``: the mean of several checkpoints' weights (timm's ``avg_checkpoints.py``), as a checkpoint
every ``--checkpoint`` accepts. The averaging itself is ``core.averaging``'s."""
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from litcli.core.errors import LitError


def members_of(inputs: Sequence[Path], top: Optional[int]) -> List:
    """The checkpoints to average, best first when ranked: a run folder gives its ``--keep-best`` checkpoints in
    their ``top.json`` order; files are taken as given (each with its own recorded ``eval_top1``). ``top`` keeps
    the K best, which needs every member's metric."""
    from litcli.core.modelio.averaging import Member
    from litcli.core.modelio.checkpoint import read_checkpoint, read_top_index

    members = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            ckpt_dir = path / 'checkpoints' if (path / 'checkpoints').is_dir() else path
            ranking = read_top_index(ckpt_dir)
            if not ranking:
                raise LitError(f'{path} has no ranked checkpoints (checkpoints/top.json): train it with '
                               f'--keep-best K, or pass the checkpoint files to average')
            members += [Member(ckpt_dir / e['file'], float(e['metric']), int(e['epoch'])) for e in ranking]
        elif path.is_file():
            raw = read_checkpoint(path)
            metric = raw.get('eval_top1')
            members.append(Member(path, float(metric) if metric is not None else None,
                                  raw.get('epoch') if metric is not None else None))
        else:
            raise LitError(f'{path}: no such run folder or checkpoint file')
    if len({m.path.resolve() for m in members}) != len(members):
        raise LitError('a checkpoint is given twice; give each file (or run) once')
    if top is not None:
        unranked = [m.path for m in members if m.metric is None]
        if unranked:
            raise LitError(f'--top ranks by each checkpoint\'s own eval top-1, which {unranked[0]} does not record '
                           f'(epoch-end checkpoints of lit train do); drop --top and give the files to average')
        members = sorted(members, key=lambda m: -m.metric)[:top]
    return members


def run(inputs: Sequence[Path], out: Path, top: Optional[int] = None, use_ema: Optional[bool] = None,
        force: bool = False) -> Dict:
    """Average the checkpoints of ``inputs`` (run folders and/or files; ``top``: the K best) into ``out``.

    The best member (highest recorded eval top-1; the first given when not every member records one) provides
    the integer buffers and the metadata. ``out`` is written atomically, and replaced only with ``force``; the
    written file is loaded back through the model factory, so every command's ``--checkpoint`` takes it.
    """
    from litcli.core.modelio.averaging import average_checkpoints
    from litcli.core.modelio.checkpoint import save_checkpoint
    from litcli.core.modelio.factory import load_model, param_counts

    out = Path(out)
    if out.suffix.lower() in ('.safetensors', '.onnx'):
        raise LitError(f'--out {out}: write a .pt checkpoint (lit export converts it to {out.suffix})')
    if out.is_dir():
        raise LitError(f'--out {out} is a folder; give a file name such as {out / "averaged.pt"}')
    if out.exists() and not force:
        raise LitError(f'{out} exists; pass --force to overwrite it, or choose another --out')
    members = members_of(inputs, top)
    from litcli.core.modelio.factory import is_dense_checkpoint
    dense = next((m.path for m in members if is_dense_checkpoint(m.path)), None)
    if dense is not None:  # refused before anything is written
        raise LitError(f'{dense} is a detection/segmentation checkpoint; lit avg-checkpoints averages image '
                       f'classifiers only: evaluate the run\'s best.pt instead (lit eval --checkpoint)')
    if len(members) < 2:
        raise LitError(f'nothing to average: {len(members)} checkpoint(s) found; give at least two (a run trained '
                       f'with --keep-best K >= 2, or two or more files)')
    ranked = all(m.metric is not None for m in members)
    best = max(range(len(members)), key=lambda i: members[i].metric) if ranked else 0
    averaged = average_checkpoints(members, best=best, use_ema=use_ema)
    try:
        save_checkpoint(averaged, out)
    except OSError as e:
        raise LitError(f'cannot write {out} ({e.strerror}); choose a writable --out')
    loaded = load_model(out)  # the proof that every --checkpoint takes it
    return dict(out=str(out), variant=loaded.variant, weights=averaged['weights'],
                params=param_counts(loaded.model)['params'], num_classes=loaded.num_classes,
                best=str(members[best].path),
                members=[dict(path=str(m.path), epoch=m.epoch, eval_top1=m.metric) for m in members])


def print_result(result: Dict, as_json: bool = False):
    if as_json:
        print(json.dumps(result, indent=2))
        return
    from litcli.core.report import print_lines, print_table

    rows = [(m['path'], '-' if m['epoch'] is None else m['epoch'],
             '-' if m['eval_top1'] is None else f'{m["eval_top1"]:.2f}', 'best' if m['path'] == result['best'] else '')
            for m in result['members']]
    print_table(f'lit avg-checkpoints: {len(rows)} {result["variant"]} checkpoints ({result["weights"]} weights)',
                ['checkpoint', 'epoch', 'eval top-1 (%)', ''], rows, right=(1, 2))
    print_lines([f'written: {result["out"]} ({result["params"]:,} parameters; integer buffers and metadata from '
                 f'the best member); evaluate it with: lit eval --checkpoint {result["out"]}'])

"""``lit compare``: several ``lit train`` runs side by side (OpenMMLab's ``analyze_logs.py``): their curves on shared
axes (train loss, eval top-1, learning rate, images/s) and a table of best and final metrics, epochs, wall time,
parameters and GMACs. Runs of different lengths or datasets still plot; the differences are noted. Detection and
segmentation runs (``lit train --task``) compare by their box AP / mask AP / mIoU columns (default: the task's
ranking metric)."""
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from litcli.core.errors import LitError, UsageError

# --metric names -> metrics.jsonl column (timm/OpenMMLab say val_*, lit's files eval_*)
METRICS = {'val_top1': 'eval_top1', 'val_top5': 'eval_top5', 'val_loss': 'eval_loss', 'eval_top1': 'eval_top1',
           'eval_top5': 'eval_top5', 'eval_loss': 'eval_loss', 'top1': 'eval_top1', 'top5': 'eval_top5',
           'train_loss': 'train_loss',
           # the dense runs' columns (lit train --task), by their own names or mmdet/mmseg's
           'bbox_ap': 'bbox_AP', 'bbox_ap50': 'bbox_AP50', 'bbox_ap75': 'bbox_AP75', 'box_ap': 'bbox_AP',
           'bbox_map': 'bbox_AP', 'segm_ap': 'segm_AP', 'segm_ap50': 'segm_AP50', 'mask_ap': 'segm_AP',
           'segm_map': 'segm_AP', 'miou': 'mIoU', 'macc': 'mAcc', 'aacc': 'aAcc'}


def metric_column(metric: str) -> str:
    column = METRICS.get(metric.strip().lower())
    if column is None:
        raise UsageError(f'unknown --metric {metric!r}; use one of {", ".join(sorted(set(METRICS)))}')
    return column


def _labels(run_dirs: Sequence[Path]) -> List[str]:
    """Each run's folder name, with its parent's where two names are the same."""
    names = [d.name for d in run_dirs]
    return [f'{d.parent.name}/{d.name}' if names.count(d.name) > 1 else d.name for d in run_dirs]


def _model_size(config: Optional[Dict], gmacs: bool, cache: Dict) -> Dict:
    """Parameters of the run's model (built from its config.yaml, no weights read) and, with ``gmacs``, its
    multiply-accumulates at the run's input size (``core.flops``); cached per model within one comparison."""
    if not config or not config.get('variant'):
        return dict(params=None, gmacs=None)
    if config.get('task'):  # a dense run: its detector / segmenter (GMACs: lit flops --task)
        from litcli.core.config import dense_model_name
        from litcli.core.modelio.factory import create_dense_model, param_counts
        name = dense_model_name(config['task'], config['variant'])
        key = json.dumps([name, config.get('num_classes'), config.get('model_kwargs') or {}], sort_keys=True)
        if key not in cache:
            model = create_dense_model(name, config.get('num_classes'), **(config.get('model_kwargs') or {}))
            cache[key] = dict(params=param_counts(model)['params'], gmacs=None)
        return cache[key]
    kwargs = {k: v for k, v in (config.get('model_kwargs') or {}).items() if k != 'img_size'}
    size = int(config.get('img_size') or 224)
    key = json.dumps([config['variant'], kwargs, config.get('num_classes'), size, gmacs], sort_keys=True)
    if key not in cache:
        if config.get('num_classes'):
            kwargs['num_classes'] = config['num_classes']
        if gmacs:
            from litcli.core.analysis.flops import analyse_model
            counted = analyse_model(config['variant'], (size, size), keep_analysis=False, **kwargs)
            cache[key] = dict(params=counted['params'], gmacs=counted['macs'] / 1e9)
        else:
            from litcli.core.modelio.factory import create_model, param_counts
            cache[key] = dict(params=param_counts(create_model(config['variant'], img_size=size, **kwargs))['params'],
                              gmacs=None)
    return cache[key]


def dataset_identity(run_dir: Path, config: Optional[Dict]) -> Dict:
    """What identifies a run's data set, however its path was written (a folder, the ``wds:`` shards packed from
    it, a relative path): ``classes``, the class names its checkpoints record (``checkpoints/last.pt`` or
    ``best.pt``, read for the pickle alone), ``count``, its class count (config.yaml), and ``data`` as written."""
    from litcli.core.errors import CheckpointError
    from litcli.core.modelio.checkpoint import read_checkpoint

    names = None
    for path in (run_dir / 'checkpoints' / 'last.pt', run_dir / 'checkpoints' / 'best.pt'):
        try:
            names = read_checkpoint(path, mmap=True).get('class_names') if path.is_file() else None
        except CheckpointError:
            names = None
        if names:
            break
    config = config or {}
    count = len(names) if names else config.get('num_classes')
    return dict(classes=tuple(names) if names else None, count=count, data=config.get('data'))


def same_dataset(identities: Sequence[Dict]) -> bool:
    """Compared on the most telling thing every run records: class names, else class counts, else the data path."""
    for key in ('classes', 'count', 'data'):
        if all(i[key] is not None for i in identities):
            return len({i[key] for i in identities}) == 1
    return True  # nothing recorded in common: no claim either way


def describe_dataset(identity: Dict) -> str:
    """'3 classes: cat, dog, eel', '10 classes' or the data path."""
    from litcli.core.report import counted

    if identity['classes']:
        names = identity['classes']
        return f'{counted(len(names), "class", "classes")}: {", ".join(map(str, names[:4]))}' + \
            (', ...' if len(names) > 4 else '')
    return counted(identity['count'], 'class', 'classes') if identity['count'] else str(identity['data'])


def summarise(rows: List[Dict], column: str) -> Dict:
    """Best (max; min for a loss) and final value of ``column``, epochs, steps and wall time of one run."""
    values = [(r['epoch'], r[column]) for r in rows if r.get(column) is not None]
    lower = column.endswith('loss')
    best_epoch, best = (min if lower else max)(values, key=lambda v: v[1]) if values else (None, None)
    final = rows[-1]
    return dict(epochs=len(rows), last_epoch=final['epoch'], steps=final.get('step'), best=best,
                best_epoch=best_epoch, final=final.get(column), final_top1=final.get('eval_top1'),
                final_top5=final.get('eval_top5'), wall_time_s=sum(r.get('epoch_time_s') or 0.0 for r in rows))


def _default_out(labels: Sequence[str]) -> Path:
    """runs/compare/A-vs-B[-vs-...][-N].png: a new name, never an existing file."""
    stem = '-vs-'.join(label.replace('/', '_') for label in labels)[:120]
    base = Path('runs/compare')
    path, n = base / f'{stem}.png', 1
    while path.exists():
        n += 1
        path = base / f'{stem}-{n}.png'
    return path


def run(run_dirs: Sequence[Path], out: Optional[Path] = None, metric: Optional[str] = None, gmacs: bool = False,
        force: bool = False) -> Dict:
    """Compare the runs in ``run_dirs`` (at least one; two or more to compare) and draw their curves into ``out``
    (default ``runs/compare/A-vs-B.png``; an existing ``out`` is replaced only with ``force``). ``metric`` None:
    eval top-1, or the dense task's ranking metric when the first run is a detection/segmentation run."""
    from litcli.core.analysis.figures import draw_comparison
    from litcli.core.training.rundir import load_run

    column = metric_column(metric) if metric is not None else None
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise UsageError('give the run folders to compare (runs/train/NAME ...)')
    if len({d.resolve() for d in run_dirs}) != len(run_dirs):
        raise LitError('a run folder is given twice; give each run once')
    if out is not None:
        out = Path(out)
        if out.suffix.lower() != '.png':
            raise LitError(f'--out {out}: give a .png file name')
        if out.exists() and not force:
            raise LitError(f'{out} exists; pass --force to overwrite it, or choose another --out')
    loaded = [load_run(d) for d in run_dirs]  # every folder checked before anything is drawn
    if column is None:
        from litcli.core.training.dense import main_metric
        task = (loaded[0][1] or {}).get('task')
        column = main_metric(task) if task else 'eval_top1'
    labels = _labels(run_dirs)
    from litcli.core.report import counted

    cache: Dict = {}
    runs, datasets = [], []
    for label, run_dir, (rows, config) in zip(labels, run_dirs, loaded):
        datasets.append(dataset_identity(run_dir, config))
        config = config or {}
        runs.append(dict(name=label, path=str(run_dir), variant=config.get('variant'), data=config.get('data'),
                         img_size=config.get('img_size'), **summarise(rows, column),
                         **_model_size(config, gmacs, cache)))
    notes = []
    lengths = {r['last_epoch'] for r in runs}
    if len(lengths) > 1:
        notes.append('runs of different lengths (' + ', '.join(f'{r["name"]}: {counted(r["epochs"], "epoch")}'
                                                                  for r in runs) + '); the curves share the epoch axis')
    if not same_dataset(datasets):
        notes.append('runs on different datasets (' + '; '.join(f'{r["name"]}: {describe_dataset(d)}'
                                                                 for r, d in zip(runs, datasets)) +
                     '): their eval metrics are not measured on the same images')
    sizes = {r['img_size'] for r in runs}
    if len(sizes) > 1:
        notes.append('different input sizes (' + ', '.join(f'{r["name"]}: {r["img_size"]} px' for r in runs) + ')')
    path = out or _default_out(labels)
    try:
        draw_comparison([(label, rows) for label, (rows, _) in zip(labels, loaded)], column, path, notes,
                        elsewhere='choose another --out')
    except OSError as e:
        raise LitError(f'cannot write {path} ({e.strerror}); choose a writable --out')
    return dict(metric=column, runs=runs, notes=notes, png=str(path))


def print_result(result: Dict, as_json: bool = False):
    if as_json:
        print(json.dumps(result, indent=2))
        return
    from litcli.core.report import print_lines, print_table

    def num(value, fmt):
        return '-' if value is None else format(value, fmt)

    metric = result['metric']
    rows = [(r['name'], r['variant'] or '-', str(r['data'] if r['data'] is not None else '-').split('/')[-1],
             r['epochs'], f'{num(r["best"], ".2f")} (ep {num(r["best_epoch"], "d")})', num(r['final'], '.2f'),
             num(r['final_top1'], '.2f'), num(r['final_top5'], '.2f'), f'{r["wall_time_s"]:.0f}s',
             num(r['params'] and r['params'] / 1e6, '.2f') + ('M' if r['params'] else ''), num(r['gmacs'], '.3f'))
            for r in result['runs']]
    print_table(f'lit compare ({metric})', ['run', 'variant', 'data', 'epochs', f'best {metric}', f'final {metric}',
                                            'final top-1', 'final top-5', 'wall time', 'params', 'GMACs'],
                rows, right=(3, 4, 5, 6, 7, 8, 9, 10))
    print_lines([f'note: {n}' for n in result['notes']] + [f'written: {result["png"]}'])

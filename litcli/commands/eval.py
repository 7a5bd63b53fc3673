"""``lit eval``: top-1/top-5, loss and throughput of a checkpoint (official ``.pth``, ``lit train``, export) on a
dataset, written to eval.json; on request per-class metrics, the confusion matrix and per-image results.

A detection or segmentation model (a released one by name, an official mmdet/mmseg file, a ``lit train --task``
checkpoint) gets its paper's table row instead: COCO box (and mask) AP, AP50, AP75, APs, APm, APl by pycocotools, or
mmseg's mIoU, mAcc and aAcc (``run_dense``)."""
import json
import os
from pathlib import Path
from typing import Dict, Optional

from litcli.core.errors import CheckpointError, LitError, UsageError

OUT_ELSEWHERE = 'choose another --out'


def run(checkpoint: Optional[Path], variant: Optional[str] = None, data: Optional[str] = None,
        data_dir: Optional[str] = None,
        img_size: Optional[int] = None, crop_pct: Optional[float] = None, batch_size: int = 64,
        workers: Optional[int] = None, device: Optional[str] = None, out: Optional[Path] = None,
        strict_data: bool = False, use_ema: Optional[bool] = None, per_class: bool = False,
        confusion_matrix: bool = False, results_file: Optional[Path] = None, topk: int = 5,
        force: bool = False, pretrained: bool = False, name: Optional[str] = None) -> Optional[Dict]:
    """Evaluate ``checkpoint`` and write ``eval.json`` into ``out`` (default ``runs/eval/<variant>-<data>``).

    A ``lit train`` checkpoint carries its variant, classes, data and eval preprocessing, so ``variant`` and
    ``data`` are optional; an official file needs both. The images go through the checkpoint's recorded eval
    transform (official files: the variant's resize by crop_pct, bicubic, center crop, ImageNet mean/std) at its
    size, with ``img_size``/``crop_pct`` overrides; ``use_ema``: see ``core.factory.select_weights``. ``pretrained``:
    the released ImageNet-1k weights of ``variant`` (default lit_s) instead of ``checkpoint``. Unreadable
    images are left out and counted (``skipped``). Under torchrun every process evaluates a disjoint shard and the
    sums are all-reduced (exact counts); rank 0 writes eval.json and returns the result, the others return None.

    ``per_class``: accuracy (top-1 and top-5), precision, recall and F1 of every class (``per_class.csv``);
    ``confusion_matrix``: ``confusion_matrix.png`` (normalised per true class) and ``.csv`` (counts);
    ``results_file`` (.csv or .json): per image its path, true label and ``topk`` labels with probabilities, in
    timm's ``inference.py`` layout. All of it also goes into eval.json. Files already in an explicit ``out`` (and
    an existing ``results_file``) are only replaced with ``force``.

    ``name``: the released model to evaluate with ``pretrained`` (a classification variant, or a dense model such
    as 'retinanet_lit_ti'); a dense model, or a dense checkpoint, is evaluated by ``run_dense``.
    """
    from litcli.core.analysis.evaluation import check_results_file
    from litcli.core.modelio.factory import is_dense_checkpoint, load_model
    from litcli.core.runtime import distributed_session, resolve_device
    from litcli.models.dense_zoo import DENSE_MODEL_NAMES

    if name is not None and not pretrained:
        raise UsageError(f'{name}: a model name is for --pretrained (lit eval --pretrained {name}); a file goes to '
                         f'--checkpoint')
    if (pretrained and name in DENSE_MODEL_NAMES) or (checkpoint is not None and is_dense_checkpoint(checkpoint)):
        unused = [flag for flag, value in (('--variant', variant), ('--img-size', img_size), ('--crop-pct', crop_pct),
                                           ('--data-dir', data_dir), ('--confusion-matrix', confusion_matrix or None),
                                           ('--topk', topk if topk != 5 else None)) if value is not None]
        if unused:
            raise UsageError(f'{", ".join(unused)}: classification option(s), not used by a detection/segmentation '
                             f'model (its checkpoint fixes the model and its test resize); drop '
                             f'{"it" if len(unused) == 1 else "them"}')
        return run_dense(checkpoint, name if pretrained else None, data, batch_size or 1, workers, device, out,
                         strict_data, use_ema, per_class, results_file, force)
    if name is not None:
        variant = variant or name
    batch_size = batch_size or 64
    check_results_file(results_file, force)
    if out is not None and not force:
        taken = [name for name in output_files(per_class, confusion_matrix) if (Path(out) / name).exists()]
        if taken:
            raise LitError(f'{Path(out) / taken[0]} exists; pass --force to overwrite, or another --out')
    if checkpoint is None and not pretrained:
        raise UsageError('lit eval needs weights: pass --checkpoint PATH, or --pretrained for the released ones')
    loaded = load_model(checkpoint, variant, use_ema=use_ema, img_size=img_size, crop_pct=crop_pct,
                        require_variant=True, pretrained=pretrained)
    ds, spec, fast = eval_dataset(loaded, data, data_dir, strict_data, results_file, pretrained)
    dev = resolve_device(device)
    with distributed_session(dev) as world:
        metrics, skipped, dev, amp_dtype = measure(loaded, ds, fast, world, dev, batch_size, workers,
                                                   per_class or confusion_matrix, topk if results_file else 0)
    if not world.is_main:
        return None
    return write_result(loaded, metrics, ds, spec, skipped, world, dev, amp_dtype, out, per_class, confusion_matrix,
                        results_file)


def run_dense(checkpoint: Optional[Path], name: Optional[str], data: Optional[str], batch_size: int = 1,
              workers: Optional[int] = None, device: Optional[str] = None, out: Optional[Path] = None,
              strict_data: bool = False, use_ema: Optional[bool] = None, per_class: bool = False,
              results_file: Optional[Path] = None, force: bool = False) -> Optional[Dict]:
    """The paper's table row of a dense model on a validation split: the released weights of ``name`` or the model
    in ``checkpoint``, on ``data`` (coco:ROOT, ade20k:ROOT, fashion-mnist-det/-seg; default: what a ``lit train``
    checkpoint was trained on) through the official test pipeline, one image per forward by default (``batch_size``
    > 1 pads several together, which changes the numbers slightly for images of different sizes). Under torchrun
    every process takes its share of the images. Writes eval.json (and ``per_class.csv``, and for detection the
    COCO results json ``results_file``); rank 0 returns the result, the others None."""
    from litcli.core.data.dense import build_dense_datasets, build_dense_eval_loader
    from litcli.core.io import write_json
    from litcli.core.modelio.factory import load_dense_model
    from litcli.core.runtime import (all_reduce_sum, autocast_context, distributed_session, process_device,
                                     resolve_device)
    from litcli.core.training.dense import evaluate_dense
    from litcli.core.training.rundir import new_run_dir

    if results_file is not None:
        if Path(results_file).suffix.lower() != '.json':
            raise UsageError(f'--results-file {results_file}: a detection model writes COCO results as JSON; name a '
                             f'.json file')
        if Path(results_file).exists() and not force:
            raise LitError(f'{results_file} exists; pass --force to overwrite it, or another --results-file')
        if not Path(results_file).absolute().parent.is_dir():
            raise LitError(f'--results-file {results_file}: folder {Path(results_file).parent} does not exist; create '
                           f'it or choose another path')
    files = ['eval.json'] + (['per_class.csv'] if per_class else [])
    if out is not None and not force:
        taken = [f for f in files if (Path(out) / f).exists()]
        if taken:
            raise LitError(f'{Path(out) / taken[0]} exists; pass --force to overwrite, or another --out')
    loaded = load_dense_model(checkpoint, name, pretrained=name is not None, use_ema=use_ema)
    if loaded.kind == 'detection':
        from litcli.core.training.dense_metrics import check_pycocotools
        check_pycocotools()
    if results_file is not None and loaded.kind != 'detection':
        raise UsageError(f'--results-file holds COCO detections; {loaded.name} is a segmentation model: drop it')
    data = data or loaded.checkpoint.get('data')
    if data is None:
        example = 'coco:ROOT' if loaded.kind == 'detection' else 'ade20k:ROOT'
        raise UsageError(f'{loaded.describe()}: pass --data ({example}, or the built-in '
                         f'fashion-mnist-{"det" if loaded.kind == "detection" else "seg"})')
    # a lit train checkpoint's own validation split (e.g. its number of built-in scenes)
    _, val_ds, spec = build_dense_datasets(data, loaded.task, loaded.checkpoint.get('config'), train=False,
                                           strict_data=strict_data)
    if spec.class_names != list(loaded.class_names):
        raise CheckpointError(f'{loaded.source} predicts {loaded.num_classes} classes '
                              f'({", ".join(loaded.class_names[:3])}...) but {spec.recorded} has {spec.num_classes} '
                              f'({", ".join(spec.class_names[:3])}...); evaluate on the data it was trained for')
    dev = resolve_device(device)
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    with distributed_session(dev) as world:
        dev = process_device(dev, world)
        # float32, as the official test of the released numbers (autocast would move their last digit)
        amp_dtype = None
        model = loaded.model.to(dev)
        loader = build_dense_eval_loader(val_ds, spec.kind, batch_size, workers, world, dev)
        metrics = evaluate_dense(model, loader, dev, task=loaded.task, dataset=val_ds,
                                 img_scale=loaded.preprocessing['img_scale'], world=world,
                                 autocast=autocast_context(dev, amp_dtype), per_class=per_class)
        skipped = int(all_reduce_sum([getattr(val_ds, 'skipped', 0)], world, dev)[0])
    if not world.is_main:
        return None
    detections = metrics.pop('results', None)
    result = dict(model=loaded.name, task=loaded.task, checkpoint=loaded.describe(), weights=loaded.weights,
                  data=spec.recorded, **metrics, skipped=skipped, world_size=world.world_size, device=str(dev),
                  img_scale=list(loaded.preprocessing['img_scale']), batch_size=batch_size,
                  paper=_paper_row(loaded, spec))
    if skipped:
        result['skipped_message'] = val_ds.skipped_message()
    out_dir = Path(out) if out is not None else new_run_dir('runs/eval', f'{loaded.name}-{spec.name}')
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if results_file is not None:
            write_json(Path(results_file), detections, 'choose another --results-file')
            result['results_file'] = str(results_file)
        if per_class:
            result['per_class_csv'] = str(_write_dense_per_class(metrics['per_class'], out_dir / 'per_class.csv'))
        write_json(out_dir / 'eval.json', result, OUT_ELSEWHERE)
    except OSError as e:
        raise LitError(f'cannot write into {out_dir} ({e.strerror}); pass a writable --out')
    result['path'] = str(out_dir / 'eval.json')
    return result


def _paper_row(loaded, spec) -> Optional[Dict]:
    """The paper's numbers for the released weights on their own data set (what the row should reproduce)."""
    from litcli.models.dense_zoo import dense_model

    entry = dense_model(loaded.name)
    if loaded.pretrained is None or spec.name != entry.dataset:
        return None
    return dict(entry.paper)


def _write_dense_per_class(per_class: Dict, path: Path) -> Path:
    """per_class.csv: one row per class with its AP per kind (detection: ``{'bbox': {class: AP}, ...}``) or its IoU
    and accuracy (segmentation: ``{class: {'IoU', 'Acc'}}``)."""
    import csv
    import io

    from litcli.core.io import write_text

    text = io.StringIO(newline='')
    writer = csv.writer(text)
    kinds = [k for k in ('bbox', 'segm') if k in per_class]
    if kinds:
        writer.writerow(['class'] + [f'{kind}_AP' for kind in kinds])
        for name in per_class[kinds[0]]:
            writer.writerow([name] + [_number(per_class[kind][name]) for kind in kinds])
    else:
        writer.writerow(['class', 'IoU', 'Acc'])
        for name, scores in per_class.items():
            writer.writerow([name, _number(scores['IoU']), _number(scores['Acc'])])
    write_text(path, text.getvalue(), OUT_ELSEWHERE)
    return path


def _number(value: float) -> str:
    return '' if value != value else f'{value:.2f}'  # nan: a class absent from the split


def print_dense_result(result: Dict):
    """The paper's table row: COCO AP columns (box, mask) or mIoU / mAcc / aAcc, and the per-class values."""
    from litcli.core.report import print_pairs, print_table

    pairs = []
    if result['task'] == 'semantic_fpn':
        pairs.append(('mIoU / mAcc / aAcc', f'{result["mIoU"]:.2f} / {result["mAcc"]:.2f} / {result["aAcc"]:.2f}'))
    kinds = [k for k in ('bbox', 'segm') if f'{k}_AP' in result]
    if kinds:
        rows = [('box' if k == 'bbox' else 'mask',) + tuple(_number(result[f'{k}_{f}']) or '-'
                                                             for f in ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl'))
                for k in kinds]
        print_table(f'lit eval: {result["model"]} on {result["data"]} (COCO AP, %)',
                    ['', 'AP', 'AP50', 'AP75', 'APs', 'APm', 'APl'], rows, right=(1, 2, 3, 4, 5, 6))
    if result.get('paper'):
        pairs.append(('paper', ', '.join(f'{k.replace("_", " ")} {v}' for k, v in result['paper'].items())))
    pairs.append(('images', f'{result["num_images"]} ({result["img_per_s"]:.2f}/s, {result["device"]}, '
                            f'{result["world_size"]} process(es))'))
    if result.get('skipped'):
        pairs.append(('skipped', f'{result["skipped"]} unreadable image file(s), not scored'))
    pairs.append(('weights', result['checkpoint']))
    written = [result['path']] + [result[k] for k in ('per_class_csv', 'results_file') if result.get(k)]
    pairs.append(('written', ', '.join(written)))
    print_pairs(f'lit eval: {result["model"]} on {result["data"]}', pairs)
    per_class = result.get('per_class')
    if per_class and result['task'] == 'semantic_fpn':
        print_table('per class (%)', ['class', 'IoU', 'Acc'],
                    [(n, _number(v['IoU']) or '-', _number(v['Acc']) or '-') for n, v in per_class.items()],
                    right=(1, 2))
    elif per_class:
        names = list(per_class[kinds[0]])
        print_table('per class AP (%)', ['class'] + [('box' if k == 'bbox' else 'mask') for k in kinds],
                    [(n,) + tuple(_number(per_class[k][n]) or '-' for k in kinds) for n in names],
                    right=tuple(range(1, len(kinds) + 1)))


def eval_dataset(loaded, data: Optional[str], data_dir: Optional[str], strict_data: bool,
                 results_file: Optional[Path], pretrained: bool):
    """(dataset, DataSpec, fast) to evaluate ``loaded`` on: ``data``, else the data its run was trained on, through
    its recorded eval transform; refused when its classes differ from the checkpoint's. ``fast``: the built-in
    sets' in-memory tensors (padded and normalised on the batch: the same pixels as the transform, only faster)."""
    from litcli.core.data.datasets import build_eval_dataset, is_image_data, resolve_data
    from litcli.core.data.transforms import PAD_MODE, eval_transform

    checkpoint, train_config = loaded.source, loaded.train_config  # source: the cached file for --pretrained
    if data is None and train_config is None:
        what = 'the released weights need' if pretrained else 'an official checkpoint needs'
        raise LitError(f'{what} --data (an ImageFolder with one subfolder per class)')
    recorded_data = data is None
    if recorded_data:
        data, data_dir = train_config.get('data'), data_dir or train_config.get('data_dir')
    try:
        kind, _ = resolve_data(data, data_dir)
    except LitError as e:
        if not recorded_data:
            raise
        raise LitError(f'the data {checkpoint} was trained on ({data}, recorded in the checkpoint) is not '
                       f'available here ({e}); pass --data with its location') from None
    data_cfg = loaded.data_config
    fast = not is_image_data(kind) and data_cfg['crop_mode'] == PAD_MODE
    if kind == 'shards' and results_file:
        raise LitError('--results-file lists every image by its file path, which WebDataset shards do not keep '
                       '(see lit eval --help): evaluate the image folder they were packed from, or drop '
                       '--results-file')
    # uint8 images from the workers, normalised on the device (litcli.core.data.loaders)
    ds, spec = build_eval_dataset(data, data_dir=data_dir, transform=eval_transform(data_cfg, uint8=not fast),
                                  strict_data=strict_data, fast_tensors=fast, img_size=loaded.img_size)
    if spec.num_classes != loaded.num_classes:
        raise CheckpointError(f'{checkpoint} has {loaded.num_classes} classes but {spec.root} has '
                              f'{spec.num_classes}; evaluate on the data it was trained for')
    if train_config is not None and loaded.class_names is not None and \
            list(loaded.class_names) != list(spec.class_names):
        raise CheckpointError(f'the class folders of {spec.root} differ from the classes {checkpoint} was trained '
                              f'on; evaluate on matching data')
    return ds, spec, fast


def measure(loaded, ds, fast: bool, world, dev, batch_size: int, workers: Optional[int], confusion: bool,
            rows_topk: int):
    """(metrics, unreadable images, device, autocast dtype) of ``loaded`` on ``ds`` in this process (its share
    under torchrun; the sums all-reduced). ``confusion``: count the confusion matrix; ``rows_topk`` > 0: per-image
    rows of that many classes."""
    from litcli.core.analysis.evaluation import WithIndex
    from litcli.core.data.datasets import normalize_batch
    from litcli.core.data.loaders import build_eval_loader
    from litcli.core.runtime import all_reduce_sum, autocast_context, process_device, resolve_amp
    from litcli.core.training.engine import evaluate

    dev = process_device(dev, world)
    amp_dtype = resolve_amp(dev)
    model = loaded.model.to(dev)
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    loader = build_eval_loader(WithIndex(ds) if rows_topk else ds, batch_size, workers, world, dev,
                               loaded.data_config, amp_dtype, normalize=not fast)
    metrics = evaluate(model, loader, dev, autocast_context(dev, amp_dtype),
                       batch_transform=normalize_batch if fast else None, world=world,
                       num_classes=loaded.num_classes if confusion else None, rows_topk=rows_topk)
    skipped = int(all_reduce_sum([getattr(ds, 'skipped', 0)], world, dev)[0])
    return metrics, skipped, dev, amp_dtype


def write_result(loaded, metrics: Dict, ds, spec, skipped: int, world, dev, amp_dtype, out: Optional[Path],
                 per_class: bool, confusion_matrix: bool, results_file: Optional[Path]) -> Dict:
    """eval.json (and the extras asked for) in ``out`` (default: a new ``runs/eval/<variant>-<data>``); the
    result, with its ``path``."""
    from litcli.core.data.datasets import dataset_name
    from litcli.core.io import write_json
    from litcli.core.modelio.factory import param_counts
    from litcli.core.runtime import dtype_name
    from litcli.core.training.rundir import new_run_dir

    data_cfg = loaded.data_config
    result = dict(top1=metrics['top1'], top5=metrics['top5'], loss=metrics['loss'], img_per_s=metrics['img_per_s'],
                  num_images=metrics['num_images'], top1_correct=metrics['top1_correct'],
                  top5_correct=metrics['top5_correct'], skipped=skipped, world_size=world.world_size,
                  img_size=loaded.img_size, crop_pct=data_cfg['crop_pct'], crop_mode=data_cfg['crop_mode'],
                  interpolation=data_cfg['interpolation'], param_count=param_counts(loaded.model)['params'],
                  weights=loaded.weights, checkpoint=str(loaded.source), variant=loaded.variant,
                  data=dataset_name(spec), device=str(dev), amp_dtype=dtype_name(amp_dtype))
    if skipped:
        result['skipped_message'] = ds.skipped_message()
    out_dir = Path(out) if out is not None else new_run_dir('runs/eval', f'{loaded.variant}-{dataset_name(spec)}')
    class_names = list(loaded.class_names or spec.class_names)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        result.update(write_extras(metrics, out_dir, class_names, ds, dataset_name(spec), per_class,
                                   confusion_matrix, results_file))
        write_json(out_dir / 'eval.json', result, OUT_ELSEWHERE)
    except OSError as e:  # the folder itself (a failed write is already a one-line WriteError)
        raise LitError(f'cannot write into {out_dir} ({e.strerror}); pass a writable --out')
    result['path'] = str(out_dir / 'eval.json')
    return result


def output_files(per_class: bool, confusion_matrix: bool):
    """The files ``run`` writes into its output folder."""
    return ['eval.json'] + (['per_class.csv'] if per_class else []) + \
        (['confusion_matrix.png', 'confusion_matrix.csv'] if confusion_matrix else [])


def write_extras(metrics: Dict, out_dir: Path, class_names, dataset, data_name: str, per_class: bool,
                 confusion_matrix: bool, results_file: Optional[Path]) -> Dict:
    """Per-class metrics, confusion matrix and per-image results: their files, and their part of eval.json."""
    from litcli.core.analysis.evaluation import (per_class_metrics, result_records, sample_names, write_confusion_csv,
                                        write_per_class_csv, write_results)
    from litcli.core.analysis.figures import draw_confusion

    extras = {}
    if per_class:
        extras['per_class'] = per_class_metrics(metrics['confusion'], metrics['class_top5_correct'], class_names)
        write_per_class_csv(extras['per_class'], out_dir / 'per_class.csv', OUT_ELSEWHERE)
        extras['per_class']['csv'] = str(out_dir / 'per_class.csv')
    if confusion_matrix:
        draw_confusion(metrics['confusion'].numpy(), class_names, out_dir / 'confusion_matrix.png',
                       title=f'confusion matrix, {data_name} (rows: true class, normalised to 1)',
                       elsewhere=OUT_ELSEWHERE)
        write_confusion_csv(metrics['confusion'], class_names, out_dir / 'confusion_matrix.csv', OUT_ELSEWHERE)
        extras['confusion_matrix'] = dict(classes=class_names, counts=metrics['confusion'].tolist(),
                                          png=str(out_dir / 'confusion_matrix.png'),
                                          csv=str(out_dir / 'confusion_matrix.csv'))
    if results_file:
        records = result_records(metrics['rows'], sample_names(dataset, data_name), class_names)
        write_results(records, results_file)
        extras['results_file'] = str(results_file)
        extras['results'] = records
    return extras


def print_result(result: Dict, as_json: bool = False):
    """The metrics as a table (plain lines off a terminal), or the whole result as JSON."""
    if as_json:
        print(json.dumps(result, indent=2))
        return
    if 'task' in result:
        print_dense_result(result)
        return
    from litcli.core.report import print_pairs, print_table

    pairs = [('top-1', f'{result["top1"]:.2f}%'), ('top-5', f'{result["top5"]:.2f}%'),
             ('loss', f'{result["loss"]:.4f}'),
             ('images/s', f'{result["img_per_s"]:.1f} ({result["num_images"]} images, {result["device"]})')]
    if result.get('skipped'):
        pairs.append(('skipped', f'{result["skipped"]} unreadable image file(s), not scored'))
    pairs.append(('input', f'{result["img_size"]} px, crop_pct {result["crop_pct"]}, {result["interpolation"]}'))
    pairs.append(('params', f'{result["param_count"]:,}' + (' (EMA weights)' if result.get('weights') == 'ema'
                                                             else '')))
    if result.get('per_class'):
        macro = result['per_class']['macro']
        pairs.append(('macro P / R / F1', f'{macro["precision"]:.2f}% / {macro["recall"]:.2f}% / '
                                          f'{macro["f1"]:.2f}% (R = balanced accuracy)'))
    written = [result['path']] + [result[k][f] for k, f in (('per_class', 'csv'), ('confusion_matrix', 'png'),
                                                            ('confusion_matrix', 'csv')) if k in result]
    written += [result['results_file']] if result.get('results_file') else []
    pairs.append(('written', ', '.join(written)))
    print_pairs(f'lit eval: {result["variant"]} on {result["data"]}', pairs)
    if result.get('per_class'):
        rows = [(c['index'], c['name'], c['support'], f'{c["accuracy"]:.2f}', f'{c["top5"]:.2f}',
                 f'{c["precision"]:.2f}', f'{c["f1"]:.2f}', c['predicted']) for c in result['per_class']['classes']]
        print_table('per class (%; top-1 = recall)', ['#', 'class', 'images', 'top-1', 'top-5', 'precision', 'F1',
                                                      'predicted'], rows, right=(0, 2, 3, 4, 5, 6, 7))

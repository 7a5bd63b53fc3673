"""What ``lit eval`` reports beyond top-1/top-5: per-class metrics, the confusion matrix (CSV; the figure is in
``core.figures``) and per-image results in timm's ``inference.py`` format.

The counts come from ``core.engine.evaluate`` (a confusion matrix accumulated on the device and all-reduced under
torchrun, so every image counts once); everything here is arithmetic and files on rank 0.
"""
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from litcli.core.errors import LitError
from litcli.core.io import ELSEWHERE, write_csv, write_json

RESULT_FORMATS = ('.csv', '.json')


class WithIndex:
    """A dataset whose samples carry their index: ``(x, y, i)`` (None stays None: an unreadable file), so
    per-image results can name the image after sharding and batching."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        sample = self.dataset[index]
        return None if sample is None else (*sample, index)


def sample_names(dataset, data_name: str) -> List[str]:
    """The name of every sample: its file path (ImageFolder trees), else ``'<set> test image #i'`` as the figure
    commands name the built-in sets' images (``core.data.ImageRef``)."""
    samples = getattr(dataset, 'samples', None)
    if samples is not None:
        return [str(path) for path, _ in samples]
    return [f'{data_name} test image #{i}' for i in range(len(dataset))]


def check_results_file(path: Optional[Path], force: bool):
    """``--results-file``: a .csv or .json path that is not already there (unless ``force``)."""
    if path is None:
        return
    if Path(path).suffix.lower() not in RESULT_FORMATS:
        raise LitError(f'--results-file {path}: use a .csv or .json file name')
    if Path(path).is_dir():
        raise LitError(f'--results-file {path} is a folder; give a file name ending in .csv or .json')
    if Path(path).exists() and not force:
        raise LitError(f'{path} exists; pass --force to overwrite it, or choose another --results-file')


def per_class_metrics(confusion, class_top5_correct, class_names: Sequence[str]) -> Dict:
    """Per class: images (support), top-1 accuracy on the class's images (= recall), top-5 accuracy, precision,
    F1 and how often it was predicted; plus macro averages over the classes that have images. A class never
    predicted has precision 0 (and so F1 0), as sklearn's ``zero_division=0``.

    Written out here rather than with sklearn's ``classification_report`` because the counts are already
    reduced across processes (its input would be the per-image labels) and the top-5 column is not in it.
    """
    cm = confusion.double()  # C, C: rows true, columns predicted
    tp = cm.diagonal()
    support = cm.sum(dim=1)
    predicted = cm.sum(dim=0)
    recall = tp / support.clamp(min=1)
    precision = tp / predicted.clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    top5 = class_top5_correct.double() / support.clamp(min=1)
    classes = []
    for i, name in enumerate(class_names):
        classes.append(dict(index=i, name=str(name), support=int(support[i]), predicted=int(predicted[i]),
                            accuracy=100.0 * float(recall[i]), top5=100.0 * float(top5[i]),
                            precision=100.0 * float(precision[i]), recall=100.0 * float(recall[i]),
                            f1=100.0 * float(f1[i])))
    present = support > 0
    n = max(int(present.sum()), 1)
    macro = dict(precision=100.0 * float(precision[present].sum()) / n, recall=100.0 * float(recall[present].sum()) / n,
                 f1=100.0 * float(f1[present].sum()) / n)
    macro['balanced_accuracy'] = macro['recall']
    return dict(classes=classes, macro=macro, classes_without_images=int((~present).sum()))


def write_per_class_csv(per_class: Dict, path: Path, elsewhere: str = ELSEWHERE):
    write_csv(path, [['index', 'class', 'images', 'predicted', 'top1', 'top5', 'precision', 'recall', 'f1']] +
              [[c['index'], c['name'], c['support'], c['predicted'], f'{c["accuracy"]:.4f}', f'{c["top5"]:.4f}',
                f'{c["precision"]:.4f}', f'{c["recall"]:.4f}', f'{c["f1"]:.4f}'] for c in per_class['classes']],
              elsewhere)


def write_confusion_csv(confusion, class_names: Sequence[str], path: Path, elsewhere: str = ELSEWHERE):
    """Counts, rows = true class, columns = predicted class, with the class names as header and first column."""
    write_csv(path, [['true \\ predicted', *class_names]] +
              [[name, *row] for name, row in zip(class_names, confusion.tolist())], elsewhere)


def result_records(rows, names: Sequence[str], class_names: Sequence[str]) -> List[Dict]:
    """Per image: filename, true index and label, then the top-k indices, labels and probabilities."""
    return [dict(filename=names[i], true_index=t, true_label=str(class_names[t]), index=list(classes),
                 label=[str(class_names[c]) for c in classes], prob=[float(p) for p in probs])
            for i, t, classes, probs in rows]


def write_results(records: List[Dict], path: Path):
    """timm ``inference.py``'s layouts: a CSV with one column per rank (``--results-separate-col``: filename,
    index_0.., label_0.., prob_0..) and a JSON object keyed by filename (``orient='index'``), each with the true
    class added (``true_index``, ``true_label``)."""
    path = Path(path)
    elsewhere = 'choose another --results-file'
    if path.suffix.lower() == '.json':
        write_json(path, {r['filename']: {k: v for k, v in r.items() if k != 'filename'} for r in records},
                   elsewhere)
        return
    k = len(records[0]['index']) if records else 0
    write_csv(path, [['filename', 'true_index', 'true_label', *[f'index_{j}' for j in range(k)],
                      *[f'label_{j}' for j in range(k)], *[f'prob_{j}' for j in range(k)]]] +
              [[r['filename'], r['true_index'], r['true_label'], *r['index'], *r['label'],
                *[f'{p:.6g}' for p in r['prob']]] for r in records], elsewhere)

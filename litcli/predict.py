"""``lit predict``: top-k classes of images from a trained checkpoint (official ``.pth``, ``lit train``, export)."""
import glob
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from litcli.errors import LitError
from litcli.images import IMAGE_SUFFIXES
from litcli.sizes import check_img_size


def expand_images(inputs: Sequence[str]) -> List[Path]:
    """Files, folders (their images, recursively, sorted) and glob patterns -> image paths, in order, once each."""
    paths = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob('*') if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise LitError(f'no images ({", ".join(IMAGE_SUFFIXES)}) in folder {p}')
        elif p.is_file():
            found = [p]
        else:
            matches = sorted(Path(f) for f in glob.glob(str(item), recursive=True) if Path(f).is_file())
            # A pattern selects images among its matches (labels.txt beside them is not one); a named file is
            # taken as given, so a bad one gets its own error.
            found = [f for f in matches if f.suffix.lower() in IMAGE_SUFFIXES]
            if not found:
                raise LitError(f'{item}: no such file, folder or matching pattern' if not matches else
                               f'{item}: {len(matches)} file(s) match but none is an image '
                               f'({", ".join(IMAGE_SUFFIXES)})')
        paths.extend(found)
    return list(dict.fromkeys(paths))  # drop repeats, keep order


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


def load_predictor(checkpoint, variant: Optional[str] = None, img_size: Optional[int] = None,
                   use_ema: Optional[bool] = None):
    """(model in eval mode, eval transform, data config, class names) for a checkpoint."""
    return _predictor(checkpoint, variant, img_size, use_ema)[:4]


def _predictor(checkpoint, variant: Optional[str] = None, img_size: Optional[int] = None,
               use_ema: Optional[bool] = None):
    """``load_predictor`` and which weights were loaded ('model' or 'ema')."""
    from litcli.checkpoint import inference_data_config, model_from_checkpoint
    from litcli.transforms import eval_transform

    if img_size is not None:
        check_img_size(img_size, error=LitError)
    # The model is built at the inference size; position tables trained at another size are resampled on load.
    model, raw = model_from_checkpoint(checkpoint, variant, use_ema=use_ema,
                                       **({'img_size': img_size} if img_size else {}))
    model.eval()
    data_cfg = inference_data_config(raw, model, img_size=img_size)  # the run's own eval preprocessing
    return model, eval_transform(data_cfg), data_cfg, class_names_for(raw, model.num_classes), raw['loaded_weights']


def predict(images: Sequence[str], checkpoint, variant: Optional[str] = None, topk: int = 5, batch_size: int = 16,
            img_size: Optional[int] = None, device: Optional[str] = None, use_ema: Optional[bool] = None) -> Dict:
    """Top-k predictions for every image; returns ``{'model': ..., 'predictions': [{'image', 'topk': [...]}]}``."""
    import torch

    from litcli.images import load_image
    from litcli.train import resolve_device

    paths = expand_images(images)
    model, transform, data_cfg, names, weights = _predictor(checkpoint, variant, img_size, use_ema)
    dev = resolve_device({'device': device})
    model.to(dev)
    k = min(topk, model.num_classes)
    results = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        x = torch.stack([transform(load_image(p)) for p in chunk]).to(dev)  # B, 3, H, W
        with torch.inference_mode():
            probs = model(x).float().softmax(dim=-1).cpu()
        top_p, top_i = probs.topk(k, dim=-1)
        for path, ps, idx in zip(chunk, top_p.tolist(), top_i.tolist()):
            results.append(dict(image=str(path), topk=[
                dict(index=i, label=names[i] if names else f'class {i}', prob=p) for i, p in zip(idx, ps)]))
    info = dict(checkpoint=str(checkpoint), variant=model.pretrained_cfg.get('architecture'),
                num_classes=model.num_classes, img_size=data_cfg['input_size'][-1], crop_pct=data_cfg['crop_pct'],
                crop_mode=data_cfg['crop_mode'], weights=weights, device=str(dev))
    return dict(model=info, predictions=results)


def print_predictions(result: Dict, as_json: bool = False):
    if as_json:
        print(json.dumps(result, indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    m = result['model']
    console.print(f'{m["variant"]} ({m["num_classes"]} classes, {m["img_size"]} px) from {m["checkpoint"]}')
    for item in result['predictions']:
        console.print(escape(item['image']), style='bold', soft_wrap=True)
        table = Table()
        table.add_column('#', justify='right')
        table.add_column('class')
        table.add_column('probability', justify='right')
        for rank, pred in enumerate(item['topk'], 1):
            table.add_row(str(rank), pred['label'], f'{pred["prob"] * 100:.2f}%')
        console.print(table)

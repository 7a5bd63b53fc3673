"""``lit predict``: top-k classes of images from a trained checkpoint (official ``.pth``, ``lit train``, export)."""
import json
from pathlib import Path
from typing import Dict, Optional, Sequence


def run(images: Sequence[str], checkpoint: Optional[Path], variant: Optional[str] = None, topk: int = 5,
        batch_size: int = 16, img_size: Optional[int] = None, device: Optional[str] = None,
        use_ema: Optional[bool] = None, pretrained: bool = False) -> Dict:
    """Top-k predictions for every image (files, folders, glob patterns), through the checkpoint's own eval
    transform; returns ``{'model': ..., 'predictions': [{'image', 'topk': [{'index', 'label', 'prob'}]}]}``.
    ``pretrained``: the released ImageNet-1k weights of ``variant`` (default lit_s) instead of ``checkpoint``;
    one of the two is required (a UsageError otherwise: random weights make meaningless predictions)."""
    from litcli.core.errors import UsageError

    if checkpoint is None and not pretrained:
        raise UsageError('lit predict needs trained weights: pass --checkpoint PATH or --pretrained (random weights '
                         'make meaningless predictions)')
    import torch

    from litcli.core.modelio.factory import load_model
    from litcli.core.data.images import expand_images, load_image
    from litcli.core.runtime import resolve_device
    from litcli.core.data.transforms import eval_transform

    paths = expand_images(images)
    loaded = load_model(checkpoint, variant, use_ema=use_ema, img_size=img_size, pretrained=pretrained)
    transform = eval_transform(loaded.data_config)  # the run's own eval preprocessing
    dev = resolve_device(device)
    model = loaded.model.to(dev)
    names = loaded.class_names
    k = min(topk, loaded.num_classes)
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
    info = dict(checkpoint=loaded.source, variant=loaded.variant, num_classes=loaded.num_classes,
                img_size=loaded.img_size, crop_pct=loaded.data_config['crop_pct'],
                crop_mode=loaded.data_config['crop_mode'], weights=loaded.weights, device=str(dev))
    return dict(model=info, predictions=results)


def print_result(result: Dict, as_json: bool = False):
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

"""``lit info``: what each LIT variant is made of, and one timed forward pass on a real photo."""
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from litcli.paths import DEFAULT_PHOTO


def describe_variant(variant: str, image: Optional[Path] = None, img_size: int = 224, repeats: int = 3) -> Dict:
    """Build ``variant`` (random weights), run ``image`` through it, and report structure, counts and timing."""
    import torch

    from litcli.core.modelio.factory import load_model, param_counts
    from litcli.core.data.images import load_image
    from litcli.core.data.transforms import eval_transform, normalize_data_config

    loaded = load_model(None, variant)  # built at its 224 size; other sizes resample the position tables
    model = loaded.model
    transform = eval_transform(normalize_data_config(loaded.data_config, img_size))
    x = transform(load_image(image or DEFAULT_PHOTO)).unsqueeze(0)  # 1, 3, H, W
    with torch.inference_mode():
        feats = model.forward_intermediates(x, intermediates_only=True)
        times = []
        for _ in range(repeats + 1):  # first pass is warm-up
            t0 = time.perf_counter()
            logits = model(x)
            times.append(time.perf_counter() - t0)
    return {
        'variant': variant,
        **param_counts(model),
        'embed_dims': list(model.embed_dims),
        'depths': list(model.depths),
        'msa_stages': list(model.msa_stages),
        'input': list(x.shape),
        'stage_maps': [list(f.shape[1:]) for f in feats],
        'logits': list(logits.shape),
        'forward_ms': 1000 * sorted(times[1:])[len(times[1:]) // 2],
    }


def run(variants: Sequence[str], image: Optional[Path] = None, img_size: int = 224) -> List[Dict]:
    """Describe each variant (``img_size``: a multiple of 32, checked) and print one table."""
    from rich.console import Console
    from rich.table import Table

    from litcli.core.config import checked_img_size

    img_size = checked_img_size(img_size)

    rows = [describe_variant(v, image, img_size) for v in variants]
    grids = '/'.join(str(m[1]) if m[1] == m[2] else f'{m[1]}x{m[2]}' for m in rows[0]['stage_maps'])
    table = Table(title=f'LIT on {image or DEFAULT_PHOTO}, {img_size}x{img_size}, stage grids {grids}, '
                        'random weights')
    table.add_column('variant')
    for col in ('params', 'w/o head'):
        table.add_column(col, justify='right')
    table.add_column('dims')
    table.add_column('depths')
    table.add_column('fwd ms', justify='right')
    for r in rows:
        table.add_row(r['variant'], f"{r['params']:,}", f"{r['params_without_head']:,}",
                      '/'.join(map(str, r['embed_dims'])), '/'.join(map(str, r['depths'])), f"{r['forward_ms']:.0f}")
    console = Console()
    console.print(table)
    console.print('"w/o head" is the count the paper reports (19M / 27M / 48M / 86M, truncated).')
    return rows

"""``lit attn-maps``: a query token's attention averaged over images per block and head (the paper's Figure 3),
with the mean attention distance and entropy per head. The running means are ``core.attention``'s."""
import json
import random
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from litcli.core.analysis.attention import AttentionMeans, attention_stages
from litcli.core.errors import LitError, UsageError
from litcli.core.analysis.figures import draw_single, draw_stage_grid
from litcli.core.analysis.tokens import check_token


LIT_STAGES = (1, 2, 3, 4)


def check_stage_numbers(stage: Optional[int], msa_stages: Optional[Sequence[int]]):
    """Refuse a ``stage`` or ``msa_stages`` outside LIT's stages 1-4 before anything is built (a UsageError)."""
    if stage is not None and stage not in LIT_STAGES:
        raise UsageError(f'--stage {stage} is out of range: LIT has stages 1-4 (or all)')
    if msa_stages is not None and (not msa_stages or not set(msa_stages) <= set(LIT_STAGES)):
        raise UsageError(f'bad --msa-stages {",".join(map(str, msa_stages))!r}: use stage numbers like 1,2,3,4')


def resolve_stages(stage: Optional[int], model, arch: str) -> List[int]:
    """None -> every stage with attention; N -> [N], refusing stages without attention with the reason."""
    available = sorted(attention_stages(model))
    if stage is None:
        if not available:
            raise LitError(f'{arch} has no attention blocks')
        return available
    if stage not in available:
        raise LitError(f'stage {stage} of {arch} has MLP blocks only (LIT uses attention in stages '
                       f'{",".join(map(str, available))}); to map early-stage attention use a model with attention '
                       f'there, e.g. --msa-stages 1,2,3,4 (the paper\'s "PVT-S w/ MSA" ablation) with its checkpoint')
    return [stage]


def run(stage: Optional[int] = None, variant: Optional[str] = None, checkpoint: Optional[Path] = None,
        data: Optional[str] = None, num_images: int = 100, batch_size: int = 25, img_size: Optional[int] = None,
        query: Optional[Tuple[int, int]] = None, per_head: bool = False, save_npy: bool = False,
        as_json: bool = False, output: Path = Path('runs/attn-maps'), name: Optional[str] = None,
        exist_ok: bool = False, device: Optional[str] = None, msa_stages: Optional[Sequence[int]] = None,
        seed: int = 0, data_dir: Optional[str] = None, use_ema: Optional[bool] = None,
        pretrained: bool = False) -> Dict:
    """Mean attention maps of ``stage`` (None: every stage with attention) over ``num_images`` images, figures
    and statistics. Images: ``data`` (a built-in set's test split, a folder's val/ split or a folder of images),
    by default the checkpoint's own validation data, else the photos in assets/; each goes through the
    checkpoint's eval transform at ``img_size`` (default: the checkpoint's, else 224). ``query``: (row, col) on
    each stage's grid (default: its centre, as in the paper). Under torchrun each rank takes a share of the images
    and the sums are all-reduced; on CUDA it runs under bf16 autocast (sums in float32).
    """
    import torch
    from rich.console import Console
    from rich.table import Table

    from litcli.core.data.datasets import figure_data, image_refs
    from litcli.core.modelio.factory import load_model
    from litcli.core.training.rundir import new_run_dir
    from litcli.core.runtime import init_distributed, process_device, resolve_device
    from litcli.core.data.transforms import eval_transform

    console = Console(stderr=as_json)
    check_stage_numbers(stage, msa_stages)
    if num_images < 1:
        raise LitError('--num-images must be at least 1')
    torch.manual_seed(seed)  # a random-init model is then the same on every torchrun rank and every run
    loaded = load_model(checkpoint, variant, use_ema=use_ema, img_size=img_size, pretrained=pretrained,
                        **({'msa_stages': tuple(msa_stages)} if msa_stages else {}))
    model, weights, arch, img_size = loaded.model, loaded.describe(), loaded.variant, loaded.img_size
    if checkpoint is None and not pretrained:
        console.print('[yellow]No --checkpoint: the maps show a randomly initialised model, not what LIT learned.'
                      '[/yellow]')
    stages = resolve_stages(stage, model, arch)
    grids = {s: (img_size // model.stage_strides[s - 1],) * 2 for s in stages}
    queries = {s: check_token(query, grids[s], '--query') if query is not None else (grids[s][0] // 2,
                                                                                      grids[s][1] // 2)
               for s in stages}
    for m in model.modules():
        if hasattr(m, 'fused_attn'):
            m.fused_attn = False  # the probabilities exist only on the explicit path
    data, data_dir, source = figure_data(data, data_dir, loaded)
    files, _ = image_refs(data, data_dir)
    random.Random(seed).shuffle(files)  # a shuffled, reproducible choice across classes
    files = files[:num_images]
    dev = resolve_device(device)
    world = init_distributed(dev)
    rank, world_size = world.rank, world.world_size
    dev = process_device(dev, world)
    model = model.to(dev).eval()
    transform = eval_transform(loaded.data_config)  # the run's own preprocessing, if recorded
    my_files = files[rank::world_size]
    with AttentionMeans(model, stages, (img_size, img_size)) as acc, torch.no_grad():
        for start in range(0, len(my_files), batch_size):
            x = torch.stack([transform(ref.open()) for ref in my_files[start:start + batch_size]]).to(dev)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == 'cuda'):
                model(x)
        if not my_files:  # a rank with no images still takes part in the reduction
            for st in acc.stages.values():
                for j, (_, attn) in zip(st.blocks, attention_stages(model)[st.stage]):
                    n = st.grid[0] * st.grid[1]
                    st.sums[j] = torch.zeros(attn.num_heads, n, n, device=dev)
                    st.entropy_sums[j] = torch.zeros(attn.num_heads, dtype=torch.float64, device=dev)
        acc.all_reduce()
    if rank != 0:
        return {}
    stage = 'all' if stage is None else stage
    out_dir = new_run_dir(output, name or f'{arch}-stage-{stage}', exist_ok=exist_ok)
    result = {'variant': arch, 'weights': weights, 'num_images': acc.stages[stages[0]].count, 'img_size': img_size,
              'out_dir': str(out_dir), 'stages': {}, 'paths': []}
    for s in stages:
        st, mean = acc.stages[s], acc.means(s)
        grid_png = out_dir / f'stage{s}.png'
        draw_stage_grid(mean, st.grid, queries[s], st.blocks, s, grid_png)
        result['paths'].append(str(grid_png))
        if per_head:
            q = queries[s][0] * st.grid[1] + queries[s][1]
            for b, j in enumerate(st.blocks):
                for h in range(mean.shape[1]):
                    p = out_dir / f'stage{s}' / f'block{j}-head{h}.png'
                    p.parent.mkdir(exist_ok=True)
                    draw_single(mean[b, h, q].reshape(st.grid), queries[s], s, p)
                    result['paths'].append(str(p))
        if save_npy:
            p = out_dir / f'stage{s}_mean_attention.npy'
            np.save(p, mean.astype(np.float32))  # blocks, heads, N, N
            result['paths'].append(str(p))
        result['stages'][s] = {'grid': list(st.grid), 'query': list(queries[s]), 'blocks': st.blocks,
                               'class_token_removed': bool(st.prefix), 'stats': acc.statistics(s)}
    stats_path = out_dir / 'stats.json'
    stats_path.write_text(json.dumps(result, indent=1))
    result['paths'].append(str(stats_path))
    if as_json:
        print(json.dumps(result, indent=1))
        return result
    table = Table(title=f'{arch} ({weights}): attention over {result["num_images"]} images from {source}, '
                        f'averaged over heads (min-max over heads)')
    for col in ('stage', 'block', 'heads', 'mean distance px', 'entropy nats (max)'):
        table.add_column(col, justify='right')
    for s in stages:
        rows = result['stages'][s]['stats']
        for j in acc.stages[s].blocks:
            block_rows = [r for r in rows if r['block'] == j]
            d = [r['mean_distance_px'] for r in block_rows]
            e = [r['entropy_nats'] for r in block_rows]
            table.add_row(str(s), str(j), str(len(block_rows)), f'{np.mean(d):.1f} ({min(d):.1f}-{max(d):.1f})',
                          f'{np.mean(e):.2f} ({block_rows[0]["max_entropy_nats"]:.2f})')
    console.print(table)
    if any(result['stages'][s]['class_token_removed'] for s in stages):
        console.print("LIT-Ti's class token is excluded from the stage-4 maps (as in the paper).")
    console.print(f'averaged {result["num_images"]} images; wrote {len(result["paths"])} files to {out_dir}')
    return result

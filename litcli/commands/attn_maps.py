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
from litcli.core.io import atomic_write, write_json


LIT_STAGES = (1, 2, 3, 4)
ELSEWHERE = 'choose another --output'


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

    from litcli.core.data.datasets import figure_data, image_refs
    from litcli.core.modelio.factory import load_model
    from litcli.core.training.rundir import new_run_dir

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
    acc = mean_attention(model, stages, files, loaded.data_config, img_size, batch_size, device)
    if acc is None:  # not rank 0
        return {}
    stage = 'all' if stage is None else stage
    out_dir = new_run_dir(output, name or f'{arch}-stage-{stage}', exist_ok=exist_ok)
    result = {'variant': arch, 'weights': weights, 'num_images': acc.stages[stages[0]].count, 'img_size': img_size,
              'out_dir': str(out_dir), 'stages': {}, 'paths': []}
    for s in stages:
        result['paths'] += write_stage(acc, s, queries[s], out_dir, per_head, save_npy)
        result['stages'][s] = {'grid': list(acc.stages[s].grid), 'query': list(queries[s]),
                               'blocks': acc.stages[s].blocks, 'class_token_removed': bool(acc.stages[s].prefix),
                               'stats': acc.statistics(s)}
    stats_path = out_dir / 'stats.json'
    write_json(stats_path, result, ELSEWHERE, indent=1)
    result['paths'].append(str(stats_path))
    if as_json:
        print(json.dumps(result, indent=1))
        return result
    print_statistics(result, acc, stages, source, console)
    return result


def mean_attention(model, stages: Sequence[int], files, data_config: Dict, img_size: int, batch_size: int,
                   device: Optional[str]) -> Optional[AttentionMeans]:
    """The attention of ``stages`` summed over the images ``files`` through the eval transform of ``data_config``:
    under torchrun each rank takes a share and the sums are all-reduced; on CUDA under bf16 autocast (sums in
    float32). Rank 0 gets the accumulator, the other ranks None."""
    import torch

    from litcli.core.data.transforms import eval_transform
    from litcli.core.runtime import init_distributed, process_device, resolve_device

    dev = resolve_device(device)
    world = init_distributed(dev)
    dev = process_device(dev, world)
    model = model.to(dev).eval()
    transform = eval_transform(data_config)  # the run's own preprocessing, if recorded
    my_files = files[world.rank::world.world_size]
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
    return acc if world.rank == 0 else None


def write_stage(acc: AttentionMeans, s: int, query: Tuple[int, int], out_dir: Path, per_head: bool,
                save_npy: bool) -> List[str]:
    """Stage ``s``'s figure of every block and head (and, on request, one per head and the mean maps as .npy);
    the paths written."""
    st, mean = acc.stages[s], acc.means(s)
    grid_png = out_dir / f'stage{s}.png'
    draw_stage_grid(mean, st.grid, query, st.blocks, s, grid_png, elsewhere=ELSEWHERE)
    paths = [str(grid_png)]
    if per_head:
        q = query[0] * st.grid[1] + query[1]
        for b, j in enumerate(st.blocks):
            for h in range(mean.shape[1]):
                p = out_dir / f'stage{s}' / f'block{j}-head{h}.png'
                p.parent.mkdir(exist_ok=True)
                draw_single(mean[b, h, q].reshape(st.grid), query, s, p, ELSEWHERE)
                paths.append(str(p))
    if save_npy:
        p = out_dir / f'stage{s}_mean_attention.npy'
        atomic_write(p, lambda f: np.save(f, mean.astype(np.float32)), ELSEWHERE)  # blocks, heads, N, N
        paths.append(str(p))
    return paths


def print_statistics(result: Dict, acc: AttentionMeans, stages: Sequence[int], source: str, console):
    """The mean attention distance and entropy per block (min-max over heads) as a table, and what was written."""
    from rich.table import Table

    arch, weights = result['variant'], result['weights']
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
    console.print(f'averaged {result["num_images"]} images; wrote {len(result["paths"])} files to {result["out_dir"]}')

"""``lit attn-maps``: attention probabilities averaged over images (the paper's Figure 3), with receptive-field
statistics per block and head.

The model runs on its explicit attention path; a forward hook on each attention module's ``attn_drop`` (which
receives the softmax probabilities, timm's convention) adds them into a running float32 sum per block, so memory
does not depend on the number of images. LIT-Ti's stage-4 class token is removed from the maps (row and column,
as in the paper); for the statistics each query's remaining probabilities are renormalised to sum to 1.

Statistics, per block and head, averaged over all queries:
- mean attention distance: sum_k p(q, k) * |pos_q - pos_k| in input pixels (a token of stage s is 4 * 2^(s-1)
  pixels wide). Linear in p, so it is computed exactly from the mean map.
- entropy (nats) of each query's distribution, averaged over images (streamed per image: entropy is not linear).
"""
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np

from litcli.errors import LitError

if TYPE_CHECKING:  # annotations only: the module imports torch lazily
    import torch


@dataclass
class StageAttention:
    """Running sums for the attention blocks of one stage."""
    stage: int  # 1-based
    grid: Tuple[int, int]
    prefix: int  # tokens before the grid tokens (LIT-Ti stage 4: the cls token)
    blocks: List[int]  # block indices within the stage that have attention
    sums: Dict[int, 'torch.Tensor'] = field(default_factory=dict)  # block -> (heads, N, N) float32
    entropy_sums: Dict[int, 'torch.Tensor'] = field(default_factory=dict)  # block -> (heads,) float64
    count: int = 0  # images accumulated (per block; all blocks see every image)

    @property
    def stride(self) -> int:
        return 4 * 2 ** (self.stage - 1)


def attention_stages(model) -> Dict[int, List[Tuple[int, 'torch.nn.Module']]]:
    """1-based stage -> [(block index, attention module)] for every stage that has attention."""
    stages = {}
    for i in range(4):
        found = [(j, blk.attn) for j, blk in enumerate(model.stage_blocks(i)) if hasattr(blk, 'attn')]
        if found:
            stages[i + 1] = found
    return stages


def grid_probs(probs, prefix: int):
    """(B, heads, P+N, P+N) -> (B, heads, N, N) without prefix tokens, rows renormalised to sum to 1."""
    if prefix:
        probs = probs[..., prefix:, prefix:]
        probs = probs / probs.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return probs


class AttentionMeans:
    """Streams the mean attention probabilities of chosen stages over any number of images.

    Use as a context manager around forward passes of a model built with the explicit attention path.
    """

    def __init__(self, model, stages: Sequence[int], img_size: Tuple[int, int]):
        self.model = model
        available = attention_stages(model)
        self.stages: Dict[int, StageAttention] = {}
        self._handles = []
        for s in stages:
            grid = (img_size[0] // (4 * 2 ** (s - 1)), img_size[1] // (4 * 2 ** (s - 1)))
            prefix = model.num_prefix_tokens if s == 4 else 0
            self.stages[s] = StageAttention(s, grid, prefix, [j for j, _ in available[s]])
            for j, attn in available[s]:
                if getattr(attn, 'sr', None) is not None:
                    raise LitError(f'stage {s} uses spatial-reduction attention (keys on a grid '
                                   f'{attn.sr.stride[0]}x smaller than the queries); attn-maps needs full attention '
                                   f'(query and key grids equal): choose another --stage')
                if attn.fused_attn:
                    raise LitError('attention maps need the explicit attention path: build the model with '
                                   'fused_attn=False')
                self._handles.append(attn.attn_drop.register_forward_hook(self._hook(s, j)))

    def _hook(self, stage: int, block: int):
        def hook(_module, inputs, _output):
            st = self.stages[stage]
            probs = grid_probs(inputs[0].detach().float(), st.prefix)  # B, heads, N, N
            total = probs.sum(0)
            entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1).mean(-1).sum(0)  # heads
            if block in st.sums:
                st.sums[block] += total
                st.entropy_sums[block] += entropy.double()
            else:
                st.sums[block] = total
                st.entropy_sums[block] = entropy.double()
            if block == st.blocks[0]:
                st.count += probs.shape[0]
        return hook

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return False

    def all_reduce(self):
        """Sum the running sums across torchrun ranks (no-op outside torch.distributed)."""
        import torch
        import torch.distributed as dist
        if not (dist.is_available() and dist.is_initialized()):
            return
        for st in self.stages.values():
            for j in st.blocks:
                dist.all_reduce(st.sums[j])
                dist.all_reduce(st.entropy_sums[j])
            count = torch.tensor([st.count], dtype=torch.float64, device=st.sums[st.blocks[0]].device)
            dist.all_reduce(count)
            st.count = int(count.item())

    def means(self, stage: int) -> np.ndarray:
        """(blocks, heads, N, N) mean probabilities over the images seen."""
        st = self.stages[stage]
        if st.count == 0:
            raise LitError('no images were run through the model')
        return np.stack([(st.sums[j] / st.count).cpu().double().numpy() for j in st.blocks])

    def statistics(self, stage: int) -> List[Dict]:
        """Per block and head: mean attention distance (pixels) and mean entropy (nats), over all queries."""
        st = self.stages[stage]
        mean = self.means(stage)  # blocks, heads, N, N
        h, w = st.grid
        ys, xs = np.divmod(np.arange(h * w), w)
        dist_px = st.stride * np.hypot(ys[:, None] - ys[None, :], xs[:, None] - xs[None, :])  # N, N
        distance = (mean * dist_px).sum(-1).mean(-1)  # blocks, heads
        rows = []
        for b, j in enumerate(st.blocks):
            entropy = (st.entropy_sums[j] / st.count).cpu().numpy()
            for head in range(mean.shape[1]):
                rows.append({'stage': stage, 'block': j, 'head': head, 'mean_distance_px': float(distance[b, head]),
                             'entropy_nats': float(entropy[head]), 'max_entropy_nats': math.log(h * w)})
        return rows


def figure_data(data: Optional[str], data_dir: Optional[str], raw: Dict, checkpoint) -> Tuple[str, Optional[str], str]:
    """(data, data_dir, description) of the images a figure command uses: ``data`` if given, else the validation
    data a ``lit train`` checkpoint records, else the photos in assets/."""
    from litcli.data import resolve_data
    from litcli.paths import PHOTOS_DIR

    if data is not None:
        return data, data_dir, str(data)
    config = raw.get('config') if isinstance(raw.get('config'), dict) else {}
    if config.get('data') is None and not config:
        return str(PHOTOS_DIR), None, 'the photos in assets/'
    data, data_dir = config.get('data'), config.get('data_dir')
    try:
        kind, root = resolve_data(data, data_dir)
    except LitError as e:
        raise LitError(f'the data {checkpoint} was trained on ({data}, recorded in the checkpoint) is not available '
                       f'here ({e}); pass --data') from None
    return data, data_dir, f'{data or kind} (the checkpoint\'s validation data)'


def parse_query(spec: Optional[str], grid: Tuple[int, int]) -> Tuple[int, int]:
    """The query token of a stage: ROW,COL, or the centre token (as in the paper) when not given."""
    from litcli.viz.tokens import parse_token
    if spec is None:
        return grid[0] // 2, grid[1] // 2
    return parse_token(spec, grid, what='--query')


def draw_stage_grid(mean: np.ndarray, grid: Tuple[int, int], query: Tuple[int, int], blocks: Sequence[int],
                    stage: int, path: Path, max_cols: int = 13):
    """Rows = blocks, columns = heads plus a head-mean panel; each panel is the query's attention map.
    Blocks with many heads wrap onto several rows of at most ``max_cols`` panels."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    n_blocks, heads = mean.shape[:2]
    q = query[0] * grid[1] + query[1]
    cols = min(heads + 1, max_cols)
    rows_per_block = -(-(heads + 1) // cols)
    size = 1.6
    fig, axes = plt.subplots(n_blocks * rows_per_block, cols, squeeze=False,
                             figsize=(size * cols, size * n_blocks * rows_per_block * grid[0] / grid[1] + 0.6))
    for ax in axes.flat:
        ax.axis('off')
    lw = 1 if stage <= 2 else 2
    for b in range(n_blocks):
        maps = list(mean[b, :, q].reshape(heads, *grid)) + [mean[b, :, q].mean(0).reshape(grid)]
        for k, amap in enumerate(maps):
            ax = axes[b * rows_per_block + k // cols, k % cols]
            ax.axis('on')
            ax.imshow(amap, cmap='OrRd', interpolation='nearest')
            ax.add_patch(Rectangle((query[1] - 0.5, query[0] - 0.5), 1, 1, fill=False, edgecolor='lime', lw=lw))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f'b{blocks[b]} ' + ('mean' if k == heads else f'h{k}'), fontsize=7, pad=2)
    fig.suptitle(f'stage {stage}: attention of query ({query[0]},{query[1]}) on {grid[0]}x{grid[1]} tokens; '
                 f'rows: blocks, columns: heads, last: head mean', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def draw_single(amap: np.ndarray, query: Tuple[int, int], stage: int, path: Path):
    """One (stage, block, head) map, as the official per-head figures."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(amap, cmap='OrRd', interpolation='nearest')
    ax.add_patch(Rectangle((query[1] - 0.5, query[0] - 0.5), 1, 1, fill=False, edgecolor='lime',
                           lw=1 if stage <= 2 else 2))
    ax.axis('off')
    fig.savefig(path, dpi=100, bbox_inches='tight', pad_inches=0, transparent=True)
    plt.close(fig)


def parse_stages(spec: str, model, arch: str) -> List[int]:
    """'all' -> every stage with attention; 'N' -> [N], refusing stages without attention with the reason."""
    available = sorted(attention_stages(model))
    if spec.strip().lower() == 'all':
        if not available:
            raise LitError(f'{arch} has no attention blocks')
        return available
    try:
        stage = int(spec)
    except ValueError:
        raise LitError(f"bad --stage {spec!r}: use 1, 2, 3, 4 or all")
    if not 1 <= stage <= 4:
        raise LitError(f'--stage {stage} is out of range: LIT has stages 1-4')
    if stage not in available:
        raise LitError(f'stage {stage} of {arch} has MLP blocks only (LIT uses attention in stages '
                       f'{",".join(map(str, available))}); to map early-stage attention use a model with attention '
                       f'there, e.g. --msa-stages 1,2,3,4 (the paper\'s "PVT-S w/ MSA" ablation) with its checkpoint')
    return [stage]


def _distributed() -> Tuple[int, int]:
    """(rank, world size); joins the torchrun process group when launched by torchrun."""
    import os

    import torch
    import torch.distributed as dist
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)))  # before NCCL init: one GPU per rank
        dist.init_process_group('nccl' if torch.cuda.is_available() else 'gloo')
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def run_attn_maps(stage: str = 'all', variant: Optional[str] = None, checkpoint: Optional[Path] = None,
                  data: Optional[str] = None, num_images: int = 100, batch_size: int = 25,
                  img_size: Optional[int] = None, query: Optional[str] = None, per_head: bool = False,
                  save_npy: bool = False, as_json: bool = False, output: Path = Path('runs/attn-maps'),
                  name: Optional[str] = None, exist_ok: bool = False, device: Optional[str] = None,
                  msa_stages: Optional[Sequence[int]] = None, seed: int = 0, data_dir: Optional[str] = None,
                  use_ema: Optional[bool] = None) -> Dict:
    """The ``lit attn-maps`` command: mean attention maps of chosen stages over images, figures and stats.

    Images: ``data`` (a built-in set's test split, a folder's val/ split or a folder of images), by default the
    checkpoint's own validation data, else the photos in assets/; each goes through the checkpoint's eval
    transform at ``img_size`` (default: the checkpoint's size, else 224).
    """
    import json
    import random

    import timm
    import torch
    from rich.console import Console
    from rich.table import Table

    import litcli.models  # noqa: F401
    from litcli.checkpoint import inference_data_config, model_from_checkpoint
    from litcli.data import image_refs
    from litcli.models.lit import LITBase
    from litcli.rundir import new_run_dir
    from litcli.transforms import eval_transform

    console = Console(stderr=as_json)
    if num_images < 1:
        raise LitError('--num-images must be at least 1')
    kwargs = {'msa_stages': tuple(msa_stages)} if msa_stages else {}
    if img_size is not None:
        LITBase._check_size((img_size, img_size))
        kwargs['img_size'] = img_size
    torch.manual_seed(seed)  # a random-init model is then the same on every torchrun rank and every run
    if checkpoint is not None:
        model, raw = model_from_checkpoint(checkpoint, variant, use_ema=use_ema, **kwargs)
        weights = f'checkpoint {checkpoint}' + (' (EMA weights)' if raw['loaded_weights'] == 'ema' else '')
    else:
        model, raw = timm.create_model(variant or 'lit_s', **kwargs), {}
        weights = 'random initialisation'
        console.print('[yellow]No --checkpoint: the maps show a randomly initialised model, not what LIT learned.'
                      '[/yellow]')
    data_cfg = inference_data_config(raw, model, img_size=img_size)
    img_size = data_cfg['input_size'][-1]
    arch = model.pretrained_cfg.get('architecture', variant)
    stages = parse_stages(stage, model, arch)
    queries = {s: parse_query(query, (img_size // (4 * 2 ** (s - 1)),) * 2) for s in stages}
    for m in model.modules():
        if hasattr(m, 'fused_attn'):
            m.fused_attn = False  # the probabilities exist only on the explicit path
    data, data_dir, source = figure_data(data, data_dir, raw, checkpoint)
    files, _ = image_refs(data, data_dir)
    random.Random(seed).shuffle(files)  # a shuffled, reproducible choice across classes
    files = files[:num_images]
    rank, world = _distributed()
    dev = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if dev.type == 'cuda' and world > 1:
        dev = torch.device('cuda', torch.cuda.current_device())
    model = model.to(dev).eval()
    transform = eval_transform(data_cfg)  # the run's own preprocessing, if recorded
    my_files = files[rank::world]
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

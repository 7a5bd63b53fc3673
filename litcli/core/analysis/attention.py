"""Attention probabilities averaged over images (the paper's Figure 3, ``lit attn-maps``), with receptive-field
statistics per block and head.

The model runs on its explicit attention path; a forward hook on each attention module's ``attn_drop`` (which
receives the softmax probabilities, timm's convention) adds them into a running float32 sum per block, so memory
does not depend on the number of images. LIT-Ti's stage-4 class token is removed from the maps (row and column,
as in the paper); for the statistics each query's remaining probabilities are renormalised to sum to 1.

Statistics, per block and head, averaged over all queries:
- mean attention distance: sum_k p(q, k) * |pos_q - pos_k| in input pixels (a token of stage s is
  patch_size * 2^(s-1) pixels wide). Linear in p, so it is computed exactly from the mean map.
- entropy (nats) of each query's distribution, averaged over images (streamed per image: entropy is not linear).
"""
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Sequence, Tuple

import numpy as np

from litcli.core.errors import LitError

if TYPE_CHECKING:  # annotations only: the module imports torch lazily
    import torch


@dataclass
class StageAttention:
    """Running sums for the attention blocks of one stage."""
    stage: int  # 1-based
    stride: int  # pixels between neighbouring tokens: patch_size * 2^(stage - 1)
    grid: Tuple[int, int]
    prefix: int  # tokens before the grid tokens (LIT-Ti stage 4: the cls token)
    blocks: List[int]  # block indices within the stage that have attention
    sums: Dict[int, 'torch.Tensor'] = field(default_factory=dict)  # block -> (heads, N, N) float32
    entropy_sums: Dict[int, 'torch.Tensor'] = field(default_factory=dict)  # block -> (heads,) float64
    count: int = 0  # images accumulated (per block; all blocks see every image)


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
            stride = model.stage_strides[s - 1]
            grid = (img_size[0] // stride, img_size[1] // stride)
            prefix = model.num_prefix_tokens if s == 4 else 0
            self.stages[s] = StageAttention(s, stride, grid, prefix, [j for j, _ in available[s]])
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

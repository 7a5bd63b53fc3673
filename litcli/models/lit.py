""" LIT: Less is More: Pay Less Attention in Vision Transformers

Paper: Pan et al., AAAI 2022, https://arxiv.org/abs/2105.14217
Original code: https://github.com/ziplab/LIT (Apache-2.0)

Early stages are pure MLP blocks, late stages global multi-head self-attention, and stages are joined
by Deformable Token Merging (``dtm.py``). The official code has two naming layouts, kept here key for
key so the released ``lit_{ti,s,m,b}.pth`` files load with ``strict=True``:

- ``LITPvtStyle`` (LIT-Ti): ``patch_embed1`` stem, ``patch_embed{2,3,4}`` = DTM *into* stages 2-4,
  learned absolute ``pos_embed1..4``, a ``cls_token`` prepended in stage 4, cls-token pooling.
- ``LITSwinStyle`` (LIT-S/M/B): ``patch_embed`` stem, ``layers.i.blocks`` and ``layers.i.downsample``
  = DTM *out of* stages 1-3, a relative position bias in every attention block, mean pooling.

Both share the leaf modules and one forward loop (``LITBase``); they differ only in where the modules
live and how tokens get position information. Any input whose sides are divisible by 32 works: the
position tables are built for ``img_size`` and resampled bicubically for other sizes (bit-exact at the
build size).
"""
import logging
import math
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from timm.layers import DropPath, Mlp, PatchEmbed, resample_abs_pos_embed, to_2tuple, trunc_normal_, use_fused_attn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models.pvt_v2 import Attention as SpatialReductionAttention
from timm.models.swin_transformer import PatchMerging

from .dtm import DeformableTokenMerging
from .spec import PVT_S_MSA_URL, nearest_valid, release_url, size_fits, unwrap_state_dict

__all__ = ['LITBase', 'LITPvtStyle', 'LITSwinStyle', 'Attention', 'MlpBlock', 'TransformerBlock',
           'checkpoint_filter_fn', 'pretrained_filter_fn', 'relative_position_index', 'resize_rel_pos_table',
           'LIT_ARCHS']

_logger = logging.getLogger(__name__)

ATTN_BIAS_CHUNK_ELEMENTS = 1 << 23  # fused attention builds its position bias in query chunks of ~32 MB (fp32)


def relative_position_index(h: int, w: int, device=None, rows: slice = slice(None)) -> torch.Tensor:
    """(h*w, h*w) int64 index into a ((2h-1)(2w-1), heads) table for global attention on an h x w grid
    (only the query ``rows`` when given).

    index[i, j] = (y_i - y_j + h - 1) * (2w - 1) + (x_i - x_j + w - 1), tokens in row-major order (Swin's
    formula with the window equal to the whole map, as in the official LIT-S/M/B).
    """
    ys = torch.arange(h, device=device).repeat_interleave(w)
    xs = torch.arange(w, device=device).repeat(h)
    dy = ys[rows, None] - ys[None, :] + (h - 1)
    dx = xs[rows, None] - xs[None, :] + (w - 1)
    return dy * (2 * w - 1) + dx


def resize_rel_pos_table(table: torch.Tensor, old_grid: Tuple[int, int], new_grid: Tuple[int, int]):
    """Resize a ((2h-1)(2w-1), heads) table to another grid by bicubic interpolation of the (dy, dx) plane,
    as the official LIT dense-prediction loader does."""
    if tuple(old_grid) == tuple(new_grid):
        return table
    heads = table.shape[1]
    (oh, ow), (nh, nw) = old_grid, new_grid
    plane = table.t().reshape(1, heads, 2 * oh - 1, 2 * ow - 1)  # rows index dy, columns dx
    plane = F.interpolate(plane, size=(2 * nh - 1, 2 * nw - 1), mode='bicubic', align_corners=False)
    return plane.reshape(heads, -1).t()


class Attention(nn.Module):
    """Global multi-head self-attention, optionally with a relative position bias over the whole map.

    ``fused_attn`` selects ``F.scaled_dot_product_attention``; the explicit path computes the softmax
    probabilities and passes them through ``attn_drop`` (hook it to read attention maps).
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            qkv_bias: bool = True,
            rel_pos_grid: Optional[Tuple[int, int]] = None,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            fused_attn: Optional[bool] = None,
            rel_pos_index_buffer: bool = True,
    ):
        super().__init__()
        assert dim % num_heads == 0, f'dim {dim} must be divisible by num_heads {num_heads}'
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = use_fused_attn() if fused_attn is None else fused_attn
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.rel_pos_grid = tuple(rel_pos_grid) if rel_pos_grid is not None else None
        # False: no index buffer, the index is computed for every grid (the dense backbones, whose 800-px build grid
        # would make it 2500 x 2500 per block).
        self.rel_pos_index_buffer = rel_pos_index_buffer and self.rel_pos_grid is not None
        if self.rel_pos_grid is not None:
            h, w = self.rel_pos_grid
            self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * h - 1) * (2 * w - 1), num_heads))
        if self.rel_pos_index_buffer:
            # Persistent, with the official name, so official checkpoints load strictly.
            self.register_buffer('relative_position_index', relative_position_index(h, w), persistent=True)

    def bias_table(self, grid_size: Tuple[int, int]) -> torch.Tensor:
        """The table for an h x w grid, transposed to (heads, (2h-1)(2w-1)); resampled off the build grid."""
        table = self.relative_position_bias_table
        if tuple(grid_size) != self.rel_pos_grid:
            table = resize_rel_pos_table(table, self.rel_pos_grid, grid_size)
        return table.t().contiguous()

    def rel_pos_bias(self, grid_size: Tuple[int, int], rows: slice = slice(None),
                     table_t: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(heads, n_rows, N) bias of the query ``rows`` on an h x w token grid (``table_t``: ``bias_table``'s
        result, to reuse across chunks). Off the build grid the index rows are computed on the fly."""
        table_t = self.bias_table(grid_size) if table_t is None else table_t
        if tuple(grid_size) == self.rel_pos_grid and self.rel_pos_index_buffer:
            index = self.relative_position_index[rows]
        else:
            index = relative_position_index(*grid_size, device=table_t.device, rows=rows)
        # Gather along the table's position axis in (heads, L) layout: ~8x faster than table[index] on CPU and it
        # lands directly in (heads, rows, N) order (no permute copy).
        return table_t.index_select(1, index.reshape(-1)).view(-1, *index.shape)

    def _fused(self, q, k, v, grid_size) -> torch.Tensor:
        """SDPA; for large maps the queries go in chunks so the (heads, N, N) bias is never built whole (at
        1024 px LIT-S's stage-3 bias alone would be 0.8 GB). Softmax is per query, so chunking is exact."""
        heads, n = q.shape[1], q.shape[2]
        chunk = n if self.rel_pos_grid is None else max(1, ATTN_BIAS_CHUNK_ELEMENTS // (heads * n))
        dropout = self.attn_drop.p if self.training else 0.
        table_t = self.bias_table(grid_size) if self.rel_pos_grid is not None else None
        outs = []
        for start in range(0, n, chunk):
            rows = slice(start, min(start + chunk, n))
            bias = None if table_t is None else self.rel_pos_bias(grid_size, rows, table_t).unsqueeze(0).to(q.dtype)
            outs.append(F.scaled_dot_product_attention(q[:, :, rows], k, v, attn_mask=bias, dropout_p=dropout))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)  # B, heads, N, d

    def _bias_grad_on_cpu(self, x: torch.Tensor) -> bool:
        """True when SDPA would be slower than the explicit path: on CPU, an attn_mask that needs a gradient (the
        learnable rel-pos bias in training) sends SDPA to its math fallback, which adds -inf/all-masked checks
        over the whole (B, heads, N, N) score tensor; the explicit path is ~5% faster per LIT-S train step."""
        return self.rel_pos_grid is not None and x.device.type == 'cpu' and torch.is_grad_enabled() \
            and self.relative_position_bias_table.requires_grad

    def forward(self, x: torch.Tensor, grid_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        B, N, C = x.shape
        # qkv channels are [q | k | v], each heads x head_dim: B, N, 3, heads, d -> 3, B, heads, N, d
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused_attn and not self._bias_grad_on_cpu(x):
            x = self._fused(q, k, v, grid_size)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # B, heads, N, N
            if self.rel_pos_grid is not None:
                bias = self.rel_pos_bias(grid_size).unsqueeze(0)
                # In place (matmul's backward does not need its output; saves a (B, heads, N, N) tensor) unless
                # autocast made the scores half precision: then the sum is promoted to fp32, as in the official code.
                attn = attn.add_(bias) if attn.dtype == bias.dtype else attn + bias
            attn = self.attn_drop(attn.softmax(dim=-1))
            x = attn @ v
        x = x.transpose(1, 2).reshape(B, N, C)  # B, N, heads*d
        return self.proj_drop(self.proj(x))


class MlpBlock(nn.Module):
    """Stage-1/2 block: ``x + DropPath(MLP(LN(x)))``. The one norm is named ``norm2`` as in the official code."""

    def __init__(self, dim: int, mlp_ratio: float, drop_path: float = 0., norm_layer=nn.LayerNorm, **_unused):
        super().__init__()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor, grid_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TransformerBlock(nn.Module):
    """Pre-norm Transformer block with global MSA (no windows, no shift, no layer scale)."""

    def __init__(
            self,
            dim: int,
            mlp_ratio: float,
            drop_path: float = 0.,
            norm_layer=nn.LayerNorm,
            num_heads: int = 1,
            qkv_bias: bool = True,
            rel_pos_grid: Optional[Tuple[int, int]] = None,
            fused_attn: Optional[bool] = None,
            sr_ratio: int = 1,
            rel_pos_index_buffer: bool = True,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        if sr_ratio > 1:
            # PVT's spatial-reduction attention (keys/values from an sr_ratio-strided conv + LN), reused from
            # timm's PVT-v2 (identical to PVT v1's, same q/kv/sr/norm keys); only the PVT-S + DTM ablation uses it.
            self.attn = SpatialReductionAttention(dim, num_heads, sr_ratio=sr_ratio, qkv_bias=qkv_bias)
            if fused_attn is not None:
                self.attn.fused_attn = fused_attn
        else:
            self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, rel_pos_grid=rel_pos_grid,
                                  fused_attn=fused_attn, rel_pos_index_buffer=rel_pos_index_buffer)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor, grid_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), grid_size))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ConvMerge(nn.Module):
    """PVT-style uniform merge (the paper's LIT-Ti* and PVT-S): Conv2d(2x2, stride 2) + LayerNorm, NCHW in/out.
    Keys ``proj.*``, ``norm.*`` as PVT's patch embedding."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chs, out_chs, kernel_size=2, stride=2)
        self.norm = nn.LayerNorm(out_chs)

    def forward(self, x):
        x = self.proj(x).permute(0, 2, 3, 1)  # B, h/2, w/2, C_out
        return self.norm(x).permute(0, 3, 1, 2)


class LinearMerge(nn.Module):
    """Swin-style uniform merge (the paper's LIT-S*): timm's PatchMerging (2x2 concat, LayerNorm, Linear), NCHW
    in/out."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        self.merge = PatchMerging(in_chs, out_chs)

    def forward(self, x):
        return self.merge(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # NCHW -> NHWC -> merge -> NCHW


MERGES = ('dtm', 'conv', 'linear')


class LITBase(nn.Module):
    """What both layouts share: construction arithmetic, the forward loop, the timm model interface.

    Subclasses build the modules under their official names and implement ``stage_merge(i)`` (the DTM
    that produces stage i's tokens, None for stage 0), ``stage_blocks(i)`` and ``embed_tokens(i, x, grid)``
    (add position information / prefix tokens after the merge).
    """
    num_prefix_tokens = 0  # tokens before the grid tokens in the final stage (cls token)
    rel_pos_index_buffer = True  # persistent relative_position_index buffers (False in the dense backbones)

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dims: Sequence[int] = (96, 192, 384, 768),
            depths: Sequence[int] = (2, 2, 6, 2),
            num_heads: Sequence[int] = (3, 6, 12, 24),
            mlp_ratios: Sequence[float] = (4., 4., 4., 4.),
            msa_stages: Sequence[int] = (3, 4),
            qkv_bias: bool = True,
            drop_path_rate: float = 0.,
            norm_eps: float = 1e-5,
            fused_attn: Optional[bool] = None,
            merge: str = 'dtm',
            sr_ratios: Sequence[int] = (1, 1, 1, 1),
            dtm_backend: str = 'auto',
            patch_size: int = 4,
            stem_kernel: Optional[int] = None,
    ):
        super().__init__()
        assert len(embed_dims) == len(depths) == len(num_heads) == len(mlp_ratios) == 4
        assert global_pool in ('', 'avg', 'token')
        if merge not in MERGES:
            raise ValueError(f"unknown merge {merge!r}; choose one of {', '.join(MERGES)}")
        self.merge = merge
        self.img_size = to_2tuple(img_size)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.embed_dims = tuple(embed_dims)
        self.depths = tuple(depths)
        self.msa_stages = tuple(sorted(msa_stages))
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.grad_checkpointing = False
        # The stem's patch side (4 in every official model; 2 gives small inputs such as 28-32 px images 4x the
        # tokens). Stage i's tokens are patch_size * 2**i pixels apart; sides must be multiples of 8 * patch_size.
        self.patch_size = patch_size
        self.stage_strides = tuple(patch_size * 2 ** i for i in range(4))
        self.reduction = 8 * patch_size  # the stem, then three 2x2 merges
        # The stem conv's kernel: patch_size (non-overlapping patches, every official model) or larger, as in PVTv2's
        # overlapping patch embedding. Padded by (kernel - patch_size) / 2 per side, so a token's window stays centred
        # on its patch (the pixel geometry of viz-offsets / attn-maps holds for any kernel) and the grid is unchanged.
        self.stem_kernel = patch_size if stem_kernel is None else stem_kernel
        kernel_ok = isinstance(self.stem_kernel, int) and self.stem_kernel >= patch_size
        if not kernel_ok or (self.stem_kernel - patch_size) % 2:
            raise ValueError(f'stem_kernel {self.stem_kernel} must be patch_size ({patch_size}) plus an even number')
        self.check_size(self.img_size)
        # Token grid of each stage at the build size: 56, 28, 14, 7 at 224.
        self.stage_grids = [(self.img_size[0] // s, self.img_size[1] // s) for s in self.stage_strides]
        self.norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        # Stochastic depth grows linearly over all blocks, MLP-only blocks included.
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()  # also under a meta device
        self.block_drop_path = [dpr[sum(depths[:i]):sum(depths[:i + 1])] for i in range(4)]
        self.block_kwargs = [
            dict(dim=embed_dims[i], mlp_ratio=mlp_ratios[i], norm_layer=self.norm_layer, num_heads=num_heads[i],
                 qkv_bias=qkv_bias, fused_attn=fused_attn)
            for i in range(4)
        ]
        self.sr_ratios = tuple(sr_ratios)
        self.dtm_backend = dtm_backend
        self.feature_info = []

    # ---- construction helpers used by the subclasses ----
    def _make_stem(self) -> PatchEmbed:
        # Conv2d(k=P, s=P) + LayerNorm(eps 1e-5), P = 4 in both official layouts; keys proj.*, norm.*.
        stem = PatchEmbed(self.img_size, patch_size=self.patch_size, in_chans=self.in_chans,
                          embed_dim=self.embed_dims[0], norm_layer=partial(nn.LayerNorm, eps=1e-5), flatten=False,
                          output_fmt='NHWC', strict_img_size=False)
        if self.stem_kernel != self.patch_size:  # timm's PatchEmbed has no padding: its conv replaced, same keys
            stem.proj = nn.Conv2d(self.in_chans, self.embed_dims[0], kernel_size=self.stem_kernel,
                                  stride=self.patch_size, padding=(self.stem_kernel - self.patch_size) // 2)
        return stem

    def _make_blocks(self, i: int, rel_pos: bool) -> nn.ModuleList:
        msa = (i + 1) in self.msa_stages
        block_cls = TransformerBlock if msa else MlpBlock
        extra = dict(rel_pos_grid=self.stage_grids[i] if rel_pos else None, sr_ratio=self.sr_ratios[i],
                     rel_pos_index_buffer=self.rel_pos_index_buffer) if msa else {}
        return nn.ModuleList([
            block_cls(drop_path=dp, **self.block_kwargs[i], **extra) for dp in self.block_drop_path[i]
        ])

    def _make_merge(self, i: int) -> nn.Module:
        """The merge from stage i to stage i + 1: (B, C_i, h, w) -> (B, C_i+1, h/2, w/2)."""
        c_in, c_out = self.embed_dims[i], self.embed_dims[i + 1]
        if self.merge == 'conv':
            return ConvMerge(c_in, c_out)
        if self.merge == 'linear':
            return LinearMerge(c_in, c_out)
        return DeformableTokenMerging(c_in, c_out, backend=self.dtm_backend)

    def _make_head(self):
        self.norm = self.norm_layer(self.num_features)
        self.head = nn.Linear(self.num_features, self.num_classes) if self.num_classes > 0 else nn.Identity()

    def _init_weights(self, m: nn.Module):
        # Convs (stem, DTM) keep PyTorch's default init and conv_offset stays zero, as in the official code.
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, Attention) and m.rel_pos_grid is not None:
            trunc_normal_(m.relative_position_bias_table, std=.02)

    # ---- layout hooks ----
    def stage_merge(self, i: int) -> Optional[nn.Module]:
        raise NotImplementedError

    def stage_blocks(self, i: int) -> nn.ModuleList:
        raise NotImplementedError

    def embed_tokens(self, i: int, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        return x

    # ---- forward ----
    def check_size(self, hw: Tuple[int, int]):
        """ValueError naming the nearest valid sides unless ``hw`` are multiples of ``self.reduction``."""
        h, w = hw
        if not size_fits(h, self.reduction) or not size_fits(w, self.reduction):
            raise ValueError(f'LIT needs an input whose height and width are divisible by {self.reduction}, got '
                             f'{h}x{w}; nearest valid: height {nearest_valid(h, self.reduction)}, width '
                             f'{nearest_valid(w, self.reduction)}')

    def _check_input(self, x: torch.Tensor):
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f'LIT expects a (B, {self.in_chans}, H, W) image batch, got shape {tuple(x.shape)}')
        self.check_size(tuple(x.shape[-2:]))

    def _run_blocks(self, blocks: nn.ModuleList, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        for blk in blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting() and torch.is_grad_enabled():
                x = checkpoint(blk, x, grid, use_reentrant=False)
            else:
                x = blk(x, grid)
        return x

    def _iter_stages(self, x: torch.Tensor, last: int = 3):
        """Yield ``(i, tokens, grid)`` after each stage's blocks, up to stage ``last``.

        tokens is (B, prefix + h*w, C) with row-major grid tokens; prefix tokens exist only in the final
        stage of the PVT layout (cls token).
        """
        self._check_input(x)
        x = self.stem(x)  # B, H/P, W/P, C (P = patch_size)
        grid = tuple(x.shape[1:3])
        x = x.flatten(1, 2)  # B, N, C
        for i in range(last + 1):
            merge = self.stage_merge(i)
            if merge is not None:
                B, N, C = x.shape
                x = x.transpose(1, 2).reshape(B, C, *grid)  # B, C, h, w
                x = merge(x)  # B, C', h/2, w/2
                grid = tuple(x.shape[-2:])
                x = x.flatten(2).transpose(1, 2)  # B, N/4, C'
            x = self.embed_tokens(i, x, grid)
            x = self._run_blocks(self.stage_blocks(i), x, grid)
            yield i, x, grid

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> normalised final tokens (B, prefix + H/32 * W/32, C4)."""
        for _, x, _ in self._iter_stages(x):
            pass
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = x[:, self.num_prefix_tokens:].mean(dim=1)
        elif self.global_pool == 'token':
            x = x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ):
        """Per-stage feature maps (B, C_i, H/(4*2^i), W/(4*2^i)) for dense prediction; timm semantics.

        ``norm`` applies the final norm to the last stage's map. ``indices``: int = last n stages, or a list.
        """
        assert output_fmt in ('NCHW', 'NHWC'), 'output_fmt must be NCHW or NHWC'
        take_indices, max_index = feature_take_indices(4, indices)
        last = max_index if (stop_early or intermediates_only) else 3
        intermediates = []
        for i, x, (h, w) in self._iter_stages(x, last=last):
            if i in take_indices:
                feat = self.norm(x) if (norm and i == 3) else x
                feat = feat[:, self.num_prefix_tokens if i == 3 else 0:].reshape(x.shape[0], h, w, -1)  # B, h, w, C
                intermediates.append(feat.permute(0, 3, 1, 2).contiguous() if output_fmt == 'NCHW' else feat)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    # ---- timm interface ----
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        self.num_classes = num_classes
        if global_pool is not None:
            assert global_pool in ('', 'avg', 'token')
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Exact names of the non-1-D parameters the official recipe does not decay."""
        return {n for n, _ in self.named_parameters()
                if n == 'cls_token' or n.endswith('relative_position_bias_table')}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        """Parameter groups for layer-wise LR decay: stem, then the blocks (and merges) stage by stage."""
        raise NotImplementedError


class LITPvtStyle(LITBase):
    """LIT-Ti layout (PVT-style keys): absolute position embeddings, cls token, DTM at the start of stages 2-4."""
    num_prefix_tokens = 1

    def __init__(self, global_pool: str = 'token', **kwargs):
        super().__init__(global_pool=global_pool, **kwargs)
        self.patch_embed1 = self._make_stem()
        for i in range(1, 4):
            setattr(self, f'patch_embed{i + 1}', self._make_merge(i - 1))
        for i, (h, w) in enumerate(self.stage_grids):
            # pos_embed4 has slot 0 for the cls token in every official file, also the dense ones, which have no cls
            # token (num_prefix_tokens 0, dense.py) and leave the slot unused.
            slots = 1 if i == 3 else 0
            setattr(self, f'pos_embed{i + 1}', nn.Parameter(torch.zeros(1, slots + h * w, self.embed_dims[i])))
        if self.num_prefix_tokens:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, self.embed_dims[3]))
        for i in range(4):
            setattr(self, f'block{i + 1}', self._make_blocks(i, rel_pos=False))
        self._make_head()
        self.feature_info = [dict(num_chs=self.embed_dims[i], reduction=self.stage_strides[i],
                                  module=f'block{i + 1}') for i in range(4)]
        for i in range(4):
            trunc_normal_(getattr(self, f'pos_embed{i + 1}'), std=.02)
        if self.num_prefix_tokens:
            trunc_normal_(self.cls_token, std=.02)
        self.apply(self._init_weights)

    @property
    def stem(self):
        return self.patch_embed1

    def stage_merge(self, i):
        return getattr(self, f'patch_embed{i + 1}') if i > 0 else None

    def stage_blocks(self, i):
        return getattr(self, f'block{i + 1}')

    def embed_tokens(self, i, x, grid):
        pos_embed = getattr(self, f'pos_embed{i + 1}')
        prefix = self.num_prefix_tokens if i == 3 else 0
        # Bicubic resampling when the grid differs from the build grid (a no-op at the build size).
        pos_embed = resample_abs_pos_embed(pos_embed, new_size=list(grid), old_size=list(self.stage_grids[i]),
                                           num_prefix_tokens=prefix)
        if prefix:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)  # B, 1 + N, C
        return x + pos_embed

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        return dict(
            stem=r'^patch_embed1\.|^pos_embed1$',
            blocks=r'^block(\d+)' if coarse else [
                (r'^block(\d+)\.(\d+)', None),
                (r'^(?:patch_embed|pos_embed)(\d+)', (0,)),
                (r'^cls_token', (4, 0)),
                (r'^norm', (99999,)),
            ],
        )


class SwinStyleLayer(nn.Module):
    """Container with the official ``BasicLayer`` keys: ``blocks``, then ``downsample`` (DTM; None in stage 4).
    The model's forward loop runs them, so the pre-merge map is available as the stage's feature."""

    def __init__(self, blocks: nn.ModuleList, downsample: Optional[nn.Module]):
        super().__init__()
        self.blocks = blocks
        self.downsample = downsample


class LITSwinStyle(LITBase):
    """LIT-S/M/B layout (Swin-style keys): relative position bias, mean pooling, DTM at the end of stages 1-3."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.patch_embed = self._make_stem()
        self.layers = nn.ModuleList()
        for i in range(4):
            self.layers.append(SwinStyleLayer(self._make_blocks(i, rel_pos=True),
                                              self._make_merge(i) if i < 3 else None))
        self._make_head()
        self.feature_info = [dict(num_chs=self.embed_dims[i], reduction=self.stage_strides[i],
                                  module=f'layers.{i}') for i in range(4)]
        self.apply(self._init_weights)

    @property
    def stem(self):
        return self.patch_embed

    def stage_merge(self, i):
        return self.layers[i - 1].downsample if i > 0 else None

    def stage_blocks(self, i):
        return self.layers[i].blocks

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        return dict(
            stem=r'^patch_embed',
            blocks=r'^layers\.(\d+)' if coarse else [
                (r'^layers\.(\d+)\.downsample', (0,)),
                (r'^layers\.(\d+)\.\w+\.(\d+)', None),
                (r'^norm', (99999,)),
            ],
        )


def checkpoint_filter_fn(state_dict: Dict, model: LITBase) -> Dict[str, torch.Tensor]:
    """Adapt an official or ``lit`` state dict to ``model``: unwrap, then resample position tables whose grid
    differs (a checkpoint trained at 224 loaded into a model built for 384, say). Otherwise a no-op."""
    state_dict = unwrap_state_dict(state_dict)
    target = model.state_dict()
    out = {}
    for k, v in state_dict.items():
        if k in target and v.shape != target[k].shape:
            if k.startswith('pos_embed'):
                i = int(k[len('pos_embed'):]) - 1
                prefix = model.num_prefix_tokens if i == 3 else 0
                v = resample_abs_pos_embed(v, new_size=list(model.stage_grids[i]), num_prefix_tokens=prefix)
            elif k.endswith('relative_position_bias_table'):
                side = (math.isqrt(v.shape[0]) + 1) // 2  # checkpoints store square grids
                new_grid = model.get_submodule(k.rsplit('.', 1)[0]).rel_pos_grid
                v = resize_rel_pos_table(v, (side, side), new_grid)
            elif k.endswith('relative_position_index'):
                v = target[k]  # derived from the grid; keep the model's own
        out[k] = v
    # Integer buffers are derived (the index from the grid) or bookkeeping (BN's counter): a file without them
    # is complete, so take the model's own.
    for k, v in target.items():
        if k not in out and (k.endswith('relative_position_index') or k.endswith('num_batches_tracked')):
            out[k] = v
    return out


def pretrained_filter_fn(state_dict: Dict, model: LITBase) -> Dict[str, torch.Tensor]:
    """timm's ``pretrained=True`` route with the project's loader semantics: ``checkpoint_filter_fn`` (unwrap,
    resample position tables for another ``img_size``), then every key and shape must fit except the classifier.

    timm itself drops the classifier and loads with ``strict=False`` whenever ``num_classes`` differs from the
    cfg's 1000, which would also accept a file with missing or foreign keys (another variant, say); this check
    keeps the load strict for everything but the head, and says when the head is left freshly initialised.
    """
    out = checkpoint_filter_fn(state_dict, model)
    target = model.state_dict()
    head = {k for k in set(out) | set(target) if k.split('.')[0] == 'head'}
    missing = set(target) - set(out) - head
    unexpected = set(out) - set(target) - head
    mismatched = {k for k in set(target) & set(out) - head if tuple(target[k].shape) != tuple(out[k].shape)}
    if missing or unexpected or mismatched:
        name = getattr(model, 'pretrained_cfg', {}).get('architecture', type(model).__name__)
        problems = [f'{len(keys)} {what} keys (e.g. {sorted(keys)[0]})' for what, keys in
                    (('missing', missing), ('unexpected', unexpected), ('shape-mismatched', mismatched)) if keys]
        raise RuntimeError(f'the pretrained weights do not fit {name}: ' + '; '.join(problems) +
                           '; the released weights fit only the variant\'s own layout (no other model arguments), '
                           'or the file is not its release (damaged or foreign)')
    foreign_head = {k for k in head if k in out and (k not in target or target[k].shape != out[k].shape)}
    if foreign_head and model.num_classes:  # num_classes=0: no classifier to fill, nothing to say
        classes = out['head.weight'].shape[0] if 'head.weight' in out else '?'
        _logger.warning(f'{model.pretrained_cfg.get("architecture", "LIT")}: the pretrained classifier '
                        f'({classes} classes) is not loaded; the head of {model.num_classes} classes starts freshly '
                        f'initialised (fine-tune it)')
    return {k: v for k, v in out.items() if k not in foreign_head}


def _cfg(url: str = '', **kwargs):
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'fixed_input_size': False,
        'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225),
        'first_conv': 'patch_embed.proj', 'classifier': 'head', 'license': 'apache-2.0',
        'paper_ids': 'arXiv:2105.14217', 'paper_name': 'Less is More: Pay Less Attention in Vision Transformers',
        'origin_url': 'https://github.com/ziplab/LIT', **kwargs,
    }


# Defined before the registered functions: timm reads it at decoration time.
default_cfgs = generate_default_cfgs({
    # The released weights (spec.RELEASE_URL): timm.create_model(name, pretrained=True) downloads them into torch
    # hub's cache (TORCH_HOME), the file litcli.core.modelio.weights uses too.
    'lit_ti.in1k': _cfg(url=release_url('lit_ti'), first_conv='patch_embed1.proj'),
    'lit_s.in1k': _cfg(url=release_url('lit_s')),
    'lit_m.in1k': _cfg(url=release_url('lit_m')),
    'lit_b.in1k': _cfg(url=release_url('lit_b')),
    # The paper's ablations (section 4.2); of them only PVT-S w/ MSA (Figure 3) has released weights.
    'lit_ti_star.untrained': _cfg(first_conv='patch_embed1.proj'),
    'lit_s_star.untrained': _cfg(),
    'pvt_s_msa.in1k': _cfg(url=PVT_S_MSA_URL, first_conv='patch_embed1.proj'),
    'pvt_s_dtm.untrained': _cfg(first_conv='patch_embed1.proj'),
})

# The variants, as data (the official code's; docs/models.md). Stage-1/2 head counts are unused by MLP blocks but
# kept as in the official configs. Drop-path rates of the training recipes live in the recipes.
LIT_ARCHS = {
    'lit_ti': dict(layout=LITPvtStyle, embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3),
                   num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4), norm_eps=1e-6),
    'lit_s': dict(layout=LITSwinStyle, embed_dims=(96, 192, 384, 768), depths=(2, 2, 6, 2),
                  num_heads=(3, 6, 12, 24), mlp_ratios=(4, 4, 4, 4)),
    'lit_m': dict(layout=LITSwinStyle, embed_dims=(96, 192, 384, 768), depths=(2, 2, 18, 2),
                  num_heads=(3, 6, 12, 24), mlp_ratios=(4, 4, 4, 4)),
    'lit_b': dict(layout=LITSwinStyle, embed_dims=(128, 256, 512, 1024), depths=(2, 2, 18, 2),
                  num_heads=(4, 8, 16, 32), mlp_ratios=(4, 4, 4, 4)),
}
# The paper's ablations as configurations of the same family (Tables 3-5, Figure 3).
_PVT_S = dict(layout=LITPvtStyle, embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3), num_heads=(1, 2, 5, 8),
              mlp_ratios=(8, 8, 4, 4), norm_eps=1e-6)
LIT_ARCHS.update({
    # Table 3: LIT's architecture with uniform merging: PVT-S's strided conv (Ti*), Swin-Ti's patch merging (S*).
    'lit_ti_star': dict(LIT_ARCHS['lit_ti'], merge='conv'),
    'lit_s_star': dict(LIT_ARCHS['lit_s'], merge='linear'),
    # Table 5 / Figure 3: PVT-S with full MSA in every stage (no spatial reduction), conv merging. Remove MSA from
    # stages with msa_stages=..., e.g. msa_stages=(3, 4) is the paper's "w/o MSA in stages 1, 2" (= LIT-Ti*).
    'pvt_s_msa': dict(_PVT_S, msa_stages=(1, 2, 3, 4), merge='conv'),
    # Table 4: PVT-S (spatial-reduction attention, ratios 8/4/2/1) with DTM instead of its patch embeddings.
    'pvt_s_dtm': dict(_PVT_S, msa_stages=(1, 2, 3, 4), sr_ratios=(8, 4, 2, 1), merge='dtm'),
})


def _create_lit(variant: str, pretrained: bool = False, **kwargs) -> LITBase:
    arch = dict(LIT_ARCHS[variant])
    model_cls = arch.pop('layout')
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3))
    return build_model_with_cfg(
        model_cls, variant, pretrained,
        pretrained_filter_fn=pretrained_filter_fn,
        feature_cfg=dict(feature_cls='getter', out_indices=out_indices),
        **{**arch, **kwargs},
    )


@register_model
def lit_ti(pretrained: bool = False, **kwargs) -> LITBase:
    """LIT-Ti: 19.9M params (19.4M without head), 3.6 GMACs at 224."""
    return _create_lit('lit_ti', pretrained=pretrained, **kwargs)


@register_model
def lit_s(pretrained: bool = False, **kwargs) -> LITBase:
    """LIT-S: 28.0M params (27.2M without head), 4.1 GMACs at 224."""
    return _create_lit('lit_s', pretrained=pretrained, **kwargs)


@register_model
def lit_m(pretrained: bool = False, **kwargs) -> LITBase:
    """LIT-M: 49.4M params (48.6M without head), 8.6 GMACs at 224."""
    return _create_lit('lit_m', pretrained=pretrained, **kwargs)


@register_model
def lit_b(pretrained: bool = False, **kwargs) -> LITBase:
    """LIT-B: 87.3M params (86.3M without head), 15.0 GMACs at 224."""
    return _create_lit('lit_b', pretrained=pretrained, **kwargs)


@register_model
def lit_ti_star(pretrained: bool = False, **kwargs) -> LITBase:
    """LIT-Ti* (Table 3): LIT-Ti with PVT-S's uniform conv merging instead of DTM."""
    return _create_lit('lit_ti_star', pretrained=pretrained, **kwargs)


@register_model
def lit_s_star(pretrained: bool = False, **kwargs) -> LITBase:
    """LIT-S* (Table 3): LIT-S with Swin-Ti's uniform patch merging instead of DTM."""
    return _create_lit('lit_s_star', pretrained=pretrained, **kwargs)


@register_model
def pvt_s_msa(pretrained: bool = False, **kwargs) -> LITBase:
    """PVT-S w/ MSA (Table 5, Figure 3): full self-attention in all stages; pass msa_stages to remove some."""
    return _create_lit('pvt_s_msa', pretrained=pretrained, **kwargs)


@register_model
def pvt_s_dtm(pretrained: bool = False, **kwargs) -> LITBase:
    """PVT-S + DTM (Table 4): PVT-S's spatial-reduction attention with DTM merging."""
    return _create_lit('pvt_s_dtm', pretrained=pretrained, **kwargs)

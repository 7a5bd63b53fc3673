"""Parameter and FLOP counts in the vision papers' convention, and where the cost goes (``lit flops``, ``lit bench``).

Convention (docs/flops-and-benchmarks.md): "FLOPs" in the LIT/Swin/PVT/DeiT papers
are multiply-accumulates (MACs), which is what fvcore counts. ``torch.utils.flop_counter`` counts 2 x MAC.

One counting rule for both DTM backends, matching the paper:
- the deformable 2x2/s2 conv counts as a plain 2x2/s2 conv: numel(output) * C_in * 2 * 2 MACs. The pure
  backend runs it as one matmul over the gathered taps, which fvcore's linear handle counts the same; the torchvision
  op gets ``deform_conv_flop_jit`` (its TorchScript schema is (input, weight, offset, mask, bias, ...), so
  the weight is ``inputs[1]``);
- its offset conv counts as a normal conv and its BatchNorm at 2 per element (fvcore's eval-mode rule,
  which is also what the official analytic formula uses);
- bilinear sampling is NOT in the total (the paper leaves it out). It is reported on its own line, computed
  as fvcore counts ``aten::grid_sampler`` (4 per sampled value), for either backend, so nothing is hidden.

fvcore has no handle for ``aten::scaled_dot_product_attention``; ``sdpa_flop_jit`` counts its two matmuls,
so the fused and the explicit attention paths give the same count.

Measured at 224: 3.625 / 4.089 / 8.613 / 15.056 GMACs (Ti/S/M/B) against the paper's 3.6 / 4.1 / 8.6 / 15.0.
The paper rounds the official analytic formula (4.082 / 8.599 / 15.037 for S/M/B), which counts LayerNorm at
1 MAC per element (fvcore: 5) and the offset conv with 12 output channels (real: 8); re-weighting those two
terms turns our count into the official one (tests/test_flops.py). fvcore is optional: without it the same
numbers come from ``FlopCounterMode`` (halved), which ignores norms, so totals are slightly lower.
"""
import warnings
from dataclasses import dataclass, field
from math import prod
from typing import Dict, List, Optional, Sequence, Tuple

from litcli.core.errors import UsageError


# The paper's Table 2 (params in M, as printed; FLOPs = GMACs at 224x224).
PAPER = {
    'lit_ti': dict(params_m=19, gmacs=3.6), 'lit_s': dict(params_m=27, gmacs=4.1),
    'lit_m': dict(params_m=48, gmacs=8.6), 'lit_b': dict(params_m=86, gmacs=15.0),
    'resnet50': dict(params_m=26, gmacs=4.1), 'resnet101': dict(params_m=45, gmacs=7.9),
    'deit_small_patch16_224': dict(params_m=22, gmacs=4.6), 'deit_base_patch16_224': dict(params_m=86, gmacs=17.5),
    'pvt_v2_b2': dict(params_m=25, gmacs=4.0),  # PVTv2 paper; LIT's Table 2 compares with PVT v1 (not in timm)
    'swin_tiny_patch4_window7_224': dict(params_m=29, gmacs=4.5),
    'swin_small_patch4_window7_224': dict(params_m=50, gmacs=8.7),
    'swin_base_patch4_window7_224': dict(params_m=88, gmacs=15.4),
    # Ablations (Tables 3-5), default configurations.
    'lit_ti_star': dict(params_m=19, gmacs=3.6), 'lit_s_star': dict(params_m=27, gmacs=4.1),
    'pvt_s_msa': dict(params_m=20, gmacs=8.4), 'pvt_s_dtm': dict(params_m=25, gmacs=3.8),
    'swin_t_dtm': dict(params_m=28, gmacs=4.5),
}
# Table 5: PVT-S w/ MSA with MSA removed from some stages -> paper cell (params M, None where not printed).
PAPER_MSA_REMOVED = {(1,): dict(params_m=None, gmacs=4.5), (1, 2): dict(params_m=19, gmacs=3.6),
                     (1, 2, 3): dict(params_m=17, gmacs=3.0), (1, 2, 3, 4): dict(params_m=14, gmacs=2.8)}
STAGE_PARTS = ('mlp', 'attn_linear', 'attn_matmul', 'dtm', 'other')
# fvcore operator names (and FlopCounterMode op names) that are attention score / mixing matmuls in
# timm models and LIT; linears (qkv, proj, MLP) are 'linear' / 'addmm'.
ATTN_MATMUL_OPS = ('matmul', 'bmm', 'einsum', 'scaled_dot_product_attention',
                   '_scaled_dot_product_flash_attention_for_cpu', '_scaled_dot_product_efficient_attention',
                   '_scaled_dot_product_flash_attention', '_scaled_dot_product_cudnn_attention')


# ---------------------------------------------------------------- op handles
def sdpa_flop_jit(inputs, outputs) -> int:
    """fvcore handle for aten::scaled_dot_product_attention: q@k^T (N*M*d) plus attn@v (N*M*d_v) per batch/head."""
    from fvcore.nn.jit_handles import get_shape
    q, k, v = (get_shape(t) for t in inputs[:3])  # (..., N, d), (..., M, d), (..., M, d_v)
    return prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


def deform_conv_flop_jit(inputs, outputs) -> int:
    """fvcore handle for torchvision::deform_conv2d, counted as a plain conv (the paper's rule).

    Schema order is (input, weight, offset, mask, bias, ...): the weight is inputs[1], not inputs[2].
    """
    from fvcore.nn.jit_handles import get_shape
    w = get_shape(inputs[1])  # C_out, C_in/groups, kh, kw
    return prod(get_shape(outputs[0])) * w[1] * w[2] * w[3]


def _torch_custom_mapping():
    """FlopCounterMode formulas (2 x MAC) for what it misses on CPU: CPU flash SDPA and torchvision's deform op."""
    import torch
    from torch.utils.flop_counter import sdpa_flop_count

    def sdpa_cpu(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    def deform_conv(input_shape, weight_shape, *args, out_shape=None, **kwargs):
        return 2 * prod(out_shape) * prod(weight_shape[1:])

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: sdpa_cpu}
    try:
        import torchvision  # noqa: F401  (registers torch.ops.torchvision)
        mapping[torch.ops.torchvision.deform_conv2d] = deform_conv
    except (ImportError, AttributeError, RuntimeError):
        pass
    return mapping


# ---------------------------------------------------------------- counting
@dataclass
class Count:
    """MACs of one forward pass. ``by_module`` is cumulative (a module includes its children; '' is the model)."""
    total: int
    by_module: Dict[str, int]
    by_operator: Dict[str, int]
    unsupported_ops: Dict[str, int]  # op -> number of calls counted as 0
    counter: str  # 'fvcore' | 'FlopCounterMode/2'
    sampling: int = 0  # DTM bilinear sampling MACs, not in ``total``
    notes: List[str] = field(default_factory=list)
    analysis: object = None  # the fvcore FlopCountAnalysis (for its module table), None with FlopCounterMode


def fvcore_available() -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # `import fvcore.nn` calls torch.jit.script, which warns
            import fvcore.nn  # noqa: F401
        return True
    except ImportError:
        return False


def _dtm_sampling_hooks(model, store: List[int]):
    """Record the bilinear-sampling cost of every DTM, for either backend: it samples (B, C_in, 2Ho, 2Wo)
    values, as many as its (even-sized) input holds, at 4 MACs each (fvcore's grid_sampler rule)."""
    from litcli.models.dtm import DeformConv2x2

    def hook(module, args):
        store.append(4 * int(args[0].numel()))  # int(): numel() may be a traced tensor under jit trace
    return [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, DeformConv2x2)]


def count_macs(model, x, counter: str = 'auto') -> Count:
    """Count the MACs of ``model(x)`` with fvcore (default when installed) or FlopCounterMode (halved)."""
    import torch
    if counter == 'auto':
        counter = 'fvcore' if fvcore_available() else 'torch'
    sampling: List[int] = []
    hooks = _dtm_sampling_hooks(model, sampling)
    try:
        with torch.no_grad():
            count = _count_fvcore(model, x) if counter == 'fvcore' else _count_torch(model, x)
    finally:
        for h in hooks:
            h.remove()
    n_dtm = _n_dtm(model)
    passes = len(sampling) // n_dtm if n_dtm else 0  # the hooks fire once per forward the counter runs
    count.sampling = sum(sampling) // passes if passes else 0
    return count


def _n_dtm(model) -> int:
    from litcli.models.dtm import DeformConv2x2
    return sum(isinstance(m, DeformConv2x2) for m in model.modules())


def _count_fvcore(model, x) -> Count:
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # jit.script deprecation on import, tracer warnings while tracing
        from fvcore.nn import FlopCountAnalysis
        fa = FlopCountAnalysis(model, x)
        fa.set_op_handle('aten::scaled_dot_product_attention', sdpa_flop_jit,
                         'torchvision::deform_conv2d', deform_conv_flop_jit)
        if _n_dtm(model):
            # DTM sampling is reported separately (Count.sampling), for both backends alike.
            fa.set_op_handle('aten::embedding_bag', lambda inputs, outputs: 0)  # the pure backend's taps
        fa.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings('none')
        total = fa.total()
        by_module = dict(fa.by_module())
        by_operator = {k: v for k, v in fa.by_operator().items() if v}
        unsupported = dict(fa.unsupported_ops())
    return Count(int(total), {k: int(v) for k, v in by_module.items()}, by_operator, unsupported, 'fvcore',
                 analysis=fa)


def _count_torch(model, x) -> Count:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False, depth=None, custom_mapping=_torch_custom_mapping()) as mode:
        model(x)
    counts = mode.get_flop_counts()  # {'Global': {op: flops}, 'RootClass.sub.mod': {...}}
    root = type(model).__name__
    by_module = {}
    for key, ops in counts.items():
        name = '' if key in ('Global', root) else key[len(root) + 1:] if key.startswith(root + '.') else key
        by_module[name] = sum(ops.values()) // 2
    by_operator: Dict[str, int] = {}
    for op, flops in counts.get('Global', {}).items():
        name = str(op).split('.')[-1]
        by_operator[name] = by_operator.get(name, 0) + flops // 2
    return Count(mode.get_total_flops() // 2, by_module, by_operator, {}, 'FlopCounterMode/2',
                 notes=['fvcore is not installed: counted with torch FlopCounterMode / 2, which ignores norms '
                        "(pip install 'litcli[flops]' for the paper's counter)"])


# ---------------------------------------------------------------- attribution
def lit_breakdown(model, count: Count) -> List[Dict]:
    """Per-stage MACs of a LIT model, split into MLP / attention linears (qkv, proj) / attention matmuls /
    DTM / other (norms, position embeddings).

    Rows: 'stem' (patch embed), 'stage 1'..'stage 4', 'head' (final norm, pooling, classifier). The DTM that
    produces stage i's tokens is part of stage i (``model.stage_merge(i)``), as in the paper's stage table.
    """
    names = {id(m): n for n, m in model.named_modules()}
    mac = lambda m: count.by_module.get(names[id(m)], 0) if m is not None else 0  # noqa: E731
    rows = [dict(name='stem', **{p: 0 for p in STAGE_PARTS}, total=mac(model.stem))]
    rows[0]['other'] = rows[0]['total']
    for i in range(4):
        row = {p: 0 for p in STAGE_PARTS}
        row['dtm'] = mac(model.stage_merge(i))
        blocks_total = 0
        for blk in model.stage_blocks(i):
            blocks_total += mac(blk)
            row['mlp'] += mac(blk.mlp)
            attn = getattr(blk, 'attn', None)
            if attn is not None:
                # Submodules (qkv or q/kv, proj, PVT's sr conv + norm) are the linear part; what the attention
                # module computes itself is its two matmuls (and the softmax, which is not counted).
                linear = sum(mac(child) for child in attn.children())
                row['attn_linear'] += linear
                row['attn_matmul'] += mac(attn) - linear
        row['other'] = blocks_total - row['mlp'] - row['attn_linear'] - row['attn_matmul']
        row['total'] = sum(row[p] for p in STAGE_PARTS)
        rows.append(dict(name=f'stage {i + 1}', **row))
    # Whatever is left (final norm, pooling, classifier; pos-embed adds are elementwise, i.e. uncounted).
    rest = count.total - sum(r['total'] for r in rows)
    rows.append(dict(name='head', **{p: 0 for p in STAGE_PARTS}, total=rest))
    rows[-1]['other'] = rest
    return rows


# ---------------------------------------------------------------- models
def analyse_model(name: str, img_size: Tuple[int, int] = (224, 224), batch: int = 1, counter: str = 'auto',
                  keep_analysis: bool = True, **model_kwargs) -> Dict:
    """Params and MACs of one timm model (LIT or not) at one input size; LIT models get the per-stage split.

    ``result['_count']`` keeps the raw count (and, with ``keep_analysis``, fvcore's analysis, which holds the
    model: a sweep over large models drops it to save memory).
    """
    import torch

    from litcli.core.modelio.factory import create_model, param_counts
    from litcli.models.lit import LITBase
    # Each model is built for the size it is counted at (CNNs take any size as they are).
    model = create_model(name, optional=dict(img_size=img_size), **model_kwargs).eval()
    x = torch.randn(batch, 3, *img_size)
    count = count_macs(model, x, counter)
    result = dict(model=name, img_size=list(img_size), batch=batch, counter=count.counter, **param_counts(model),
                  macs=count.total, attn_matmul_macs=sum(count.by_operator.get(op, 0) for op in ATTN_MATMUL_OPS),
                  dtm_sampling_macs=count.sampling, by_operator=count.by_operator,
                  unsupported_ops=count.unsupported_ops, notes=count.notes, stages=None)
    if isinstance(model, LITBase):
        result['stages'] = lit_breakdown(model, count)
    if tuple(img_size) == (224, 224) and name in PAPER:
        result['paper'] = PAPER[name]
        if name == 'pvt_s_msa' and 'msa_stages' in model_kwargs:
            removed = tuple(s for s in (1, 2, 3, 4) if s not in model_kwargs['msa_stages'])
            result['paper'] = PAPER_MSA_REMOVED.get(removed) if removed else PAPER[name]
    if model_kwargs:
        result['model_kwargs'] = {k: list(v) if isinstance(v, tuple) else v for k, v in model_kwargs.items()}
    if not keep_analysis:
        count.analysis = None
    result['_count'] = count  # for the module table; dropped from JSON
    return result


def flops_report(variant: str, img_sizes: Sequence[Tuple[int, int]] = ((224, 224),), batch: int = 1,
                 compare: Sequence[str] = (), counter: str = 'auto', keep_analysis: bool = False,
                 model_kwargs: Optional[Dict] = None) -> Dict:
    """Everything ``lit flops`` prints: the LIT variant (built with ``model_kwargs``) and each compared model at
    every size."""
    from litcli.core.modelio.factory import check_model_names

    if batch < 1:
        raise UsageError(f'--batch must be a positive integer, got {batch}')
    names = check_model_names([variant, *compare])
    if counter == 'fvcore' and not fvcore_available():
        raise UsageError("--counter fvcore needs fvcore: pip install 'litcli[flops]'")
    results = []
    for hw in img_sizes:
        for name in names:
            try:
                kwargs = (model_kwargs or {}) if name == variant else {}
                results.append(analyse_model(name, tuple(hw), batch, counter, keep_analysis, **kwargs))
            except Exception as e:  # a compared model that cannot run at this size is reported, not fatal
                if name == variant:
                    raise
                results.append(dict(model=name, img_size=list(hw), batch=batch, error=str(e).splitlines()[0]))
    return dict(unit='MACs', batch=batch, variant=variant, compare=list(compare),
                img_sizes=[list(s) for s in img_sizes], results=results)

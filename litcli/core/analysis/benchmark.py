"""Throughput and memory of LIT against other timm models, measured side by side (``lit bench``).

Method (timm's benchmark method, made robust to shared machines): every model is built, warmed up, then timed
*interleaved* (A B C A B C ...) so a slow spell of the machine hits all models alike; each model's figure is the
median over repeats, with the min-max spread. Train mode times forward + backward + optimizer step (AdamW).
Peak memory is ``torch.cuda.max_memory_allocated`` during one step on CUDA; on CPU it is the growth of the peak
resident set during one step (sampled every millisecond), in a fresh process per model so that no other
model's memory or allocator cache is counted, with large blocks served by mmap so freed memory leaves the
resident set. The device's matmul rate is measured by the same command (a large GEMM), so the share of it each model
achieves is comparable within one run.

The dense models (``lit bench --task``: a RetinaNet / Mask R-CNN / Semantic FPN LIT beside its ResNet-50
counterpart) go through the same loop: a detector's step is its whole forward on a list of images (torchvision's
transform, built not to resize them, and the post-processing included) or, in train mode, its loss on fixed
synthetic boxes (and masks); a Semantic FPN's is its forward on the batch, or its loss on random labels.
"""
import dataclasses
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from litcli.core.errors import LitError


@dataclass
class BenchConfig:
    mode: str = 'infer'  # infer | train
    batch_size: int = 16
    img_size: Union[int, Tuple[int, int]] = 224  # N (square) or (H, W) for the dense models
    device: Optional[str] = None  # cpu | cuda | cuda:N; None: CUDA when available (core.runtime.resolve_device)
    amp: Optional[str] = None  # autocast dtype: bfloat16 | float16 (or bf16 | fp16); None: full precision
    compile: bool = False
    channels_last: bool = False
    threads: Optional[int] = None
    warmup: int = 2
    repeats: int = 7
    memory: bool = True
    gemm_size: int = 2048
    # Train mode builds every model with this stochastic-depth rate, so all pay the same regularisation cost
    # (timm's defaults differ: Swin-T 0.1, LIT 0). 0.1 is timm's Swin-T default.
    drop_path: float = 0.1
    profile: bool = False  # also profile one step per model: time by kind of op


@dataclass
class ModelBench:
    name: str
    batch_size: int
    times: List[float] = field(default_factory=list)
    error: Optional[str] = None
    gmacs: Optional[float] = None  # per image, forward
    peak_mem_mb: Optional[float] = None
    profile: Optional[Dict] = None

    @property
    def median_s(self) -> float:
        return statistics.median(self.times)

    def summary(self, gemm_gflops: Optional[float], mode: str) -> Dict:
        if self.error:
            return {'model': self.name, 'batch_size': self.batch_size, 'error': self.error}
        med = self.median_s
        row = {'model': self.name, 'batch_size': self.batch_size, 'img_per_s': self.batch_size / med,
               'img_per_s_min': self.batch_size / max(self.times), 'img_per_s_max': self.batch_size / min(self.times),
               'ms_per_step': 1000 * med, 'repeats': len(self.times), 'peak_mem_mb': self.peak_mem_mb,
               'gmacs_per_img': self.gmacs}
        if self.profile is not None:
            row['profile'] = self.profile
        if self.gmacs is not None:
            # forward = 2 x MACs FLOPs; backward costs about twice the forward (the usual 3x rule for training)
            flops = 2 * self.gmacs * 1e9 * self.batch_size * (3 if mode == 'train' else 1)
            row['achieved_gflops'] = flops / med / 1e9
            row['share_of_gemm'] = row['achieved_gflops'] / gemm_gflops if gemm_gflops else None
        return row


def interleaved_times(steps: Sequence[Callable[[], None]], warmup: int, repeats: int,
                      clock: Callable[[], float] = time.perf_counter) -> List[List[float]]:
    """Warm every step up, then time them A B C A B C ...; returns one list of seconds per step."""
    for step in steps:
        for _ in range(warmup):
            step()
    times = [[] for _ in steps]
    for _ in range(repeats):
        for i, step in enumerate(steps):
            t0 = clock()
            step()
            times[i].append(clock() - t0)
    return times


def is_oom(exc: BaseException) -> bool:
    import torch
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and 'out of memory' in str(exc).lower())


def resolve_bench_config(cfg: BenchConfig) -> BenchConfig:
    """``cfg`` with its device and autocast dtype resolved the way every command resolves them
    (``core.runtime``: CUDA when available; float16 refused on the CPU), the dtype under its canonical name
    (bfloat16 | float16 | None); an unknown mode, device or dtype is a one-line LitError. Idempotent."""
    from litcli.core.runtime import dtype_name, resolve_amp, resolve_device
    if cfg.mode not in ('infer', 'train'):
        raise LitError(f"--mode must be infer or train, got {cfg.mode!r}")
    device = resolve_device(cfg.device)
    amp = resolve_amp(device, enabled=cfg.amp is not None, dtype=cfg.amp)
    return dataclasses.replace(cfg, device=str(device), amp=dtype_name(amp))


def amp_dtype(cfg: BenchConfig):
    """The torch autocast dtype of a resolved ``cfg`` (None: full precision)."""
    from litcli.core.runtime import AMP_DTYPES
    return AMP_DTYPES[cfg.amp] if cfg.amp else None


def _autocast(cfg: BenchConfig):
    import torch

    from litcli.core.runtime import autocast_context
    return autocast_context(torch.device(cfg.device), amp_dtype(cfg))()


def size_text(img_size: Union[int, Tuple[int, int]]) -> str:
    """224 -> '224x224', (320, 512) -> '320x512'."""
    h, w = image_hw(img_size)
    return f'{h}x{w}'


def image_hw(img_size: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    return (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)


def build_model(name: str, cfg: BenchConfig, img_size: Union[int, Tuple[int, int]]):
    """A timm model at ``img_size`` (when its constructor takes one) or a dense model (its detectors' transform set
    not to resize an input of ``img_size``) on the bench device; in train mode with ``cfg.drop_path`` (when it has
    stochastic depth)."""
    import torch

    from litcli.core.analysis.dense_flops import create_dense, family_of, is_dense_name
    from litcli.core.modelio.factory import create_model
    from litcli.models.dense_zoo import DENSE_MODELS
    drop_path = dict(drop_path_rate=cfg.drop_path) if cfg.mode == 'train' else {}
    if is_dense_name(name):
        h, w = image_hw(img_size)
        kwargs = dict(img_scale=(max(h, w), min(h, w))) if family_of(name) != 'semantic_fpn' else {}
        if name in DENSE_MODELS:  # LIT; the ResNet-50 baselines have no stochastic depth
            kwargs.update(drop_path)
        model = create_dense(name, **kwargs).to(cfg.device)
    else:
        model = create_model(name, optional=dict(img_size=img_size, **drop_path)).to(cfg.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def dense_family(model) -> Optional[str]:
    """'retinanet' | 'mask_rcnn' | 'semantic_fpn' for a dense model (LIT's or torchvision's), None for a
    classifier."""
    from torchvision.models.detection import MaskRCNN, RetinaNet

    from litcli.models.segmentation import SemanticFPN
    for cls, family in ((RetinaNet, 'retinanet'), (MaskRCNN, 'mask_rcnn'), (SemanticFPN, 'semantic_fpn')):
        if isinstance(model, cls):
            return family
    return None


def synthetic_targets(family: str, batch_size: int, img_size: Tuple[int, int], device,
                      num_classes: Optional[int] = None) -> List:
    """Training targets that every model of ``family`` takes: three fixed boxes per image (labels 1-3, valid with
    or without a background class; masks filling the boxes for Mask R-CNN), or, for Semantic FPN, seeded random
    labels (B, H, W) below ``num_classes``."""
    import torch
    h, w = img_size
    if family == 'semantic_fpn':
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, num_classes, (batch_size, h, w), generator=g).to(device)
    fractions = torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.4, 0.3, 0.9, 0.9], [0.2, 0.5, 0.45, 0.95]])
    boxes = (fractions * torch.tensor([w, h, w, h])).round()
    target = {'boxes': boxes.to(device), 'labels': torch.tensor([1, 2, 3], device=device)}
    if family == 'mask_rcnn':
        masks = torch.zeros(len(boxes), h, w, dtype=torch.uint8)
        for mask, (x1, y1, x2, y2) in zip(masks, boxes.long().tolist()):
            mask[y1:y2, x1:x2] = 1
        target['masks'] = masks.to(device)
    return [dict(target) for _ in range(batch_size)]


def make_step(model, cfg: BenchConfig, batch_size: int, img_size: Union[int, Tuple[int, int]]) -> Callable[[], None]:
    """One timed unit: an inference forward, or forward + backward + AdamW step. A classifier's loss is the
    cross-entropy on random labels; a dense model's the sum of its losses on ``synthetic_targets``."""
    import torch
    dev = torch.device(cfg.device)
    family = dense_family(model)
    h, w = image_hw(img_size)
    x = torch.rand(batch_size, 3, h, w, device=dev) if family else torch.randn(batch_size, 3, h, w, device=dev)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    inputs = list(x) if family in ('retinanet', 'mask_rcnn') else x  # the detectors take a list of 0-1 images
    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
    if cfg.mode == 'infer':
        model.eval()
        fn = torch.compile(model) if cfg.compile else model

        def step():
            with torch.inference_mode(), _autocast(cfg):
                fn(inputs)
            sync()
        return step
    model.train()
    fn = torch.compile(model) if cfg.compile else model
    if family:
        targets = synthetic_targets(family, batch_size, (h, w), dev,
                                    model.num_classes if family == 'semantic_fpn' else None)
        compute_loss = lambda: sum(fn(inputs, targets).values())  # noqa: E731
    else:
        target = torch.randint(0, model.num_classes, (batch_size,), device=dev)
        compute_loss = lambda: torch.nn.functional.cross_entropy(fn(x), target)  # noqa: E731
    from litcli.core.training.optim import create_optimizer
    opt = create_optimizer(model, lr=1e-4, weight_decay=0.05, offset_lr=1e-6)  # as `lit train`: fused AdamW
    scaler = torch.amp.GradScaler(dev.type, enabled=amp_dtype(cfg) is torch.float16)

    def step():
        with _autocast(cfg):
            loss = compute_loss()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        sync()
    return step


def gemm_gflops(cfg: BenchConfig, repeats: int = 5) -> float:
    """The device's dense matmul rate: an n^3 GEMM in the bench precision (fp32, or that of --amp-dtype)."""
    import torch
    dtype = amp_dtype(cfg) or torch.float32
    n = cfg.gemm_size
    a = torch.randn(n, n, device=cfg.device, dtype=dtype)
    b = torch.randn(n, n, device=cfg.device, dtype=dtype)
    sync = torch.cuda.synchronize if torch.device(cfg.device).type == 'cuda' else (lambda: None)

    def step():
        torch.mm(a, b)
        sync()
    times = interleaved_times([step], warmup=2, repeats=repeats)[0]
    return 2 * n ** 3 / statistics.median(times) / 1e9


def _rss_mb() -> float:
    import os
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20


def _cpu_peak_rss_worker(name, cfg, batch_size, img_size, queue):
    """In a fresh process: resident memory sampled every millisecond during one step, minus the level before."""
    import threading

    import torch
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model = build_model(name, cfg, img_size)
    step = make_step(model, cfg, batch_size, img_size)
    before = peak = _rss_mb()
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_mb())
            done.wait(0.001)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    step()
    done.set()
    sampler.join()
    queue.put(max(peak, _rss_mb()) - before)


def peak_memory_mb(name: str, model, step, cfg: BenchConfig, batch_size: int, img_size: int) -> Optional[float]:
    """Peak memory of one step: CUDA max_memory_allocated, or CPU peak-RSS growth in a fresh process."""
    import torch
    if torch.device(cfg.device).type == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        return torch.cuda.max_memory_allocated() / 2 ** 20
    import multiprocessing as mp
    import os
    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    proc = ctx.Process(target=_cpu_peak_rss_worker, args=(name, cfg, batch_size, img_size, queue))
    # glibc keeps freed heap blocks resident, so without this the resident set shows the allocator's history
    # rather than live memory (measured: LIT-S at 1024 px 860 MB vs 275 MB). Blocks >= 1 MiB come from mmap in
    # the measuring process and go back to the OS when freed; the same rule applies to every model.
    saved = os.environ.get('MALLOC_MMAP_THRESHOLD_')
    os.environ['MALLOC_MMAP_THRESHOLD_'] = str(1 << 20)
    try:
        proc.start()
    finally:
        if saved is None:
            del os.environ['MALLOC_MMAP_THRESHOLD_']
        else:
            os.environ['MALLOC_MMAP_THRESHOLD_'] = saved
    proc.join()
    return queue.get() if proc.exitcode == 0 and not queue.empty() else None


# Kinds of op for the profile breakdown, matched in order against the profiler's op names (ATen on CPU, kernel
# names on CUDA); the first pattern found in the lowercased name decides.
OP_KINDS = (
    # conv before matmul: cuDNN's conv kernels are "implicit gemm"s
    ('conv', ('convolution', 'conv2d', 'convolve', 'fprop', 'dgrad', 'wgrad')),
    ('matmul', ('aten::mm', 'aten::addmm', 'aten::bmm', 'aten::baddbmm', 'aten::addbmm', 'gemm', 'gemv', 'cutlass',
                'scaled_dot_product', 'sdpa', 'flash', 'fmha', 'efficient_attention', 'sm80_', 'sm90_')),
    # DTM's bilinear sampling, and index gathers such as the relative-position bias's
    ('gather', ('embedding_bag', 'index_select', 'grid_sampler', 'index_add', 'gather', 'scatter')),
    ('norm', ('layer_norm', 'batch_norm')),
    ('act+softmax', ('gelu', 'softmax', 'silu', 'relu')),
    ('copy', ('copy_', 'clone', 'cat', 'stack', 'contiguous', '_to_copy')),
    ('optim', ('adam', 'lerp', 'addcdiv', 'addcmul', 'sqrt')),
)


def op_kind(name: str) -> str:
    lowered = name.lower()
    for kind, patterns in OP_KINDS:
        if any(p in lowered for p in patterns):
            return kind
    return 'other'


def profile_step(step: Callable[[], None], device: str, top: int = 6) -> Dict:
    """One step under torch.profiler: self time (device time on CUDA) per kind of op, as ms and share, plus the
    ``top`` ops. Self times do not double count nested ops, so the kinds add up to the step."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == 'cuda'
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
    times: Dict[str, float] = {}
    for event in prof.key_averages():
        us = event.self_device_time_total if cuda else event.self_cpu_time_total
        if us > 0 and not event.key.startswith(('ProfilerStep', 'autograd::engine', 'Optimizer.')):
            times[event.key] = times.get(event.key, 0.0) + us / 1000
    total = sum(times.values()) or 1.0
    kinds: Dict[str, float] = {}
    for name, ms in times.items():
        kind = op_kind(name)
        kinds[kind] = kinds.get(kind, 0.0) + ms
    ranked = sorted(times.items(), key=lambda kv: -kv[1])[:top]
    return {'total_ms': total, 'kinds_ms': dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
            'kinds_share': {k: v / total for k, v in kinds.items()},
            'top_ops': [{'op': name, 'ms': ms, 'share': ms / total} for name, ms in ranked]}


def bench_models(names: Sequence[str], cfg: BenchConfig, img_size: Union[int, Tuple[int, int], None] = None,
                 count_macs: bool = True, log: Callable[[str], None] = lambda s: None) -> Dict:
    """Build, warm up and time ``names`` interleaved at one input size; OOM halves a model's batch (down to 1)
    and is recorded instead of crashing."""
    import gc

    import torch
    cfg = resolve_bench_config(cfg)
    img_size = img_size or cfg.img_size
    entries = []
    for name in names:
        entry = ModelBench(name, cfg.batch_size)
        while True:
            try:
                model = build_model(name, cfg, img_size)
                step = make_step(model, cfg, entry.batch_size, img_size)
                step()  # fails fast here on OOM / unsupported size
                break
            except Exception as e:  # noqa: BLE001 (reported per model, never fatal for the comparison)
                model = step = None
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if is_oom(e) and entry.batch_size > 1:
                    entry.batch_size //= 2
                    log(f'{name}: out of memory at {size_text(img_size)}, retrying with batch {entry.batch_size}')
                    continue
                entry.error = 'OOM' if is_oom(e) else str(e).strip().splitlines()[0][:200]
                break
        entries.append((entry, model, step))
    live = [(e, m, s) for e, m, s in entries if e.error is None]
    log(f'timing {len(live)} models at {size_text(img_size)}: {cfg.warmup} warm-up, {cfg.repeats} interleaved '
        f'repeats')
    for (entry, _, _), times in zip(live, interleaved_times([s for _, _, s in live], cfg.warmup, cfg.repeats)):
        entry.times = times
    if cfg.memory:
        for entry, model, step in live:
            entry.peak_mem_mb = peak_memory_mb(entry.name, model, step, cfg, entry.batch_size, img_size)
    if cfg.profile:
        for entry, _, step in live:
            try:
                entry.profile = profile_step(step, cfg.device)
            except Exception as e:  # noqa: BLE001 (a profiler failure must not discard the timings)
                entry.profile = {'error': str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__}
                log(f'{entry.name}: profiling failed: {entry.profile["error"]}')
    if count_macs:
        from litcli.core.analysis.dense_flops import analyse_dense_model, is_dense_name
        from litcli.core.analysis.flops import analyse_model
        for entry, _, _ in live:
            try:
                if is_dense_name(entry.name):  # the network on the (padded) tensor, batch 1
                    entry.gmacs = analyse_dense_model(entry.name, image_hw(img_size))['macs']['total'] / 1e9
                else:
                    entry.gmacs = analyse_model(entry.name, image_hw(img_size), keep_analysis=False)['macs'] / 1e9
            except Exception:  # noqa: BLE001 (a model fvcore cannot trace gets no MAC figure)
                entry.gmacs = None
    return {'img_size': img_size, 'entries': [e for e, _, _ in entries]}


def run_bench(variant: str, compare: Sequence[str], cfg: BenchConfig,
              sizes: Sequence[Union[int, Tuple[int, int]]] = (),
              count_macs: bool = True, log: Callable[[str], None] = print) -> Dict:
    """Everything ``lit bench`` reports, as plain data."""
    import torch
    cfg = resolve_bench_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    names = [variant, *compare]
    gemm = gemm_gflops(cfg)
    log(f'device matmul rate: {gemm:.1f} GFLOP/s ({cfg.gemm_size}^3 GEMM, '
        f'{cfg.amp or "float32"}, {torch.get_num_threads()} threads)')
    results = []
    for size in (sizes or [cfg.img_size]):
        block = bench_models(names, cfg, size, count_macs, log)
        rows = [e.summary(gemm, cfg.mode) for e in block['entries']]
        first = rows[0].get('img_per_s')
        for row in rows:
            if first and row.get('img_per_s'):
                row['ratio_to_first'] = row['img_per_s'] / first
        results.append({'img_size': size, 'rows': rows})
    return {'mode': cfg.mode, 'device': cfg.device, 'amp': cfg.amp or 'float32', 'threads': torch.get_num_threads(),
            'batch_size': cfg.batch_size, 'gemm_gflops': gemm, 'warmup': cfg.warmup, 'repeats': cfg.repeats,
            'compile': cfg.compile, 'channels_last': cfg.channels_last,
            'drop_path': cfg.drop_path if cfg.mode == 'train' else None, 'profile': cfg.profile,
            'results': results}

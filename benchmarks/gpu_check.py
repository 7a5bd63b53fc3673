#!/usr/bin/env python3
"""Every GPU claim of lit verified in one call: `make gpu-check PY=python3` on a lent CUDA machine.

Uses the Python it runs under as it is (installs nothing; runs the package from this source tree), runs each part
in its own process with its own time limit inside one overall budget (default 450 s), records pass / fail / skip /
timeout and the figures of every part in a JSON file (--out) and ends with one table. A failing or hung part is
recorded and the next one runs. Parts whose optional package is missing are skipped with the reason.

    python benchmarks/gpu_check.py                            # all parts on CUDA, report in runs/gpu-check/
    python benchmarks/gpu_check.py --parts tests,dtm --out r.json
    python benchmarks/gpu_check.py --quick                    # no torch.compile parts, fewer repeats
    python benchmarks/gpu_check.py --device cpu --parts env,dtm,resume   # CPU dry run at tiny sizes

Parts, in order (--list prints them): env, tests (the gpu-marked pytest tests), dtm (torchvision CUDA vs pure
parity of values and gradients, and speed), dtm-share (the DTM's share of a LIT-S bf16 training step with each
backend: which one should be the CUDA default), amp (every variant forward+backward under bf16 and fp16),
speed-infer / speed-train (LIT-S vs Swin-T, bf16, `lit bench`, MFU against a bf16 GEMM measured in the same
part), mem1024 (peak memory at 1024x1024), resume (1-process torchrun `lit train` killed with SIGKILL after a
step checkpoint, resumed with --resume auto, compared with an uninterrupted run), train-amp (`lit train --amp
--amp-dtype bfloat16`, one epoch of fashion-mnist-mini), figures (`lit attn-maps` on the device, `lit viz-offsets`,
DTM offsets on CUDA vs CPU), dense (the official-parity dense backbones in float64, the six
detection/segmentation models fwd+bwd under bf16, `lit detect` / `lit segment` on the device), compile-infer / compile-train (as speed-* under torch.compile; last, as the slowest).

With no CUDA device (and no --device cpu) it prints one line and exits 1. Exit status: 0 when no part failed or
timed out (benchmark targets missed are reported, not failures), else 1.
"""
import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
# Test hooks (tests/test_gpu_check.py): make a part fail or hang, or treat modules as not installed.
INJECT_ENV = 'LIT_GPU_CHECK_INJECT'  # "part=fail,other=hang"
HIDE_ENV = 'LIT_GPU_CHECK_HIDE'  # "pytest,matplotlib"
DEFAULT_BUDGET = {'cuda': 450, 'cpu': 1800}
SWIN = 'swin_tiny_patch4_window7_224'
# A LIT with every stage of width 16-128 and depth 1 (as the unit tests use): CPU dry runs and the resume check.
TINY = dict(embed_dims=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], mlp_ratios=[2, 2, 2, 2])
# Benchmark targets (README "Benchmarking"), checked on CUDA only.
TARGETS = {'infer_ratio': 1.3, 'train_ratio': 1.2, 'mfu': 0.35, 'dtm_share': 0.10}


class Part:
    def __init__(self, name, title, fn, timeout, cpu_timeout=None, needs=(), cuda_only=None, slow=False, min_s=20):
        self.name, self.title, self.fn = name, title, fn
        self.timeout, self.cpu_timeout = timeout, cpu_timeout or 4 * timeout
        self.min_s = min_s  # not started with less of the budget left (it could not finish)
        self.needs = needs  # importable modules the part needs
        self.cuda_only = cuda_only  # reason it is skipped in a CPU dry run, None if it runs there at tiny sizes
        self.slow = slow  # skipped by --quick


class Skip(Exception):
    """The part cannot run here (reason in the message)."""


class Failed(Exception):
    """The part ran and a check failed (what, in the message)."""


# ---------------------------------------------------------------------------------------------------------------
# Helpers shared by the parts (they run in the part's own process)


class Ctx:
    def __init__(self, device: str, workdir: Path, quick: bool, limit: float = 3600, resume_workers: int = 2):
        self.device, self.workdir, self.quick = device, workdir, quick
        self.resume_workers = resume_workers
        self.deadline = time.monotonic() + limit - 3  # the parent kills the part at its limit: finish before
        self.cuda = device == 'cuda'
        self.figures, self.notes, self.targets = {}, [], []
        self.summary = ''

    def remaining(self, timeout=None) -> float:
        """Seconds a command may take: ``timeout``, but never past the part's own limit."""
        left = self.deadline - time.monotonic()
        return max(1.0, min(timeout or left, left))

    def target(self, name: str, value, op: str, bound: float, fmt: str = '{:.2f}'):
        """Record a benchmark target (CUDA only: CPU dry-run figures say nothing about the GPU)."""
        if not self.cuda or value is None:
            return
        met = value >= bound if op == '>=' else value < bound
        self.targets.append({'name': name, 'value': value, 'target': f'{op} {fmt.format(bound)}', 'met': met})


def child_env(**extra) -> dict:
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([str(ROOT)] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
    env.update(PYTHONUNBUFFERED='1', COLUMNS='200')
    env.update({k: str(v) for k, v in extra.items()})
    return env


def text_of(out) -> str:
    """A TimeoutExpired's captured output (bytes or str or None) as text."""
    return out.decode(errors='replace') if isinstance(out, bytes) else out or ''


def tail(text: str, n: int = 15) -> str:
    return '\n'.join(text.strip().splitlines()[-n:])


def lit(ctx: Ctx, *args, timeout=None, env=None, check=True) -> subprocess.CompletedProcess:
    """``python -m litcli ARGS`` (the CLI, from this source tree); raises Failed with the output's tail."""
    cmd = [sys.executable, '-m', 'litcli', *[str(a) for a in args]]
    print('$ lit ' + ' '.join(str(a) for a in args), flush=True)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env or child_env(),
                             timeout=ctx.remaining(timeout))
    except subprocess.TimeoutExpired as e:
        raise Failed(f'lit {args[0]} did not finish in {e.timeout:.0f} s; last output: {tail(text_of(e.stdout), 3)}')
    log = ctx.workdir / 'lit-commands.log'
    with open(log, 'a') as f:
        f.write(f"$ {' '.join(cmd)}\n[rc {out.returncode}]\n{out.stdout}\n{out.stderr}\n")
    if check and out.returncode != 0:
        raise Failed(f"lit {args[0]} exited {out.returncode}: {tail(out.stdout + out.stderr, 8)}")
    if check and 'Traceback' in out.stdout + out.stderr:
        raise Failed(f"lit {args[0]} printed a traceback: {tail(out.stdout + out.stderr, 8)}")
    return out


def parse_json_output(text: str):
    """The JSON document in a command's stdout (lit prints it last, after any log lines)."""
    start = text.find('{')
    if start < 0:
        raise Failed(f'no JSON in the output: {tail(text, 5)}')
    return json.loads(text[start:])


def sync(ctx):
    if ctx.cuda:
        import torch
        torch.cuda.synchronize()


def time_steps(ctx, steps, warmup, repeats):
    """Interleaved medians (seconds) of zero-argument steps, the device synchronised after each."""
    for step in steps:
        for _ in range(warmup):
            step()
        sync(ctx)
    times = [[] for _ in steps]
    for _ in range(repeats):
        for i, step in enumerate(steps):
            sync(ctx)
            t0 = time.perf_counter()
            step()
            sync(ctx)
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


GEMM_N = {'cuda': 8192, 'cpu': 1024}


def gemm_tflops(ctx) -> float:
    """Dense matmul rate, TFLOP/s: bf16 8192^3 on CUDA (large enough to reach the tensor cores' rate; 20 back to
    back per timing, so launch and sync costs vanish), fp32 1024^3 on CPU."""
    import torch
    n = GEMM_N[ctx.device]
    dtype = torch.bfloat16 if ctx.cuda else torch.float32
    a = torch.randn(n, n, device=ctx.device, dtype=dtype)
    b = torch.randn(n, n, device=ctx.device, dtype=dtype)
    c = torch.empty(n, n, device=ctx.device, dtype=dtype)
    reps = 20 if ctx.cuda else 3

    def step():
        for _ in range(reps):
            torch.mm(a, b, out=c)
    med = time_steps(ctx, [step], warmup=1, repeats=3)[0]
    return 2 * n ** 3 * reps / med / 1e12


def kill_tree(pid: int, sig=signal.SIGKILL):
    """Signal ``pid`` and all its descendants (torchrun starts its workers in sessions of their own, so a
    process-group kill does not reach them)."""
    children = {}
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            fields = stat.read_text().rsplit(')', 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    todo, found = [pid], []
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    for p in found:
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            pass


def load_weights(path: Path) -> dict:
    import torch
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception:
        ckpt = torch.load(path, map_location='cpu', weights_only=False)
    return ckpt


def max_abs_diff(a: dict, b: dict) -> float:
    if a.keys() != b.keys():
        raise Failed(f'the checkpoints have different keys: {sorted(set(a) ^ set(b))[:5]}')
    diffs = [(a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point() and a[k].numel()]
    return max(diffs) if diffs else 0.0


def ms(x):
    return None if x is None else round(1000 * x, 3)


# ---------------------------------------------------------------------------------------------------------------
# The parts


def part_env(ctx: Ctx):
    info = parse_json_output(lit(ctx, 'env', '--json', timeout=120).stdout)
    keep = ('lit', 'python', 'torch', 'torchvision', 'timm', 'typer', 'fvcore', 'torch_cuda_build', 'cuda_devices',
            'torchvision_ops_loaded', 'dtm_backend_cpu', 'dtm_backend_cuda', 'bf16_supported')
    ctx.figures.update({k: info.get(k) for k in keep if k in info})
    import torch
    if ctx.cuda:
        props = torch.cuda.get_device_properties(0)
        ctx.figures.update(gpu=props.name, compute_capability=f'{props.major}.{props.minor}',
                           gpu_memory_gb=round(props.total_memory / 2 ** 30, 1))
    if not info.get('torchvision_ops_loaded'):
        ctx.notes.append("torchvision's C++ ops did not load: the DTM runs its pure path everywhere")
    ctx.summary = (f"torch {info.get('torch')}, tv {info.get('torchvision')}, timm {info.get('timm')}; "
                   + (f"{ctx.figures['gpu']}, DTM auto -> {info.get('dtm_backend_cuda')}" if ctx.cuda else
                      f"cpu, DTM auto -> {info.get('dtm_backend_cpu')}"))


def part_tests(ctx: Ctx):
    import xml.etree.ElementTree as ET
    junit = ctx.workdir / 'junit.xml'
    # test_forward_backward_autocast is the amp part (same checks, with figures) and test_torch_compile_matches_eager
    # runs in the compile parts (last: the slowest).
    deselect = 'not test_forward_backward_autocast and not test_torch_compile_matches_eager'
    cmd = [sys.executable, '-m', 'pytest', '-q', '-m', 'gpu', '-rs', '-p', 'no:cacheprovider', f'--junitxml={junit}',
           '-k', deselect, str(ROOT / 'tests')]
    print('$ ' + ' '.join(cmd), flush=True)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=child_env(), timeout=ctx.remaining())
    except subprocess.TimeoutExpired as e:
        raise Failed(f'pytest did not finish in {e.timeout:.0f} s; last output: {tail(text_of(e.stdout), 5)}')
    (ctx.workdir / 'pytest.log').write_text(out.stdout + out.stderr)
    print(tail(out.stdout + out.stderr, 40))
    if out.returncode == 5:
        raise Skip('no gpu-marked tests were collected')
    if not junit.exists():
        raise Failed(f'pytest exited {out.returncode} without a report: {tail(out.stdout + out.stderr, 8)}')
    passed, failed, skipped, reasons = [], [], [], set()
    for case in ET.parse(junit).getroot().iter('testcase'):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        if case.find('failure') is not None or case.find('error') is not None:
            failed.append(name)
        elif case.find('skipped') is not None:
            skipped.append(name)
            reasons.add((case.find('skipped').get('message') or '').strip())
        else:
            passed.append(name)
    ctx.figures.update(passed=len(passed), failed=len(failed), skipped=len(skipped), failed_tests=failed,
                       skip_reasons=sorted(reasons))
    ctx.summary = f'{len(passed)} passed, {len(failed)} failed, {len(skipped)} skipped'
    if failed or out.returncode not in (0, 5):
        raise Failed(f"{ctx.summary}: {', '.join(failed[:6]) or tail(out.stdout, 5)}")
    if not passed:
        raise Skip(f"{ctx.summary} ({'; '.join(sorted(reasons))[:200]})")


def part_dtm(ctx: Ctx):
    import torch
    from litcli.models.dtm import deform_conv2x2, torchvision_ops_available
    if not torchvision_ops_available():
        ctx.notes.append("torchvision's C++ ops did not load: parity not checked, speed of the pure path only")
    else:
        # Values and gradients, float64 (tight) and float32; non-integer offsets (the sampling kink at integers).
        shape = (8, 64, 56, 56) if ctx.cuda else (2, 16, 16, 16)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # parity of the algorithm
        for dtype, tol_out, tol_grad in ((torch.float64, 1e-10, 1e-8), (torch.float32, 1e-4, 2e-3)):
            g = torch.Generator(device=ctx.device).manual_seed(0)
            B, C, H, W = shape
            x = torch.randn(B, C, H, W, device=ctx.device, generator=g, dtype=dtype)
            off = (torch.rand(B, 8, H // 2, W // 2, device=ctx.device, generator=g, dtype=dtype) - 0.5) * 5 + 0.137
            w = torch.randn(128, C, 2, 2, device=ctx.device, generator=g, dtype=dtype) / (4 * C) ** 0.5
            b = torch.randn(128, device=ctx.device, generator=g, dtype=dtype)
            grads, outs = {}, {}
            for backend in ('torchvision', 'pure'):
                ins = [t.clone().requires_grad_(True) for t in (x, off, w, b)]
                y = deform_conv2x2(*ins, backend=backend)
                (y * torch.linspace(-1, 1, y.numel(), device=y.device, dtype=y.dtype).view_as(y)).sum().backward()
                outs[backend], grads[backend] = y.detach(), [t.grad for t in ins]
            scale = lambda t: t.abs().max().item() or 1.0  # noqa: E731
            d_out = (outs['torchvision'] - outs['pure']).abs().max().item() / scale(outs['pure'])
            d_grad = {n: (a - r).abs().max().item() / scale(r) for n, a, r in
                      zip(('x', 'offset', 'weight', 'bias'), grads['torchvision'], grads['pure'])}
            key = str(dtype).replace('torch.', '')
            ctx.figures[f'parity_{key}'] = {'out_rel': d_out, **{f'grad_{n}_rel': v for n, v in d_grad.items()}}
            if d_out > tol_out or max(d_grad.values()) > tol_grad:
                raise Failed(f'torchvision vs pure ({key}) differ: output {d_out:.2e} (tol {tol_out:.0e}), '
                             f'gradients {max(d_grad.values()):.2e} (tol {tol_grad:.0e}), relative to max |value|')
    sys.path.insert(0, str(HERE))
    import bench_dtm
    shape = (32, 64, 56, 56) if ctx.cuda else (2, 16, 16, 16)
    reps = (10 if not ctx.quick else 5) if ctx.cuda else 3
    res = bench_dtm.run(ctx.device, shape, 128, repeats=reps, warmup=3 if ctx.cuda else 1, channels_last=True)
    ctx.figures['speed'] = res
    cases = res['cases']
    parity = ctx.figures.get('parity_float64')
    ctx.summary = ((f"parity f64 out {parity['out_rel']:.0e} grad "
                    f"{max(v for k, v in parity.items() if k.startswith('grad')):.0e}; " if parity else 'no parity; ')
                   + f"fwd+bwd {shape}: pure {cases['DTM pure (gather)']['ms']:.2f} ms"
                   + (f", torchvision {cases['DTM torchvision']['ms']:.2f} ms" if 'DTM torchvision' in cases else '')
                   + f", plain conv {cases['plain conv2d 2x2/s2']['ms']:.2f} ms")


def build_lit(ctx, variant, **kw):
    import timm
    import litcli.models  # noqa: F401  (registers lit_* in timm)
    if not ctx.cuda:
        kw = {**TINY, 'img_size': 64, **kw}
    return timm.create_model(variant, **kw).to(ctx.device)


def autocast(ctx, dtype):
    import torch
    return torch.autocast(ctx.device, dtype=dtype, enabled=dtype is not None)


def part_dtm_share(ctx: Ctx):
    """LIT-S training step (bf16, batch 64, fused AdamW) with each DTM backend, and its DTM layers alone."""
    import torch
    import torch.nn.functional as F
    from litcli.models.dtm import torchvision_ops_available
    model = build_lit(ctx, 'lit_s' if ctx.cuda else 'lit_ti').train()
    batch, size = (64, 224) if ctx.cuda else (2, 64)
    dtype = torch.bfloat16 if ctx.cuda else None
    x = torch.randn(batch, 3, size, size, device=ctx.device)
    y = torch.randint(0, 1000, (batch,), device=ctx.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=ctx.cuda)
    dtms, handles = [], []
    for name, mod in model.named_modules():
        if type(mod).__name__ == 'DeformableTokenMerging':
            handles.append(mod.register_forward_hook(
                lambda m, inp, out, name=name: dtms.append((name, m, inp[0].detach().clone()))))
    with autocast(ctx, dtype):
        model(x)
    for h in handles:
        h.remove()
    if not dtms:
        raise Failed('no DeformableTokenMerging module found in the model')

    def train_step():
        with autocast(ctx, dtype):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def dtm_step():
        for _, m, inp in dtms:
            inp = inp.requires_grad_(True)
            with autocast(ctx, dtype):
                out = m(inp)
            out.float().sum().backward()
            inp.grad = None
        model.zero_grad(set_to_none=True)

    backends = ['pure'] + (['torchvision'] if torchvision_ops_available() else [])
    auto = 'torchvision' if ctx.cuda and 'torchvision' in backends else 'pure'  # litcli.models.dtm's rule
    steps = []
    for backend in backends:
        def with_backend(fn, backend=backend):
            os.environ['LIT_DTM_BACKEND'] = backend  # read by every DTM with backend 'auto' at each call
            fn()
        steps += [lambda b=backend: with_backend(train_step, b), lambda b=backend: with_backend(dtm_step, b)]
    reps = (10 if not ctx.quick else 5) if ctx.cuda else 3
    meds = time_steps(ctx, steps, warmup=3 if ctx.cuda else 1, repeats=reps)
    os.environ.pop('LIT_DTM_BACKEND', None)
    per = {}
    for i, backend in enumerate(backends):
        step_s, dtm_s = meds[2 * i], meds[2 * i + 1]
        per[backend] = {'step_ms': ms(step_s), 'dtm_ms': ms(dtm_s), 'dtm_share': dtm_s / step_s,
                        'img_per_s': batch / step_s}
    fastest = min(per, key=lambda b: per[b]['step_ms'])
    ctx.figures.update(model='lit_s' if ctx.cuda else 'lit_ti (tiny)', batch=batch, img_size=size,
                       amp='bf16' if dtype else 'fp32', dtm_layers=[n for n, _, _ in dtms], backends=per,
                       auto_backend=auto, fastest_backend=fastest,
                       dtm_input_shapes=[list(i.shape) for _, _, i in dtms])
    ctx.target('DTM share of a LIT-S train step (auto backend)', per[auto]['dtm_share'], '<', TARGETS['dtm_share'],
               '{:.0%}')
    if fastest != auto:
        ctx.notes.append(f"the {fastest} backend gave the faster training step: "
                         f"{per[fastest]['step_ms']:.1f} vs {per[auto]['step_ms']:.1f} ms ({auto}, the auto default)")
    ctx.summary = '; '.join(f"{b}: step {v['step_ms']:.1f} ms, DTM {v['dtm_ms']:.1f} ms ({v['dtm_share']:.1%})"
                            for b, v in per.items()) + f'; faster: {fastest}'


def part_amp(ctx: Ctx):
    """Every variant forward+backward under bf16 and fp16 autocast: output dtype, finite gradients, timing."""
    import torch
    variants = ('lit_ti', 'lit_s', 'lit_m', 'lit_b') if ctx.cuda else ('lit_ti', 'lit_s')
    dtypes = (torch.bfloat16, torch.float16)
    batch, size = (8, 224) if ctx.cuda else (2, 64)
    x = torch.randn(batch, 3, size, size, device=ctx.device)
    rows, bad = {}, []
    for variant in variants:
        model = build_lit(ctx, variant).train()
        for dtype in dtypes:
            key = f"{variant} {str(dtype).replace('torch.', '')}"
            try:
                times = []
                if ctx.cuda:
                    torch.cuda.reset_peak_memory_stats()
                for _ in range(2):  # the second is timed
                    model.zero_grad(set_to_none=True)
                    sync(ctx)
                    t0 = time.perf_counter()
                    with autocast(ctx, dtype):
                        out = model(x)
                    out.float().sum().backward()
                    sync(ctx)
                    times.append(time.perf_counter() - t0)
                finite = all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())
                backends = {m.backend for m in model.modules() if type(m).__name__ == 'DeformConv2x2'}
                rows[key] = {'ms': ms(times[-1]), 'out_dtype': str(out.dtype).replace('torch.', ''),
                             'finite_grads': finite, 'dtm_backends': sorted(backends),
                             'peak_mb': round(torch.cuda.max_memory_allocated() / 2 ** 20) if ctx.cuda else None}
                if out.dtype != dtype or not finite or backends != {'auto'}:
                    bad.append(f'{key}: out {out.dtype}, finite grads {finite}, backends {sorted(backends)}')
            except Exception as e:  # noqa: BLE001  (record the case, go on with the others)
                if not ctx.cuda and dtype == torch.float16 and 'Half' in str(e):
                    rows[key] = {'skipped': f'CPU autocast: {str(e).splitlines()[0][:120]}'}
                    continue
                rows[key] = {'error': f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'}
                bad.append(f"{key}: {rows[key]['error']}")
        del model
        if ctx.cuda:
            torch.cuda.empty_cache()
    ctx.figures.update(batch=batch, img_size=size, cases=rows)
    ok = sum(1 for r in rows.values() if r.get('finite_grads') and 'error' not in r)
    slowest = max((r['ms'], k) for k, r in rows.items() if r.get('ms') is not None) if ok else (0, '-')
    ctx.summary = (f'{ok}/{len(rows)} variant x dtype fwd+bwd ok (batch {batch}); '
                   f'slowest {slowest[1]} {slowest[0]:.0f} ms')
    if bad:
        raise Failed('; '.join(bad))


def bench_args(ctx, mode, compile_=False, size=None, batch=None):
    if ctx.cuda:
        args = ['bench', '-v', 's', '--compare', SWIN, '--device', 'cuda', '-b', batch or 64, '--amp', 'bf16',
                '--mode', mode, '--json', '--img-size', size or 224]
        if ctx.quick:
            args += ['--repeats', 4]
    else:  # plumbing only: a small LIT-Ti against ResNet-18 at 64 px
        args = ['bench', '-v', 'ti', '--compare', 'resnet18', '--device', 'cpu', '-b', batch or 2, '--img-size',
                size or 64, '--threads', 1, '--warmup', 1, '--repeats', 2, '--mode', mode, '--json']
    return args + (['--compile'] if compile_ else [])


def bench_rows(ctx, out) -> list:
    report = parse_json_output(out.stdout)
    rows = report['results'][0]['rows']
    for r in rows:
        if r.get('error') or not r.get('img_per_s'):
            raise Failed(f"lit bench: {r['model']}: {r.get('error') or 'no timing'}")
    return report, rows


def compile_test(ctx: Ctx, mode: str):
    """tests/test_gpu.py::test_torch_compile_matches_eager[mode]: no graph break, compiled output = eager's."""
    import importlib.util
    if importlib.util.find_spec('pytest') is None or 'pytest' in os.environ.get(HIDE_ENV, '').split(','):
        ctx.notes.append('pytest not installed: compiled-vs-eager test not run')
        return None
    node = f'tests/test_gpu.py::test_torch_compile_matches_eager[{mode}]'
    cmd = [sys.executable, '-m', 'pytest', '-q', '-rs', '-p', 'no:cacheprovider', node]
    print('$ ' + ' '.join(cmd), flush=True)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=child_env(),
                             timeout=ctx.remaining() / 2)
    except subprocess.TimeoutExpired as e:
        return f'{node}: no result in {e.timeout:.0f} s'
    (ctx.workdir / 'pytest.log').write_text(out.stdout + out.stderr)
    passed = re.search(r'\b1 passed\b', out.stdout) is not None
    ctx.figures['compile_test'] = 'passed' if passed else 'skipped' if 'skipped' in out.stdout else 'failed'
    return None if out.returncode == 0 else f'{node}: {tail(out.stdout, 6)}'


def speed(ctx: Ctx, mode: str, compile_: bool):
    test_error = compile_test(ctx, mode) if compile_ else None
    args = bench_args(ctx, mode, compile_)
    if mode == 'train' and not compile_:
        args.append('--profile')
    report, rows = bench_rows(ctx, lit(ctx, *args))
    lit_row, ref = rows[0], rows[1]
    gemm = gemm_tflops(ctx)  # measured right after, in the same part
    ratio = lit_row['img_per_s'] / ref['img_per_s']
    mfu = lit_row['achieved_gflops'] / 1000 / gemm if lit_row.get('achieved_gflops') else None
    ctx.figures.update(
        mode=mode, compile=compile_, batch=report['batch_size'], amp=report['amp'], models=[r['model'] for r in rows],
        img_per_s={r['model']: r['img_per_s'] for r in rows}, ms_per_step={r['model']: r['ms_per_step'] for r in rows},
        peak_mem_mb={r['model']: r.get('peak_mem_mb') for r in rows}, ratio=ratio,
        achieved_tflops={r['model']: (r.get('achieved_gflops') or 0) / 1000 for r in rows},
        gemm_tflops=gemm, gemm_n=GEMM_N[ctx.device], gmacs_per_img={r['model']: r.get('gmacs_per_img') for r in rows},
        mfu={r['model']: (r.get('achieved_gflops') or 0) / 1000 / gemm for r in rows},
        lit_bench_gemm_tflops_2048=report['gemm_gflops'] / 1000,
        lit_bench_share_of_gemm={r['model']: r.get('share_of_gemm') for r in rows})
    if lit_row.get('profile'):
        ctx.figures['profile_share'] = {r['model']: r['profile'].get('kinds_share') for r in rows if r.get('profile')}
    what = ('compiled ' if compile_ else '') + mode
    ctx.target(f'LIT-S / Swin-T img/s, {what}', ratio, '>=', TARGETS[f'{mode}_ratio'])
    if mfu is None:
        ctx.notes.append('lit bench gave no MAC count: no MFU')
    ctx.target(f'LIT-S MFU, {what} (vs bf16 GEMM 8192^3)', mfu, '>=', TARGETS['mfu'], '{:.0%}')
    ctx.summary = (f"{lit_row['model']} {lit_row['img_per_s']:.0f} vs {ref['model']} {ref['img_per_s']:.0f} img/s = "
                   f"{ratio:.2f}x; MFU {mfu:.0%} of a {gemm * 1000:.4g} GFLOP/s GEMM" if mfu is not None else
                   f"{lit_row['img_per_s']:.0f} vs {ref['img_per_s']:.0f} img/s = {ratio:.2f}x")
    if compile_:
        ctx.summary += f"; compiled = eager test: {ctx.figures.get('compile_test', 'not run')}"
    if test_error:
        raise Failed(test_error)


def part_mem1024(ctx: Ctx):
    modes = ('infer', 'train') if ctx.cuda else ('infer',)
    size = 1024 if ctx.cuda else 128
    parts = []
    for mode in modes:
        args = bench_args(ctx, mode, size=size, batch=1) + ['--warmup', 1, '--repeats', 3 if ctx.cuda else 1]
        _, rows = bench_rows(ctx, lit(ctx, *args))
        ctx.figures[mode] = {r['model']: {'peak_mem_mb': r.get('peak_mem_mb'), 'img_per_s': r['img_per_s']}
                             for r in rows}
        a, b = (rows[0].get('peak_mem_mb'), rows[1].get('peak_mem_mb'))
        parts.append(f"{mode}: {rows[0]['model']} {a:.0f} MB vs {rows[1]['model']} {b:.0f} MB" if a and b else
                     f'{mode}: no memory figure')
    ctx.figures['img_size'] = size
    ctx.summary = f'{size}px b1 ' + '; '.join(parts)


def torchrun_cmd(*args):
    return [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=1', '-m', 'litcli',
            *[str(a) for a in args]]


def run_logged(ctx, cmd, log: Path, env, timeout=None, kill_at_step=None, need=lambda: True, exit_grace=30):
    """Run ``cmd`` with its output appended to ``log``; with kill_at_step, SIGKILL it (and its workers) once it
    logged an optimizer step >= that and ``need()`` holds. A training that printed its final summary but does not
    exit within ``exit_grace`` s is killed and reported. Returns (returncode, output, step at the kill or None)."""
    import queue
    import threading
    timeout = ctx.remaining(timeout)
    print('$ ' + ' '.join(cmd), flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env,
                            start_new_session=True)
    lines, killed_at, problem = [], None, None
    q = queue.Queue()
    threading.Thread(target=lambda: [q.put(line) for line in proc.stdout] + [q.put(None)], daemon=True).start()
    deadline, finished_at = time.monotonic() + timeout, None
    try:
        while True:
            try:
                line = q.get(timeout=0.5)
            except queue.Empty:
                line = ''
            if line is None:
                break
            if line:
                lines.append(line)
                m = re.search(r'\] step (\d+) loss', line)
                if kill_at_step is not None and killed_at is None and m and int(m.group(1)) >= kill_at_step \
                        and need():
                    kill_tree(proc.pid)
                    killed_at = int(m.group(1))
                if 'lit train summary' in line:
                    finished_at = time.monotonic()
            now = time.monotonic()
            if finished_at and now - finished_at > exit_grace and proc.poll() is None:
                problem = (f'the training finished (summary printed) but the process had not exited {exit_grace} s '
                           f'later (killed); a hang at exit, e.g. DataLoader workers that ignore SIGTERM')
                break
            if now > deadline:
                problem = f'no end after {timeout:.0f} s (killed)'
                break
        rc = proc.wait(timeout=5) if problem is None else None
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
            proc.wait()
    out = ''.join(lines)
    with open(log, 'a') as f:
        f.write(f"$ {' '.join(cmd)}\n[rc {rc}]\n{out}\n")
    if problem:
        raise Failed(f'{shlex_join(cmd[-8:])}: {problem}; last output: {tail(out, 3)}')
    return rc, out, killed_at


def shlex_join(parts):
    import shlex
    return ' '.join(shlex.quote(str(p)) for p in parts)


def part_resume(ctx: Ctx):
    """torchrun (1 process) lit train killed with SIGKILL after a step checkpoint, resumed with --resume auto."""
    import yaml
    work = ctx.workdir
    from litcli.core.data.synthetic import write_image_folder
    data = write_image_folder(work / 'data', ('a', 'b'), n_train=32, n_val=8)  # 64 train images: 16 steps/epoch at batch 4
    cfg = work / 'tiny.yaml'
    cfg.write_text(yaml.safe_dump(dict(model_kwargs=TINY, warmup_epochs=1)))
    runs = work / 'runs'
    epochs, steps_per_epoch = 2, 16
    total = epochs * steps_per_epoch
    workers = ctx.resume_workers  # 2 (default): samples are seeded by their place in the epoch, so exact with workers
    args = ['train', '--variant', 'ti', '--data', data, '--config', cfg, '--img-size', 32, '-b', 4, '-j', workers,
            '--epochs', epochs, '--output', runs, '--log-interval', 1, '--seed', 3, '--save-interval', 2,
            '--keep-last', 2, '--device', ctx.device]
    env = child_env(OMP_NUM_THREADS=1 if not ctx.cuda else os.environ.get('OMP_NUM_THREADS', 4))
    log = work / 'train.log'
    rc, out, _ = run_logged(ctx, torchrun_cmd(*args, '--name', 'straight'), log, env)
    if rc != 0:
        raise Failed(f'uninterrupted run exited {rc}: {tail(out, 8)}')
    kill_step = steps_per_epoch + 5  # in the second epoch, past its first step checkpoint
    ckpts = runs / 'cut' / 'checkpoints'
    rc, out, killed_at = run_logged(ctx, torchrun_cmd(*args, '--name', 'cut'), log, env, None, kill_step,
                                    need=lambda: any(ckpts.glob('step-*.pt')))
    if killed_at is None:
        raise Failed(f'the run ended (rc {rc}) before it could be killed at step {kill_step}: {tail(out, 5)}')
    if rc == 0:
        raise Failed(f'the run finished despite the SIGKILL at step {killed_at}')
    killed_rc = rc
    saved = load_weights(ckpts / 'last.pt').get('step')
    rc, out, _ = run_logged(ctx, torchrun_cmd('train', '--resume', 'auto', '--output', runs, '--name', 'cut', '-j',
                                              workers, '--device', ctx.device), log, env)
    if rc != 0:
        raise Failed(f'resume exited {rc}: {tail(out, 8)}')
    m = re.search(r'resuming at epoch (\d+), step (\d+)', out)
    a, b = load_weights(runs / 'straight/checkpoints/last.pt'), load_weights(ckpts / 'last.pt')
    if a.get('step') != total or b.get('step') != total:
        raise Failed(f"final steps differ: uninterrupted {a.get('step')}, resumed {b.get('step')} (expected {total})")
    diff = max_abs_diff(a['model'], b['model'])
    ctx.figures.update(steps=total, killed_after_step=killed_at, killed_rc=killed_rc, checkpoint_step=saved,
                       resumed_from=f'epoch {m.group(1)}, step {m.group(2)}' if m else None,
                       max_abs_weight_diff=diff, bit_identical=diff == 0.0, workers=workers)
    ctx.summary = (f'SIGKILL after step {killed_at}, resumed from step {saved}: '
                   + ('bit-identical to the uninterrupted run' if diff == 0 else f'max |weight diff| {diff:.2e}'))
    if diff != 0:
        # Is it resuming, or does the device itself not repeat? A second uninterrupted run tells.
        rc, out, _ = run_logged(ctx, torchrun_cmd(*args, '--name', 'straight2'), log, env)
        base = max_abs_diff(a['model'], load_weights(runs / 'straight2/checkpoints/last.pt')['model']) if rc == 0 \
            else None
        ctx.figures['run_to_run_diff'] = base
        if base is not None and base > 0 and diff <= 10 * base:
            ctx.notes.append(f'two uninterrupted runs already differ by {base:.2e}: nondeterministic kernels '
                             f'(atomic adds in backward: deform_conv2d col2im, index/embedding_bag backward, cuDNN '
                             f'algorithm choice), not resuming')
            ctx.summary += f' (two uninterrupted runs differ by {base:.2e}: nondeterministic kernels)'
        else:
            raise Failed(f'{ctx.summary}; two uninterrupted runs differ by {base}: resuming changes the result')


def part_train_amp(ctx: Ctx):
    import numpy as np
    work = ctx.workdir
    args = ['train', '--epochs', 1, '--amp', '--amp-dtype', 'bfloat16', '--device', ctx.device, '--output',
            work / 'runs', '--name', 'amp', '--log-interval', 50]
    if ctx.cuda:
        args += ['--data', 'fashion-mnist-mini', '-j', 4]
    else:  # the mini set's format, 40 + 20 images, and the tiny model
        import yaml
        rng = np.random.default_rng(0)
        mini = work / 'mini'
        mini.mkdir()
        def split(n):
            y = (np.arange(n) % 10).astype(np.uint8)
            x = rng.integers(0, 100, (n, 28, 28), dtype=np.uint8)
            for i, c in enumerate(y):
                x[i, c * 2:c * 2 + 4, :] = 255
            return x, y
        (xt, yt), (xv, yv) = split(40), split(20)
        np.savez(mini / 'fashion-mnist-mini.npz', x_train=xt, y_train=yt, x_test=xv, y_test=yv)
        cfg = work / 'tiny.yaml'
        cfg.write_text(yaml.safe_dump(dict(model_kwargs=TINY)))
        args += ['--data', 'fashion-mnist-mini', '--data-dir', mini, '--config', cfg, '-j', 0, '-b', 8]
    cmd = [sys.executable, '-m', 'litcli', *[str(a) for a in args]]
    rc, out, _ = run_logged(ctx, cmd, work / 'train.log', child_env(OMP_NUM_THREADS=1) if not ctx.cuda else child_env())
    if rc != 0:
        raise Failed(f'lit train exited {rc}: {tail(out, 8)}')
    if 'bfloat16 autocast' not in out:
        raise Failed(f'no "bfloat16 autocast" in the run header: {tail(out, 5)}')
    row = json.loads((work / 'runs' / 'amp' / 'metrics.jsonl').read_text().splitlines()[-1])
    ctx.figures.update({k: row.get(k) for k in ('train_loss', 'eval_loss', 'eval_top1', 'img_per_s', 'epoch_time_s')})
    if not math.isfinite(row.get('train_loss', float('nan'))):
        raise Failed(f"train loss {row.get('train_loss')}")
    ctx.summary = (f"1 epoch {row.get('epoch_time_s', 0):.1f} s, {row.get('img_per_s', 0):.0f} img/s, "
                   f"loss {row['train_loss']:.3f}, top-1 {row.get('eval_top1', 0):.1f}%")


def part_figures(ctx: Ctx):
    import torch
    work = ctx.workdir
    size = 224 if ctx.cuda else 64
    out = lit(ctx, 'attn-maps', '--device', ctx.device, '--num-images', 8 if ctx.cuda else 2, '-b', 4 if ctx.cuda
              else 2, '--img-size', size, '--output', work, '--name', 'attn', '--json', timeout=300)
    pngs = sorted((work / 'attn').rglob('*.png'))
    if not pngs:
        raise Failed('lit attn-maps wrote no PNG')
    ctx.figures['attn_maps_pngs'] = len(pngs)
    try:
        ctx.figures['attn_maps'] = parse_json_output(out.stdout)
    except (Failed, ValueError):
        pass
    photo = ROOT / 'assets' / 'photos' / 'chelsea.jpg'
    lit(ctx, 'viz-offsets', photo, '-v', 'ti', '--img-size', size, '--output', work, '--name', 'offsets', '--json',
        '--summary', timeout=300)
    ctx.figures['viz_offsets_files'] = len(list((work / 'offsets').rglob('*.png')))
    ctx.notes.append('lit viz-offsets has no --device flag, so it ran on the CPU' +
                     ('; the DTM offsets themselves were compared on CUDA vs CPU' if ctx.cuda else ''))
    # The offsets themselves on the device: a LIT-Ti with non-zero offset convs, CUDA vs CPU (fp32, TF32 off).
    from litcli.models import capture_offsets
    torch.manual_seed(0)
    model = build_lit(ctx, 'lit_ti').eval().cpu()
    for name, p in model.named_parameters():
        if 'conv_offset' in name:
            torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref = capture_offsets(model, x)
        if ctx.cuda:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            got = {k: v.cpu() for k, v in capture_offsets(model.cuda(), x.cuda()).items()}
            diff = max((got[k] - ref[k]).abs().max().item() for k in ref)
            mean_abs = statistics.mean(v.abs().mean().item() for v in ref.values())
            ctx.figures.update(offsets_cuda_vs_cpu_max_diff=diff, offsets_mean_abs_px=mean_abs)
            if diff > 1e-3:
                raise Failed(f'DTM offsets on CUDA differ from the CPU ones by {diff:.2e} px')
    ctx.summary = (f"attn-maps on {ctx.device}: {len(pngs)} PNGs; viz-offsets (cpu): "
                   f"{ctx.figures['viz_offsets_files']} PNGs; {len(ref)} DTMs"
                   + (f", CUDA vs CPU offsets {ctx.figures['offsets_cuda_vs_cpu_max_diff']:.1e} px" if ctx.cuda
                      else ''))


def part_dense(ctx: Ctx):
    """The dense models on the device: the official-parity backbones (float64, main case of each fixture, the
    torchvision CUDA deformable conv), every one of the six detectors/segmenters fwd+bwd under bf16 autocast and
    inference in float32, and `lit detect` / `lit segment` on a photo with random weights."""
    import torch
    fixtures = ROOT / 'tests' / 'fixtures'
    sys.path[:0] = [str(fixtures), str(fixtures / 'dense')]
    import dense_lib
    import parity_lib
    from litcli.core.modelio.factory import dense_checkpoint
    from litcli.models import create_dense_backbone
    from litcli.models.dense_zoo import DENSE_MODEL_NAMES, create_dense_model

    parity = {}
    for variant, task, fixture, manifest in (('ti', 'detection', 'dense_ti.pt', 'manifest_ti_dense.json'),
                                             ('s', 'detection', 'dense_s_det.pt', 'manifest_s_det.json'),
                                             ('s', 'segmentation', 'dense_s_seg.pt', 'manifest_s_seg.json')):
        rows = parity_lib.load_manifest(fixtures / 'dense' / manifest)
        fx = torch.load(fixtures / 'dense' / fixture, weights_only=True)
        model = create_dense_backbone(variant, task)
        state = parity_lib.det_state_dict(rows)
        state.update({k: v for k, v in model.state_dict().items() if k in parity_lib.skipped_keys(rows)})
        model.load_state_dict(state, strict=True)
        model = model.double().eval().to(ctx.device)
        case = fx['cases'][fx.get('main_case', '256x352')]
        with torch.no_grad():
            outs = model(dense_lib.case_input(case, torch.float64).to(ctx.device))
        diff = max(dense_lib.compare_case([o.cpu() for o in outs], case))
        parity[f'{variant}-{task}'] = diff
        del model
    ctx.figures['parity_max_abs_diff_float64'] = parity
    bad = [f'{k}: {v:.1e}' for k, v in parity.items() if not v <= 1e-8]

    size = (512, 640) if ctx.cuda else (96, 128)
    rows = {}
    for name in DENSE_MODEL_NAMES:
        torch.manual_seed(0)
        kw = {} if ctx.cuda else {'img_scale': (size[1], size[0])} if not name.startswith('semantic') else {}
        model = create_dense_model(name, **kw).to(ctx.device)
        images = [torch.rand(3, *size, device=ctx.device)]
        boxes = torch.tensor([[8., 8., size[1] / 2, size[0] / 2]], device=ctx.device)
        mask = torch.zeros(1, *size, dtype=torch.uint8, device=ctx.device)
        mask[:, 8:size[0] // 2, 8:size[1] // 2] = 1
        try:
            model.train()
            sync(ctx)
            t0 = time.perf_counter()
            with autocast(ctx, torch.bfloat16):
                if name.startswith('semantic'):
                    x = torch.stack(images)
                    losses = model(x, torch.randint(0, 150, (1, *size), device=ctx.device))
                else:
                    target = {'boxes': boxes, 'labels': torch.tensor([1], device=ctx.device), 'masks': mask}
                    losses = model(images, [target])
            loss = sum(losses.values())
            loss.backward()
            sync(ctx)
            train_ms = ms(time.perf_counter() - t0)
            finite = bool(torch.isfinite(loss)) and all(
                p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model.parameters())
            model.eval()
            with torch.no_grad():
                out = model(torch.stack(images)) if name.startswith('semantic') else model(images)
            rows[name] = {'train_step_ms_bf16': train_ms, 'finite': finite,
                          'eval_out': list(out.shape) if torch.is_tensor(out) else sorted(out[0])}
            if not finite:
                bad.append(f'{name}: non-finite loss or gradients under bf16')
        except Exception as e:  # noqa: BLE001  (record the model, go on with the others)
            rows[name] = {'error': f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'}
            bad.append(f"{name}: {rows[name]['error']}")
        del model
        if ctx.cuda:
            torch.cuda.empty_cache()
    ctx.figures['models'] = rows

    photo = ROOT / 'assets' / 'photos' / 'chelsea.jpg'
    for name, command in (('retinanet_lit_ti', 'detect'), ('semantic_fpn_lit_ti', 'segment')):
        checkpoint = ctx.workdir / f'{name}.pt'
        torch.save(dense_checkpoint(create_dense_model(name), name), checkpoint)
        scale = [] if ctx.cuda else ['--img-scale', '320x192']
        lit(ctx, command, photo, '--checkpoint', checkpoint, '--device', ctx.device, '--out',
            ctx.workdir / command, *scale, timeout=240)
        if not list((ctx.workdir / command).glob('*.png')):
            raise Failed(f'lit {command} wrote no PNG')
    ctx.summary = (f"parity {max(parity.values()):.1e} (float64, 3 backbones); "
                   f"{sum(1 for r in rows.values() if r.get('finite'))}/{len(rows)} dense models fwd+bwd bf16; "
                   f"lit detect/segment on {ctx.device}")
    if bad:
        raise Failed('; '.join(bad))


def part_dense_train(ctx: Ctx):
    """lit train --task on the device with bf16 autocast: Semantic FPN on the built-in scenes (2 short epochs: the
    iteration sampler, the poly schedule, mIoU each epoch), then lit eval of its best.pt in float32 (the same mIoU
    within autocast's rounding); RetinaNet too where pycocotools is installed (its COCO AP each epoch)."""
    import importlib.util

    import yaml
    work = ctx.workdir
    tasks = ['semantic-fpn'] + (['retinanet'] if importlib.util.find_spec('pycocotools') else [])
    summary = []
    for task in tasks:
        cfg = work / f'{task}.yaml'
        cfg.write_text(yaml.safe_dump(dict(epochs=2, updates_per_epoch=20 if ctx.cuda else 2, val_scenes=16,
                                           train_scenes=64, eval_batch_size=8)))
        args = ['train', '--task', task, '--config', cfg, '--amp', '--amp-dtype', 'bfloat16', '--device', ctx.device,
                '--output', work / 'runs', '--name', task, '-j', 0, '--log-interval', 10]
        cmd = [sys.executable, '-m', 'litcli', *[str(a) for a in args]]
        rc, out, _ = run_logged(ctx, cmd, work / f'{task}.log', child_env() if ctx.cuda else
                                child_env(OMP_NUM_THREADS=1))
        if rc != 0:
            raise Failed(f'lit train --task {task} exited {rc}: {tail(out, 8)}')
        if 'bfloat16 autocast' not in out:
            raise Failed(f'no "bfloat16 autocast" in the {task} run header: {tail(out, 5)}')
        rows = [json.loads(line) for line in (work / 'runs' / task / 'metrics.jsonl').read_text().splitlines()]
        key = 'mIoU' if task == 'semantic-fpn' else 'bbox_AP'
        if len(rows) != 2 or not all(math.isfinite(r['train_loss']) and math.isfinite(r[key]) for r in rows):
            raise Failed(f'{task}: rows {rows}')
        done = lit(ctx, 'eval', '--checkpoint', work / 'runs' / task / 'checkpoints' / 'last.pt', '--device',
                   ctx.device, '--out', work / f'eval-{task}', '--json', timeout=240)
        result = parse_json_output(done.stdout)
        ctx.figures[task] = dict(train_loss=rows[-1]['train_loss'], run_metric=rows[-1][key], eval_metric=result[key],
                                 img_per_s=rows[-1]['img_per_s'], epoch_time_s=rows[-1]['epoch_time_s'])
        if abs(result[key] - rows[-1][key]) > 2.0:
            raise Failed(f'{task}: lit eval {key} {result[key]:.2f} vs the run\'s last epoch {rows[-1][key]:.2f}')
        summary.append(f'{task} {rows[-1]["img_per_s"]:.0f} img/s, {key} {rows[-1][key]:.1f} (eval {result[key]:.1f})')
    ctx.summary = '; '.join(summary) + ('' if 'retinanet' in tasks else '; retinanet skipped: no pycocotools')


PARTS = [
    Part('env', 'versions, device, DTM backend (lit env)', part_env, 60),
    Part('tests', 'pytest -m gpu (tests/), less the amp and compile ones', part_tests, 180, needs=('pytest',)),
    Part('dtm', 'DTM torchvision vs pure: parity, speed', part_dtm, 90),
    Part('dtm-share', "DTM's share of a LIT-S train step, per backend", part_dtm_share, 90),
    Part('amp', 'every variant fwd+bwd, bf16 and fp16', part_amp, 120),
    Part('speed-infer', 'LIT-S vs Swin-T bf16 inference', lambda c: speed(c, 'infer', False), 90),
    Part('speed-train', 'LIT-S vs Swin-T bf16 train step', lambda c: speed(c, 'train', False), 120),
    Part('mem1024', 'peak memory at 1024x1024', part_mem1024, 120),
    Part('resume', 'torchrun lit train, SIGKILL, --resume auto', part_resume, 180, cpu_timeout=600,
         needs=('yaml', 'PIL')),
    Part('train-amp', 'lit train --amp bf16, 1 epoch of the mini set', part_train_amp, 120, needs=('yaml',)),
    Part('figures', 'lit attn-maps, viz-offsets, offsets on the device', part_figures, 120, needs=('matplotlib',)),
    Part('dense', 'dense backbones parity, the six models bf16, lit detect/segment', part_dense, 150,
         needs=('PIL',)),
    Part('dense-train', 'lit train --task semantic-fpn (and retinanet) bf16, lit eval', part_dense_train, 180,
         cpu_timeout=300, needs=('yaml', 'PIL')),
    Part('compile-infer', 'compiled = eager test; speed-infer under torch.compile', lambda c: speed(c, 'infer', True),
         240, cuda_only='torch.compile takes minutes on a CPU', slow=True, min_s=90),
    Part('compile-train', 'compiled = eager test; speed-train under torch.compile', lambda c: speed(c, 'train', True),
         300, cuda_only='torch.compile takes minutes on a CPU', slow=True, min_s=120),
]
BY_NAME = {p.name: p for p in PARTS}


# ---------------------------------------------------------------------------------------------------------------
# Running a part (child process) and the whole check (parent)


def run_child(args) -> int:
    part = BY_NAME[args.child]
    ctx = Ctx(args.device, Path(args.workdir), args.quick, args.limit, args.resume_workers)
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    result = {'status': 'pass'}
    inject = dict(kv.split('=', 1) for kv in os.environ.get(INJECT_ENV, '').split(',') if '=' in kv)
    try:
        if inject.get(part.name) == 'fail':
            raise Failed(f'injected failure ({INJECT_ENV})')
        if inject.get(part.name) == 'hang':
            time.sleep(10 ** 6)
        import torch  # noqa: F401  (import errors are this part's failure)
        part.fn(ctx)
    except Skip as e:
        result = {'status': 'skip', 'reason': str(e)}
    except Failed as e:
        result = {'status': 'fail', 'reason': str(e)}
    except Exception as e:  # noqa: BLE001  (any other error is this part's failure, recorded with its traceback)
        traceback.print_exc()
        result = {'status': 'fail', 'reason': f'{type(e).__name__}: {e}'[:500]}
    result.update(figures=ctx.figures, notes=ctx.notes, targets=ctx.targets, summary=ctx.summary)
    Path(args.result).write_text(json.dumps(result, indent=1, default=str))
    return 0


def missing_modules(part: Part):
    import importlib.util
    hidden = {m for m in os.environ.get(HIDE_ENV, '').split(',') if m}
    return [m for m in part.needs if m in hidden or importlib.util.find_spec(m) is None]


def run_part(part: Part, args, workdir: Path, timeout: float) -> dict:
    part_dir = workdir / part.name
    part_dir.mkdir(parents=True, exist_ok=True)
    result_file, log_file = part_dir / 'result.json', part_dir / 'log.txt'
    cmd = [sys.executable, str(Path(__file__).resolve()), '--child', part.name, '--device', args.device,
           '--workdir', str(part_dir), '--result', str(result_file), '--limit', str(timeout)]
    cmd += (['--quick'] if args.quick else []) + ['--resume-workers', str(args.resume_workers)]
    with open(log_file, 'w') as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=child_env(),
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            proc.wait()
            return {'status': 'timeout', 'reason': f'no result after {timeout:.0f} s (killed)',
                    'log_tail': tail(log_file.read_text(errors='replace'), 20)}
    if result_file.exists():
        result = json.loads(result_file.read_text())
        if result['status'] == 'fail':
            result['log_tail'] = tail(log_file.read_text(errors='replace'), 20)
        return result
    return {'status': 'fail', 'reason': f'the part process exited {rc} without a result',
            'log_tail': tail(log_file.read_text(errors='replace'), 20)}


def fmt_table(report: dict) -> str:
    rows = [('part', 'status', 'key figures', 's')]
    for p in report['parts']:
        what = (p.get('reason') if p['status'] == 'skip' else p.get('summary')) or p.get('reason') or ''
        if p['status'] in ('fail', 'timeout') and p.get('summary') and p.get('reason'):
            what = f"{p['summary']} | {p['reason']}"
        rows.append((p['name'], p['status'].upper() if p['status'] in ('fail', 'timeout') else p['status'],
                     what, f"{p['seconds']:.0f}" if p.get('seconds') is not None else '-'))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = 88
    lines = []
    for i, (a, b, c, d) in enumerate(rows):
        wrapped = textwrap.wrap(c, w2) or ['']
        lines.append(f'{a:<{w0}}  {b:<{w1}}  {wrapped[0]:<{w2}}  {d:>4}')
        lines += [f"{'':<{w0}}  {'':<{w1}}  {cont:<{w2}}" for cont in wrapped[1:]]
        if i == 0:
            lines.append('-' * (w0 + w1 + w2 + 10))
    c = report['counts']
    lines.append('-' * (w0 + w1 + w2 + 10))
    lines.append(f"{c['pass']} pass, {c['fail']} fail, {c['timeout']} timeout, {c['skip']} skip; "
                 f"{report['total_s']:.0f} s of a {report['budget_s']:.0f} s budget on {report['device']}")
    for t in report['targets']:
        v = t['value']
        shown = f'{v:.0%}' if '%' in t['target'] else f'{v:.2f}'
        lines.append(f"target {'met   ' if t['met'] else 'MISSED'} {t['name']}: {shown} ({t['target']})")
    for p in report['parts']:
        for note in p.get('notes') or []:
            lines.append(f"note   {p['name']}: {note}")
    return '\n'.join(line.rstrip() for line in lines)


def versions() -> dict:
    from importlib import metadata
    import platform
    out = {'python': platform.python_version()}
    for dist in ('torch', 'torchvision', 'timm', 'typer', 'rich', 'pyyaml', 'matplotlib', 'fvcore', 'onnx', 'pytest'):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--device', choices=('cuda', 'cpu'), default='cuda',
                    help='cpu: a dry run of the plumbing at tiny sizes (CUDA-only parts skipped)')
    ap.add_argument('--parts', help=f"comma-separated subset, in any order (default: all): {', '.join(BY_NAME)}")
    ap.add_argument('--skip', help='comma-separated parts to leave out')
    ap.add_argument('--quick', action='store_true', help='no torch.compile parts or test, fewer repeats')
    ap.add_argument('--out', default=str(ROOT / 'runs' / 'gpu-check' / 'report.json'), help='JSON report path')
    ap.add_argument('--workdir', help='keep every part\'s logs and outputs here (default: a temporary folder, '
                                      'removed unless a part failed)')
    ap.add_argument('--budget', type=float, help='seconds for the whole check (default: 450 on cuda, 1800 on cpu); '
                                                 'parts that would start after it are skipped')
    ap.add_argument('--timeout', action='append', default=[], metavar='PART=S', help='override a part\'s time limit')
    ap.add_argument('--resume-workers', type=int, default=2, metavar='N',
                    help='DataLoader workers (-j) of the resume part\'s trainings (default 2: a run resumed mid-epoch '
                         'with workers is bit-identical since issue 19)')
    ap.add_argument('--list', action='store_true', help='list the parts and exit')
    ap.add_argument('--child', help=argparse.SUPPRESS)
    ap.add_argument('--result', help=argparse.SUPPRESS)
    ap.add_argument('--limit', type=float, default=3600, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return run_child(args)
    if args.list:
        for p in PARTS:
            print(f'{p.name:14s} {p.title}  (limit {p.timeout} s on cuda)')
        return 0
    names = [n.strip() for n in (args.parts or ','.join(BY_NAME)).split(',') if n.strip()]
    unknown = [n for n in names + (args.skip or '').split(',') if n and n not in BY_NAME]
    if unknown:
        print(f"gpu-check: unknown part(s) {', '.join(unknown)}; choose from {', '.join(BY_NAME)}", file=sys.stderr)
        return 2
    try:
        overrides = {k: float(v) for k, v in (t.split('=', 1) for t in args.timeout)}
    except ValueError:
        print('gpu-check: --timeout takes PART=SECONDS', file=sys.stderr)
        return 2
    skip = set((args.skip or '').split(','))
    selected = [p for p in PARTS if p.name in names and p.name not in skip]

    # The device first: without CUDA, one line and exit 1 (nothing run, nothing written).
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            import torch
            cuda = torch.cuda.is_available()
    except Exception as e:  # noqa: BLE001
        print(f'gpu-check: cannot import torch with {sys.executable} ({type(e).__name__}: {e})', file=sys.stderr)
        return 1
    if args.device == 'cuda' and not cuda:
        print(f'gpu-check: no CUDA device found (torch {torch.__version__}, CUDA build {torch.version.cuda}); '
              f'nothing was run (--device cpu for a CPU dry run)', file=sys.stderr)
        return 1

    budget = args.budget or DEFAULT_BUDGET[args.device]
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix='lit-gpu-check-'))
    workdir.mkdir(parents=True, exist_ok=True)
    env = versions()
    if args.device == 'cuda':
        env.update(gpu=torch.cuda.get_device_name(0), cuda_build=torch.version.cuda)
    print(f"gpu-check on {env.get('gpu', 'cpu (dry run)')}: python {env['python']}, torch {env['torch']}, "
          f"torchvision {env['torchvision']}, timm {env['timm']}; {len(selected)} parts, budget {budget:.0f} s, "
          f'logs in {workdir}', flush=True)
    report = {'tool': 'benchmarks/gpu_check.py', 'device': args.device, 'quick': args.quick, 'env': env,
              'budget_s': budget, 'workdir': str(workdir), 'started': time.strftime('%Y-%m-%dT%H:%M:%S'),
              'parts': []}
    t_start = time.monotonic()
    for i, part in enumerate(selected, 1):
        entry = {'name': part.name, 'title': part.title}
        left = budget - (time.monotonic() - t_start)
        missing = missing_modules(part)
        limit = overrides.get(part.name, part.timeout if args.device == 'cuda' else part.cpu_timeout)
        if args.device == 'cpu' and part.cuda_only:
            entry.update(status='skip', reason=f'CUDA only ({part.cuda_only})')
        elif args.quick and part.slow:
            entry.update(status='skip', reason='--quick')
        elif missing:
            entry.update(status='skip', reason=f"{', '.join(missing)} not installed")
        elif left < min(part.min_s, limit):
            entry.update(status='skip', reason=f'time budget used up ({budget:.0f} s, --budget)')
        else:
            timeout = min(limit, left)
            t0 = time.monotonic()
            print(f'[{i}/{len(selected)}] {part.name}: {part.title} (limit {timeout:.0f} s) ...', flush=True)
            entry.update(run_part(part, args, workdir, timeout), timeout_s=timeout)
            entry['seconds'] = time.monotonic() - t0
        print(f"[{i}/{len(selected)}] {part.name}: {entry['status']}"
              + (f" in {entry['seconds']:.0f} s" if 'seconds' in entry else '')
              + (f" - {entry.get('summary') or entry.get('reason') or ''}"), flush=True)
        report['parts'].append(entry)
    # Derived figures: compile speed-up over eager when both ran.
    by = {p['name']: p for p in report['parts']}
    for mode in ('infer', 'train'):
        eager, comp = by.get(f'speed-{mode}', {}), by.get(f'compile-{mode}', {})
        if eager.get('status') == 'pass' and comp.get('status') == 'pass':
            comp['figures']['speedup_over_eager'] = {m: comp['figures']['img_per_s'][m] / v for m, v in
                                                     eager['figures']['img_per_s'].items()
                                                     if m in comp['figures']['img_per_s']}
    report['total_s'] = time.monotonic() - t_start
    report['counts'] = {s: sum(p['status'] == s for p in report['parts']) for s in ('pass', 'fail', 'timeout', 'skip')}
    report['targets'] = [dict(t, part=p['name']) for p in report['parts'] for t in p.get('targets', [])]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    bad = [p for p in report['parts'] if p['status'] in ('fail', 'timeout')]
    for p in bad:
        print(f"\n--- {p['name']} {p['status']}: {p.get('reason', '')}\n{p.get('log_tail', '')}")
    print()
    print(fmt_table(report))
    print(f'report: {out}')
    if not args.workdir:
        if bad:
            print(f'logs of the failed parts kept in {workdir}')
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())

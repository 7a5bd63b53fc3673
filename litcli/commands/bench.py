"""``lit bench``: images/s, ms/step, peak memory and share of the device's GEMM rate of LIT and other timm models,
or (``--task``) of a dense LIT model and its ResNet-50 counterpart, timed interleaved in one run (the method is
``core.analysis.benchmark``'s)."""
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from litcli.core.analysis.benchmark import OP_KINDS, BenchConfig, run_bench, size_text
from litcli.core.errors import UsageError


def print_bench(report: Dict, console=None):
    from rich.console import Console
    from rich.table import Table
    console = console or Console()
    for block in report['results']:
        table = Table(title=f"{report['mode']} @ {size_text(block['img_size'])}, {report['device']}, "
                            f"{report['amp']}, {report['threads']} threads, batch {report['batch_size']}, "
                            f"median of {report['repeats']} interleaved"
                            + (f", drop path {report['drop_path']}" if report.get('drop_path') is not None else ''))
        for col in ('model', 'img/s (min-max)', 'ms/step', 'peak MB', 'GMACs', 'GFLOP/s', '% of GEMM', 'ratio'):
            table.add_column(col, justify='left' if col == 'model' else 'right')
        for r in block['rows']:
            if 'error' in r:
                table.add_row(r['model'], r['error'], *[''] * 6)
                continue
            fmt = lambda v, f: (f.format(v) if v is not None else '-')  # noqa: E731
            table.add_row(r['model'] + (f" (batch {r['batch_size']})" if r['batch_size'] != report['batch_size'] else ''),
                          f"{r['img_per_s']:.1f} ({r['img_per_s_min']:.1f}-{r['img_per_s_max']:.1f})",
                          f"{r['ms_per_step']:.0f}", fmt(r['peak_mem_mb'], '{:.0f}'), fmt(r['gmacs_per_img'], '{:.2f}'),
                          fmt(r.get('achieved_gflops'), '{:.1f}'),
                          fmt(100 * r['share_of_gemm'] if r.get('share_of_gemm') else None, '{:.0f}%'),
                          fmt(r.get('ratio_to_first'), '{:.2f}x'))
        console.print(table)
        if report.get('profile'):
            print_profile(block, console)
    console.print(f"device GEMM rate: {report['gemm_gflops']:.1f} GFLOP/s; GFLOP/s = 2 x MACs x images (x3 in train "
                  f"mode) / step time.")
    if report.get('task'):
        console.print(DENSE_STEP_NOTE[report['mode']], markup=False)


def print_profile(block: Dict, console):
    """Share of one profiled step per kind of op, one row per model, and each model's top ops."""
    from rich.table import Table
    rows = [r for r in block['rows'] if r.get('profile') and 'error' not in r['profile']]
    if not rows:
        return
    kinds = [k for k, _ in OP_KINDS] + ['other']
    table = Table(title=f"where the time goes @ {size_text(block['img_size'])} (one profiled step, % of "
                        f"self time)")
    table.add_column('model')
    for kind in kinds:
        table.add_column(kind, justify='right')
    for r in rows:
        share = r['profile']['kinds_share']
        table.add_row(r['model'], *[f"{100 * share.get(k, 0):.0f}%" for k in kinds])
    console.print(table)
    for r in rows:
        tops = ', '.join(f"{t['op']} {100 * t['share']:.0f}%" for t in r['profile']['top_ops'])
        console.print(f"  {r['model']} top ops: {tops}")


def plot_sweep(report: Dict, path) -> str:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from litcli.core.io import save_figure

    sizes = [b['img_size'] for b in report['results']]
    models = [r['model'] for r in report['results'][0]['rows']]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for m in models:
        rows = [next(r for r in b['rows'] if r['model'] == m) for b in report['results']]
        ax1.plot(sizes, [r.get('img_per_s', math.nan) for r in rows], marker='o', label=m)
        ax2.plot(sizes, [r.get('peak_mem_mb') or math.nan for r in rows], marker='o', label=m)
    ax1.set(xlabel='input size (px)', ylabel='images / s', title=f"{report['mode']} throughput")
    ax2.set(xlabel='input size (px)', ylabel='peak memory (MB)', title='peak memory per step')
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, 'choose another --plot', dpi=110)
    return str(path)


def write_csv(report: Dict, path) -> str:
    from litcli.core.io import write_csv

    cols = ['img_size', 'model', 'batch_size', 'img_per_s', 'img_per_s_min', 'img_per_s_max', 'ms_per_step',
            'peak_mem_mb', 'gmacs_per_img', 'achieved_gflops', 'share_of_gemm', 'ratio_to_first', 'error']
    rows = [{'img_size': block['img_size'] if isinstance(block['img_size'], int) else size_text(block['img_size']),
             **row} for block in report['results'] for row in block['rows']]
    write_csv(path, [cols] + [[r.get(c) for c in cols] for r in rows], 'choose another --csv')
    return str(path)


def square_sizes(sizes: Sequence[Union[int, Tuple[int, int]]]) -> List[int]:
    """Input sizes as ``lit flops`` takes them (N or (H, W), as ``cli.parse_sizes`` gives) -> the side of each
    square input, each checked (a multiple of 32); a non-square size is a UsageError (bench times square inputs)."""
    from litcli.core.config import checked_img_size

    sides = []
    for size in sizes:
        h, w = (size, size) if isinstance(size, int) else size
        if h != w:
            raise UsageError(f'--img-size {h}x{w}: lit bench times square inputs; give N or NxN (lit flops counts '
                             f'any HxW)')
        sides.append(checked_img_size(h))
    return sides


# What one timed step of a dense model covers (printed under the tables).
DENSE_STEP_NOTE = {
    'infer': 'Dense models: a step is the whole forward on a list of images: transform (normalise, pad; no resize), '
             'network, post-processing (decoding, NMS, mask pasting), as deployed. ratio: images/s against the LIT '
             'model (first row).',
    'train': 'Dense models: a step is the losses on three fixed boxes (and masks) per image, or random labels for '
             'Semantic FPN, backward and an AdamW step. ratio: images/s against the LIT model (first row).',
}
# `lit bench --task` default sizes (H, W): a CPU's; on a GPU the paper's (dense_flops.PAPER_SIZES).
CPU_DENSE_SIZES = {'retinanet': (320, 512), 'mask_rcnn': (320, 512), 'semantic_fpn': (512, 512)}


def dense_sizes(task: str, sizes: Sequence[Union[int, Tuple[int, int]]], device: str) -> List[Tuple[int, int]]:
    """(H, W) of each size given (N or (H, W), at least 32 a side), by default the paper's on a GPU and a CPU's
    (``CPU_DENSE_SIZES``) otherwise."""
    from litcli.core.analysis.dense_flops import PAPER_SIZES, TASKS, checked_dense_size

    if not sizes:
        return [(CPU_DENSE_SIZES if device == 'cpu' else PAPER_SIZES)[TASKS[task]]]
    return [checked_dense_size(size) for size in sizes]


def run(variant: str, compare: Sequence[str] = (), cfg: Optional[BenchConfig] = None,
        sizes: Sequence[Union[int, Tuple[int, int]]] = (), as_json: bool = False, csv_path: Optional[Path] = None,
        plot: Optional[Path] = None, task: Optional[str] = None) -> Dict:
    """``lit bench``: validate, measure, print / write. ``sizes``: N or (N, N) each (default: ``cfg.img_size``);
    ``cfg``'s device and autocast dtype are resolved as every command resolves them (``core.runtime``).
    ``task`` ('retinanet' | 'mask-rcnn' | 'semantic-fpn', ``variant`` 'ti' | 's'): that dense LIT model beside its
    ResNet-50 counterpart instead, at any H x W (default: ``dense_sizes``)."""
    import json
    import sys
    from dataclasses import replace

    from litcli.core.analysis.benchmark import resolve_bench_config
    from litcli.core.modelio.factory import check_model_names

    cfg = resolve_bench_config(cfg or BenchConfig())  # a bad mode, device or dtype fails before any model is built
    if task is not None:
        from litcli.core.analysis.dense_flops import baseline_of, dense_model_name

        variant = dense_model_name(task, variant)
        compare = [baseline_of(variant)]
        sides = dense_sizes(task, sizes, cfg.device.split(':')[0])
    else:
        check_model_names(list(compare))  # unknown names fail now, with a suggestion
        sides = square_sizes(sizes or [cfg.img_size])
    cfg = replace(cfg, img_size=sides[0])
    log = (lambda s: print(s, file=sys.stderr)) if as_json else print
    report = run_bench(variant, list(compare), cfg, sides, log=log)
    if task is not None:
        report['task'] = task
    if as_json:
        print(json.dumps(report, indent=1))
    else:
        print_bench(report)
    if csv_path:
        log(f'CSV written to {write_csv(report, csv_path)}')
    if plot:
        log(f'plot written to {plot_sweep(report, plot)}')
    return report

"""``lit flops``: parameters and GMACs (the papers' "FLOPs") per stage, compared with any timm model, as tables,
JSON or a resolution sweep plot; with ``--task``, a dense model's (Tables 6-8) by part. The counting rules are
``core.analysis.flops``'s."""
import json
import warnings
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from litcli.core.errors import UsageError
from litcli.core.analysis.flops import STAGE_PARTS, flops_report


def _public(report: Dict) -> Dict:
    """The JSON view: numbers only, no live objects."""
    return {**report, 'results': [{k: v for k, v in r.items() if not k.startswith('_')} for r in report['results']]}


def write_json(report: Dict, path: Optional[Path] = None) -> str:
    text = json.dumps(_public(report), indent=2)
    if path is not None:  # atomic, with a normal file's permissions
        from litcli.core.io import write_text
        write_text(path, text + '\n', 'choose another --json-file')
    return text


def print_report(report: Dict, two_x: bool = False, depth: int = 0, console=None):
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    scale = 2 if two_x else 1
    unit = 'GFLOPs (2xMAC)' if two_x else 'GMACs (FLOPs in papers)'
    g = lambda macs: f'{scale * macs / 1e9:.3f}'  # noqa: E731
    batch = report['batch']

    summary = Table(title=f'Parameters and {unit}, batch {batch}')
    for col, just in (('model', 'left'), ('input', 'left'), ('params', 'right'), ('w/o head', 'right'),
                      (unit, 'right'), ('paper', 'right'), ('attn matmuls', 'right'), ('DTM sampling*', 'right')):
        summary.add_column(col, justify=just)
    for r in report['results']:
        size = 'x'.join(map(str, r['img_size']))
        if 'error' in r:
            summary.add_row(r['model'], size, '', '', f"n/a: {r['error'][:60]}", '', '', '')
            continue
        paper = r.get('paper')
        paper_txt = f"{paper['params_m']}M / {scale * paper['gmacs']:.1f}G" if paper else ''
        share = f"{g(r['attn_matmul_macs'])} ({100 * r['attn_matmul_macs'] / max(r['macs'], 1):.1f}%)"
        summary.add_row(r['model'], size, f"{r['params'] / 1e6:.2f}M", f"{r['params_without_head'] / 1e6:.2f}M",
                        g(r['macs']), paper_txt, share, g(r['dtm_sampling_macs']) if r['stages'] else '')
    console.print(summary)
    console.print("Paper params (19/27/48/86M) are the counts [b]without[/b] the classifier head, truncated. "
                  "*Bilinear sampling in DTM is not in the total (the paper leaves it out).")

    for r in report['results']:
        if not r.get('stages'):
            continue
        size = 'x'.join(map(str, r['img_size']))
        table = Table(title=f"{r['model']} at {size}: {unit} per stage")
        for col in ('part', 'MLP', 'attn qkv/proj', 'attn matmuls', 'DTM', 'other', 'total', 'share'):
            table.add_column(col, justify='left' if col == 'part' else 'right')
        for row in r['stages']:
            table.add_row(row['name'], *(g(row[p]) for p in STAGE_PARTS), g(row['total']),
                          f"{100 * row['total'] / max(r['macs'], 1):.1f}%")
        table.add_row('[b]total[/b]', *(g(sum(row[p] for row in r['stages'])) for p in STAGE_PARTS),
                      f"[b]{g(r['macs'])}[/b]", '100%')
        console.print(table)
        console.print('DTM = offset conv + deformable 2x2/s2 conv counted as a plain conv + BatchNorm (for the '
                      'uniform-merge ablations: their merge); the merge producing stage i is in stage i. '
                      'other = stem conv and LayerNorms. head = final norm + classifier.')
        if depth > 0:
            _print_module_table(r, depth, console)

    counters = {r['counter'] for r in report['results'] if 'counter' in r}
    console.print(f"Counter: {', '.join(sorted(counters))}.")
    notes = {n for r in report['results'] for n in r.get('notes', [])}
    for note in sorted(notes):
        console.print(f'[yellow]{note}[/yellow]')
    print_uncounted(report['results'], console)


def print_uncounted(results: Sequence[Dict], console):
    """Unsupported ops are listed, never silently dropped (once per model)."""
    seen = set()
    for r in results:
        if r.get('unsupported_ops') and r['model'] not in seen:
            seen.add(r['model'])
            ops = ', '.join(f'{op} x{n}' for op, n in sorted(r['unsupported_ops'].items()))
            console.print(f"Counted as 0 in {r['model']} (no MAC rule; elementwise ops are 0 in the papers): {ops}",
                          markup=False)


PAPER_TABLES = {'retinanet': 'Table 6', 'mask_rcnn': 'Table 7', 'semantic_fpn': 'Table 8'}


def print_dense_report(report: Dict, two_x: bool = False, console=None):
    """``lit flops --task``: one table of parameters and MACs by part per input size, the paper's cell, what was
    counted."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    scale, unit = (2, 'GFLOPs (2xMAC)') if two_x else (1, 'GMACs')
    for r in report['results']:
        size, counted = 'x'.join(map(str, r['img_size'])), 'x'.join(map(str, r['input_size']))
        padded = f' (padded to {counted})' if counted != size else ''
        table = Table(title=f"{r['model']} at {size}{padded}: parameters and {unit} by part")
        for col in ('part', 'params', 'params (M)', unit):
            table.add_column(col, justify='left' if col == 'part' else 'right')
        for part in ('backbone', 'neck', 'heads', 'total'):
            bold = '[b]{}[/b]' if part == 'total' else '{}'
            table.add_row(bold.format(part), bold.format(f"{r['params'][part]:,}"),
                          bold.format(f"{r['params'][part] / 1e6:.2f}"),
                          bold.format(f"{scale * r['macs'][part] / 1e9:.2f}"))
        console.print(table)
        paper = r.get('paper_params_m')
        if paper is not None:
            console.print(f"Params {r['params']['total']:,} = {r['params_m']} M, {r['params_m_rounded']} M rounded; "
                          f"the paper ({PAPER_TABLES[r['task']]}): {paper} M.")
        console.print(f"Counted: {r['counted']}. Bilinear sampling in DTM is not in the total (the paper's rule).",
                      markup=False)
    console.print(f"Counter: {report['results'][0]['counter']}; the paper's FLOPs size: "
                  f"{'x'.join(map(str, report['paper_sizes']))}.")
    for note in sorted({n for r in report['results'] for n in r.get('notes', [])}):
        console.print(f'[yellow]{note}[/yellow]')
    print_uncounted(report['results'], console)


def _print_module_table(result: Dict, depth: int, console):
    count = result['_count']
    console.print(f"Per module, {result['model']} (#flops = MACs):")
    if count.analysis is not None:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            from fvcore.nn import flop_count_table
            table = flop_count_table(count.analysis, max_depth=depth, show_param_shapes=False)  # cached results
        console.print(table, markup=False)
    else:
        for name, macs in sorted(count.by_module.items()):
            if name.count('.') < depth:
                console.print(f'{name or "model"}: {macs / 1e9:.3f} GMACs', markup=False)


def plot_sweep(report: Dict, path: Path) -> Path:
    """GMACs against input pixels (log-log) for every model of the sweep; one line per model."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from litcli.core.io import save_figure

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    try:
        by_model: Dict[str, List[Tuple[int, float, str]]] = {}
        for r in report['results']:
            if 'error' not in r:
                h, w = r['img_size']
                by_model.setdefault(r['model'], []).append((h * w, r['macs'] / 1e9 / r['batch'], f'{h}x{w}'))
        for name, pts in by_model.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker='o',
                    lw=2.5 if name == report['variant'] else 1.5, label=name)
        sizes = sorted({p[0]: p[2] for pts in by_model.values() for p in pts}.items())
        ax.set_xscale('log')
        ax.set_yscale('log')
        ax.set_xticks([s[0] for s in sizes], [s[1] for s in sizes], rotation=30)
        ax.minorticks_off()
        ax.set_xlabel('input size (H x W)')
        ax.set_ylabel('GMACs per image')
        ax.set_title('Compute against resolution')
        ax.grid(True, alpha=.3)
        ax.legend()
        fig.tight_layout()
        path = Path(path)
        save_figure(fig, path, 'choose another --plot', dpi=120)
    finally:
        plt.close(fig)
    return path


def msa_stages_without(name: str, removed: Sequence[int]) -> Tuple[int, ...]:
    """The model's attention stages minus ``removed``: the paper's 'w/o MSA in stages ...' (Table 5)."""
    from litcli.models.lit import LIT_ARCHS
    if name not in LIT_ARCHS:
        raise UsageError(f'--remove-msa applies to LIT-family models (e.g. pvt_s_msa), not {name}')
    have = set(LIT_ARCHS[name].get('msa_stages', (3, 4)))
    if not removed or not set(removed) <= have:
        raise UsageError(f'--remove-msa {",".join(map(str, removed))}: {name} has attention in stages '
                         f'{",".join(map(str, sorted(have))) or "none"}')
    return tuple(sorted(have - set(removed)))


def run_dense(task: str, variant: str, img_sizes: Optional[Sequence[Tuple[int, int]]] = None, two_x: bool = False,
              counter: str = 'auto', json_out: bool = False, json_file: Optional[Path] = None) -> Dict:
    """``lit flops --task``: a dense model's parameters and MACs by part (default size: the paper's)."""
    from litcli.core.analysis.dense_flops import dense_flops_report

    if json_file is not None and not Path(json_file).resolve().parent.is_dir():
        raise UsageError(f'cannot write {json_file}: folder {Path(json_file).parent} does not exist')
    report = dense_flops_report(task, variant, img_sizes, counter)
    if json_file is not None:
        write_json(report, json_file)
    if json_out:
        print(write_json(report))
    else:
        print_dense_report(report, two_x=two_x)
        if json_file is not None:
            print(f'JSON written to {json_file}')
    return report


def run(variant: str, img_sizes: Sequence[Tuple[int, int]] = ((224, 224),), batch: int = 1,
        compare: Sequence[str] = (), two_x: bool = False, depth: int = 0, counter: str = 'auto',
        json_out: bool = False, json_file: Optional[Path] = None, plot: Optional[Path] = None,
        remove_msa: Optional[Sequence[int]] = None) -> Dict:
    """``lit flops``: validate everything first (cheap), then count, then print / write."""
    from litcli.core.config import checked_img_size

    model_kwargs = {'msa_stages': msa_stages_without(variant, remove_msa)} if remove_msa else None
    for h, w in img_sizes:
        for side in (h, w):
            checked_img_size(side, what=f'--img-size {h}x{w}: side')
    if counter not in ('auto', 'fvcore', 'torch'):
        raise UsageError(f"--counter must be auto, fvcore or torch, got {counter!r}")
    for target in (json_file, plot):
        if target is not None and not Path(target).resolve().parent.is_dir():
            raise UsageError(f'cannot write {target}: folder {Path(target).parent} does not exist')
    report = flops_report(variant, img_sizes, batch, list(compare), counter, keep_analysis=depth > 0,
                          model_kwargs=model_kwargs)
    if json_file is not None:
        write_json(report, json_file)
    if json_out:
        print(write_json(report))
    else:
        print_report(report, two_x=two_x, depth=depth)
        if json_file is not None:
            print(f'JSON written to {json_file}')
    if plot is not None:
        path = plot_sweep(report, plot)
        print(f'Plot written to {path}', file=sys.stderr if json_out else sys.stdout)
    return report

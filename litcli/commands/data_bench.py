"""``lit data bench``: images/s of the input pipeline alone (decode + the recipe's training transforms) for several
worker counts (the work is ``core.databench``'s)."""
from typing import Dict, Optional, Sequence


def run(data: str, workers: Sequence[int], variant: str = 'lit_s', img_size: Optional[int] = None,
        batch_size: int = 64, batches: int = 10, warmup: int = 2, data_dir: Optional[str] = None,
        quiet: bool = False) -> Dict:
    """Images/s of ``data``'s input pipeline for each worker count in ``workers`` (at least one, each >= 0)."""
    from rich.console import Console

    from litcli.core.data.bench import bench_pipeline
    from litcli.core.errors import UsageError

    if not workers or min(workers) < 0:
        raise UsageError(f'--workers {",".join(map(str, workers))!r}: give worker counts >= 0, e.g. 0,1,2,4')

    console = Console(stderr=True)
    log = None if quiet else (lambda m: console.print(m, highlight=False))
    return bench_pipeline(data, workers, variant=variant, img_size=img_size, batch_size=batch_size,
                          batches=batches, warmup=warmup, data_dir=data_dir, log=log)


def print_result(result: Dict, as_json: bool = False):
    import json

    from rich.console import Console
    from rich.table import Table

    if as_json:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f'input pipeline of {result["variant"]}\'s recipe at {result["img_size"]} px, batch '
                        f'{result["batch_size"]}: {result["data"]}')
    for col in ('workers', 'img/s', 'ms/batch', 'vs 0 workers' if result['rows'][0]['workers'] == 0 else 'vs first'):
        table.add_column(col, justify='right')
    for r in result['rows']:
        table.add_row(str(r['workers']), f'{r["img_per_s"]:.1f}',
                      f'{r["ms_per_batch"]:.0f}' if r['ms_per_batch'] is not None else '-',
                      f'{r["speedup"]:.2f}x' if r['speedup'] else '-')
    Console().print(table)
    bpi = result['rows'][-1].get('bytes_per_image')
    if bpi:
        Console().print(f'{bpi:,} bytes per image cross to the device as uint8 ({4 * bpi:,} as float32); a run '
                        f'needs the workers to deliver at least the img/s its training step consumes '
                        f'(lit train logs the data-wait share).', highlight=False, soft_wrap=True)

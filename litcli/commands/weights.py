"""``lit weights``: the released ImageNet-1k weights (paper top-1, GMACs, URL), whether and where each is cached,
and ``--download`` to fetch some into the cache ahead of time (a machine with network, before going offline)."""
import json
from typing import Dict, Optional, Sequence


def run(download: Optional[Sequence[str]] = None) -> Dict:
    """Download (and verify) the released weights of the ``download`` variants ('lit_s', ...) that are not cached
    yet, then list every release: ``{'cache_dir', 'weights': [{variant, top1, gmacs, params_m, url, cached, path,
    bytes}], 'downloaded': [...]}``. Progress and errors of a download name the URL and the cache path."""
    from litcli.core.modelio.factory import pretrained_file
    from litcli.core.modelio.weights import cache_dir, cached, listing

    downloaded = []
    for variant in download or ():
        if cached(variant) is None:
            pretrained_file(variant)
            downloaded.append(variant)
    return dict(cache_dir=str(cache_dir()), weights=listing(), downloaded=downloaded)


def print_result(result: Dict, as_json: bool = False):
    """A table (rich on a terminal, plain lines elsewhere) and where the files come from and go, or JSON."""
    if as_json:
        print(json.dumps(result, indent=2))
        return
    from litcli.core.report import print_lines, print_table

    rows = [(w['variant'], f'{w["top1"]:.1f}', f'{w["gmacs"]:.1f}', f'{w["params_m"]}M',
             f'yes ({w["bytes"] / 1e6:.0f} MB)' if w['cached'] else 'no') for w in result['weights']]
    print_table('Released LIT weights (ImageNet-1k, 224 px)', ['variant', 'top-1 %', 'GMACs', 'params', 'cached'],
                rows, right=(1, 2, 3))
    # One URL pattern and one folder for all four (the JSON lists each in full).
    first = result['weights'][0]
    lines = [f'{what}: {path.replace(first["variant"] + ".pth", "<variant>.pth")}'
             for what, path in (('URL', first['url']), ('cache', first['path']))]
    if result['downloaded']:
        lines.append(f'downloaded: {", ".join(result["downloaded"])}')
    elif not any(w['cached'] for w in result['weights']):
        lines.append('none cached: lit weights --download s (or any command with --pretrained) downloads one; '
                     'TORCH_HOME moves the cache')
    print_lines(lines)

"""``lit weights``: the released weights (ImageNet-1k classifiers: paper top-1, GMACs; the six COCO / ADE20K dense
models: paper AP / mIoU, parameters), their URL, whether and where each is cached, and ``--download`` to fetch some
into the cache ahead of time (a machine with network, before going offline)."""
import json
from typing import Dict, Optional, Sequence


def run(download: Optional[Sequence[str]] = None) -> Dict:
    """Download (and verify) the released weights named in ``download`` ('lit_s' or 's', 'pvt_s_msa',
    'retinanet_lit_ti', ...; 'all': every one) that are not cached yet, then list every release: ``{'cache_dir',
    'weights': [{variant, top1, gmacs, params_m, url, cached, path, bytes, problem}], 'dense': [{name, task, dataset,
    paper, params, url, cached, path, bytes, problem}], 'downloaded': [...]}``: ``cached`` only when the file in the
    cache holds that model's weights, ``problem`` says what a file there holds instead. Progress and errors of a
    download name the URL and the cache path; an unknown name is refused before any download, and a download over
    a wrong cached file is refused with what it holds."""
    from litcli.core.config import SHORT_NAMES
    from litcli.core.modelio.factory import pretrained_file
    from litcli.core.modelio.weights import cache_dir, cache_problem, cached, dense_listing, listing, published_url

    names = [SHORT_NAMES.get(n, n) for n in download or ()]
    if 'all' in names:
        names = [w['variant'] for w in listing()] + [m['name'] for m in dense_listing()]
    for name in names:
        published_url(name)  # a UsageError for a name without released weights
    downloaded = []
    for name in dict.fromkeys(names):
        if cached(name) is None or cache_problem(name):
            pretrained_file(name)  # a wrong cached file: refused, saying what it holds
            downloaded.append(name)
    return dict(cache_dir=str(cache_dir()), weights=listing(), dense=dense_listing(), downloaded=downloaded)


def print_result(result: Dict, as_json: bool = False):
    """A table (rich on a terminal, plain lines elsewhere) and where the files come from and go, or JSON."""
    if as_json:
        print(json.dumps(result, indent=2))
        return
    from litcli.core.report import print_lines, print_table

    def cache_state(row: Dict) -> str:
        return f'yes ({row["bytes"] / 1e6:.0f} MB)' if row['cached'] else 'no (another file there)' \
            if row.get('problem') else 'no'

    rows = [(w['variant'], f'{w["top1"]:.1f}', f'{w["gmacs"]:.1f}', f'{w["params_m"]}M', cache_state(w))
            for w in result['weights']]
    print_table('Released LIT weights (ImageNet-1k, 224 px)', ['variant', 'top-1 %', 'GMACs', 'params', 'cached'],
                rows, right=(1, 2, 3))
    dense_rows = [(m['name'], m['dataset'], ', '.join(f'{k} {v:.1f}' for k, v in m['paper'].items()),
                   f'{m["params"] / 1e6:.2f}M', cache_state(m))
                  for m in result['dense']]
    print_table('Released dense models (lit detect / lit segment)', ['name', 'dataset', 'paper', 'params', 'cached'],
                dense_rows, right=(3,))
    # The files sit in a few release folders and one cache folder (the JSON lists each URL and path in full).
    everything = result['weights'] + result['dense']
    folders = {}
    for row in everything:
        folder, file = row['url'].rsplit('/', 1)
        folders.setdefault(folder, []).append(file)
    lines = [f'URL: {folder}/ ({", ".join(files)})' for folder, files in folders.items()]
    lines.append(f'cache: {result["cache_dir"]}')
    lines += [f'not the release: {row["problem"]}; delete it to download the release again'
              for row in everything if row.get('problem')]
    if result['downloaded']:
        lines.append(f'downloaded: {", ".join(result["downloaded"])}')
    elif not any(w['cached'] for w in everything):
        lines.append('none cached: lit weights --download s (or any command with --pretrained) downloads one; '
                     'TORCH_HOME moves the cache')
    print_lines(lines)

#!/usr/bin/env python3
"""Structure figures of a litcli checkout (issue 28's before/after table): files per folder, the longest functions
(in the package and in commands/), and the import graph inside core/ (modules, edges).

    python benchmarks/structure.py [REPO]          # default: this checkout
"""
import ast
import collections
import sys
from pathlib import Path


def main(repo: Path):
    package = repo / 'litcli'
    per_folder = collections.Counter(str(p.parent.relative_to(repo)) for p in package.rglob('*.py'))
    print('files per folder:', ', '.join(f'{k} {v}' for k, v in sorted(per_folder.items())))
    lengths, edges, modules = [], set(), set()
    for path in package.rglob('*.py'):
        module = '.'.join(path.relative_to(repo).with_suffix('').parts)
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lengths.append((node.end_lineno - node.lineno + 1, f'{path.relative_to(repo)}:{node.name}'))
            if module.startswith('litcli.core') and isinstance(node, ast.ImportFrom) and \
                    (node.module or '').startswith('litcli.core') and node.module != module:
                edges.add((module, node.module))
        if module.startswith('litcli.core'):
            modules.add(module)
    lengths.sort()
    commands = [f for f in lengths if '/commands/' in f[1]]
    print('longest functions:', ', '.join(f'{n} {name}' for n, name in lengths[-3:][::-1]))
    print('longest in commands/:', ', '.join(f'{n} {name}' for n, name in commands[-3:][::-1]),
          f'({sum(1 for n, _ in commands if n > 80)} over 80 lines)')
    print(f'core/: {len(modules)} modules, {len(edges)} import edges between them')


if __name__ == '__main__':
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)

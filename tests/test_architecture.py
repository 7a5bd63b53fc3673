"""The package's shape (README "Architecture"): one-way imports cli -> commands -> core -> models, commands
independent, no import cycle, one place that builds a model, and a CLI that imports no torch."""
import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / 'litcli'


def lint_imports(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    pytest.importorskip('importlinter')
    lint = Path(sys.executable).with_name('lint-imports')
    command = [str(lint)] if lint.exists() else [sys.executable, '-m', 'importlinter.cli']
    env = {**os.environ, 'PYTHONPATH': str(pythonpath)}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_import_contracts_hold():
    result = lint_imports(REPO, REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert 'broken' in result.stdout and '0 broken' in result.stdout


@pytest.mark.parametrize('module, line, contract', [
    ('core/config.py', 'import litcli.commands.train', 'One way'),  # core importing a command
    ('commands/eval.py', 'import litcli.commands.predict', 'Commands never import each other'),
    ('models/spec.py', 'import litcli.core.errors', 'model package'),
    ('core/data/transforms.py', 'import litcli.core.data.datasets', 'No import cycles'),  # datasets imports transforms
    ('core/data/images.py', 'import litcli.core.training.engine', 'Inside core'),  # data below training
    ('core/errors.py', 'import litcli.core.data.images', 'Inside core'),  # the base modules below every group
])
def test_import_contracts_catch_a_violation(tmp_path, module, line, contract):
    """The contracts are real: the same check on a copy of the package with one bad import fails, naming it."""
    shutil.copytree(PACKAGE, tmp_path / 'litcli', ignore=shutil.ignore_patterns('__pycache__'))
    shutil.copy(REPO / 'pyproject.toml', tmp_path / 'pyproject.toml')
    target = tmp_path / 'litcli' / module
    target.write_text(target.read_text() + f'\n{line}  # injected by the test\n')
    result = lint_imports(tmp_path, tmp_path)
    assert result.returncode != 0
    broken = [ln for ln in result.stdout.splitlines() if ln.endswith('BROKEN')]
    assert any(contract in ln for ln in broken), result.stdout[-3000:]


def test_one_place_builds_a_model():
    """Outside litcli/models, only core/modelio/factory.py calls timm.create_model; everything else asks it."""
    sites = []
    for path in PACKAGE.rglob('*.py'):
        if 'models' in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr == 'create_model' and getattr(node.func.value, 'id', None) == 'timm':
                sites.append(f'{path.relative_to(PACKAGE)}:{node.lineno}')
    assert len(sites) == 1 and sites[0].startswith('core/modelio/factory.py'), sites


def test_cli_imports_no_torch():
    code = 'import sys, litcli.cli; print(sorted(m for m in ("torch", "timm", "numpy", "matplotlib") if m in sys.modules))'
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env={
        **os.environ, 'PYTHONPATH': str(REPO)}, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == '[]', out.stdout + out.stderr


def test_every_command_has_its_module():
    """A newcomer goes from `lit <command> --help` to the code in one hop: commands/<command>.py has run()."""
    from litcli.cli import app

    for command in app.registered_commands:
        name = (command.name or command.callback.__name__).replace('-', '_').rstrip('_')
        module = PACKAGE / 'commands' / f'{name}.py'
        assert module.exists(), name
        assert 'def run(' in module.read_text(), module


COMMAND_FUNCTION_LINES = 85  # "about 80": a command's function reads in one screen; more is set-up to split off


def test_no_command_function_is_long():
    """Every function in commands/ fits on a screen (``lit train`` is set-up pieces plus an epoch loop)."""
    long = []
    for path in sorted((PACKAGE / 'commands').glob('*.py')):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > COMMAND_FUNCTION_LINES:
                    long.append(f'{path.name}:{node.lineno} {node.name} ({lines} lines)')
    assert not long, long


def test_no_private_name_is_imported_from_another_module():
    """A ``_private`` helper is its module's own: another module that needs it gets a public function instead."""
    imports = []
    for path in PACKAGE.rglob('*.py'):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('litcli'):
                imports += [f'{path.relative_to(PACKAGE)}: {node.module}.{a.name}' for a in node.names
                            if a.name.startswith('_') and not a.name.startswith('__')]
    assert not imports, imports


def test_core_groups_and_their_files():
    """core/ is grouped (data, modelio, training, analysis) with a handful of base modules beside the groups."""
    core = PACKAGE / 'core'
    groups = sorted(p.name for p in core.iterdir() if (p / '__init__.py').exists())
    assert groups == ['analysis', 'data', 'modelio', 'training']
    base = sorted(p.stem for p in core.glob('*.py') if p.stem != '__init__')
    # factory/checkpoint: one-line aliases of the 0.1 import paths (the README showed them)
    assert base == ['checkpoint', 'config', 'envinfo', 'errors', 'factory', 'io', 'progress', 'report', 'runtime',
                    'seeding'], base
    for alias in ('factory', 'checkpoint'):
        assert len(ast.parse((core / f'{alias}.py').read_text()).body) <= 4  # docstring and imports only

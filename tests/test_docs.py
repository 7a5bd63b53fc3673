"""The documentation cannot drift from the code: the generated CLI reference equals what the app generates, the
site builds with `mkdocs build --strict` (broken links, anchors, pages missing from the nav fail), the README's
links resolve, and the version is the same in pyproject.toml, litcli/__init__.py and the CHANGELOG's newest
release."""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_generator():
    spec = importlib.util.spec_from_file_location('gen_cli_reference', ROOT / 'docs' / 'gen_cli_reference.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pinned(package: str):
    """The version requirements/constraints.txt pins for ``package`` (None when it pins none)."""
    for line in (ROOT / 'requirements' / 'constraints.txt').read_text().splitlines():
        name, _, version = line.partition('==')
        if name.strip().lower() == package:
            return version.strip()
    return None


def needs_pinned_typer():
    """The pages are generated with the pinned typer; another typer formats types and defaults its own way."""
    from importlib.metadata import version
    if version('typer') != pinned('typer'):
        pytest.skip(f'typer {version("typer")} is not the pinned {pinned("typer")} the reference is generated with')


def test_the_cli_reference_is_what_the_app_generates():
    needs_pinned_typer()
    problems = load_generator().differences()
    assert not problems, (f'docs/reference/cli/ differs from the CLI ({", ".join(problems)}): run `make docs-cli` '
                          'and commit the result')


def test_the_reference_check_fails_when_a_help_text_changes(monkeypatch, tmp_path):
    needs_pinned_typer()
    import litcli.cli
    generator = load_generator()
    before = generator.render_all()
    monkeypatch.setattr(litcli.cli.predict, '__doc__', 'A help text changed without regenerating the reference.')
    after = generator.render_all()
    assert sorted(name for name in before if before[name] != after[name]) == ['index.md', 'predict.md']
    for name, text in before.items():  # the committed pages, as they were
        (tmp_path / name).write_text(text, encoding='utf-8')
    assert generator.differences(tmp_path) == ['stale: index.md', 'stale: predict.md']


def test_every_command_has_a_page_with_every_flag():
    needs_pinned_typer()
    import typer.main

    from litcli.cli import app
    pages = load_generator().render_all()
    group = typer.main.get_command(app)
    stack = [(['lit'], group)]
    while stack:
        path, command = stack.pop()
        for name, sub in getattr(command, 'commands', {}).items():
            page = pages['-'.join([*path[1:], name]) + '.md']
            for param in sub.params:
                for flag in getattr(param, 'opts', []):
                    if flag.startswith('-'):
                        assert f'`{flag}' in page or f', {flag}' in page or f'/ {flag}' in page, (name, flag)
            stack.append(([*path, name], sub))


def test_the_site_builds_strict(tmp_path):
    pytest.importorskip('mkdocs', reason="the docs extra is not installed (pip install -e '.[docs]')")
    pytest.importorskip('material', reason="the docs extra is not installed (pip install -e '.[docs]')")
    result = subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '--strict', '--site-dir', str(tmp_path / 'site')],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, 'NO_MKDOCS_2_WARNING': '1'})
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / 'site' / 'reference' / 'cli' / 'train' / 'index.html').is_file()


def test_the_readme_links_resolve_and_the_quickstart_shows_both_commands():
    readme = (ROOT / 'README.md').read_text(encoding='utf-8')
    assert 'make demo' in readme and 'make test' in readme
    for target in re.findall(r'\]\(([^)\s]+)\)', readme):
        if re.match(r'[a-z]+:', target) or target.startswith('#'):
            continue
        path = target.split('#')[0]
        assert (ROOT / path).exists(), f'README links to {target}, which does not exist'


def released_versions():
    """[(version, date)] of the CHANGELOG's release headings, newest first."""
    text = (ROOT / 'CHANGELOG.md').read_text(encoding='utf-8')
    return re.findall(r'^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})$', text, flags=re.M)


def test_the_version_agrees_in_pyproject_the_package_and_the_changelog():
    import litcli
    project = re.search(r'^\[project\]$(.*?)^\[', (ROOT / 'pyproject.toml').read_text(encoding='utf-8'),
                        flags=re.M | re.S).group(1)
    declared = re.search(r'^version = "([^"]+)"', project, flags=re.M).group(1)
    releases = released_versions()
    assert litcli.__version__ == declared == releases[0][0], (litcli.__version__, declared, releases[0])


def test_the_changelog_keeps_unreleased_on_top_and_releases_in_order():
    text = (ROOT / 'CHANGELOG.md').read_text(encoding='utf-8')
    sections = re.findall(r'^## (.*)$', text, flags=re.M)
    assert sections[0] == '[Unreleased]', sections[0]
    releases = released_versions()
    assert len(releases) == len(sections) - 1, [s for s in sections[1:] if not re.match(r'\[\d', s)]
    keys = [tuple(int(part) for part in version.split('.')) for version, _ in releases]
    assert keys == sorted(keys, reverse=True) and len(set(keys)) == len(keys)
    dates = [date for _, date in releases]
    assert dates == sorted(dates, reverse=True)

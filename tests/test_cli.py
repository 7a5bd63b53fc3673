"""The command line: fast help, commands, one-line errors."""
import json
import subprocess
import sys

from typer.testing import CliRunner

from litcli.cli import app

runner = CliRunner()
ENV = {'COLUMNS': '160'}


def invoke(*args):
    return runner.invoke(app, list(args), prog_name='lit', env=ENV)


def test_cli_import_does_not_import_torch():
    code = 'import sys, litcli.cli; assert "torch" not in sys.modules and "timm" not in sys.modules, "heavy import"'
    subprocess.run([sys.executable, '-c', code], check=True)


def _help_rows(*group):
    """{command name: its one-line description} from the command panels of ``lit [GROUP] --help``."""
    result = invoke(*group, '--help')
    assert result.exit_code == 0, result.output
    rows = [line.strip('│ ').split(None, 1) for line in result.output.splitlines()
            if line.startswith('│ ') and line[2:3] != ' ']  # not a wrapped description's next line
    return {row[0]: row[1] if len(row) > 1 else '' for row in rows if not row[0].startswith('-')}


def test_help_lists_every_command():
    """Every registered command (sub-commands of groups too) has a row with a description in --help, and nothing
    else does: read from the app, so a new command is covered without editing this test."""
    import click
    import typer

    def check(group: click.Group, path=()):
        expected = {name for name, cmd in group.commands.items() if not cmd.hidden}
        rows = _help_rows(*path)
        assert set(rows) == expected, (path, sorted(rows), sorted(expected))
        assert all(rows.values()), rows  # each with its description
        for name in expected:
            if isinstance(group.commands[name], click.Group):
                check(group.commands[name], (*path, name))
        return len(expected)

    root = typer.main.get_command(app)
    assert check(root) == len(app.registered_commands) + len(app.registered_groups) >= 15


def test_python_dash_m():
    out = subprocess.run([sys.executable, '-m', 'litcli', '--help'], capture_output=True, text=True)
    assert out.returncode == 0 and 'info' in out.stdout


def test_env_json():
    result = invoke('env', '--json')
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info['dtm_backend_cpu'] == 'pure'
    for key in ('python', 'torch', 'torchvision', 'timm', 'fvcore', 'cuda_available', 'torchvision_ops_loaded'):
        assert key in info


def test_info_on_photo(fixtures_dir):
    result = invoke('info', '--variant', 's')
    assert result.exit_code == 0, result.output
    assert '27,973,720' in result.output and '27,204,720' in result.output


def test_bad_variant_exit_2():
    result = invoke('info', '--variant', 'x')
    assert result.exit_code == 2
    assert 'x' in result.output


def test_bad_size_one_line_error():
    result = invoke('info', '--variant', 'ti', '--img-size', '100')
    assert result.exit_code == 2
    assert 'divisible by 32' in result.output and 'Traceback' not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)

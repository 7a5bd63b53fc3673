"""Edge defects a user trial found (issue 28): the auto-augment setting read one way from flags and YAML files,
the extras' brackets in lit train --help, and DataLoader workers that stay quiet when a Ctrl-C ends the main
process while they start."""
import os

import pytest
import yaml

from helpers import lit, make_folder
from litcli.core.config import auto_augment_policy, new_run_config
from litcli.core.errors import LitError


@pytest.mark.parametrize('off', [None, False, '', 'none', 'None', 'off', ' OFF ', 'null'])
def test_every_spelling_of_no_auto_augment_is_off(off):
    assert auto_augment_policy(off) is None


@pytest.mark.parametrize('policy', ['rand-m9-mstd0.5-inc1', 'augmix-m3-w3', 'original', 'v0r', '3a'])
def test_timm_policies_pass_unchanged(policy):
    assert auto_augment_policy(policy) == policy


def test_a_yaml_value_reads_exactly_like_the_flag(tmp_path):
    """`aa: none` in a YAML file used to reach timm as the policy 'none' (a 130-line AssertionError at the first
    batch) while `--aa none` worked: both are now one setting, off."""
    folder = make_folder(tmp_path / 'data', n_train=1, n_val=1)
    for value in ('none', 'off', ''):
        (tmp_path / 'c.yaml').write_text(yaml.safe_dump({'data': str(folder), 'aa': value}))
        from_file = new_run_config(tmp_path / 'c.yaml', {})
        from_flag = new_run_config(None, {'data': str(folder), 'aa': value})
        assert from_file['aa'] is None and from_flag['aa'] is None and from_file == from_flag


@pytest.mark.parametrize('source', ['yaml', 'flag'])
def test_an_unknown_policy_is_one_line_naming_the_valid_forms(tmp_path, source):
    folder = make_folder(tmp_path / 'data', n_train=1, n_val=1)
    (tmp_path / 'c.yaml').write_text(yaml.safe_dump({'aa': 'bogus', 'epochs': 1}))
    extra = ('--config', tmp_path / 'c.yaml') if source == 'yaml' else ('--aa', 'bogus')
    result = lit('train', '--data', folder, '--img-size', 32, '--output', tmp_path / 'runs', *extra)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert "aa='bogus'" in lines[0] and 'rand-m9-mstd0.5-inc1' in lines[0] and 'or none (off)' in lines[0]
    assert not (tmp_path / 'runs').exists()
    with pytest.raises(LitError, match='unknown auto-augment policy'):
        auto_augment_policy('randx')


def test_train_help_shows_the_extras_brackets():
    """Rich markup ate '[track]' and '[wandb]': the help said pip install 'litcli' / 'litcli'."""
    from typer.testing import CliRunner
    from litcli.cli import app

    result = CliRunner().invoke(app, ['train', '--help'], env={'COLUMNS': '300'})
    text = ' '.join(result.output.replace('│', ' ').split())
    assert result.exit_code == 0 and "pip install 'litcli[track]' / 'litcli[wandb]'" in text, text


class _Names:
    """A dataset whose items say which excepthook a DataLoader worker runs under (it inherits the forkserver's)."""

    def __len__(self):
        return 1

    def __getitem__(self, i):
        import sys
        return sys.excepthook.__qualname__


def test_data_loader_workers_start_from_a_forkserver_that_stays_quiet_when_the_main_process_is_gone():
    """A group Ctrl-C of `lit eval -j 2` could end the main process while a worker was still unpickling the queues
    it had just removed: multiprocessing printed a 15-line traceback from that worker. The forkserver now installs
    a hook that drops such a failure once the main process (named to the server at its start) has exited."""
    import torch

    from litcli.core.data.loaders import loader_kwargs

    loader = torch.utils.data.DataLoader(_Names(), batch_size=None, **loader_kwargs(1, torch.device('cpu'), None))
    assert list(loader) == ['quiet_orphaned_worker_starts.<locals>.hook']


def test_the_quiet_hook_drops_only_a_start_failure_after_the_main_process(monkeypatch, capsys):
    import subprocess
    import sys

    from litcli.core.data.loaders import quiet_orphaned_worker_starts

    gone = subprocess.Popen(['true'])
    gone.wait()
    printed = []
    monkeypatch.setattr(sys, 'excepthook', lambda kind, value, tb: printed.append(kind))
    quiet_orphaned_worker_starts(main_pid=gone.pid)
    sys.excepthook(FileNotFoundError, FileNotFoundError(2, 'No such file or directory'), None)
    sys.excepthook(EOFError, EOFError(), None)
    assert printed == []  # the main process has exited: nobody reads it
    sys.excepthook(ValueError, ValueError('a bug in a dataset'), None)
    assert printed == [ValueError]  # not what a vanished main process causes: printed
    monkeypatch.setattr(sys, 'excepthook', lambda kind, value, tb: printed.append(kind))
    quiet_orphaned_worker_starts(main_pid=os.getpid())
    sys.excepthook(FileNotFoundError, FileNotFoundError(2, 'No such file or directory'), None)  # waits 2 s
    assert printed == [ValueError, FileNotFoundError]  # the main process lives: printed


def test_one_epoch_is_said_in_the_singular(tiny_data, tiny_config, tmp_path):
    from helpers import train_args

    result = lit(*train_args(tiny_data, tiny_config, tmp_path, '--name', 'one'))  # --epochs 1
    assert result.exit_code == 0, result.output
    assert '1 epoch x ' in result.output and '1 epochs' not in result.output
    again = lit(*train_args(tiny_data, tiny_config, tmp_path, '--name', 'one', '--resume',
                            tmp_path / 'one' / 'checkpoints' / 'last.pt'))
    assert again.exit_code == 0, again.output
    assert 'already finished 1 epoch (raise --epochs' in again.output


def test_checks_that_lived_only_in_the_cli_hold_for_python_callers_too(tmp_path):
    """Every validation is the command's: a Python caller gets the one-line UsageError the CLI prints."""
    from litcli.commands import data_bench, data_pack, info
    from litcli.core.errors import UsageError

    with pytest.raises(UsageError, match='--img-size 100 is not a multiple of 32'):
        info.run(['lit_ti'], img_size=100)
    for counts in ([], [0, -1]):
        with pytest.raises(UsageError, match='give worker counts >= 0'):
            data_bench.run('fashion-mnist-mini', counts)
    with pytest.raises(UsageError, match='--split needs at least one split name'):
        data_pack.run(tmp_path, tmp_path / 'out', 10 ** 6, [])
    assert not (tmp_path / 'out').exists()
    for args, message in ((['data', 'bench', '--data', 'x', '--workers=0,-1'], "--workers '0,-1'"),
                          (['data', 'pack', str(tmp_path), str(tmp_path / 'out'), '--split', ','], '--split needs'),
                          (['info', '--img-size', '100'], 'not a multiple of 32')):
        result = lit(*args)
        assert result.exit_code == 2 and result.output.startswith('Error:') and message in result.output, \
            result.output

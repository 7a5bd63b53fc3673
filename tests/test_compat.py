"""Files written by lit 0.1.0 (before the core/ redesign) load and give the answers 0.1.0 gave
(tests/fixtures/README.md)."""
import json
from pathlib import Path

import pytest

from helpers import lit, make_folder

OLD_EVAL_LOSS = 0.7115135788917542  # lit 0.1.0's `lit eval` of tiny_run.pt (raw weights) on make_folder's val/
OLD_PREDICT_DOG = 0.5792494416236877  # lit 0.1.0's `lit predict val/cat/0.png` with tiny_export.safetensors


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp('compat') / 'data')


def test_old_train_checkpoint_evaluates_as_before(fixtures_dir, folder, tmp_path):
    result = lit('eval', '--checkpoint', fixtures_dir / 'v0.1.0' / 'tiny_run.pt', '--data', folder, '-j', 0,
                 '--no-use-ema', '--out', tmp_path / 'raw')
    assert result.exit_code == 0, result.output
    ev = json.loads((tmp_path / 'raw' / 'eval.json').read_text())
    assert ev['loss'] == pytest.approx(OLD_EVAL_LOSS, abs=1e-6) and ev['num_images'] == 8
    # The run evaluated its EMA while training; without the flag that is what loads now (issue 16).
    result = lit('eval', '--checkpoint', fixtures_dir / 'v0.1.0' / 'tiny_run.pt', '--data', folder, '-j', 0,
                 '--out', tmp_path / 'ema')
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / 'ema' / 'eval.json').read_text())['weights'] == 'ema'


def test_old_safetensors_export_predicts_as_before(fixtures_dir, folder):
    result = lit('predict', folder / 'val' / 'cat' / '0.png', '--checkpoint',
                 fixtures_dir / 'v0.1.0' / 'tiny_export.safetensors', '--json', '-k', 2)
    assert result.exit_code == 0, result.output
    top = json.loads(result.stdout)['predictions'][0]['topk'][0]
    assert top['label'] == 'dog' and top['prob'] == pytest.approx(OLD_PREDICT_DOG, abs=1e-6)


def test_old_checkpoint_resumes_and_exports(fixtures_dir, folder, tmp_path):
    run = tmp_path / 'run' / 'checkpoints'
    run.mkdir(parents=True)
    (run / 'last.pt').write_bytes((fixtures_dir / 'v0.1.0' / 'tiny_run.pt').read_bytes())
    result = lit('train', '--resume', run / 'last.pt', '--epochs', 2, '-j', 0, '--data', folder)
    assert result.exit_code == 0, result.output
    assert 'resuming at epoch 1, step 4' in result.output
    result = lit('export', '--checkpoint', fixtures_dir / 'v0.1.0' / 'tiny_run.pt', '-f', 'safetensors',
                 '--out', tmp_path / 'again.safetensors')
    assert result.exit_code == 0, result.output


def test_the_old_atomic_write_alias_still_hands_its_callback_a_file_name(tmp_path):
    """``litcli.core.checkpoint.atomic_write(path, write)`` called ``write(name)`` with the temporary file's path."""
    from litcli.core.checkpoint import atomic_write

    path = tmp_path / 'out.txt'
    atomic_write(path, lambda name: Path(name).write_text('written by name'))
    assert path.read_text() == 'written by name'
    assert [p.name for p in tmp_path.iterdir()] == ['out.txt']

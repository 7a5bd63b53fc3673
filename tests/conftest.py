import sys
from pathlib import Path

import pytest
import yaml

FIXTURES = Path(__file__).parent / 'fixtures'
sys.path.insert(0, str(FIXTURES))  # parity_lib.py: the official-code parity vectors' helpers (tests/fixtures/README.md)


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """Every test module runs with one intra-op thread (tests that need more pass ``--threads``, which sets the
    process's threads; subprocesses get ``OMP_NUM_THREADS`` from their test): tiny models gain nothing from more, and
    they add synchronisation cost, badly so on a loaded 2-core machine."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope='session')
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory) -> Path:
    from helpers import make_folder
    return make_folder(tmp_path_factory.mktemp('data') / 'tiny')


@pytest.fixture(scope='module')
def tiny_config(tmp_path_factory) -> Path:
    from helpers import TINY
    path = tmp_path_factory.mktemp('cfg') / 'tiny.yaml'
    path.write_text(yaml.safe_dump(dict(model_kwargs=TINY, warmup_epochs=1, aa='', reprob=0.0)))
    return path

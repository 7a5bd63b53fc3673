import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / 'fixtures'
sys.path.insert(0, str(FIXTURES))  # parity_lib.py, copied from shared/parity


@pytest.fixture(scope='session')
def fixtures_dir() -> Path:
    return FIXTURES

"""Files that ship with lit: the photos and the mini dataset in ``assets/`` (light: no torch)."""
from pathlib import Path

REPO_ASSETS = Path(__file__).resolve().parent.parent / 'assets'
PHOTOS_DIR = REPO_ASSETS / 'photos'
DEFAULT_PHOTO = PHOTOS_DIR / 'chelsea.jpg'

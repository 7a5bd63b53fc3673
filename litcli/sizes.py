"""Input sizes LIT accepts: sides divisible by 32 (patch 4 x three 2x merges). Light (no torch), for the CLI too."""
from litcli.errors import UsageError

REDUCTION = 32  # total downsampling of the network


def nearest_valid(side: int) -> str:
    """'224' for a valid side, else the two nearest valid ones ('96 or 128'), or '32' below it."""
    lo = side // REDUCTION * REDUCTION
    return str(side) if lo == side and side > 0 else f'{lo} or {lo + REDUCTION}' if lo > 0 else str(REDUCTION)


def check_img_size(size: int, what: str = '--img-size', error=UsageError) -> int:
    """Raise ``error`` (one line, naming the nearest valid sizes) unless ``size`` is a positive multiple of 32."""
    if size <= 0 or size % REDUCTION:
        raise error(f'{what} {size} is not a multiple of {REDUCTION} (LIT downsamples 32x); '
                    f'nearest valid: {nearest_valid(size)}')
    return size

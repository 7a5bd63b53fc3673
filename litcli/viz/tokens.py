"""Parsing a token position given on the command line."""
from typing import Tuple

from litcli.errors import LitError


def parse_token(text: str, grid: Tuple[int, int], what: str = 'token') -> Tuple[int, int]:
    """'ROW,COL' -> (row, col), checked against an h x w token grid; ``what`` names the option in errors."""
    try:
        r, c = (int(v) for v in text.split(','))
    except ValueError:
        raise LitError(f"bad {what} {text!r}: use ROW,COL (e.g. '3,3')")
    if not (0 <= r < grid[0] and 0 <= c < grid[1]):
        raise LitError(f'{what} ({r},{c}) is outside the {grid[0]}x{grid[1]} token grid '
                       f'(rows 0-{grid[0] - 1}, cols 0-{grid[1] - 1})')
    return r, c

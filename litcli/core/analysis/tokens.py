"""Token positions on a stage's grid, as the figure commands take them (``--tokens``, ``--query``)."""
from typing import Sequence, Tuple, Union

from litcli.core.errors import LitError

Token = Tuple[int, int]


def check_token(token: Token, grid: Tuple[int, int], what: str = 'token') -> Token:
    """``token`` (row, col) when it lies on an h x w grid, else a one-line error naming ``what``."""
    r, c = token
    if not (0 <= r < grid[0] and 0 <= c < grid[1]):
        raise LitError(f'{what} ({r},{c}) is outside the {grid[0]}x{grid[1]} token grid '
                       f'(rows 0-{grid[0] - 1}, cols 0-{grid[1] - 1})')
    return r, c


def select_tokens(tokens: Union[str, Sequence[Token]], grid: Tuple[int, int]):
    """'all' -> None (every token); 'center' -> the centre token; a list of (row, col) -> checked against the grid."""
    if isinstance(tokens, str):
        spec = tokens.strip().lower()
        if spec == 'all':
            return None
        if spec in ('center', 'centre'):
            return [(grid[0] // 2, grid[1] // 2)]
        raise LitError(f"--tokens {tokens!r}: use 'all', 'center' or ROW,COL[;ROW,COL...]")
    if not tokens:
        raise LitError("no token given: use 'all', 'center' or ROW,COL[;ROW,COL...]")
    return [check_token(t, grid) for t in tokens]

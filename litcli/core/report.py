"""Printing a command's result: rich tables on a terminal, plain aligned lines elsewhere (a pipe, a log file, CI),
where box characters and colour only get in the way of grep and diff."""
from typing import Optional, Sequence, Tuple


def counted(n: int, noun: str, plural: Optional[str] = None) -> str:
    """'1 epoch', '2 epochs', '0 shards': a count with its noun in the right number (``plural``: an irregular one)."""
    return f'{n} {noun if n == 1 else plural or noun + "s"}'


def _console(console=None):
    from rich.console import Console

    return console or Console()


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence], console=None,
                right: Sequence[int] = ()):
    """A table with a header; ``right`` holds the indices of right-aligned (numeric) columns."""
    console = _console(console)
    cells = [[str(c) for c in row] for row in rows]
    if console.is_terminal:
        from rich.table import Table

        table = Table(title=title)
        for i, name in enumerate(columns):
            table.add_column(name, justify='right' if i in right else 'left')
        for row in cells:
            table.add_row(*row)
        console.print(table)
        return
    widths = [max([len(str(name))] + [len(row[i]) for row in cells]) for i, name in enumerate(columns)]

    def line(values):
        return '  '.join(v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths)))

    print(title)
    print(line([str(c) for c in columns]).rstrip())
    for row in cells:
        print(line(row).rstrip())


def print_pairs(title: str, pairs: Sequence[Tuple[str, str]], console=None):
    """Key/value lines: a two-column rich table on a terminal, ``key: value`` lines elsewhere."""
    console = _console(console)
    if console.is_terminal:
        from rich.table import Table

        table = Table(title=title, show_header=False)
        for key, value in pairs:
            table.add_row(key, str(value))
        console.print(table)
        return
    print(title)
    for key, value in pairs:
        print(f'{key}: {value}')


def print_lines(lines: Sequence[str], console: Optional[object] = None):
    """Messages (paths written, notes), without rich's markup or wrapping of long paths."""
    console = _console(console)
    for text in lines:
        if console.is_terminal:
            console.print(text, highlight=False, soft_wrap=True, markup=False)
        else:
            print(text)

"""The ``lit`` command line. Argument parsing only: every command imports its (torch-heavy) module lazily,
so ``lit --help`` stays instant. Logic lives in the package and is callable from Python."""
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from litcli.errors import LitError

app = typer.Typer(
    name='lit',
    help='Toolkit for the LIT vision transformer (Less is More: Pay Less Attention in Vision Transformers).',
    no_args_is_help=True,
    rich_markup_mode='rich',
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


class Variant(str, Enum):
    ti = 'ti'
    s = 's'
    m = 'm'
    b = 'b'


class VariantOrAll(str, Enum):
    ti = 'ti'
    s = 's'
    m = 'm'
    b = 'b'
    all = 'all'


def model_name(variant: str) -> str:
    """CLI short name -> registered timm name ('s' -> 'lit_s')."""
    return f'lit_{variant}'


def fail(message: str, code: int = 1):
    """Print a one-line error and exit non-zero (no traceback)."""
    typer.secho(f'Error: {message}', fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


class user_errors:
    """Context manager that turns LitError/ValueError from the package into a one-line CLI error."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, (LitError, ValueError)):
            fail(str(exc), getattr(exc, 'exit_code', 2))  # a ValueError is bad input: usage error, exit 2
        return False


@app.command(rich_help_panel='Inspect')
def env(json: Annotated[bool, typer.Option('--json', help='Machine-readable output.')] = False):
    """Versions, devices, and which DTM backend is active."""
    from litcli.env import print_env
    print_env(as_json=json)


@app.command(rich_help_panel='Inspect')
def info(
    variant: Annotated[VariantOrAll, typer.Option('--variant', '-v', help='Which LIT variant, or all.')] = VariantOrAll.all,
    image: Annotated[Optional[Path], typer.Option(help='Photo to run through the model (default: a cat in assets/).',
                                                  exists=True, dir_okay=False)] = None,
    img_size: Annotated[int, typer.Option('--img-size', min=32, help='Input size (a multiple of 32).')] = 224,
):
    """Structure, exact parameter counts and a timed forward pass of each variant on a real photo."""
    from litcli.info import print_info
    variants = [model_name(v.value) for v in Variant] if variant is VariantOrAll.all else [model_name(variant.value)]
    with user_errors():
        print_info(variants, image, img_size)

"""``python -m litcli ...`` (and ``torchrun -m litcli ...``)."""
from litcli.cli import app

if __name__ == '__main__':
    app(prog_name='lit')

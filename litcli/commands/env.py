"""``lit env``: versions, devices and which DTM backend is active."""
from typing import Dict


def run(as_json: bool = False) -> Dict:
    from litcli.core.envinfo import collect_env

    info = collect_env()
    if as_json:
        import json
        print(json.dumps(info, indent=2))
        return info
    from rich.console import Console
    from rich.table import Table
    table = Table(title='lit environment', show_header=False)
    for k, v in info.items():
        table.add_row(k, ', '.join(map(str, v)) if isinstance(v, list) else str(v))
    Console().print(table)
    return info

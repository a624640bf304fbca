"""What every benchmark script shares: a markdown table on stdout and a JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def print_table(header: list[str], rows: list[list[Any]]) -> None:
    """Print a markdown table (floats as they are formatted by the caller)."""
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(v) for v in row) + " |")


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` to ``path`` (parents created) and say where."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    print(f"wrote {path}")

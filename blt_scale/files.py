"""Small file formats every layer shares: JSONL rows that survive a killed writer, and files that
appear whole or not at all."""

from __future__ import annotations

import json
import os
from pathlib import Path


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file ([] if there is none); a torn line (a killed writer) is dropped."""
    path = Path(path)
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def append_jsonl(path: str | Path, row: dict) -> None:
    """One write of one line: rows appended by several processes stay whole."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def write_atomic(path: str | Path, text: str) -> None:
    """Write under a temporary name, flush to disk, then rename over `path`."""
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

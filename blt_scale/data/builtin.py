"""The embedded default corpus: the Python standard library's own source files.

Every machine that runs blt-scale has them, so `recipes/cpu_tiny.yaml` trains with no download
and no conversion step. Files are taken in sorted path order (test suites excluded: they hold
large generated and binary-ish fixtures), so the corpus is the same on every machine with the
same Python.
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path

SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]  # pruned, never walked: site-packages can be huge
        files += [Path(folder) / n for n in names if n.endswith(".py")]
    return sorted(files)


def stdlib_documents(max_bytes: int | None = None) -> Iterator[bytes]:
    total = 0
    for path in stdlib_files():
        data = path.read_bytes()
        if not data:
            continue
        yield data
        total += len(data)
        if max_bytes is not None and total >= max_bytes:
            return

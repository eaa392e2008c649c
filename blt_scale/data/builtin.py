"""The embedded default corpus: the Python standard library's own source files.

Every machine that runs blt-scale has them, so `recipes/cpu_tiny.yaml` trains with no download
and no conversion step. Files are taken in sorted path order (test suites excluded: they hold
large generated and binary-ish fixtures), so the corpus is the same on every machine with the
same Python.
"""

from __future__ import annotations

import sysconfig
from collections.abc import Iterator
from pathlib import Path


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idle_test", "site-packages", "__pycache__"}
    return sorted(p for p in root.rglob("*.py") if not skip.intersection(p.relative_to(root).parts))


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

"""Which split a document belongs to. By a hash of its bytes, so the split never depends on
document order, on the number of conversion workers, or on which other documents are present."""

from __future__ import annotations

import zlib

SPLITS = ("train", "val")


def is_validation(document: bytes, fraction: float) -> bool:
    return zlib.crc32(document) % 10_000 < fraction * 10_000

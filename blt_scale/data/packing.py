"""Packing documents into fixed-length training sequences.

Each document becomes BOS + bytes + EOS (vocabulary ids); documents are concatenated and cut into
rows of seq_len + 1 ids (inputs are the first seq_len, targets the last seq_len). A row may hold
the end of one document and the start of the next; the model's optional document mask keeps
them apart. The packer's state is two integers, so a loader can resume it exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from blt_scale.model.vocab import BOS, EOS, OFFSET


def document_ids(data: bytes) -> np.ndarray:
    ids = np.empty(len(data) + 2, dtype=np.int64)
    ids[0], ids[-1] = BOS, EOS
    ids[1:-1] = np.frombuffer(data, dtype=np.uint8).astype(np.int64) + OFFSET
    return ids


def pack(documents: Iterable[bytes], row_len: int) -> Iterator[np.ndarray]:
    """Rows of exactly row_len ids; a trailing partial row is dropped."""
    buffer = np.empty(0, dtype=np.int64)
    for doc in documents:
        buffer = np.concatenate([buffer, document_ids(doc)])
        while len(buffer) >= row_len:
            yield buffer[:row_len]
            buffer = buffer[row_len:]

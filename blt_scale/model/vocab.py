"""The byte vocabulary: three special ids, then the 256 byte values shifted by OFFSET.

    PAD = 0, BOS = 1, EOS = 2, byte b -> b + OFFSET (3 ... 258); VOCAB_SIZE = 259.

Every part of blt-scale (shards, loader, models, bpb) uses these ids. PAD never appears as a
target: it is ignored by the loss and by the byte count that bits-per-byte divides by.
"""

from __future__ import annotations

import numpy as np
import torch

PAD, BOS, EOS = 0, 1, 2
OFFSET = 3
VOCAB_SIZE = 256 + OFFSET


def encode(data: bytes, bos: bool = False, eos: bool = False) -> torch.Tensor:
    ids = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).astype(np.int64)) + OFFSET
    parts = ([torch.tensor([BOS])] if bos else []) + [ids] + ([torch.tensor([EOS])] if eos else [])
    return torch.cat(parts)


def decode(ids: torch.Tensor | list[int]) -> bytes:
    """Bytes of the byte ids; special ids (and ids past the byte vocabulary, MVoT's images) are dropped."""
    values = torch.as_tensor(ids).flatten().tolist()
    return bytes(v - OFFSET for v in values if OFFSET <= v < VOCAB_SIZE)

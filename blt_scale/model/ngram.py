"""Hash n-gram embeddings: for each n, the n bytes ending at position t are hashed into one of
`buckets` rows of a table of that n, and the rows of all n are added to the byte embedding.

The hash is a polynomial over byte ids, h = sum_i (id[t-i] + 1) * BASE^i mod PRIME, computed for
all positions at once by shifting the sequence n times (a loop over n, never over bytes). Positions
before the sequence start count as id -1, i.e. contribute 0, so a short prefix hashes like a
shorter n-gram. Lookups cost no FLOPs, which the FLOP accounting honours.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from blt_scale.config import Config

BASE = 257
PRIME = 2_147_483_647  # 2^31 - 1: products with BASE stay well inside int64


class NgramConfig(Config):
    sizes: list[int] = Field(default=[3, 4, 5, 6, 7, 8], description="n-gram lengths; empty disables")
    buckets: int = Field(default=500_000, gt=0, description="rows per n-gram table")


def ngram_hashes(ids: torch.Tensor, n: int, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Hash of the n ids ending at each position of ids [B, T] -> int64 [B, T] in [0, PRIME).

    With doc_ids, bytes of an earlier document count like positions before the sequence start,
    so an n-gram never reaches across a document boundary.
    """
    h = torch.zeros_like(ids)
    T = ids.shape[1]
    for i in range(n - 1, -1, -1):  # oldest byte first: h = h * BASE + (id[t-i] + 1)
        shifted = torch.zeros_like(ids)
        if i >= T:  # the n-gram reaches before the start for every position: contributes 0
            h = h * BASE % PRIME
            continue
        shifted[:, i:] = ids[:, : T - i] + 1
        if doc_ids is not None and i > 0:
            shifted[:, i:] *= doc_ids[:, : T - i] == doc_ids[:, i:]
        h = (h * BASE + shifted) % PRIME
    return h


class HashNgramEmbedding(nn.Module):
    def __init__(self, cfg: NgramConfig, dim: int):
        super().__init__()
        self.sizes = list(cfg.sizes)
        self.buckets = cfg.buckets
        self.tables = nn.ModuleList(nn.Embedding(cfg.buckets, dim) for _ in self.sizes)

    def forward(self, ids: torch.Tensor, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        out = 0
        for n, table in zip(self.sizes, self.tables):
            out = out + table(ngram_hashes(ids, n, doc_ids) % self.buckets)
        return out

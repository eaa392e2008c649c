"""Differential attention (Ye et al. 2024, arXiv:2410.05258).

A stack with `heads` softmax heads of `head_dim` channels becomes heads/2 differential heads, so
parameters and projections stay those of the softmax stack (the paper's h = d_model / 2d). Head i
takes query/key heads 2i and 2i+1 as (Q1, K1) and (Q2, K2) and value heads 2i, 2i+1 as one value
V of 2 * head_dim channels:

    head_i = (softmax(Q1 K1ᵀ / √d) - λ softmax(Q2 K2ᵀ / √d)) V
    λ      = exp(λ_q1 · λ_k1) - exp(λ_q2 · λ_k2) + λ_init,   λ_init = 0.8 - 0.6 exp(-0.3 (l - 1))
    out    = W_O concat_i((1 - λ_init) RMSNorm(head_i))

l is the block's 1-based depth in its stack; the λ vectors (head_dim each) are shared by the
heads of a layer; the per-head RMSNorm has no weight, as (1 - λ_init) fixes its scale.

Both maps run through the same softmax attention (attend's patterns and backends, or a cache's
SDPA) as 2 * heads/2 query heads against one value tensor: SDPA cannot subtract maps before their
value product, so values are multiplied by both maps (flops.py counts that).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from blt_scale.model.layers import Attention, TransformerConfig

LAMBDA_STD = 0.1  # init of the λ vectors: λ starts within a few percent of λ_init


def lambda_init(index: int) -> float:
    """λ_init of the block at 0-based `index` in its stack (the paper's layer l = index + 1)."""
    return 0.8 - 0.6 * math.exp(-0.3 * index)


class DiffAttention(Attention):
    def __init__(self, cfg: TransformerConfig, index: int):
        super().__init__(cfg.dim, cfg.heads, rope_theta=cfg.rope_theta, dropout=cfg.dropout)
        self.pairs = cfg.heads // 2
        self.eps = cfg.norm_eps
        self.lambda_init = lambda_init(index)
        self.lambdas = nn.Parameter(torch.randn(4, self.head_dim) * LAMBDA_STD)  # q1, k1, q2, k2

    def lam(self) -> torch.Tensor:
        q1, k1, q2, k2 = self.lambdas.float()
        return torch.exp(q1 @ k1) - torch.exp(q2 @ k2) + self.lambda_init

    def project(self, x, kv=None, positions=None):
        """q, k [B, 2 * pairs, T, d] (every pair's first map, then every pair's second map);
        v [B, pairs, T, 2d]."""
        if kv is not None:
            raise ValueError("differential attention is self-attention only")
        q, k, v = super().project(x, positions=positions)
        B, _, T, d = q.shape

        def maps(t):  # heads (2i, 2i+1) -> first-map head i, second-map head pairs + i
            return t.view(B, self.pairs, 2, T, d).transpose(1, 2).reshape(B, 2 * self.pairs, T, d)

        v = v.view(B, self.pairs, 2, T, d).permute(0, 1, 3, 2, 4).reshape(B, self.pairs, T, 2 * d)
        return maps(q), maps(k), v

    def mix(self, q, k, v, core) -> torch.Tensor:
        both = core(q, k, v.repeat(1, 2, 1, 1))  # [B, 2 * pairs, T, 2d]
        first, second = both.float().chunk(2, dim=1)
        heads = F.rms_norm(first - self.lam() * second, (first.shape[-1],), eps=self.eps)
        return ((1 - self.lambda_init) * heads).type_as(both)

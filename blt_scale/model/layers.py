"""Transformer building blocks shared by every model: RMSNorm, RoPE, self- and cross-attention,
SwiGLU, and a pre-norm block. Which keys a query sees is an attention pattern (attention.py);
None means plain causal self-attention (or, for cross-attention, every key). A stack's
self-attention is softmax attention or differential attention (differential.py).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from blt_scale.config import Config
from blt_scale.model.attention import Causal, Full, Pattern, attend


class TransformerConfig(Config):
    dim: int = Field(gt=0)
    layers: int = Field(ge=0)
    heads: int = Field(gt=0)
    ffn_mult: float = Field(
        default=8 / 3, gt=0, description="SwiGLU hidden size = ffn_mult * dim, rounded up to 64"
    )
    window: int | None = Field(default=None, gt=0, description="sliding-window size; None = full causal")
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    dropout: float = Field(
        default=0.0, ge=0, lt=1, description="attention-probability and residual dropout while training"
    )
    attention_kind: Literal["softmax", "differential"] = Field(
        default="softmax",
        description="self-attention: softmax, or differential (Ye et al. 2024): heads/2 heads, each the "
        "difference of two softmax maps of head_dim channels over values of 2 * head_dim",
    )

    @model_validator(mode="after")
    def _differential_pairs_heads(self) -> TransformerConfig:
        if self.attention_kind == "differential" and self.heads % 2:
            raise ValueError(
                f"attention_kind differential pairs softmax maps into heads/2 heads: heads ({self.heads}) "
                "must be even"
            )
        return self

    @model_validator(mode="after")
    def _heads_split_dim(self) -> TransformerConfig:
        if self.dim % self.heads:
            raise ValueError(
                f"dim ({self.dim}) must be a multiple of heads ({self.heads}): each head gets dim/heads"
            )
        if (self.dim // self.heads) % 2:
            raise ValueError(
                f"dim/heads ({self.dim}/{self.heads} = {self.dim // self.heads}) must be even: "
                "rotary embeddings turn channel pairs"
            )
        return self

    @property
    def head_dim(self) -> int:
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        return self.dim // self.heads

    @property
    def ffn_dim(self) -> int:
        return 64 * math.ceil(self.ffn_mult * self.dim / 64)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 so bf16 activations keep their scale.
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).type_as(x)


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate pairs of channels of x [B, H, T, Dh] by angles position * theta^(-2i/Dh)."""
    half = x.shape[-1] // 2
    freqs = theta ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions.float()[..., None] * freqs  # [T, half] or [B, T, half]
    if angles.dim() == 3:
        angles = angles[:, None]
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x.float()[..., :half], x.float()[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class Attention(nn.Module):
    """Multi-head attention. Self-attention when `kv` is None; cross-attention otherwise."""

    def __init__(
        self,
        dim: int,
        heads: int,
        kv_dim: int | None = None,
        rope_theta: float | None = 10000.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.head_dim = dim // heads
        self.rope_theta = rope_theta
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(kv_dim or dim, dim, bias=False)
        self.wv = nn.Linear(kv_dim or dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def project(
        self, x: torch.Tensor, kv: torch.Tensor | None = None, positions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values [B, H, T, Dh]; self-attention rotates q and k by `positions`
        ([T] or [B, T]; default 0..T-1)."""
        source = x if kv is None else kv
        q, k, v = self._split(self.wq(x)), self._split(self.wk(source)), self._split(self.wv(source))
        if kv is None and self.rope_theta is not None:
            positions = torch.arange(x.shape[1], device=x.device) if positions is None else positions
            q, k = rope(q, positions, self.rope_theta), rope(k, positions, self.rope_theta)
        return q, k, v

    def mix(self, q, k, v, core) -> torch.Tensor:
        """Per-head outputs [B, H, Tq, Dv] from core(q, k, v), a softmax attention over the keys a
        query may see (attend with a pattern, or SDPA with a cache's mask)."""
        return core(q, k, v)

    def merge(self, out: torch.Tensor) -> torch.Tensor:
        return self.wo(out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1))

    def forward(
        self,
        x: torch.Tensor,
        pattern: Pattern | None = None,
        kv: torch.Tensor | None = None,
    ) -> torch.Tensor:
        q, k, v = self.project(x, kv)
        if pattern is None:
            pattern = Causal(x.shape[1], None, None, "auto") if kv is None else Full()
        dropout = self.dropout if self.training else 0.0
        return self.merge(self.mix(q, k, v, lambda q, k, v: attend(q, k, v, pattern, dropout)))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm x), then + ffn(norm x)."""

    def __init__(self, cfg: TransformerConfig, index: int = 0):
        """index: the block's place in its stack (0 first), which sets differential attention's λ_init."""
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        if cfg.attention_kind == "differential":
            from blt_scale.model.differential import DiffAttention  # it subclasses Attention

            self.attn = DiffAttention(cfg, index)
        else:
            self.attn = Attention(cfg.dim, cfg.heads, rope_theta=cfg.rope_theta, dropout=cfg.dropout)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = SwiGLU(cfg.dim, cfg.ffn_dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.depth = cfg.layers  # of its stack: output projections start at std / sqrt(2 * depth)

    def forward(self, x: torch.Tensor, pattern: Pattern | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x), pattern))
        return x + self.drop(self.ffn(self.ffn_norm(x)))


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention with a residual: queries x attend keys/values kv under mask."""

    def __init__(self, dim: int, heads: int, kv_dim: int, eps: float = 1e-5, dropout: float = 0.0):
        super().__init__()
        self.q_norm = RMSNorm(dim, eps)
        self.kv_norm = RMSNorm(kv_dim, eps)
        self.attn = Attention(dim, heads, kv_dim=kv_dim, rope_theta=None, dropout=dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, pattern: Pattern | None = None) -> torch.Tensor:
        return x + self.drop(self.attn(self.q_norm(x), pattern, kv=self.kv_norm(kv)))


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """Normal(0, std) for linear and embedding weights. The two projections of a block that write
    into the residual stream (attention output, FFN down) get std / sqrt(2 * depth of the stack),
    so the residual's variance at init does not grow with depth (GPT-2's scheme)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, RMSNorm):
            nn.init.ones_(m.weight)
    for m in module.modules():
        if isinstance(m, Block):
            for out in (m.attn.wo, m.ffn.w2):
                nn.init.normal_(out.weight, std=std / math.sqrt(2 * max(m.depth, 1)))

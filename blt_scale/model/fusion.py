"""Gated cross-attention from latent patches to brain features (Flamingo's tanh gate).

    x ─▶ x + tanh(gate) ⊙ attn(norm x, norm brain)      (gate: one value per channel)

The gate starts at 0, so a freshly fused model computes exactly what its text model computes;
training opens the gate as far as the brain features help. It subclasses CrossAttentionBlock, so
parallel/apply.py finds it and wraps it (FSDP, activation checkpointing) like any other block.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from blt_scale.config import Config
from blt_scale.model.layers import CrossAttentionBlock


class FusionConfig(Config):
    layers: list[int] = Field(
        default=[0], description="latent layers after which patches attend the brain features"
    )
    heads: int = Field(default=4, gt=0)


class GatedCrossAttention(CrossAttentionBlock):
    def __init__(self, dim: int, heads: int, kv_dim: int, eps: float = 1e-5):
        super().__init__(dim, heads, kv_dim, eps)
        self.gate = nn.Parameter(torch.zeros(dim))  # one gate per channel: learns faster than a scalar

    def forward(self, x: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        # Every patch may see the whole brain window: the signal is the condition, not the future.
        attended = self.attn(self.q_norm(x), kv=self.kv_norm(kv))
        return x + torch.tanh(self.gate).to(x.dtype) * attended

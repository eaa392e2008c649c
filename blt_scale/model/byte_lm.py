"""A causal byte transformer. The same class is the entropy model (small, windowed: its
next-byte entropies drive entropy patching) and the dense byte baseline that BLT is compared to.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from blt_scale.model.attention import Backend, Causal
from blt_scale.model.layers import Block, RMSNorm, TransformerConfig, init_weights
from blt_scale.model.vocab import EOS, VOCAB_SIZE


class ByteLMConfig(TransformerConfig):
    kind: Literal["byte_lm"] = "byte_lm"
    doc_mask: bool = False  # attention stops at EOS: bytes never attend into the previous document
    attention: Backend = Field(
        default="auto", description="attention backend: auto | flex | chunked | dense (attention.py)"
    )


def document_ids(ids: torch.Tensor) -> torch.Tensor:
    """Index of the document each position belongs to; a document ends with (and includes) EOS."""
    eos = (ids == EOS).long()
    return eos.cumsum(dim=1) - eos


def token_entropies(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each position's predictive distribution over the byte vocabulary."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


class ByteLM(nn.Module):
    def __init__(self, cfg: ByteLMConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(VOCAB_SIZE, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, VOCAB_SIZE, bias=False)
        init_weights(self)

    def forward(self, ids: torch.Tensor, patch_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Next-byte logits [B, T, V]. patch_lengths is accepted (and ignored) so every model
        takes the same batch."""
        doc_ids = document_ids(ids) if self.cfg.doc_mask else None
        pattern = Causal(ids.shape[1], self.cfg.window, doc_ids, self.cfg.attention)
        h = self.embed(ids)
        for layer in self.layers:
            h = layer(h, pattern)
        return self.output(self.norm(h))

    @torch.no_grad()
    def entropies(self, ids: torch.Tensor) -> torch.Tensor:
        return token_entropies(self(ids))

"""The Byte Latent Transformer.

    bytes ─▶ local encoder ─▶ k queries per patch ─▶ latent transformer over patches ─▶ local decoder ─▶ byte logits

- Local encoder: byte embedding + hash n-gram embeddings, windowed causal layers over bytes. Each
  patch gets k queries, initialised by max-pooling its bytes' states and a linear map; they
  cross-attend to the bytes of their own patch (after the last encoder layer, or after every one).
- Latent transformer: causal over patches; its input is the k queries of a patch concatenated and
  projected to the latent width.
- Local decoder: starts from the encoder's byte states; each byte cross-attends to latent slots
  of the patches that *end before its own patch starts*. Slot j holds the latent output of patch
  j-1 and slot 0 a learned start vector, so a byte of patch p sees slots 0..p; its own patch
  (which contains later bytes) stays invisible. That keeps the model causal.

Patch boundaries come from a patcher, so forward takes `ids` [B, T] and `patch_lengths` [B, P]
(each row sums to T, right-padded with zeros).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from blt_scale.config import Config
from blt_scale.model.byte_lm import document_ids
from blt_scale.model.layers import (
    Block,
    CrossAttentionBlock,
    RMSNorm,
    TransformerConfig,
    init_weights,
    self_attention_mask,
)
from blt_scale.model.ngram import HashNgramEmbedding, NgramConfig
from blt_scale.model.patcher import patch_ids_from_lengths
from blt_scale.model.vocab import VOCAB_SIZE


class LocalConfig(TransformerConfig):
    cross_attn_all_layers: bool = Field(
        default=False, description="cross-attend patches<->bytes at every local layer, not once"
    )


class BLTConfig(Config):
    kind: Literal["blt"] = "blt"
    encoder: LocalConfig
    global_: TransformerConfig = Field(alias="global")
    decoder: LocalConfig
    patch_queries: int = Field(default=2, gt=0, description="k: queries (and latent slots) per patch")
    ngram: NgramConfig = NgramConfig()
    doc_mask: bool = False

    @model_validator(mode="after")
    def _local_widths_match(self) -> "BLTConfig":
        if self.encoder.dim != self.decoder.dim:
            raise ValueError(
                f"encoder.dim ({self.encoder.dim}) must equal decoder.dim ({self.decoder.dim}): "
                "the decoder starts from the encoder's byte states"
            )
        return self

    def cross_layers(self, local: LocalConfig) -> int:
        return local.layers if local.cross_attn_all_layers else 1


def _nonempty_rows(mask: torch.Tensor) -> torch.Tensor:
    """Let rows with no allowed key attend key 0, so SDPA never returns NaN for padding patches
    (their outputs are never read)."""
    empty = ~mask.any(dim=-1, keepdim=True)
    first = torch.zeros_like(mask)
    first[..., 0] = True
    return mask | (empty & first)


class BLT(nn.Module):
    def __init__(self, cfg: BLTConfig):
        super().__init__()
        self.cfg = cfg
        d, D, k = cfg.encoder.dim, cfg.global_.dim, cfg.patch_queries
        self.embed = nn.Embedding(VOCAB_SIZE, d)
        self.ngram = HashNgramEmbedding(cfg.ngram, d)
        self.encoder = nn.ModuleList(Block(cfg.encoder) for _ in range(cfg.encoder.layers))
        self.patch_init = nn.Linear(d, k * d, bias=False)
        self.encoder_cross = nn.ModuleList(
            CrossAttentionBlock(d, cfg.encoder.heads, d, cfg.encoder.norm_eps)
            for _ in range(cfg.cross_layers(cfg.encoder))
        )
        self.to_global = nn.Linear(k * d, D, bias=False)
        self.latent = nn.ModuleList(Block(cfg.global_) for _ in range(cfg.global_.layers))
        self.latent_norm = RMSNorm(D, cfg.global_.norm_eps)
        self.start_latent = nn.Parameter(torch.zeros(D))
        self.from_global = nn.Linear(D, k * d, bias=False)
        self.decoder_cross = nn.ModuleList(
            CrossAttentionBlock(d, cfg.decoder.heads, d, cfg.decoder.norm_eps)
            for _ in range(cfg.cross_layers(cfg.decoder))
        )
        self.decoder = nn.ModuleList(Block(cfg.decoder) for _ in range(cfg.decoder.layers))
        self.norm = RMSNorm(d, cfg.decoder.norm_eps)
        self.output = nn.Linear(d, VOCAB_SIZE, bias=False)
        init_weights(self)
        nn.init.normal_(self.start_latent, std=0.02)

    def forward(self, ids: torch.Tensor, patch_lengths: torch.Tensor) -> torch.Tensor:
        B, T = ids.shape
        P, k, d = patch_lengths.shape[1], self.cfg.patch_queries, self.cfg.encoder.dim
        patch_ids = patch_ids_from_lengths(patch_lengths, T)  # [B, T]
        doc = document_ids(ids) if self.cfg.doc_mask else None
        slot_patch = torch.arange(P, device=ids.device).repeat_interleave(k)  # [P*k]

        # Local encoder: bytes, then k queries per patch attending to their patch's bytes.
        h = self.embed(ids) + self.ngram(ids, doc)
        enc_mask = self_attention_mask(T, self.cfg.encoder.window, doc, ids.device)
        own_patch = _nonempty_rows(slot_patch[None, :, None] == patch_ids[:, None, :])[:, None]
        pooled = h.new_zeros(B, P, d).scatter_reduce(
            1, patch_ids[..., None].expand(-1, -1, d), h, "amax", include_self=False
        )
        queries = self.patch_init(pooled).view(B, P * k, d)
        cross = iter(self.encoder_cross)
        for i, layer in enumerate(self.encoder):
            h = layer(h, enc_mask)
            if self.cfg.encoder.cross_attn_all_layers or i == len(self.encoder) - 1:
                queries = next(cross)(queries, h, own_patch)
        if not self.encoder:
            queries = next(cross)(queries, h, own_patch)

        # Latent transformer over patches.
        g = self.to_global(queries.view(B, P, k * d))
        patch_doc = None
        if doc is not None:
            starts = (patch_lengths.cumsum(1) - patch_lengths).clamp(max=T - 1)
            patch_doc = doc.gather(1, starts)
        latent_mask = self_attention_mask(P, self.cfg.global_.window, patch_doc, ids.device)
        for layer in self.latent:
            g = layer(g, latent_mask)
        g = self.latent_norm(g)

        # Local decoder: slot j = latent of patch j-1; a byte of patch p sees slots 0..p.
        slots = torch.cat([self.start_latent.expand(B, 1, -1).to(g.dtype), g[:, :-1]], dim=1)
        kv = self.from_global(slots).view(B, P * k, d)
        visible = slot_patch[None, None, :] <= patch_ids[:, :, None]  # [B, T, P*k]
        if patch_doc is not None:
            slot_doc = torch.cat([doc[:, :1], patch_doc[:, :-1]], dim=1).repeat_interleave(k, dim=1)
            visible &= (slot_patch[None, None, :] == 0) | (slot_doc[:, None, :] == doc[:, :, None])
        visible = visible[:, None]
        dec_mask = self_attention_mask(T, self.cfg.decoder.window, doc, ids.device)
        cross = iter(self.decoder_cross)
        for i, layer in enumerate(self.decoder):
            if self.cfg.decoder.cross_attn_all_layers or i == 0:
                h = next(cross)(h, kv, visible)
            h = layer(h, dec_mask)
        if not self.decoder:
            h = next(cross)(h, kv, visible)
        return self.output(self.norm(h))

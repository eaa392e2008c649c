"""The Byte Latent Transformer.

    bytes ─▶ local encoder ─▶ k queries per patch ─▶ latent transformer over patches
          ─▶ local decoder ─▶ byte logits

- Local encoder: byte embedding + hash n-gram embeddings, windowed causal layers over bytes. Each
  patch gets k queries, initialised by max-pooling its bytes' encoder states (at the first
  cross-attention) and a linear map; they cross-attend to the bytes of their own patch (after
  the last encoder layer, or after every one).
- Latent transformer: causal over patches; its input is the k queries of a patch concatenated and
  projected to the latent width. Optionally a Titans memory in every block (titans.py).
- Local decoder: starts from the encoder's byte states; each byte cross-attends to k slots of a
  learned start vector and to the latent outputs of the latest `decoder_cross_window` patches
  that are *complete* at that byte (the paper's decoder sees one). The last byte of a patch, which
  predicts the next patch's first byte, sees its own patch: the patchers decide a patch's end from
  bytes up to it, never after, so the model stays causal.

Patch boundaries come from a patcher, so forward takes `ids` [B, T] and `patch_lengths` [B, P]
(right-padded with zeros). Rows sum to T, and then the last patch counts as open, or to T + 1
(patcher.patch_lengths_with_next), saying whether byte T starts a new patch.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from blt_scale.config import Config
from blt_scale.model.attention import Backend, Causal, ClosedPatches, OwnPatch
from blt_scale.model.byte_lm import document_ids
from blt_scale.model.layers import Block, CrossAttentionBlock, RMSNorm, TransformerConfig, init_weights
from blt_scale.model.ngram import HashNgramEmbedding, NgramConfig
from blt_scale.model.patcher import closed_patches, patch_ids_from_lengths
from blt_scale.model.titans import LatentConfig, latent_block
from blt_scale.model.vocab import VOCAB_SIZE


class LocalConfig(TransformerConfig):
    cross_attn_all_layers: bool = Field(
        default=False, description="cross-attend patches<->bytes at every local layer, not once"
    )


class BLTConfig(Config):
    kind: Literal["blt"] = "blt"
    encoder: LocalConfig
    global_: LatentConfig = Field(alias="global")
    decoder: LocalConfig
    patch_queries: int = Field(default=2, gt=0, description="k: queries (and latent slots) per patch")
    ngram: NgramConfig = NgramConfig()
    doc_mask: bool = False
    attention: Backend = Field(
        default="auto", description="attention backend: auto | flex | chunked | dense (attention.py)"
    )
    decoder_cross_window: int | None = Field(
        default=1,
        gt=0,
        description="latest complete patches whose latents a byte's decoder cross-attention sees (besides "
        "the start slot); 1 as in the paper, None = all",
    )

    @model_validator(mode="after")
    def _local_widths_match(self) -> BLTConfig:
        if self.encoder.dim != self.decoder.dim:
            raise ValueError(
                f"encoder.dim ({self.encoder.dim}) must equal decoder.dim ({self.decoder.dim}): "
                "the decoder starts from the encoder's byte states"
            )
        return self

    def cross_layers(self, local: LocalConfig) -> int:
        return local.layers if local.cross_attn_all_layers else 1


class BLT(nn.Module):
    def __init__(self, cfg: BLTConfig, vocab_size: int = VOCAB_SIZE):
        """vocab_size: ids the embedding reads and the output predicts (MVoT adds image ids)."""
        super().__init__()
        self.cfg = cfg
        d, D, k = cfg.encoder.dim, cfg.global_.dim, cfg.patch_queries
        self.embed = nn.Embedding(vocab_size, d)
        self.ngram = HashNgramEmbedding(cfg.ngram, d)
        self.encoder = nn.ModuleList(Block(cfg.encoder, i) for i in range(cfg.encoder.layers))
        self.patch_init = nn.Linear(d, k * d, bias=False)
        self.encoder_cross = nn.ModuleList(
            CrossAttentionBlock(d, cfg.encoder.heads, d, cfg.encoder.norm_eps, cfg.encoder.dropout)
            for _ in range(cfg.cross_layers(cfg.encoder))
        )
        self.to_global = nn.Linear(k * d, D, bias=False)
        self.latent = nn.ModuleList(latent_block(cfg.global_, i) for i in range(cfg.global_.layers))
        self.latent_norm = RMSNorm(D, cfg.global_.norm_eps)
        self.start_latent = nn.Parameter(torch.zeros(D))
        self.from_global = nn.Linear(D, k * d, bias=False)
        self.decoder_cross = nn.ModuleList(
            CrossAttentionBlock(d, cfg.decoder.heads, d, cfg.decoder.norm_eps, cfg.decoder.dropout)
            for _ in range(cfg.cross_layers(cfg.decoder))
        )
        self.decoder = nn.ModuleList(Block(cfg.decoder, i) for i in range(cfg.decoder.layers))
        self.norm = RMSNorm(d, cfg.decoder.norm_eps)
        self.output = nn.Linear(d, vocab_size, bias=False)
        init_weights(self)
        nn.init.normal_(self.start_latent, std=0.02)

    def _patch_queries(self, h: torch.Tensor, patch_ids: torch.Tensor, patches: int) -> torch.Tensor:
        """k queries per patch from the max-pool of its bytes' states: [B, P * k, d]."""
        B, _, d = h.shape
        pooled = h.new_zeros(B, patches, d).scatter_reduce(
            1, patch_ids[..., None].expand(-1, -1, d), h, "amax", include_self=False
        )
        return self.patch_init(pooled).view(B, patches * self.cfg.patch_queries, d)

    def forward(self, ids: torch.Tensor, patch_lengths: torch.Tensor) -> torch.Tensor:
        B, T = ids.shape
        P, k, d = patch_lengths.shape[1], self.cfg.patch_queries, self.cfg.encoder.dim
        backend = self.cfg.attention
        patch_ids = patch_ids_from_lengths(patch_lengths, T)  # [B, T]
        doc = document_ids(ids) if self.cfg.doc_mask else None

        # Local encoder: bytes, then k queries per patch attending to their patch's bytes.
        h = self.embed(ids) + self.ngram(ids, doc)
        own_patch = OwnPatch(patch_ids, P, k, backend)
        enc_pattern = Causal(T, self.cfg.encoder.window, doc, backend)
        queries = None
        cross = iter(self.encoder_cross)
        for i, layer in enumerate(self.encoder):
            h = layer(h, enc_pattern)
            if self.cfg.encoder.cross_attn_all_layers or i == len(self.encoder) - 1:
                queries = self._patch_queries(h, patch_ids, P) if queries is None else queries
                queries = next(cross)(queries, h, own_patch)
        if not self.encoder:
            queries = next(cross)(self._patch_queries(h, patch_ids, P), h, own_patch)

        # Latent transformer over patches.
        g = self.to_global(queries.view(B, P, k * d))
        patch_doc = None
        if doc is not None:
            starts = (patch_lengths.cumsum(1) - patch_lengths).clamp(max=T - 1)
            patch_doc = doc.gather(1, starts)
        latent_pattern = Causal(P, self.cfg.global_.window, patch_doc, backend)
        for layer in self.latent:
            g = layer(g, latent_pattern)
        g = self.latent_norm(g)

        # Local decoder: slot group 0 = start vector, group j = latent of patch j-1.
        slots = torch.cat([self.start_latent.expand(B, 1, -1).to(g.dtype), g[:, :-1]], dim=1)
        kv = self.from_global(slots).view(B, P * k, d)
        slot_doc = None if patch_doc is None else torch.cat([doc[:, :1], patch_doc[:, :-1]], dim=1)
        closed = ClosedPatches(
            closed_patches(patch_lengths, T), P, k, self.cfg.decoder_cross_window, doc, slot_doc, backend
        )
        dec_pattern = Causal(T, self.cfg.decoder.window, doc, backend)
        cross = iter(self.decoder_cross)
        for i, layer in enumerate(self.decoder):
            if self.cfg.decoder.cross_attn_all_layers or i == 0:
                h = next(cross)(h, kv, closed)
            h = layer(h, dec_pattern)
        if not self.decoder:
            h = next(cross)(h, kv, closed)
        return self.output(self.norm(h))

"""Brain-aware BLT: a BLT whose latent transformer also attends EEG/MEG features.

    signal ─▶ BrainEncoder ─▶ brain features [B, N, E]
    bytes ─▶ BLT encoder ─▶ latent layer i (+ gated cross-attention to the brain features when i
             is in fusion.layers) ─▶ ... ─▶ BLT decoder ─▶ byte logits

The BLT is reused unchanged: forward hooks on the chosen latent blocks apply the fusion to their
output, reading the brain features of the current call. One more gated cross-attention conditions
the decoder's start slot (what the first patch's bytes see instead of a latent output). With the
gates at 0 (init) the logits equal those of the same BLT without the brain parts, so a text
checkpoint is a valid start.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import model_validator

from blt_scale.model.blt import BLT, BLTConfig
from blt_scale.model.brain_common import BrainTraining
from blt_scale.model.brain_encoder import BrainEncoder, BrainEncoderConfig
from blt_scale.model.fusion import FusionConfig, GatedCrossAttention
from blt_scale.model.layers import init_weights
from blt_scale.model.lora import freeze

BRAIN_KEYS = ("signal", "channel_mask", "ch_pos", "subject")


class BrainBLTConfig(BLTConfig, BrainTraining):
    kind: Literal["brain_blt"] = "brain_blt"
    brain: BrainEncoderConfig
    fusion: FusionConfig = FusionConfig()

    @model_validator(mode="after")
    def _fusion_layers_exist(self) -> BrainBLTConfig:
        bad = [i for i in self.fusion.layers if not 0 <= i < self.global_.layers]
        if bad or len(set(self.fusion.layers)) != len(self.fusion.layers):
            raise ValueError(
                f"fusion.layers {self.fusion.layers}: each must be a distinct latent layer index "
                f"in 0..{self.global_.layers - 1}"
            )
        return self


class BrainBLT(BLT):
    def __init__(self, cfg: BrainBLTConfig):
        super().__init__(cfg)
        D = cfg.global_.dim
        self.brain = BrainEncoder(cfg.brain)
        # One per fused latent layer, and a last one for the decoder's start slot.
        self.fusion = torch.nn.ModuleList(
            GatedCrossAttention(D, cfg.fusion.heads, cfg.brain.dim, cfg.global_.norm_eps)
            for _ in range(len(cfg.fusion.layers) + 1)
        )
        init_weights(self.fusion)  # the brain encoder initialised itself
        for slot, layer in enumerate(cfg.fusion.layers):
            self.latent[layer].register_forward_hook(self._fuse_hook(slot))
        self.from_global.register_forward_pre_hook(self._fuse_start_hook)
        self._features: torch.Tensor | None = None
        freeze(self, cfg.freeze)

    def _fuse_hook(self, slot: int):
        def hook(module, args, output):
            # Looked up at call time: activation checkpointing may have wrapped the module since.
            return self.fusion[slot](output, self._features.to(output.dtype))

        return hook

    def _fuse_start_hook(self, module, args):
        # Slot 0 of the decoder's cross-attention is a learned start vector, the only latent
        # context of the first patch's bytes (which predict the first bytes of the text): let it
        # attend the brain features too, or a short text could never use the signal.
        slots = args[0]
        start = self.fusion[-1](slots[:, :1], self._features.to(slots.dtype))
        return (torch.cat([start, slots[:, 1:]], dim=1),)

    def forward(self, ids, patch_lengths, signal, channel_mask, ch_pos, subject) -> torch.Tensor:
        # Kept until the next call, not cleared: activation checkpointing re-runs the hooked
        # blocks during backward and needs the same features.
        self._features = self.brain(signal, channel_mask, ch_pos, subject)
        return super().forward(ids, patch_lengths)

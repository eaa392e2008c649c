"""MEG -> text: a brain encoder whose residual-VQ codes prefix a causal byte decoder.

    signal ─▶ BrainEncoder ─▶ h [B, N, E] ─▶ rvq_in ─▶ RVQ ─▶ rvq_out ─▶ ĥ ≈ h ─▶ to_decoder
           ─▶ prefix [B, N, Dd]
    [prefix ; BOS text bytes] ─▶ ByteLM layers (causal) ─▶ logits of the byte positions

Trained in three phases (recipes meg_to_text_phase{1,2,3}_*.yaml, chained by `init_from`):
1. `mae`: masked autoencoding. A fraction of the encoder's tokens is replaced by a learned mask
   token; a linear head predicts the raw samples of the masked tokens (real channels only).
2. `rvq`: encoder frozen; the quantiser learns to reconstruct the encoder features (codebooks by
   EMA, rvq_in/rvq_out by gradient, commitment loss).
3. `lm`: next-byte prediction of the text after the prefix; LoRA adapters on the decoder (which
   may start from an exported text model), optionally distilled from a text teacher.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from blt_scale.model.attention import Causal
from blt_scale.model.brain_common import BrainTraining
from blt_scale.model.brain_encoder import BrainEncoder, BrainEncoderConfig
from blt_scale.model.byte_lm import ByteLM, ByteLMConfig
from blt_scale.model.layers import init_weights
from blt_scale.model.lora import LoRAConfig, apply_lora, freeze
from blt_scale.model.rvq import ResidualVQ, RVQConfig


class MegToTextConfig(BrainTraining):
    kind: Literal["meg_to_text"] = "meg_to_text"
    phase: Literal["mae", "rvq", "lm"] = "lm"
    brain: BrainEncoderConfig
    rvq: RVQConfig = RVQConfig()
    decoder: ByteLMConfig
    lora: LoRAConfig | None = Field(default=None, description="adapters on the decoder's linear layers")
    mask_ratio: float = Field(
        default=0.5, gt=0, lt=1, description="phase mae: fraction of encoder tokens masked"
    )
    quantize: bool = Field(
        default=True, description="phase lm: prefix from the quantised features (False: from h)"
    )


class MegToText(nn.Module):
    def __init__(self, cfg: MegToTextConfig):
        super().__init__()
        self.cfg = cfg
        E, C = cfg.brain.dim, cfg.brain.channels
        self.brain = BrainEncoder(cfg.brain)
        self.mask_token = nn.Parameter(torch.zeros(E))
        self.mae_head = nn.Linear(E, C * cfg.brain.stride, bias=False)
        self.rvq_in = nn.Linear(E, cfg.rvq.dim, bias=False)
        self.rvq = ResidualVQ(cfg.rvq)
        self.rvq_out = nn.Linear(cfg.rvq.dim, E, bias=False)
        self.to_decoder = nn.Linear(E, cfg.decoder.dim, bias=False)
        init_weights(self)  # before the decoder, which initialises itself
        self.brain.reset_parameters()
        self.decoder = ByteLM(cfg.decoder)
        if cfg.lora is not None:
            apply_lora(self.decoder, cfg.lora)
        freeze(self, cfg.freeze)
        self.rvq.learn = "rvq" not in cfg.freeze  # codebooks are EMA buffers: frozen = no updates

    # -- phase 1 -----------------------------------------------------------------------------
    def mae(self, signal, channel_mask, ch_pos, subject) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of squared errors over masked tokens' samples of real channels, their number)."""
        x = self.brain.embed(signal, channel_mask, ch_pos, subject)
        B, N, _ = x.shape
        # At least one token per row is masked; positions drawn from the global RNG (checkpointed).
        masked = torch.rand(B, N, device=x.device).argsort(dim=1) < max(1, round(self.cfg.mask_ratio * N))
        x = torch.where(masked[..., None], self.mask_token.to(x.dtype), x)
        pred = self.mae_head(self.brain.transform(x)).float()  # [B, N, C * stride]
        s = self.cfg.brain.stride
        target = signal[..., : N * s].float().reshape(B, -1, N, s).transpose(1, 2).flatten(2)  # [B, N, C * s]
        keep = masked[..., None] & channel_mask.repeat_interleave(s, dim=1)[:, None, :]
        err = (pred - target).pow(2).masked_fill(~keep, 0.0)
        return err.sum(), keep.sum()

    # -- phases 2 and 3 ----------------------------------------------------------------------
    def quantise(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ĥ: the features rebuilt from their codes, codes [B, N, n], commitment loss sum)."""
        q, codes, commitment = self.rvq(self.rvq_in(h))
        return self.rvq_out(q), codes, commitment

    def rvq_loss(
        self, signal, channel_mask, ch_pos, subject
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sum of squared reconstruction errors of the encoder features, their number, commitment)."""
        h = self.brain(signal, channel_mask, ch_pos, subject).detach()
        rebuilt, _, commitment = self.quantise(h)
        return (
            (rebuilt.float() - h.float()).pow(2).sum(),
            torch.tensor(h.numel(), device=h.device),
            commitment,
        )

    def prefix(self, signal, channel_mask, ch_pos, subject) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.brain(signal, channel_mask, ch_pos, subject)
        commitment = h.new_zeros((), dtype=torch.float32)
        if self.cfg.quantize:
            h, _, commitment = self.quantise(h)
        return self.to_decoder(h), commitment

    def decode(self, prefix: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Causal byte decoder over [prefix ; ids] -> logits of the byte positions [B, T, V]."""
        dec = self.decoder
        h = torch.cat([prefix.to(dec.embed.weight.dtype), dec.embed(ids)], dim=1)
        pattern = Causal(h.shape[1], dec.cfg.window, None, dec.cfg.attention)
        for layer in dec.layers:
            h = layer(h, pattern)
        return dec.output(dec.norm(h[:, prefix.shape[1] :]))

    def forward(self, ids, patch_lengths, signal, channel_mask, ch_pos, subject) -> dict[str, torch.Tensor]:
        """Phase mae: {sum, count}; rvq: {sum, count, aux}; lm: {logits, aux}. patch_lengths is
        unused (the decoder is byte-level) and accepted so every model takes the same batch."""
        brain = (signal, channel_mask, ch_pos, subject)
        if self.cfg.phase == "mae":
            total, count = self.mae(*brain)
            return {"sum": total, "count": count}
        if self.cfg.phase == "rvq":
            total, count, commitment = self.rvq_loss(*brain)
            return {"sum": total, "count": count, "aux": commitment}
        prefix, commitment = self.prefix(*brain)
        return {"logits": self.decode(prefix, ids), "aux": commitment}

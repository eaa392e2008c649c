"""A brain encoder for EEG and MEG windows: sensors -> a sequence of feature vectors over time.

    signal [B, C, T] ─▶ spatial attention (sensor positions) ─▶ per-subject linear ─▶ conv stem
                     ─▶ transformer ─▶ [B, N, dim]

- Spatial attention (Défossez et al. 2023): S virtual channels, each a softmax-weighted mix of the
  real sensors. The weights come from Fourier features of each sensor's 3-D position, so the same
  weights serve any montage (EEG 10-20, MEG helmets) and any subset of sensors. Padded sensors
  (channel_mask False) get weight exactly 0: padding never changes the output.
- Per-subject layer: one S x S matrix per subject (identity at init) absorbs individual anatomy.
- Conv stem: non-overlapping patches of `stride` samples -> one token each (N = T // stride), so a
  masked token hides exactly its own samples (the masked-autoencoding phase relies on that).
- Transformer: bidirectional blocks with RoPE over time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from blt_scale.model.attention import Full
from blt_scale.model.layers import Block, RMSNorm, TransformerConfig, init_weights


class BrainEncoderConfig(TransformerConfig):
    channels: int = Field(gt=0, description="sensors in the recipe's channel layout (C of the batch)")
    samples: int = Field(
        gt=0, description="time samples per window (T of the batch); used for FLOP accounting"
    )
    subjects: int = Field(
        default=1, gt=0, description="rows of the per-subject layer; subject ids must be below it"
    )
    spatial_channels: int = Field(
        default=32, gt=0, description="S: virtual channels of the spatial attention"
    )
    fourier_freqs: int = Field(default=4, gt=0, description="frequencies per axis of the position features")
    position_scale: float = Field(
        default=0.1, gt=0, description="metres mapped to 1 before the Fourier features"
    )
    stride: int = Field(default=8, gt=0, description="samples per encoder token")

    @property
    def fourier_dim(self) -> int:
        return 6 * self.fourier_freqs  # sin and cos, 3 axes

    def tokens(self, samples: int | None = None) -> int:
        return (samples or self.samples) // self.stride


def fourier_features(pos: torch.Tensor, freqs: int, scale: float) -> torch.Tensor:
    """[..., 3] positions in metres -> [..., 6 * freqs]: sin/cos of pi * k * pos / scale, k = 1..freqs."""
    k = torch.arange(1, freqs + 1, device=pos.device, dtype=torch.float32)
    angles = math.pi * (pos.float() / scale)[..., None] * k  # [..., 3, freqs]
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)


class SpatialAttention(nn.Module):
    def __init__(self, cfg: BrainEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.score = nn.Linear(cfg.fourier_dim, cfg.spatial_channels, bias=False)

    def forward(self, signal: torch.Tensor, channel_mask: torch.Tensor, ch_pos: torch.Tensor) -> torch.Tensor:
        feats = fourier_features(ch_pos, self.cfg.fourier_freqs, self.cfg.position_scale).to(
            self.score.weight.dtype
        )
        scores = self.score(feats).transpose(1, 2).float()  # [B, S, C]
        scores = scores.masked_fill(~channel_mask[:, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        # Zero padded channels too: 0 * NaN would still poison the mix.
        signal = signal.masked_fill(~channel_mask[..., None], 0.0)
        return torch.einsum("bsc,bct->bst", weights.to(signal.dtype), signal)


class BrainEncoder(nn.Module):
    def __init__(self, cfg: BrainEncoderConfig):
        super().__init__()
        self.cfg = cfg
        S, E = cfg.spatial_channels, cfg.dim
        self.spatial = SpatialAttention(cfg)
        self.subject = nn.Parameter(torch.eye(S).repeat(cfg.subjects, 1, 1))  # [subjects, S, S]
        self.stem = nn.Conv1d(S, E, kernel_size=cfg.stride, stride=cfg.stride)
        self.stem_out = nn.Linear(E, E, bias=False)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.layers))
        self.norm = RMSNorm(E, cfg.norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Owners that re-initialise all their weights call this afterwards. The spatial scores
        start at unit scale: with init_weights' std 0.02 every virtual channel would begin as the
        plain mean of the sensors, which is ~0 after an average reference (the EEG preset), and
        the encoder would see almost nothing until the scores grew apart."""
        init_weights(self)
        nn.init.normal_(self.spatial.score.weight, std=1.0)
        with torch.no_grad():
            self.subject.copy_(torch.eye(self.cfg.spatial_channels).repeat(self.cfg.subjects, 1, 1))

    def check(self, signal: torch.Tensor, channel_mask: torch.Tensor, subject: torch.Tensor) -> None:
        B, C, T = signal.shape
        if C != self.cfg.channels:
            raise ValueError(f"brain signal has {C} channels; model.brain.channels is {self.cfg.channels}")
        if T < self.cfg.stride:
            raise ValueError(f"brain signal has {T} samples, fewer than model.brain.stride={self.cfg.stride}")
        if not bool(channel_mask.any(dim=1).all()):
            raise ValueError("a brain sample has no real channel (channel_mask all False)")
        if int(subject.max()) >= self.cfg.subjects or int(subject.min()) < 0:
            raise ValueError(
                f"subject id {int(subject.max())} outside model.brain.subjects={self.cfg.subjects}"
            )

    def embed(self, signal, channel_mask, ch_pos, subject) -> torch.Tensor:
        """Tokens before the transformer: [B, N, dim]."""
        self.check(signal, channel_mask, subject)
        x = self.spatial(signal, channel_mask, ch_pos)  # [B, S, T]
        x = torch.einsum("bst,bsu->but", x, self.subject[subject].to(x.dtype))
        n = x.shape[-1] // self.cfg.stride
        x = self.stem(x[..., : n * self.cfg.stride]).transpose(1, 2)  # [B, N, E]
        return self.stem_out(F.gelu(x))

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, Full())  # bidirectional
        return self.norm(x)

    def forward(self, signal, channel_mask, ch_pos, subject) -> torch.Tensor:
        return self.transform(self.embed(signal, channel_mask, ch_pos, subject))

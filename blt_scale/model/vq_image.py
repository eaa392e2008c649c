"""A VQ image tokenizer: small RGB images -> one visual code per square patch -> pixels again.

    image [B, 3, H, W] ─▶ patches of p×p pixels ─▶ MLP ─▶ residual VQ (rvq.py, one stage)
          ─▶ codes [B, (H/p)·(W/p)] ─▶ codebook vectors ─▶ MLP ─▶ patches ─▶ image

Every patch is encoded on its own, so an image always gives the same number of codes, in
row-major patch order: what MVoT's byte stream interleaves with text (model/mvot_blt.py). The
quantiser has one stage, so a code is a single id < codebook_size; its codebook vector is the
embedding the token discrepancy loss compares (model/mvot.py). Pixels are floats in [0, 1].
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from blt_scale.config import Config
from blt_scale.model.rvq import ResidualVQ, RVQConfig


class VQImageConfig(Config):
    kind: Literal["vq_image"] = "vq_image"
    image_size: int = Field(default=16, gt=0, description="pixels per side of the (square) images")
    patch: int = Field(default=4, gt=0, description="pixels per side of the patch one code stands for")
    hidden: int = Field(default=64, gt=0, description="width of the encoder and decoder MLPs")
    rvq: RVQConfig = RVQConfig(quantizers=1, codebook_size=64, dim=16)

    @model_validator(mode="after")
    def _shape(self) -> VQImageConfig:
        if self.image_size % self.patch:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch ({self.patch})")
        if self.rvq.quantizers != 1:
            raise ValueError(
                f"rvq.quantizers must be 1 (one id per patch in the byte stream), got {self.rvq.quantizers}"
            )
        if self.rvq.codebook_size > 256:
            raise ValueError("rvq.codebook_size must be at most 256 (a code is one byte in shards)")
        return self

    @property
    def codes_per_image(self) -> int:
        return (self.image_size // self.patch) ** 2


class VQImageTokenizer(nn.Module):
    def __init__(self, cfg: VQImageConfig):
        super().__init__()
        self.cfg = cfg
        pixels = 3 * cfg.patch**2
        self.encoder = nn.Sequential(
            nn.Linear(pixels, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, cfg.rvq.dim)
        )
        self.vq = ResidualVQ(cfg.rvq)
        self.decoder = nn.Sequential(
            nn.Linear(cfg.rvq.dim, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, pixels)
        )

    @property
    def codebook(self) -> torch.Tensor:
        """[K, d]: the vector of each visual code."""
        return self.vq.codebooks[0]

    def _patches(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, N, 3·p·p], patches in row-major order (views and one copy: F.unfold's
        im2col is far slower on CPU for images this small)."""
        size, p = self.cfg.image_size, self.cfg.patch
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"images must have shape [B, 3, {size}, {size}], got {list(images.shape)}")
        n = size // p
        x = images.float().reshape(-1, 3, n, p, n, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(-1, n * n, 3 * p * p)

    def _image(self, patches: torch.Tensor) -> torch.Tensor:
        size, p = self.cfg.image_size, self.cfg.patch
        n = size // p
        x = patches.reshape(-1, n, n, 3, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(-1, 3, size, size)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction [B, 3, H, W], codes [B, N], commitment loss summed over patches)."""
        quantised, codes, commitment = self.vq(self.encoder(self._patches(images)))
        return self._image(self.decoder(quantised)), codes[..., 0], commitment

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Codes [B, N] of images [B, 3, H, W] (the codebooks never move here)."""
        z = self.encoder(self._patches(images))
        return ResidualVQ.nearest(z.reshape(-1, self.cfg.rvq.dim).float(), self.codebook).view(z.shape[:2])

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] from codes [B, N]."""
        if codes.shape[-1] != self.cfg.codes_per_image:
            raise ValueError(f"an image has {self.cfg.codes_per_image} codes, got {codes.shape[-1]}")
        return self._image(self.decoder(self.codebook[codes])).clamp(0, 1)

"""Residual vector quantisation (SoundStream/EnCodec style).

Stage i quantises the residual left by stages < i to its nearest code (Euclidean); the output is
the sum of the chosen codes, passed straight through: forward uses the codes, backward treats the
quantiser as the identity. The commitment loss beta * ||z - sg(q)||^2 keeps the input near them.

Codebooks are buffers updated by exponential moving averages of the vectors assigned to each code
(no gradient), and a code whose EMA usage falls below `dead_threshold` is restarted at a vector
from the batch. Under data parallelism every rank must make the same update, so the statistics
pass through `self.sync` (sum over ranks, and rank 0's restart candidates): identity here, set by
the training side (train/objectives.py), because models never import torch.distributed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from blt_scale.config import Config


class RVQConfig(Config):
    quantizers: int = Field(default=4, gt=0, description="residual stages")
    codebook_size: int = Field(default=256, gt=1)
    dim: int = Field(default=32, gt=0, description="width of the quantised vectors")
    commitment: float = Field(default=0.25, ge=0, description="beta of the commitment loss")
    decay: float = Field(default=0.99, ge=0, lt=1, description="EMA decay of the codebook statistics")
    dead_threshold: float = Field(
        default=0.05, ge=0, description="restart codes whose EMA usage (vectors/step) is below this"
    )


class LocalSync:
    """One process: sums are the local values; rank 0's tensor is this one."""

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def from_rank0(self, t: torch.Tensor) -> torch.Tensor:
        return t


class ResidualVQ(nn.Module):
    def __init__(self, cfg: RVQConfig):
        super().__init__()
        self.cfg = cfg
        n, K, d = cfg.quantizers, cfg.codebook_size, cfg.dim
        self.register_buffer("codebooks", torch.randn(n, K, d) * d**-0.5)
        self.register_buffer("ema_count", torch.ones(n, K))
        self.register_buffer("ema_sum", self.codebooks.clone())
        self.sync = LocalSync()
        self.learn = True  # False: codebooks stay as they are even in training mode

    @staticmethod
    def nearest(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of x [N, d]."""
        dist = x.pow(2).sum(-1, keepdim=True) - 2 * x @ codebook.T + codebook.pow(2).sum(-1)[None]
        return dist.argmin(dim=-1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z [..., d] -> (quantised z with straight-through gradient, codes [..., n], commitment loss sum).

        The loss is a sum over vectors (not a mean) like every other loss here."""
        flat = z.reshape(-1, self.cfg.dim).float()
        residual = flat.detach()
        quantised = torch.zeros_like(flat)
        codes = []
        for i in range(self.cfg.quantizers):
            idx = self.nearest(residual, self.codebooks[i])
            if self.training and self.learn:
                self._update(i, residual, idx)
            q = self.codebooks[i][idx]
            codes.append(idx)
            quantised = quantised + q
            residual = residual - q
        commitment = self.cfg.commitment * (flat - quantised.detach()).pow(2).sum()
        out = flat + (quantised - flat).detach()  # straight through
        return out.view_as(z).to(z.dtype), torch.stack(codes, -1).view(*z.shape[:-1], -1), commitment

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [..., n] -> the sum of their vectors [..., d]."""
        return sum(self.codebooks[i][codes[..., i]] for i in range(self.cfg.quantizers))

    @torch.no_grad()
    def _update(self, i: int, x: torch.Tensor, idx: torch.Tensor) -> None:
        K, decay = self.cfg.codebook_size, self.cfg.decay
        onehot = F.one_hot(idx, K).to(x.dtype)
        stats = self.sync.sum(torch.cat([onehot.sum(0)[:, None], onehot.T @ x], dim=1))  # [K, 1 + d]
        self.ema_count[i].mul_(decay).add_(stats[:, 0], alpha=1 - decay)
        self.ema_sum[i].mul_(decay).add_(stats[:, 1:], alpha=1 - decay)
        # Laplace smoothing keeps rarely used codes finite.
        n = self.ema_count[i].sum()
        count = (self.ema_count[i] + 1e-5) / (n + K * 1e-5) * n
        self.codebooks[i].copy_(self.ema_sum[i] / count[:, None])
        dead = self.ema_count[i] < self.cfg.dead_threshold
        if bool(dead.any()):
            # Restart at vectors of this batch (rank 0's, so every rank restarts alike).
            pick = torch.randint(0, x.shape[0], (K,), device=x.device)
            candidates = self.sync.from_rank0(x[pick].contiguous())
            self.codebooks[i][dead] = candidates[dead]
            self.ema_sum[i][dead] = candidates[dead]
            self.ema_count[i][dead] = 1.0

"""AdamW with decoupled weight decay on matrices only, and a warmup + decay learning-rate schedule."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from blt_scale.config import Config


class OptimConfig(Config):
    lr: float = Field(default=3e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = Field(default=0.1, ge=0)
    warmup_steps: int = Field(default=100, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1, description="final lr = lr * min_lr_ratio")
    clip_grad_norm: float | None = Field(default=1.0, gt=0)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    # Norm gains, biases and embeddings are not decayed: decay would only pull them to zero. The
    # brain encoder's per-subject layer is a lookup too: a subject absent from training batches
    # (held out by blt prep brain --split by-subject) would see its identity rows decay to zero.
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lookup = "embed" in name or "ngram" in name or name.split(".")[-1] == "subject"
        is_matrix = param.dim() >= 2 and not lookup
        (decay if is_matrix else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # An empty group (SVF trains vectors only) would lose its settings in a DCP optimizer load.
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


def lr_factor(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Multiplier of cfg.lr at `step` (0-based): linear warmup, then decay to min_lr_ratio."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape

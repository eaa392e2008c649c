"""What the brain variants add to a model config for multi-phase training, and the
distillation loss.

- `freeze`: submodules whose parameters do not train (LoRA adapters inside them still do).
- `init_from`: weights to start from, e.g. the previous phase's run directory or an exported text
  model; `prefix` is put before the source's keys (an exported ByteLM into `decoder.`). Loaded by
  train/init_from.py before sharding, on a fresh start only (a resume loads its own checkpoint).
- `distill`: KL(teacher || student) on the byte distributions of the same text, from an exported
  teacher (`blt export`), temperature-scaled (Hinton et al. 2015).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from blt_scale.config import Config
from blt_scale.model.vocab import PAD


class InitSource(Config):
    path: str = Field(description="run directory, checkpoint directory or exported model")
    prefix: str = Field(default="", description="prepended to the source's parameter names")


class DistillConfig(Config):
    teacher: str = Field(description="exported model (blt export) that scores the same text")
    weight: float = Field(default=0.5, ge=0, le=1, description="loss = (1 - weight) * CE + weight * T^2 * KL")
    temperature: float = Field(default=2.0, gt=0)


class BrainTraining(Config):
    freeze: list[str] = Field(default=[], description="submodules that do not train, e.g. [brain]")
    init_from: list[InitSource] = Field(default=[], description="weights loaded before training starts")
    distill: DistillConfig | None = None


def kl_sum(
    student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Sum over non-PAD positions of T^2 * KL(softmax(teacher/T) || softmax(student/T)), in nats."""
    keep = (targets != PAD).flatten()
    s = F.log_softmax(student.flatten(0, 1)[keep].float() / temperature, dim=-1)
    t = F.log_softmax(teacher.flatten(0, 1)[keep].float() / temperature, dim=-1)
    return temperature**2 * F.kl_div(s, t, log_target=True, reduction="sum")

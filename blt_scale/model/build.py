"""One entry point from a model config to a model, and the byte-level loss every LM variant uses."""

from __future__ import annotations

from typing import Annotated, Union

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from blt_scale.model.blt import BLT, BLTConfig
from blt_scale.model.byte_lm import ByteLM, ByteLMConfig
from blt_scale.model.vocab import PAD

ModelConfig = Annotated[Union[BLTConfig, ByteLMConfig], Field(discriminator="kind")]


def build_model(cfg: BLTConfig | ByteLMConfig) -> nn.Module:
    return {"blt": BLT, "byte_lm": ByteLM}[cfg.kind](cfg)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-byte cross-entropy in nats, number of non-PAD targets).

    Sums, not means, so gradient accumulation and data-parallel ranks can weight every byte
    equally; bits per byte = sum / count / ln 2.
    """
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=PAD, reduction="sum")
    return loss, (targets != PAD).sum()

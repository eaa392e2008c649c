"""One entry point from a model config to a model, and the byte-level loss every LM variant uses."""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from blt_scale.model.blt import BLT, BLTConfig
from blt_scale.model.brain_blt import BrainBLT, BrainBLTConfig
from blt_scale.model.byte_lm import ByteLM, ByteLMConfig
from blt_scale.model.meg_to_text import MegToText, MegToTextConfig
from blt_scale.model.vocab import PAD

ModelConfig = Annotated[
    BLTConfig | ByteLMConfig | BrainBLTConfig | MegToTextConfig, Field(discriminator="kind")
]
MODELS = {"blt": BLT, "byte_lm": ByteLM, "brain_blt": BrainBLT, "meg_to_text": MegToText}
TEXT_KINDS = ("blt", "byte_lm")


def build_model(cfg) -> nn.Module:
    return MODELS[cfg.kind](cfg)


def text_loss(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, None]:
    tokens = batch["tokens"]
    summed, count = lm_loss(model(tokens[:, :-1], batch["patch_lengths"]), tokens[:, 1:])
    return summed, count, None


def loss_fn(cfg):
    """The training objective of a model kind: fn(model, batch) -> (sum, count, aux). The trainer
    logs sum / count and back-propagates sum + aux (aux None: nothing extra)."""
    if cfg.kind in TEXT_KINDS:
        return text_loss
    from blt_scale.train.brain_loss import LOSSES  # may talk to other ranks: lives on the training side

    return LOSSES[cfg.kind]


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-byte cross-entropy in nats, number of non-PAD targets).

    Sums, not means, so gradient accumulation and data-parallel ranks can weight every byte
    equally; bits per byte = sum / count / ln 2.
    """
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=PAD, reduction="sum")
    return loss, (targets != PAD).sum()

"""Training objectives: fn(model, batch) -> (sum, count, aux[, figures]), one per model kind (`loss_fn`).

`sum / count` is what the trainer logs as the loss (next-byte cross-entropy in nats for the LM
phases, so bpb stays honest; squared error per element for the mae and rvq phases). `aux` holds
the extra terms that are optimised but not reported: RVQ commitment, and for distillation
weight * (KL - CE), so that CE + aux = (1 - weight) * CE + weight * KL. `figures`, where an
objective returns it, names further figures as {name: (sum, count)}; the trainer and `evaluate_bpb`
log each as Σ sum / Σ count over the global batch, beside loss and bpb.

Objectives live with training, not with the models: the MEG->text objective talks to other
ranks (the RVQ's EMA statistics are summed over ranks so every rank keeps the same codebooks).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from blt_scale.model.brain_blt import BRAIN_KEYS
from blt_scale.model.brain_common import kl_sum
from blt_scale.model.mvot import IMAGE_OFFSET, discrepancy_loss
from blt_scale.model.rvq import LocalSync, ResidualVQ
from blt_scale.model.vocab import PAD


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-byte cross-entropy in nats, number of non-PAD targets).

    Sums, not means, so gradient accumulation and data-parallel ranks can weight every byte
    equally; bits per byte = sum / count / ln 2.
    """
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=PAD, reduction="sum")
    return loss, (targets != PAD).sum()


def text_loss(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, None]:
    tokens = batch["tokens"]
    summed, count = lm_loss(model(tokens[:, :-1], batch["patch_lengths"]), tokens[:, 1:])
    return summed, count, None


_TEACHERS: dict[tuple[str, str], nn.Module] = {}


class DistSync(LocalSync):
    """Codebook statistics summed over all ranks; restart candidates broadcast from rank 0."""

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        t = t.contiguous().clone()
        dist.all_reduce(t)
        return t

    def from_rank0(self, t: torch.Tensor) -> torch.Tensor:
        t = t.contiguous().clone()
        dist.broadcast(t, src=0)
        return t


def install_sync(model: nn.Module) -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        for m in model.modules():
            if isinstance(m, ResidualVQ) and not isinstance(m.sync, DistSync):
                m.sync = DistSync()


def brain_inputs(batch: dict) -> list[torch.Tensor]:
    missing = [k for k in BRAIN_KEYS if k not in batch]
    if missing:
        raise ValueError(
            f"a brain model needs batch keys {list(BRAIN_KEYS)}; the loader gave none of {missing} "
            "(point data.brain at shards from `blt prep brain`)"
        )
    return [batch[k] for k in BRAIN_KEYS]


def teacher(path: str, device: torch.device) -> nn.Module:
    key = (path, str(device))
    if key not in _TEACHERS:
        from blt_scale.checkpoint.export import load_exported

        model, _ = load_exported(path, device)
        _TEACHERS[key] = model.requires_grad_(False).eval()
    return _TEACHERS[key]


def lm_with_distill(model, batch, logits, aux):
    tokens = batch["tokens"]
    ce, count = lm_loss(logits, tokens[:, 1:])
    aux = ce.new_zeros(()) if aux is None else aux
    cfg = model.cfg.distill
    if cfg is not None and model.training:
        with torch.no_grad():
            target = teacher(cfg.teacher, logits.device)(tokens[:, :-1], batch["patch_lengths"])
        kl = kl_sum(logits, target, tokens[:, 1:], cfg.temperature)
        aux = aux + cfg.weight * (kl - ce)
    return ce, count, aux


def brain_blt_loss(model, batch):
    tokens = batch["tokens"]
    logits = model(tokens[:, :-1], batch["patch_lengths"], *brain_inputs(batch))
    return lm_with_distill(model, batch, logits, None)


def meg_to_text_loss(model, batch):
    install_sync(model)
    tokens = batch["tokens"]
    out = model(tokens[:, :-1], batch["patch_lengths"], *brain_inputs(batch))
    if "logits" in out:
        return lm_with_distill(model, batch, out["logits"], out["aux"])
    return out["sum"], out["count"], out.get("aux")


def vq_image_loss(model, batch):
    """Squared error per pixel value (the logged loss), the RVQ commitment as aux."""
    install_sync(model)
    images = batch["images"]
    recon, _, commitment = model(images)
    return (recon.float() - images.float()).pow(2).sum(), images.numel(), commitment


def mvot_loss(model, batch):
    """MVoT: cross-entropy over text and image targets plus discrepancy_weight · L_D at the image
    targets. The logged loss (and bpb) covers the text bytes only; image-token CE and L_D go to aux,
    so sum + aux = CE over every target + weight · L_D."""
    tokens = batch["tokens"]
    logits = model(tokens[:, :-1], batch["patch_lengths"])
    targets = tokens[:, 1:]
    image = targets >= IMAGE_OFFSET
    text_sum, text_count = lm_loss(logits, targets.masked_fill(image, PAD))
    image_sum, _ = lm_loss(logits, targets.masked_fill(~image, PAD))
    aux = image_sum
    weight = model.cfg.mvot.discrepancy_weight
    discrepancy, image_count = discrepancy_loss(logits, targets, model.images.codebook.detach())
    if weight > 0:
        aux = aux + weight * discrepancy
    # Logged per image target whatever the weight, so runs with and without L_D compare.
    figures = {
        "loss_image": (image_sum.detach(), int(image_count)),
        "discrepancy": (discrepancy.detach(), int(image_count)),
    }
    return text_sum, text_count, aux, figures


LOSSES = {
    "blt": text_loss,
    "byte_lm": text_loss,
    "brain_blt": brain_blt_loss,
    "meg_to_text": meg_to_text_loss,
    "svf": text_loss,  # next-byte loss through the adapted base model
    "mvot": mvot_loss,
    "vq_image": vq_image_loss,
}


def loss_fn(model_cfg):
    """The objective of a model kind. The trainer logs sum / count (and any figures) and
    back-propagates sum + aux (aux None: nothing extra)."""
    return LOSSES[model_cfg.kind]

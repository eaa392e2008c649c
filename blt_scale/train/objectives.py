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

import zlib
from functools import partial

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from blt_scale.model.brain_blt import BRAIN_KEYS
from blt_scale.model.brain_common import kl_sum
from blt_scale.model.mvot import IMAGE_OFFSET, discrepancy_loss
from blt_scale.model.patcher import PatcherConfig, patch_lengths_with_next
from blt_scale.model.rvq import LocalSync, ResidualVQ
from blt_scale.model.svf import base_weights
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


def policy_logp(logits: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of the next id as an SVF policy samples it: PAD (never data) excluded."""
    return (
        logits.float().index_fill(-1, torch.tensor([PAD], device=logits.device), -torch.inf).log_softmax(-1)
    )


def next_logits(model: nn.Module, ids: torch.Tensor, patcher: PatcherConfig | None) -> torch.Tensor:
    """Every position's next-id logits as generation sees them: a BLT base (patcher given) is told
    whether each byte closes its patch, which its rules decide from the bytes so far."""
    return model(ids) if patcher is None else model(ids, patch_lengths_with_next(ids, patcher))


@torch.no_grad()
def sample_completions(
    model: nn.Module,
    prompts: torch.Tensor,
    length: int,
    generator: torch.Generator,
    patcher: PatcherConfig | None = None,
) -> torch.Tensor:
    """[N, length] ids sampled from the model after each prompt row. A full forward per id, always
    `length` of them: under FSDP every rank must run the same number of forward passes."""
    seq = prompts
    for _ in range(length):
        probs = policy_logp(next_logits(model, seq, patcher)[:, -1]).exp()
        seq = torch.cat([seq, torch.multinomial(probs, 1, generator=generator)], 1)
    return seq[:, prompts.shape[1] :]


# A completion's reward against its row's true continuation (SVFObjective.reward): [N, L] ids each
# -> [N]. A task with another notion of success adds its function here and its name to
# SVFObjective.reward (the config lives below train/ and cannot import this table).
REWARDS = {
    "match": lambda completions, truth: (completions == truth).float().mean(1),
    "prefix": lambda completions, truth: (completions == truth).float().cumprod(1).mean(1),
    "exact": lambda completions, truth: (completions == truth).all(1).float(),
}


def reinforce_terms(
    model: nn.Module,
    prompts: torch.Tensor,
    completions: torch.Tensor,
    reward: torch.Tensor,
    kl_weight: float,
    patcher: PatcherConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, KL) per completion (SVFObjective in model/svf.py), given each completion's reward r:
    KL = Σ_t KL(π_z ‖ π_base) over the completion's positions,
    loss = (−(r − mean r)·log π_z(ŷ) + kl_weight·KL) / completion length."""
    P, L = prompts.shape[1], completions.shape[1]
    inputs = torch.cat([prompts, completions], 1)[:, :-1]
    # [N, L, V]: the distributions the ids came from (one forward equals sampling's per-prefix ones)
    logp = policy_logp(next_logits(model, inputs, patcher)[:, P - 1 :])
    with torch.no_grad(), base_weights(model):
        base = policy_logp(next_logits(model, inputs, patcher)[:, P - 1 :])
    sampled = logp.gather(-1, completions.unsqueeze(-1)).squeeze(-1).sum(1)
    # PAD has probability 0 under both policies, and 0·log 0 is 0. masked_fill, not torch.where:
    # where's unchosen branch (−inf − −inf) would still send NaN into the gradient.
    kl = (logp.exp() * (logp - base).masked_fill(logp.isinf(), 0.0)).sum((-1, -2))
    advantage = reward - reward.mean()  # the micro-batch's mean reward as the baseline
    loss = (-advantage * sampled + kl_weight * kl) / L
    return loss, kl.detach()


def svf_loss(model, batch, patcher: PatcherConfig | None = None):
    """Next-byte loss, or the paper's REINFORCE objective with a KL penalty (model.objective). Either
    way the logged loss is the batch's next-byte loss (evaluation reports only that), so bpb stays
    comparable; REINFORCE also logs `reward` (per completion) and `kl` (nats per sampled id). A BLT
    base patches what it samples with the run's patcher."""
    objective = model.cfg.objective
    if objective.kind == "next_byte" or not model.training:
        return text_loss(model, batch)
    if model.cfg.base.kind == "byte_lm":
        patcher = None
    elif patcher is None or patcher.mode == "entropy":
        raise ValueError(
            "model.objective.kind=reinforce patches the bytes it samples, which needs patcher.mode "
            f"space, static or byte (this run: {patcher.mode if patcher else 'no patcher'}; entropy "
            "patches need entropies that no dataset holds for new bytes)"
        )
    tokens = batch["tokens"]
    P, L, S = objective.prompt_bytes, objective.completion_bytes, objective.samples
    if P + L > tokens.shape[1]:
        raise ValueError(
            f"model.objective.prompt_bytes + completion_bytes = {P + L} exceeds the {tokens.shape[1]} "
            "ids of a training row (data.seq_len + 1)"
        )
    with torch.no_grad():
        ce, count = lm_loss(model(tokens[:, :-1], batch["patch_lengths"]), tokens[:, 1:])
    # Seeded by the batch's ids: a resumed run draws the same completions for the same batch.
    generator = torch.Generator(device=tokens.device).manual_seed(zlib.crc32(tokens.cpu().numpy().tobytes()))
    prompts = tokens[:, :P].repeat_interleave(S, 0)
    completions = sample_completions(model, prompts, L, generator, patcher)
    truth = tokens[:, P : P + L].repeat_interleave(S, 0)
    reward = REWARDS[objective.reward](completions, truth)
    loss, kl = reinforce_terms(model, prompts, completions, reward, objective.kl_weight, patcher)
    # The trainer divides by global_batch · seq_len: scaled so the gradient is that of the mean loss
    # per completion over the global batch.
    aux = loss.mean() * tokens.shape[0] * (tokens.shape[1] - 1) - ce
    figures = {"reward": (reward.sum(), reward.numel()), "kl": (kl.sum(), kl.numel() * L)}
    return ce, count, aux, figures


class Figures:
    """An objective's further figures summed over micro-batches, {name: [sum, count]}; `flat` goes
    into the step's one all_reduce (every rank runs the same objective: same names, same order) and
    `means` reads the reduced sums back as Σ sum / Σ count."""

    def __init__(self):
        self.totals: dict[str, list[float]] = {}

    def add(self, outputs: tuple) -> None:
        """The objective's outputs after (sum, count, aux): empty, or its figures."""
        for name, (fig_sum, fig_count) in (outputs[0] if outputs else {}).items():
            totals = self.totals.setdefault(name, [0.0, 0.0])
            totals[0] += float(fig_sum)
            totals[1] += float(fig_count)

    def flat(self) -> list[float]:
        return [v for totals in self.totals.values() for v in totals]

    def means(self, reduced: list[float]) -> dict[str, float]:
        return {name: s / max(c, 1) for name, s, c in zip(self.totals, reduced[0::2], reduced[1::2])}


LOSSES = {
    "blt": text_loss,
    "byte_lm": text_loss,
    "brain_blt": brain_blt_loss,
    "meg_to_text": meg_to_text_loss,
    "svf": svf_loss,
    "mvot": mvot_loss,
    "vq_image": vq_image_loss,
}


def loss_fn(model_cfg, patcher: PatcherConfig | None = None):
    """The objective of a model kind. The trainer logs sum / count (and any figures) and
    back-propagates sum + aux (aux None: nothing extra). `patcher`: the run's, for objectives that
    patch what they generate (SVF's REINFORCE on a BLT)."""
    if model_cfg.kind == "svf":
        return partial(svf_loss, patcher=patcher)
    return LOSSES[model_cfg.kind]

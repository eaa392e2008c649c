"""Patchers: which bytes start a new patch. All are vectorised over [B, T] id tensors.

Every rule decides whether byte t starts a patch from the bytes *before* t (for entropy, from the
entropy model's prediction made at t-1), never from byte t itself. So the patching of a prefix is
the prefix of the patching of the whole sequence, and whether the patch holding byte t is complete
at t is known at t: the decoder lets the last byte of a patch see that patch's latent (blt.py),
and generation relies on both.

Rules (position 0 always starts a patch, and so does the byte after every EOS, so a patch never
spans two documents):
- entropy/global:    t starts a patch when H(t-1) > threshold
- entropy/monotonic: t starts a patch when H(t-1) - H(t-2) > relative_threshold
- entropy/both:      both conditions hold (a rise that is also high; long high-entropy runs stay
                     in one patch instead of splitting at every byte)
- space:   a space-like byte that follows a non-space-like one ends its patch (t starts one when
           byte t-1 does), as in the paper: "the quick  brown" -> "the ", "quick ", " brown". Space-like
           is every byte that is not an ASCII letter or digit or a UTF-8 continuation byte; BOS
           never ends a patch (it joins its document's first word).
- static:  every `static_size` bytes; byte: every byte.
`max_patch_len` then splits longer patches into pieces of at most that length.
H is in nats: H(t) is the entropy of the model's distribution for byte t+1.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from blt_scale.config import Config
from blt_scale.model.vocab import BOS, EOS, OFFSET


class PatcherConfig(Config):
    mode: Literal["entropy", "space", "static", "byte"] = "space"
    entropy_rule: Literal["global", "monotonic", "both"] = "global"
    threshold: float = Field(default=1.335, description="global entropy threshold (nats)")
    relative_threshold: float = Field(default=0.0, description="monotonic rule: minimum rise (nats)")
    static_size: int = Field(default=4, gt=0)
    max_patch_len: int | None = Field(default=None, gt=0)
    entropy_model: str | None = Field(
        default=None,
        description="mode entropy: the entropy model's export directory (`blt export`), which `blt "
        "generate` runs beside the BLT (training reads entropies from the shards)",
    )


def _space_like(ids: torch.Tensor) -> torch.Tensor:
    b = ids - OFFSET
    word = ((b >= ord("0")) & (b <= ord("9"))) | ((b >= ord("A")) & (b <= ord("Z")))
    word |= (b >= ord("a")) & (b <= ord("z"))
    word |= (b >= 0x80) & (b <= 0xBF)  # UTF-8 continuation bytes stay with their character
    return ~word  # specials (b < 0) are space-like


def patch_starts(
    ids: torch.Tensor, cfg: PatcherConfig, entropies: torch.Tensor | None = None
) -> torch.Tensor:
    """Boolean [B, T]: True where a patch starts."""
    B, T = ids.shape
    starts = torch.zeros(B, T, dtype=torch.bool, device=ids.device)
    if cfg.mode == "entropy":
        if entropies is None:
            raise ValueError(
                "patcher.mode=entropy needs per-byte entropies (an entropy model or entropy shards)"
            )
        h = entropies.float()
        rise = torch.zeros_like(h)
        rise[:, 1:] = h[:, 1:] - h[:, :-1]
        high, rising = h > cfg.threshold, rise > cfg.relative_threshold
        fire = {"global": high, "monotonic": rising, "both": high & rising}[cfg.entropy_rule]
        starts[:, 1:] = fire[:, :-1]
    elif cfg.mode == "space":
        space = _space_like(ids)
        ends = space & (ids != BOS)  # a document's BOS joins its first word
        ends[:, 1:] &= ~space[:, :-1]
        starts[:, 1:] = ends[:, :-1]
    elif cfg.mode == "static":
        starts[:, :: cfg.static_size] = True
    else:
        starts[:] = True
    starts[:, 0] = True
    starts[:, 1:] |= ids[:, :-1] == EOS
    if cfg.max_patch_len is not None:
        starts = _split_long(starts, cfg.max_patch_len)
    return starts


def _split_long(starts: torch.Tensor, max_len: int) -> torch.Tensor:
    pos = torch.arange(starts.shape[1], device=starts.device).expand_as(starts)
    last_start = torch.where(starts, pos, torch.zeros_like(pos)).cummax(dim=1).values
    return starts | ((pos - last_start) % max_len == 0)


def lengths_from_starts(starts: torch.Tensor) -> torch.Tensor:
    """Patch lengths [B, P], right-padded with zeros to the largest patch count of the batch."""
    patch_ids = starts.long().cumsum(dim=1) - 1
    lengths = torch.zeros(starts.shape[0], int(patch_ids.max()) + 1, dtype=torch.long, device=starts.device)
    return lengths.scatter_add_(1, patch_ids, torch.ones_like(patch_ids))


def patch_lengths(
    ids: torch.Tensor, cfg: PatcherConfig, entropies: torch.Tensor | None = None
) -> torch.Tensor:
    return lengths_from_starts(patch_starts(ids, cfg, entropies))


def patch_lengths_with_next(
    ids: torch.Tensor, cfg: PatcherConfig, entropies: torch.Tensor | None = None
) -> torch.Tensor:
    """Lengths over T + 1 positions: the T bytes and the byte that comes next, whose patch start
    the rules decide from the T bytes alone. Rows sum to T + 1; given to the BLT with the T bytes,
    they tell it whether the last byte's patch is complete (generation needs that)."""
    nxt = torch.full_like(ids[:, :1], OFFSET)  # its value never matters: rules look only backwards
    h = None if entropies is None else torch.cat([entropies, entropies[:, -1:]], dim=1)
    return patch_lengths(torch.cat([ids, nxt], dim=1), cfg, h)


def patch_ids_from_lengths(lengths: torch.Tensor, length: int) -> torch.Tensor:
    """For each of `length` positions, the index of its patch: [B, T]."""
    ends = lengths.cumsum(dim=1)
    pos = torch.arange(length, device=lengths.device).expand(lengths.shape[0], length).contiguous()
    return torch.searchsorted(ends, pos, right=True)


def closed_patches(lengths: torch.Tensor, length: int) -> torch.Tensor:
    """[B, length]: how many patches are complete at byte t, i.e. end at or before t with a next
    patch starting at t + 1. Rows of `lengths` sum to `length` (the last patch stays open: the next
    byte's start is unknown) or to length + 1 (patch_lengths_with_next)."""
    after = patch_ids_from_lengths(lengths, length + 1)[:, 1:]
    return torch.minimum(after, (lengths > 0).sum(dim=1, keepdim=True) - 1)


def mean_patch_bytes(ids: torch.Tensor, cfg: PatcherConfig, entropies: torch.Tensor | None = None) -> float:
    return ids.numel() / float(patch_starts(ids, cfg, entropies).sum())


def calibrate_threshold(
    ids: torch.Tensor, entropies: torch.Tensor, cfg: PatcherConfig, target: float, iters: int = 60
) -> PatcherConfig:
    """The patcher config whose threshold gives `target` mean bytes per patch on this sample.

    Moves `relative_threshold` for the monotonic rule and `threshold` otherwise. Mean patch size
    grows with the threshold, so bisection finds it; an unreachable target is an error.
    """
    if cfg.mode != "entropy":
        raise ValueError(f"threshold calibration needs patcher.mode=entropy, got {cfg.mode!r}")
    field = "relative_threshold" if cfg.entropy_rule == "monotonic" else "threshold"
    span = float(entropies.max() - entropies.min()) + 1.0
    lo, hi = float(entropies.min()) - span, float(entropies.max()) + span

    def size(theta: float) -> float:
        return mean_patch_bytes(ids, cfg.model_copy(update={field: theta}), entropies)

    if not size(lo) <= target <= size(hi):
        raise ValueError(
            f"target {target} bytes/patch is outside what this sample allows ({size(lo):.3f} to "
            f"{size(hi):.3f})"
        )
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if size(mid) < target else (lo, mid)
    return cfg.model_copy(update={field: (lo + hi) / 2})

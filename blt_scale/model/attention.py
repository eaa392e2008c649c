"""Every attention of the model family goes through `attend(q, k, v, pattern)`.

A pattern says which keys each query may see, without ever holding a [queries, keys] mask:
- `Causal`: self-attention over a sequence, optionally within a sliding window and a document.
- `Full`: every query sees every key (bidirectional encoders, brain fusion).
- `OwnPatch`: the k queries of patch p see the bytes of patch p (the encoder's cross-attention).
- `ClosedPatches`: byte t sees the start slot and the latent slots of the latest `window`
  patches that are complete at t (the decoder's cross-attention).

Each pattern runs on one of three backends (`model.attention`):
- `chunked`: cost and memory linear in the sequence length on any device. Windowed self-attention
  runs as one SDPA call over blocks of about the window size (each block's queries against its
  own and the previous block's keys); the patch cross-attentions gather exactly the keys a query
  may see. Unwindowed causal attention with documents runs block by block from the block's
  earliest document start.
- `flex`: `torch.nn.attention.flex_attention` with block masks (compiled on CUDA; the GPU path).
  Inference only on CPU: torch has no flex backward there.
- `dense`: a [B, 1, Tq, Tk] boolean mask and SDPA. The reference the others are tested against.
`auto` is flex on CUDA and chunked elsewhere. Plain causal attention keeps SDPA's `is_causal`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Literal

import torch
import torch.nn.functional as F

Backend = Literal["auto", "flex", "chunked", "dense"]
MIN_BLOCK = 64  # chunked blocks are at least this long: tiny windows would mean tiny SDPA calls


def resolve_backend(backend: Backend, device: torch.device) -> Backend:
    if backend == "auto":
        return "flex" if device.type == "cuda" else "chunked"
    return backend


class _Memo:
    """Masks built from a pattern are built once per forward and shared by every layer."""

    def memo(self, name: str, build):
        cache = self.__dict__.setdefault("_built", {})
        if name not in cache:
            cache[name] = build()
        return cache[name]


@dataclass(eq=False)
class Full(_Memo):
    """No mask: every query sees every key."""

    backend: Backend = "dense"


@dataclass(eq=False)
class Causal(_Memo):
    """Query t sees key s <= t, with t - s < window, and doc[s] == doc[t] where docs are given.
    With a `prefix` of p, the keys start with p entries that every query sees, whatever its window
    and document (Titans' persistent memory), and key p + s is position s.
    A None window, no documents and no prefix is plain causal attention (SDPA's is_causal)."""

    length: int
    window: int | None
    doc: torch.Tensor | None  # [B, T] document index of each position
    backend: Backend
    prefix: int = 0


@dataclass(eq=False)
class OwnPatch(_Memo):
    """Query i (of patches * k) sees byte t iff patch_ids[t] == i // k."""

    patch_ids: torch.Tensor  # [B, T]
    patches: int
    k: int
    backend: Backend


@dataclass(eq=False)
class ClosedPatches(_Memo):
    """Byte t sees slot group 0 (the start slot) always, and group g >= 1 (the latent of patch g-1)
    when closed[t] - window < g <= closed[t] (closed[t]: patches complete at byte t) and, with
    documents, slot_doc[g] == doc[t]. Each group holds k slots."""

    closed: torch.Tensor  # [B, T]
    groups: int
    k: int
    window: int | None
    doc: torch.Tensor | None  # [B, T]
    slot_doc: torch.Tensor | None  # [B, groups]
    backend: Backend


Pattern = Full | Causal | OwnPatch | ClosedPatches


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern, dropout: float = 0.0
) -> torch.Tensor:
    """q [B, H, Tq, Dh], k/v [B, H, Tk, Dh] -> [B, H, Tq, Dh] under `pattern`."""
    if isinstance(pattern, Full):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    if isinstance(pattern, Causal) and pattern.window is None and pattern.doc is None and not pattern.prefix:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
    backend = resolve_backend(pattern.backend, q.device)
    if backend == "dense":
        mask = pattern.memo("dense", lambda: dense_mask(pattern, q.shape[2], q.device))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    if backend == "flex":
        return _flex(q, k, v, pattern)
    if isinstance(pattern, Causal):
        return _chunked_causal(q, k, v, pattern, dropout)
    if isinstance(pattern, OwnPatch):
        return _own_patch(q, k, v, pattern, dropout)
    return _closed_patches(q, k, v, pattern, dropout)


# -- dense reference -------------------------------------------------------------------------------
def causal_mask(
    length: int, window: int | None, doc: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """[B or 1, 1, T, T]: key s visible to query t."""
    pos = torch.arange(length, device=device)
    allowed = pos[:, None] >= pos[None, :]
    if window is not None:
        allowed = allowed & (pos[:, None] - pos[None, :] < window)
    allowed = allowed[None, None]
    if doc is not None:
        allowed = allowed & (doc[:, None, :, None] == doc[:, None, None, :])
    return allowed


def closed_visible(
    closed: torch.Tensor, group: torch.Tensor, window: int | None, doc_q, slot_doc
) -> torch.Tensor:
    """Broadcasting core of the ClosedPatches rule (also incremental decoding's): closed/doc_q index
    bytes, group/slot_doc groups."""
    seen = (group >= 1) & (group <= closed)
    if window is not None:
        seen &= group > closed - window
    if slot_doc is not None:
        seen &= slot_doc == doc_q
    return seen | (group == 0)


def with_prefix(mask: torch.Tensor, prefix: int) -> torch.Tensor:
    """mask [..., keys] with `prefix` always-visible keys in front."""
    return torch.cat([mask.new_ones(*mask.shape[:-1], prefix), mask], dim=-1) if prefix else mask


def dense_mask(pattern: Pattern, queries: int, device: torch.device) -> torch.Tensor:
    if isinstance(pattern, Causal):
        return with_prefix(causal_mask(pattern.length, pattern.window, pattern.doc, device), pattern.prefix)
    if isinstance(pattern, OwnPatch):
        slot_patch = torch.arange(queries, device=pattern.patch_ids.device) // pattern.k
        mask = slot_patch[None, :, None] == pattern.patch_ids[:, None, :]
        # Patches with no byte (padding) attend byte 0 rather than nothing: SDPA would return NaN,
        # and NaN poisons gradients even of outputs nobody reads.
        empty = ~mask.any(dim=-1, keepdim=True)
        mask[..., :1] |= empty
        return mask[:, None]
    p = pattern
    group = torch.arange(p.groups, device=p.closed.device).repeat_interleave(p.k)  # [G * k]
    slot_doc = p.slot_doc.repeat_interleave(p.k, dim=1)[:, None, :] if p.slot_doc is not None else None
    doc_q = p.doc[:, :, None] if p.doc is not None else None
    return closed_visible(p.closed[:, :, None], group[None, None, :], p.window, doc_q, slot_doc)[:, None]


# -- chunked ----------------------------------------------------------------------------------------
def _split_prefix(x: torch.Tensor, p: Causal) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys or values [B, H, prefix + T, D] -> (the prefix's, the sequence's)."""
    return x[:, :, : p.prefix], x[:, :, p.prefix :]


def _chunked_causal(q, k, v, p: Causal, dropout: float) -> torch.Tensor:
    if p.window is None:
        return _causal_by_blocks(q, k, v, p, dropout)
    (kp, k), (vp, v) = _split_prefix(k, p), _split_prefix(v, p)
    B, H, T, D = q.shape
    Dv = v.shape[-1]
    C = max(p.window, MIN_BLOCK)
    n = math.ceil(T / C)
    pad = n * C - T

    def blocks(x):  # [B, H, T, D] -> [B, n, H, C, D] (values may be wider than queries)
        return F.pad(x, (0, 0, 0, pad)).view(B, H, n, C, x.shape[-1]).transpose(1, 2)

    def with_previous(x):  # [B, n, ...C...] -> [B, n, ..., 2C, ...] along dim `cat_dim`
        prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
        return torch.cat([prev, x], dim=-2)

    qb, kb, vb = blocks(q), with_previous(blocks(k)), with_previous(blocks(v))
    # Query a of block i is position iC + a; key b is position (i - 1)C + b.
    a = torch.arange(C, device=q.device)[:, None]
    b = torch.arange(2 * C, device=q.device)[None, :]
    rel = C + a - b  # query position minus key position
    mask = ((rel >= 0) & (rel < p.window))[None].expand(n, C, 2 * C).clone()
    mask[0, :, :C] = False  # keys before position 0
    mask = mask[None]  # [1, n, C, 2C]
    if p.doc is not None:
        doc = F.pad(p.doc, (0, pad), value=-1).view(B, n, C)
        doc_k = with_previous(doc[..., None]).squeeze(-1)  # [B, n, 2C]
        mask = mask & (doc[..., :, None] == doc_k[..., None, :])
    mask = with_prefix(mask.expand(B, n, C, 2 * C).reshape(B * n, 1, C, 2 * C), p.prefix)
    if p.prefix:  # every block sees the prefix's keys before its own
        kb = torch.cat([kp[:, None].expand(B, n, *kp.shape[1:]), kb], dim=-2)
        vb = torch.cat([vp[:, None].expand(B, n, *vp.shape[1:]), vb], dim=-2)
    S = p.prefix + 2 * C
    out = F.scaled_dot_product_attention(
        qb.reshape(B * n, H, C, D),
        kb.reshape(B * n, H, S, D),
        vb.reshape(B * n, H, S, Dv),
        attn_mask=mask,
        dropout_p=dropout,
    )
    return out.view(B, n, H, C, Dv).transpose(1, 2).reshape(B, H, n * C, Dv)[:, :, :T]


def _causal_by_blocks(q, k, v, p: Causal, dropout: float) -> torch.Tensor:
    """Unwindowed causal attention within documents (or with a prefix): each block of queries
    attends keys from the earliest document start among its rows, so short documents cost what
    they cost, and the prefix's keys."""
    (kp, k), (vp, v) = _split_prefix(k, p), _split_prefix(v, p)
    B, H, T, D = q.shape
    C = 4 * MIN_BLOCK
    pos = torch.arange(T, device=q.device)
    if p.doc is None:
        starts = [0] * math.ceil(T / C)
    else:
        new_doc = torch.ones_like(p.doc, dtype=torch.bool)
        new_doc[:, 1:] = p.doc[:, 1:] != p.doc[:, :-1]
        doc_start = torch.where(new_doc, pos, torch.zeros_like(pos)).cummax(dim=1).values  # [B, T]
        starts = doc_start[:, ::C].min(dim=0).values.tolist()
    outs = []
    for i, lo in enumerate(starts):
        q0, q1 = i * C, min((i + 1) * C, T)
        qpos, kpos = pos[q0:q1, None], pos[None, lo:q1]
        mask = (kpos <= qpos)[None, None]
        if p.doc is not None:
            mask = mask & (p.doc[:, None, q0:q1, None] == p.doc[:, None, None, lo:q1])
        keys, values = k[:, :, lo:q1], v[:, :, lo:q1]
        if p.prefix:
            keys, values = torch.cat([kp, keys], dim=2), torch.cat([vp, values], dim=2)
        outs.append(
            F.scaled_dot_product_attention(
                q[:, :, q0:q1], keys, values, attn_mask=with_prefix(mask, p.prefix), dropout_p=dropout
            )
        )
    return torch.cat(outs, dim=2)


def _segment_softmax(scores: torch.Tensor, segment: torch.Tensor, segments: int, dim: int) -> torch.Tensor:
    """Softmax of `scores` over the entries that share a segment id along `dim`."""
    shape = list(scores.shape)
    shape[dim] = segments
    peak = scores.new_full(shape, float("-inf")).scatter_reduce(dim, segment, scores.detach(), "amax")
    e = (scores - peak.gather(dim, segment)).exp()
    total = scores.new_zeros(shape).scatter_add(dim, segment, e)
    return e / total.gather(dim, segment)


def _own_patch(q, k, v, p: OwnPatch, dropout: float) -> torch.Tensor:
    """Each byte scores against the k queries of its own patch; a softmax over the bytes of each
    patch; values summed back per query. O(T * k) work, no mask."""
    B, H, Q, D = q.shape
    T, kq = k.shape[2], p.k
    qg = q.view(B, H, p.patches, kq, D)
    idx = p.patch_ids[:, None, :, None].expand(B, H, T, kq)
    q_of_byte = qg.gather(2, idx[..., None].expand(B, H, T, kq, D))  # [B, H, T, k, D]
    scores = (q_of_byte * k[:, :, :, None, :]).sum(-1) * D**-0.5  # [B, H, T, k]
    weights = F.dropout(
        _segment_softmax(scores.float(), idx, p.patches, dim=2), dropout, training=dropout > 0
    )
    out = q.new_zeros(B, H, p.patches, kq, D).scatter_add(
        2, idx[..., None].expand(B, H, T, kq, D), weights.to(v.dtype)[..., None] * v[:, :, :, None, :]
    )
    return out.view(B, H, Q, D)


def _closed_patches(q, k, v, p: ClosedPatches, dropout: float) -> torch.Tensor:
    if p.window is None:
        return _closed_by_blocks(q, k, v, p, dropout)
    B, H, T, D = q.shape
    # Group 0, then the window's groups closed - window + 1 .. closed (invalid ones masked below).
    offsets = torch.arange(p.window - 1, -1, -1, device=q.device)
    group = torch.cat(
        [torch.zeros_like(p.closed)[..., None], p.closed[..., None] - offsets], dim=-1
    )  # [B, T, W+1]
    doc_q = p.doc[..., None] if p.doc is not None else None
    slot_doc = (
        p.slot_doc.gather(1, group.clamp(min=0).flatten(1)).view_as(group) if p.slot_doc is not None else None
    )
    seen = closed_visible(p.closed[..., None], group, p.window, doc_q, slot_doc)
    seen[..., 1:] &= group[..., 1:] >= 1  # window groups below 1 would duplicate the start slot
    slot = (group.clamp(min=0)[..., None] * p.k + torch.arange(p.k, device=q.device)).flatten(2)  # [B, T, S]
    seen = seen.repeat_interleave(p.k, dim=-1)
    scores = (q[:, :, :, None, :] * _gather_slots(k, slot)).sum(-1) * D**-0.5  # [B, H, T, S]
    scores = scores.float().masked_fill(~seen[:, None], float("-inf"))
    weights = F.dropout(torch.softmax(scores, dim=-1), dropout, training=dropout > 0).to(v.dtype)
    return (weights[..., None] * _gather_slots(v, slot)).sum(-2)


def _gather_slots(x: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """x [B, H, S_all, D], slot [B, T, S] -> [B, H, T, S, D]."""
    B, H, _, D = x.shape
    T, S = slot.shape[1:]
    flat = slot.reshape(B, 1, T * S, 1).expand(B, H, T * S, D)
    return x.gather(2, flat).view(B, H, T, S, D)


def _closed_by_blocks(q, k, v, p: ClosedPatches, dropout: float) -> torch.Tensor:
    """All closed patches visible: blocks of bytes against the slots up to the block's latest."""
    B, H, T, D = q.shape
    C = 4 * MIN_BLOCK
    slot_group = torch.arange(p.groups, device=q.device).repeat_interleave(p.k)
    slot_doc = p.slot_doc.repeat_interleave(p.k, dim=1) if p.slot_doc is not None else None
    latest = p.closed[:, C - 1 :: C].max(dim=0).values.tolist() + [int(p.closed[:, -1].max())]
    outs = []
    for i in range(math.ceil(T / C)):
        q0, q1 = i * C, min((i + 1) * C, T)
        s1 = (latest[i] + 1) * p.k
        doc_q = p.doc[:, q0:q1, None] if p.doc is not None else None
        sd = slot_doc[:, None, :s1] if slot_doc is not None else None
        mask = closed_visible(p.closed[:, q0:q1, None], slot_group[None, None, :s1], p.window, doc_q, sd)
        outs.append(
            F.scaled_dot_product_attention(
                q[:, :, q0:q1], k[:, :, :s1], v[:, :, :s1], attn_mask=mask[:, None], dropout_p=dropout
            )
        )
    return torch.cat(outs, dim=2)


# -- flex -------------------------------------------------------------------------------------------
@cache
def _flex_kernel(device_type: str):
    from torch.nn.attention.flex_attention import flex_attention

    # Compiled on CUDA (fused kernels); on CPU torch has no flex backward and the eager kernel is
    # a reference, so the CPU path stays eager.
    return torch.compile(flex_attention, dynamic=False) if device_type == "cuda" else flex_attention


def _mask_mod(pattern: Pattern):
    if isinstance(pattern, Causal):
        w, doc, prefix = pattern.window, pattern.doc, pattern.prefix

        def causal(b, h, qi, ki):
            s = ki - prefix  # the key's position in the sequence (negative: the prefix)
            ok = s <= qi
            if w is not None:
                ok = ok & (qi - s < w)
            if doc is not None:
                ok = ok & (doc[b, qi] == doc[b, s.clamp(min=0)])
            return ok | (s < 0) if prefix else ok

        return causal
    if isinstance(pattern, OwnPatch):
        pid, kq = pattern.patch_ids, pattern.k

        def own(b, h, qi, ki):
            return pid[b, ki] == qi // kq

        return own
    p = pattern

    def closed(b, h, qi, ki):
        g = ki // p.k
        c = p.closed[b, qi]
        ok = (g >= 1) & (g <= c)
        if p.window is not None:
            ok = ok & (g > c - p.window)
        if p.slot_doc is not None:
            ok = ok & (p.slot_doc[b, g] == p.doc[b, qi])
        return ok | (g == 0)

    return closed


def _flex(q, k, v, pattern: Pattern) -> torch.Tensor:
    from torch.nn.attention.flex_attention import create_block_mask

    if q.device.type != "cuda" and torch.is_grad_enabled() and q.requires_grad:
        raise ValueError(
            "model.attention=flex trains only on CUDA (torch has no flex backward on CPU): "
            "use model.attention=auto or chunked"
        )
    B, _, Tq, _ = q.shape
    block = pattern.memo(
        "flex", lambda: create_block_mask(_mask_mod(pattern), B, None, Tq, k.shape[2], device=q.device)
    )
    return _flex_kernel(q.device.type)(q, k, v, block_mask=block)

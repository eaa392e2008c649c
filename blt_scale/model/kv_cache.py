"""Key/value caches for incremental decoding, and one transformer block run on new positions only.

A cache keeps, per attention layer, the keys and values of the positions a future query may still
see: with a sliding window only the last `window` entries (rows advance in lockstep, so the last
entries are the last positions of every row), otherwise all of them. Each entry carries its
position, document and whether it is real (left padding of a batch is not), so a new query sees
exactly the keys the full forward pass would show it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from blt_scale.model.attention import with_prefix
from blt_scale.model.layers import Attention, Block


class KVCache:
    """Entries live in preallocated buffers that grow by doubling, so a step appends without
    copying the cache; a windowed cache forgets entries older than the window and compacts its
    buffer only when it is full (amortised O(1) per entry)."""

    def __init__(self, window: int | None):
        self.window = window
        self.buffers: list[torch.Tensor] | None = None  # k, v [B, H, cap, Dh]; pos, doc, real [B, cap]
        self.start = self.end = 0
        self.padded = False  # some entry is left padding

    def __len__(self) -> int:
        return self.end - self.start

    def append(self, k, v, pos, doc, real) -> list[torch.Tensor]:
        """Store the new entries; return all live entries (k, v, pos, doc, real), new ones last."""
        new, n = [k, v, pos, doc, real], k.shape[2]
        self.padded = self.padded or not bool(real.all())
        if self.buffers is None or self.end + n > self.buffers[0].shape[2]:
            live = (
                self.entries()
                if self.buffers is not None
                else [x[..., :0] if x.dim() == 2 else x[:, :, :0] for x in new]
            )
            cap = max(2 * (live[0].shape[2] + n), 64)
            self.buffers = [
                x.new_empty(*x.shape[:-2], cap, x.shape[-1]) if x.dim() == 4 else x.new_empty(x.shape[0], cap)
                for x in new
            ]
            self.start, self.end = 0, 0
            self._write(live)
        self._write(new)
        return self.entries()

    def _write(self, parts: list[torch.Tensor]) -> None:
        n = parts[0].shape[2]
        for buf, x in zip(self.buffers, parts):
            if buf.dim() == 4:
                buf[:, :, self.end : self.end + n] = x
            else:
                buf[:, self.end : self.end + n] = x
        self.end += n

    def entries(self) -> list[torch.Tensor]:
        return [
            b[:, :, self.start : self.end] if b.dim() == 4 else b[:, self.start : self.end]
            for b in self.buffers
        ]

    def forget_old(self) -> None:
        """Drop entries the next query (one position on) cannot see: rows advance in lockstep, so
        those are the oldest ones."""
        if self.window is not None:
            self.start = max(self.start, self.end - (self.window - 1))


def visible(q_pos, q_doc, q_real, k_pos, k_doc, k_real, window: int | None) -> torch.Tensor:
    """[B, n, m]: key j visible to new query i (causal, window, same document, real). The new
    queries are the last n of the m keys."""
    diff = q_pos[:, :, None] - k_pos[:, None, :]
    ok = (diff >= 0) & k_real[:, None, :] & (q_doc[:, :, None] == k_doc[:, None, :])
    if window is not None:
        ok &= diff < window
    # A padding query sees itself only, so its (unused) output is never NaN.
    n, m = q_pos.shape[1], k_pos.shape[1]
    itself = (
        torch.arange(m, device=q_pos.device)[None, :] == torch.arange(m - n, m, device=q_pos.device)[:, None]
    )
    return (ok & q_real[:, :, None]) | (itself[None] & ~q_real[:, :, None])


def cached_attention(
    attn: Attention,
    h: torch.Tensor,
    cache: KVCache,
    pos,
    doc,
    real,
    window: int | None,
    documents: bool,
    prefix: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Per-head outputs of self-attention `attn` for new normed positions h [B, n, d] against the
    cache, which then holds them too. `documents`: attention stops at document boundaries (the
    model's doc_mask). `prefix`: keys and values [1, H, N, Dh] every query sees before the cache's
    (a Titans block's persistent tokens)."""
    q, k, v = attn.project(h, positions=pos)
    keys, values, k_pos, k_doc, k_real = cache.append(k, v, pos, doc, real)
    if h.shape[1] == 1 and not documents and not cache.padded:
        mask = None  # one new byte, every live entry real and within its window: it sees them all
    else:
        mask = visible(pos, doc, real, k_pos, k_doc, k_real, window)[:, None]
    if prefix is not None:
        pk, pv = (p.expand(h.shape[0], -1, -1, -1) for p in prefix)
        keys, values = torch.cat([pk, keys], dim=2), torch.cat([pv, values], dim=2)
        mask = None if mask is None else with_prefix(mask, pk.shape[2])
    out = attn.mix(q, keys, values, lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    cache.forget_old()
    return out


def block_step(
    block: Block, x: torch.Tensor, cache: KVCache, pos, doc, real, window: int | None, documents: bool
) -> torch.Tensor:
    """`block` on new positions x [B, n, d] against the cache, which then holds them too."""
    x = x + block.attn.merge(
        cached_attention(block.attn, block.attn_norm(x), cache, pos, doc, real, window, documents)
    )
    return x + block.ffn(block.ffn_norm(x))

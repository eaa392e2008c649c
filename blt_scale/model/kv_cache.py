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

from blt_scale.model.layers import Block, rope


class KVCache:
    def __init__(self, window: int | None):
        self.window = window
        self.k: torch.Tensor | None = None  # [B, H, n, Dh]
        self.v: torch.Tensor | None = None
        self.pos: torch.Tensor | None = None  # [B, n]
        self.doc: torch.Tensor | None = None  # [B, n]
        self.real: torch.Tensor | None = None  # [B, n]

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def with_new(self, k, v, pos, doc, real):
        """The cache's entries followed by the new ones (not stored yet)."""
        if self.k is None:
            return k, v, pos, doc, real
        return (torch.cat([self.k, k], 2), torch.cat([self.v, v], 2), torch.cat([self.pos, pos], 1),
                torch.cat([self.doc, doc], 1), torch.cat([self.real, real], 1))

    def store(self, k, v, pos, doc, real) -> None:
        self.k, self.v, self.pos, self.doc, self.real = self.with_new(k, v, pos, doc, real)
        if self.window is not None and len(self) > self.window:
            keep = slice(len(self) - self.window, None)
            self.k, self.v = self.k[:, :, keep], self.v[:, :, keep]
            self.pos, self.doc, self.real = self.pos[:, keep], self.doc[:, keep], self.real[:, keep]


def visible(q_pos, q_doc, q_real, k_pos, k_doc, k_real, window: int | None) -> torch.Tensor:
    """[B, n, m]: key j visible to new query i (causal, window, same document, real). The new
    queries are the last n of the m keys."""
    diff = q_pos[:, :, None] - k_pos[:, None, :]
    ok = (diff >= 0) & k_real[:, None, :] & (q_doc[:, :, None] == k_doc[:, None, :])
    if window is not None:
        ok &= diff < window
    # A padding query sees itself only, so its (unused) output is never NaN.
    n, m = q_pos.shape[1], k_pos.shape[1]
    itself = torch.arange(m, device=q_pos.device)[None, :] == torch.arange(m - n, m, device=q_pos.device)[:, None]
    return (ok & q_real[:, :, None]) | (itself[None] & ~q_real[:, :, None])


def block_step(block: Block, x: torch.Tensor, cache: KVCache, pos, doc, real, window: int | None) -> torch.Tensor:
    """`block` on new positions x [B, n, d] against the cache, which then holds them too."""
    attn = block.attn
    h = block.attn_norm(x)
    q, k, v = attn._split(attn.wq(h)), attn._split(attn.wk(h)), attn._split(attn.wv(h))
    if attn.rope_theta is not None:
        q, k = rope(q, pos, attn.rope_theta), rope(k, pos, attn.rope_theta)
    keys, values, k_pos, k_doc, k_real = cache.with_new(k, v, pos, doc, real)
    mask = visible(pos, doc, real, k_pos, k_doc, k_real, window)
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask[:, None])
    cache.store(k, v, pos, doc, real)
    x = x + attn.wo(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))
    return x + block.ffn(block.ffn_norm(x))

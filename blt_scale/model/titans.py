"""Titans blocks for the BLT's latent transformer (`model.global.memory`; Behrouz et al. 2024).

Every latent block keeps its attention and FFN and gains a neural long-term memory (memory.py)
over the patch sequence, in one of the paper's two ways:

- MAG (memory as gating): the block's attention (sliding-window when `window` is set) and the
  memory read the same normed input; out = attention(h) * sigmoid(RMSNorm(memory(h))).
- MAC (memory as context): the sequence is cut into segments of `memory.chunk` patches. Each
  patch first reads the memory as the segment found it; attention runs within the segment over
  the read-outs and the patches interleaved (read-out i just before patch i, so patch i sees the
  read-outs of patches <= i only and the model stays causal); the attention outputs y are written
  to the memory, and out = y * sigmoid(RMSNorm(memory after the write(y))).

Persistent memory (`memory.persistent` = N > 0): N learnable, input-independent tokens whose keys
and values are prepended to what the attention attends to: MAG's whole sequence (every query sees
them, whatever its window or document) and each MAC segment. They take the positions just before
the first position of the sequence (MAG) or segment (MAC), as if prepended to it. Only queries read
them, so they never carry information between positions and causality holds. Unlike the paper's
MAG, the memory does not write them: they would be the same writes at every document start, which
the memory's learned initial weights already are.

Documents (doc_mask) reset the memory and bound MAC's attention. Incremental decoding
(`TitansBlock.step`) carries per row the attention's keys (MAG: the window's; MAC: the open
segment's), the memory as the last complete chunk left it and the open chunk's writes, which it
replays with the chunk-parallel rule, so each step equals the full forward.
"""

from __future__ import annotations

import dataclasses

import torch
from pydantic import Field, model_validator
from torch import nn

from blt_scale.model.attention import Causal, Pattern, attend
from blt_scale.model.kv_cache import KVCache, cached_attention
from blt_scale.model.layers import Block, RMSNorm, TransformerConfig
from blt_scale.model.memory import MemoryConfig, MemoryState, NeuralMemory


class LatentConfig(TransformerConfig):
    memory: MemoryConfig | None = Field(default=None, description="Titans memory in every latent block")

    @model_validator(mode="after")
    def _mac_attends_within_segments(self) -> LatentConfig:
        if self.memory is not None and self.memory.variant == "mac" and self.window is not None:
            raise ValueError(
                f"memory.variant mac attends within segments of memory.chunk ({self.memory.chunk}) patches: "
                f"set the latent window ({self.window}) to null"
            )
        return self


def latent_block(cfg: LatentConfig, index: int) -> Block:
    return Block(cfg, index) if cfg.memory is None else TitansBlock(cfg, index)


class TitansCache:
    """One row's state of a TitansBlock for incremental decoding."""

    def __init__(self, window: int | None):
        self.window = window
        self.attention = KVCache(window)  # MAC: the open segment's, renewed at each segment
        self.prefix: tuple[torch.Tensor, torch.Tensor] | None = None  # persistent keys and values
        self.closed: MemoryState | None = None  # the memory after the last complete chunk
        self.base: MemoryState | None = None  # the open chunk's start (reset if a document starts it)
        self.pending: list[torch.Tensor] = []  # the open chunk's k, v, log(1 - α), log η, θ, q
        self.after: MemoryState | None = None  # the memory after the open chunk's writes so far
        self.docs: torch.Tensor | None = None  # [1, patches of the open chunk]


class TitansBlock(Block):
    def __init__(self, cfg: LatentConfig, index: int):
        super().__init__(cfg, index)
        self.memory = NeuralMemory(cfg.memory, cfg.dim)
        self.gate_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        # Unit scale, like the normed inputs whose keys and values they sit beside.
        n = cfg.memory.persistent
        self.persistent = nn.Parameter(torch.randn(n, cfg.dim)) if n else None

    def persistent_kv(self, first: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [1, H, N, Dh] of the persistent tokens at positions first - N .. first - 1.
        (project also makes their queries, which nothing reads: N rows per sequence or segment.)"""
        n = self.persistent.shape[0]
        _, k, v = self.attn.project(
            self.persistent[None], positions=torch.arange(first - n, first, device=self.persistent.device)
        )
        return k, v

    def _attend(self, x: torch.Tensor, pattern: Causal, first: int, dropout: float) -> torch.Tensor:
        """Per-head attention outputs of x (positions first, first + 1, ...) under `pattern`, the
        persistent tokens' keys and values first."""
        attn = self.attn
        positions = None if first == 0 else torch.arange(first, first + x.shape[1], device=x.device)
        q, k, v = attn.project(x, positions=positions)
        if self.persistent is not None:
            pk, pv = (p.expand(x.shape[0], -1, -1, -1) for p in self.persistent_kv(first))
            k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
            n = pk.shape[2]  # every layer shares the prefixed pattern (and masks built from it)
            pattern = pattern.memo(f"prefix {n}", lambda: dataclasses.replace(pattern, prefix=n))
        return attn.mix(q, k, v, lambda q, k, v: attend(q, k, v, pattern, dropout))

    def forward(self, x: torch.Tensor, pattern: Pattern | None = None) -> torch.Tensor:
        pattern = pattern if pattern is not None else Causal(x.shape[1], None, None, "auto")
        h = self.attn_norm(x)
        if self.memory.cfg.variant == "mag":
            dropout = self.attn.dropout if self.training else 0.0
            attended = self.attn.merge(self._attend(h, pattern, 0, dropout))
            mixed = attended * torch.sigmoid(self.gate_norm(self.memory(h, pattern.doc)))
        else:
            mixed = self._memory_as_context(h, pattern.doc, pattern.backend)
        x = x + self.drop(mixed)
        return x + self.drop(self.ffn(self.ffn_norm(x)))

    def _memory_as_context(self, h: torch.Tensor, doc: torch.Tensor | None, backend) -> torch.Tensor:
        mem, attn, C = self.memory, self.attn, self.memory.cfg.chunk
        B, T, D = h.shape
        dropout = attn.dropout if self.training else 0.0
        recall_q = mem.queries(h)
        state, outs = mem.start(B), []
        for c0 in range(0, T, C):
            c = slice(c0, c0 + C)
            n = h[:, c].shape[1]
            seg_doc = None if doc is None else doc[:, c]
            state, same, seg = mem.enter(state, seg_doc, None if doc is None or c0 == 0 else doc[:, c0 - 1])
            recalled = mem.out(mem.read(state, recall_q[:, :, c], same), h)
            both = torch.stack([recalled, h[:, c]], dim=2).reshape(B, 2 * n, D)  # read-out i, then patch i
            pattern = Causal(
                2 * n, None, None if seg_doc is None else seg_doc.repeat_interleave(2, 1), backend
            )
            y = attn.merge(self._attend(both, pattern, 2 * c0, dropout)[:, :, 1::2])
            keys, values, log_beta, log_eta, theta = mem.keys_values(y)
            reads, state = mem.write_read(
                state, keys, values, log_beta, log_eta, theta, mem.queries(y), same, seg
            )
            outs.append(y * torch.sigmoid(self.gate_norm(mem.out(reads, y))))
        return torch.cat(outs, dim=1)

    # -- incremental decoding ----------------------------------------------------------------------
    @torch.no_grad()
    def step(
        self, x: torch.Tensor, cache: TitansCache, t: int, doc: torch.Tensor, documents: bool
    ) -> torch.Tensor:
        """x [1, 1, D]: patch t of one row (document doc [1, 1]), every earlier patch of the row
        already stepped -> the block's output at t, as forward computes it."""
        mem, C = self.memory, self.memory.cfg.chunk
        if t % C == 0:
            self._open_chunk(cache, t, doc, documents)
        cache.docs = doc if t % C == 0 else torch.cat([cache.docs, doc], dim=1)
        # As NeuralMemory.enter finds them for the chunk so far (none without documents).
        same, seg = (cache.docs == cache.docs[:, :1], cache.docs) if documents else (None, None)
        h = self.attn_norm(x)
        real = torch.ones_like(doc, dtype=torch.bool)
        if mem.cfg.variant == "mag":
            pos = torch.full_like(doc, t)
            attended = cached_attention(
                self.attn, h, cache.attention, pos, doc, real, cache.window, documents, cache.prefix
            )
            mixed = self.attn.merge(attended) * torch.sigmoid(
                self.gate_norm(self._write(cache, h, same, seg))
            )
        else:  # the read-out, then the patch, at 2t and 2t + 1 as in _memory_as_context
            recalled = mem.out(
                mem.read(cache.base, mem.queries(h), None if same is None else same[:, -1:]), h
            )
            pos = torch.tensor([[2 * t, 2 * t + 1]], device=x.device)
            attended = cached_attention(
                self.attn,
                torch.cat([recalled, h], dim=1),
                cache.attention,
                pos,
                doc.expand(1, 2),
                real.expand(1, 2),
                None,
                documents,
                cache.prefix,
            )
            y = self.attn.merge(attended[:, :, 1:])
            mixed = y * torch.sigmoid(self.gate_norm(self._write(cache, y, same, seg)))
        if t % C == C - 1:  # the chunk is complete: its writes become the memory
            cache.closed, cache.pending = cache.after, []
        x = x + mixed
        return x + self.ffn(self.ffn_norm(x))

    def _open_chunk(self, cache: TitansCache, t: int, doc: torch.Tensor, documents: bool) -> None:
        mem = self.memory
        state = cache.closed if cache.closed is not None else mem.start(1)
        prev = cache.docs[:, -1] if documents and t > 0 else None
        cache.base = mem.enter(state, doc if documents else None, prev)[0]
        cache.pending = []
        if mem.cfg.variant == "mac":
            cache.attention = KVCache(None)
        if self.persistent is not None and (mem.cfg.variant == "mac" or cache.prefix is None):
            cache.prefix = self.persistent_kv(2 * t if mem.cfg.variant == "mac" else 0)

    def _write(self, cache: TitansCache, x: torch.Tensor, same, seg) -> torch.Tensor:
        """x [1, 1, D] writes after the open chunk's earlier positions; its read [1, 1, D]. The
        chunk's writes are replayed from its start with the chunk-parallel rule (at most `chunk`
        positions): folding them into a running state would be the same sum in another order,
        equal only up to rounding, and the reads must equal forward's."""
        mem = self.memory
        new = [*mem.keys_values(x), mem.queries(x)]
        cache.pending = (
            [torch.cat([a, b], dim=2) for a, b in zip(cache.pending, new)] if cache.pending else new
        )
        reads, cache.after = mem.write_read(cache.base, *cache.pending, same, seg)
        return mem.out(reads[:, :, -1:], x)

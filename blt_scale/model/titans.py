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

Documents (doc_mask) reset the memory and bound MAC's attention. The paper's persistent memory
tokens are not implemented. Incremental decoding does not cache the memory: generation with a
Titans model recomputes the prefix for each byte (generate.py).
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator

from blt_scale.model.attention import Causal, Pattern, attend
from blt_scale.model.layers import Block, RMSNorm, TransformerConfig
from blt_scale.model.memory import MemoryConfig, NeuralMemory


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


class TitansBlock(Block):
    def __init__(self, cfg: LatentConfig, index: int):
        super().__init__(cfg, index)
        self.memory = NeuralMemory(cfg.memory, cfg.dim)
        self.gate_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x: torch.Tensor, pattern: Pattern | None = None) -> torch.Tensor:
        pattern = pattern if pattern is not None else Causal(x.shape[1], None, None, "auto")
        h = self.attn_norm(x)
        if self.memory.cfg.variant == "mag":
            mixed = self.attn(h, pattern) * torch.sigmoid(self.gate_norm(self.memory(h, pattern.doc)))
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
            q, k, v = attn.project(both, positions=torch.arange(2 * c0, 2 * (c0 + n), device=h.device))
            pattern = Causal(
                2 * n, None, None if seg_doc is None else seg_doc.repeat_interleave(2, 1), backend
            )
            y = attn.merge(
                attn.mix(q, k, v, lambda q, k, v, p=pattern: attend(q, k, v, p, dropout))[:, :, 1::2]
            )
            keys, values, log_beta, log_eta, theta = mem.keys_values(y)
            reads, state = mem.write_read(
                state, keys, values, log_beta, log_eta, theta, mem.queries(y), same, seg
            )
            outs.append(y * torch.sigmoid(self.gate_norm(mem.out(reads, y))))
        return torch.cat(outs, dim=1)

"""Titans' neural long-term memory (Behrouz et al. 2024, arXiv:2501.00663), trained chunk-parallel.

Each of `heads` memories is an MLP M (depth 1: a matrix) of head_dim inputs and outputs whose
weights are the state. A token x_t writes by one step of gradient descent with momentum and
weight decay on the associative loss ℓ = ||M(k_t) - v_t||², and reads with its query:

    k_t, v_t, q_t = x_t W_K, x_t W_V, x_t W_Q         (k and q L2-normalised per head)
    α_t, η_t = sigmoid(x_t W_g + b)                    (forget, momentum; per head)
    θ_t = max_step * sigmoid(x_t W_g' + b')            (step size, bounded)
    S_t = η_t S_{t-1} - θ_t ∇ℓ(M_base; k_t, v_t)
    M_t = (1 - α_t) M_{t-1} + S_t
    y_t = M_t(q_t)                                     (the memory after x_t's own write)

As in the paper, the gradients of a chunk of `chunk` tokens are all taken at the weights the chunk
starts from (M_base), so a chunk's writes and reads are matrix products over the chunk; only the
chunk-to-chunk recurrence is sequential. Documents: at a document's first token the memory
returns to its (learned) initial weights and momentum 0; a token whose document began inside the
chunk takes its gradients at the initial weights. `tests/test_titans.py` checks all of this
against a token-by-token loop.

How a transformer block uses the memory (MAG, MAC) is titans.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from blt_scale.config import Config

# sigmoid^-1 of the starting forget rate and momentum (0.018, 0.5) and step / max_step (0.5).
GATE_BIAS = (-4.0, 0.0, 0.0)


class MemoryConfig(Config):
    variant: Literal["mag", "mac"] = Field(
        default="mag",
        description="mag: memory gates the block's sliding-window attention; mac: each segment of `chunk` "
        "positions attends to its memory read-out and itself, then writes its attention output (titans.py)",
    )
    heads: int = Field(default=4, gt=0, description="independent memories of dim / heads channels each")
    # Deeper memories diverged (NaN within 30 steps of cpu_tiny_titans at max_step 0.02 and 0.002):
    # their loss's curvature grows with their own weights, which no fixed step bounds.
    depth: int = Field(default=1, ge=1, description="layers of each memory MLP (1: a linear memory)")
    hidden_mult: float = Field(default=2.0, gt=0, description="depth >= 2: hidden width / head width")
    chunk: int = Field(
        default=16, gt=0, description="positions whose writes share one base (and MAC's segment)"
    )
    # A chunk's gradients land at once: with unit keys, a linear memory's loss has curvature up to
    # 2 * chunk, and heavy-ball descent stays stable below a step of 2 (1 + η) / curvature (0.02 x 32
    # = 0.64 at chunk 16). Unbounded steps diverged to NaN within 15 steps of cpu_tiny_titans.
    max_step: float = Field(default=0.02, gt=0, description="largest step size θ of a memory write")
    persistent: int = Field(
        default=0,
        ge=0,
        description="the paper's persistent memory: learnable, input-independent tokens whose keys and "
        "values every query of the block's attention sees (titans.py)",
    )

    def head_dim(self, dim: int) -> int:
        if dim % self.heads:
            raise ValueError(f"dim {dim} is not divisible by memory.heads {self.heads}")
        return dim // self.heads

    def shapes(self, dim: int) -> list[tuple[int, int]]:
        """(out, in) of each memory layer."""
        d = self.head_dim(dim)
        h = max(1, round(self.hidden_mult * d))
        widths = [d] + [h] * (self.depth - 1) + [d]
        return [(widths[i + 1], widths[i]) for i in range(self.depth)]


def silu_grad(z: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


@dataclass
class MemoryState:
    """Weights and momentum of every memory layer, [B, heads, out, in] each."""

    weights: list[torch.Tensor]
    momentum: list[torch.Tensor]


class NeuralMemory(nn.Module):
    def __init__(self, cfg: MemoryConfig, dim: int):
        super().__init__()
        self.cfg = cfg
        self.heads, self.head_dim = cfg.heads, cfg.head_dim(dim)
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.gates = nn.Linear(dim, 3 * cfg.heads, bias=False)
        self.gate_bias = nn.Parameter(torch.tensor(GATE_BIAS)[:, None].repeat(1, cfg.heads))
        self.initial = nn.ParameterList(
            nn.Parameter(torch.randn(cfg.heads, o, i) / math.sqrt(i)) for o, i in cfg.shapes(dim)
        )

    # -- the inputs of the recurrence --------------------------------------------------------------
    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def keys_values(self, x: torch.Tensor):
        """k, v [B, H, T, dh] and log(1 - α), log η, θ [B, H, T], in fp32."""
        k = F.normalize(self._split(self.wk(x)), dim=-1)
        g = (self.gates(x).float().view(*x.shape[:2], 3, self.heads) + self.gate_bias.float()).permute(
            2, 0, 3, 1
        )
        theta = self.cfg.max_step * torch.sigmoid(g[2])
        return k, self._split(self.wv(x)), F.logsigmoid(-g[0]), F.logsigmoid(g[1]), theta

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self._split(self.wq(x)), dim=-1)

    def out(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.wo(y.transpose(1, 2).reshape(y.shape[0], y.shape[2], -1).to(like.dtype))

    # -- state -------------------------------------------------------------------------------------
    def start(self, batch: int) -> MemoryState:
        weights = [w.float().expand(batch, *w.shape) for w in self.initial]
        return MemoryState(weights, [torch.zeros_like(w) for w in weights])

    def enter(self, state: MemoryState, doc: torch.Tensor | None, prev_doc: torch.Tensor | None):
        """The state a chunk starts from (reset where its first position starts a document), and
        per position: `same` (in the chunk's first document) and `seg` (document) [B, n]."""
        if doc is None:
            return state, None, None
        if prev_doc is not None:
            fresh = (doc[:, 0] != prev_doc)[:, None, None, None]
            init = self.start(doc.shape[0])
            state = MemoryState(
                [torch.where(fresh, i, w) for i, w in zip(init.weights, state.weights)],
                [torch.where(fresh, 0.0, s) for s in state.momentum],
            )
        same = doc == doc[:, :1]
        return state, same, doc

    def _base(self, layer: int, state: MemoryState, a: torch.Tensor, same, transpose: bool = False):
        """a [B, H, n, in] (or [.., out] with transpose) through layer `layer` at each position's base
        weights: the chunk's start state, or the initial weights after a reset inside the chunk."""
        w = state.weights[layer]
        z = a @ (w if transpose else w.transpose(-1, -2))
        if same is None or bool(same.all()):
            return z
        i = self.initial[layer].float()
        zi = a @ (i if transpose else i.transpose(-1, -2))
        return torch.where(same[:, None, :, None], z, zi)

    def read(self, state: MemoryState, q: torch.Tensor, same) -> torch.Tensor:
        """M_base(q): the memory as the chunk found it (MAC's read before the segment)."""
        r = q
        for layer in range(len(state.weights)):
            r = self._base(layer, state, r, same)
            r = F.silu(r) if layer < len(state.weights) - 1 else r
        return r

    def write_read(self, state: MemoryState, k, v, log_beta, log_eta, theta, q, same, seg):
        """One chunk: every position writes, then reads with q from the memory after its write.
        Returns (reads [B, H, n, dh], the state after the chunk)."""
        B, H, n, _ = k.shape
        L = len(state.weights)
        # Forward and backward of ℓ at the base weights, by hand (so the chunk is batched matmuls).
        acts, pre, a = [k], [], k
        for layer in range(L):
            z = self._base(layer, state, a, same)
            pre.append(z)
            if layer < L - 1:
                a = F.silu(z)
                acts.append(a)
        deltas = [None] * L
        d = 2 * (pre[-1] - v)
        for layer in reversed(range(L)):
            deltas[layer] = d
            if layer:
                d = self._base(layer, state, d, same, transpose=True) * silu_grad(pre[layer - 1])

        # Decay products within the chunk, from cumulative logs: Cb[t + 1] = Σ_{r<=t} log(1 - α_r).
        zero = log_beta.new_zeros(B, H, 1)
        cb, ce = torch.cat([zero, log_beta.cumsum(-1)], -1), torch.cat([zero, log_eta.cumsum(-1)], -1)
        pos = torch.arange(n, device=k.device)
        visible = pos[:, None] >= pos[None, :]  # [t, s]: s <= t
        if seg is not None:
            visible = visible & (seg[:, :, None] == seg[:, None, :])[:, None]
            new_doc = torch.ones_like(seg, dtype=torch.bool)
            new_doc[:, 1:] = seg[:, 1:] != seg[:, :-1]
            start = torch.where(new_doc, pos, 0).cummax(dim=1).values[:, None].expand(B, H, n)
        else:
            start = torch.zeros(B, H, n, dtype=torch.long, device=k.device)

        def decay(c):  # [t, j] -> Π_{r=j+1..t} of the gate, 0 unless j <= t in t's document
            return (c[..., 1:, None] - c[..., None, 1:]).masked_fill(~visible, float("-inf")).exp()

        kb, ke = decay(cb), decay(ce)
        coef = -(kb @ ke) * theta[:, :, None, :]  # [t, s]: weight of s's gradient in M_t
        keep = cb[..., 1:] - cb.gather(-1, start)  # log Π_{r=start..t} (1 - α_r)
        carry = (kb @ ce[..., 1:, None].exp()).squeeze(-1)  # weight of S_base in M_t
        if same is not None:
            carry = carry * same[:, None]

        reads, r = None, q
        for layer in range(L):
            z = (
                keep.exp()[..., None] * self._base(layer, state, r, same)
                + carry[..., None] * (r @ state.momentum[layer].transpose(-1, -2))
                + (coef * (r @ acts[layer].transpose(-1, -2))) @ deltas[layer]
            )
            r = F.silu(z) if layer < L - 1 else z
            reads = z

        # The state after the last position.
        last_same = same[:, -1][:, None, None, None] if same is not None else None
        momentum_in = ce[..., -1:] - ce.gather(-1, start[..., -1:])  # log Π η over the last document
        momentum_w = (ce[..., -1:] - ce[..., 1:]).masked_fill(~visible[..., -1, :], float("-inf")).exp()
        weights, momentum = [], []
        for layer in range(L):
            w0, s0 = state.weights[layer], state.momentum[layer]
            if last_same is not None:
                w0 = torch.where(last_same, w0, self.initial[layer].float())
                s0 = torch.where(last_same, s0, 0.0)
            written = (deltas[layer] * coef[..., -1, :, None]).transpose(-1, -2) @ acts[layer]
            weights.append(keep[..., -1, None, None].exp() * w0 + carry[..., -1, None, None] * s0 + written)
            pushed = (deltas[layer] * (momentum_w * theta)[..., None]).transpose(-1, -2) @ acts[layer]
            momentum.append(momentum_in[..., None].exp() * s0 - pushed)
        return reads, MemoryState(weights, momentum)

    def forward(self, x: torch.Tensor, doc: torch.Tensor | None = None) -> torch.Tensor:
        """MAG's branch: x [B, T, dim] -> the reads of every position [B, T, dim]."""
        k, v, lb, le, th = self.keys_values(x)
        q = self.queries(x)
        state, reads, C = self.start(x.shape[0]), [], self.cfg.chunk
        for c0 in range(0, x.shape[1], C):
            c = slice(c0, c0 + C)
            state, same, seg = self.enter(
                state, None if doc is None else doc[:, c], None if doc is None or c0 == 0 else doc[:, c0 - 1]
            )
            y, state = self.write_read(
                state, k[:, :, c], v[:, :, c], lb[:, :, c], le[:, :, c], th[:, :, c], q[:, :, c], same, seg
            )
            reads.append(y)
        return self.out(torch.cat(reads, dim=2), x)

"""Incremental decoding: feed new bytes, get their next-byte logits, at a cost bounded by the
windows, the open patch and one latent step per completed patch, never by the prefix.

`ByteLMStepper` (byte baseline, entropy model): a windowed KV cache per layer.
`BLTStepper`: the local encoder's and decoder's windowed KV caches (rows in lockstep), and per row
the open patch's byte states, the latent transformer's caches (KV entries, one per completed
patch; a Titans block's memory state, whose step replays at most one chunk's writes: titans.py),
and the projected keys/values of the decoder's latent slots. `PatchTracker` decides patch ends
with the training rules (patcher.py), one byte at a time.

Rows of a batch are left-padded: `real` marks the bytes that exist. Every step takes [B, n] new
ids (n = the prompt for the prefill, then 1) and returns [B, n, V] logits equal to the full
forward pass's (tests/test_generate.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from blt_scale.model.attention import closed_visible
from blt_scale.model.blt import BLT
from blt_scale.model.byte_lm import ByteLM, token_entropies
from blt_scale.model.kv_cache import KVCache, block_step
from blt_scale.model.layers import CrossAttentionBlock
from blt_scale.model.mvot_blt import MVoTBLT
from blt_scale.model.patcher import PatcherConfig, _space_like
from blt_scale.model.titans import TitansBlock, TitansCache
from blt_scale.model.vocab import BOS, EOS

PAD_DOC = -1  # the document of left padding: no real byte shares it


class ByteClock:
    """Positions and documents of new bytes, continuing each row's count."""

    def __init__(self, batch: int, doc_mask: bool, device: torch.device):
        self.doc_mask = doc_mask
        self.pos = torch.zeros(batch, dtype=torch.long, device=device)
        self.doc = torch.zeros(batch, dtype=torch.long, device=device)

    def advance(self, ids: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        steps = real.long()
        pos = self.pos[:, None] + steps.cumsum(1) - steps
        eos = (ids == EOS) & real
        doc = (
            self.doc[:, None] + eos.long().cumsum(1) - eos.long() if self.doc_mask else torch.zeros_like(ids)
        )
        self.pos += steps.sum(1)
        self.doc += eos.long().sum(1)
        return pos.masked_fill(~real, 0), doc.masked_fill(~real, PAD_DOC)


class ByteLMStepper:
    def __init__(self, model: ByteLM, batch: int):
        self.model = model
        self.clock = ByteClock(batch, model.cfg.doc_mask, model.embed.weight.device)
        self.caches = [KVCache(model.cfg.window) for _ in model.layers]

    @torch.no_grad()
    def step(self, ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        m = self.model
        pos, doc = self.clock.advance(ids, real)
        h = m.embed(ids)
        for layer, cache in zip(m.layers, self.caches):
            h = block_step(layer, h, cache, pos, doc, real, m.cfg.window, m.cfg.doc_mask)
        return m.output(m.norm(h))


class PatchTracker:
    """Whether the byte after each new byte starts a patch, decided from bytes up to it."""

    def __init__(self, batch: int, cfg: PatcherConfig, device: torch.device):
        self.cfg = cfg
        self.seen = torch.zeros(batch, dtype=torch.long, device=device)  # real bytes so far (static stride)
        self.run = torch.zeros(batch, dtype=torch.long, device=device)  # bytes in the open patch
        self.prev_space = torch.zeros(batch, dtype=torch.bool, device=device)
        self.prev_h = torch.full((batch,), float("nan"), device=device)

    def closes(self, ids: torch.Tensor, real: torch.Tensor, entropy: torch.Tensor | None) -> torch.Tensor:
        """[B]: the patch holding this byte ends at it (only where real)."""
        cfg = self.cfg
        first = self.seen == 0
        if cfg.mode == "entropy":
            h = entropy.float()
            rise = torch.where(first, torch.zeros_like(h), h - self.prev_h)
            high, rising = h > cfg.threshold, rise > cfg.relative_threshold
            end = {"global": high, "monotonic": rising, "both": high & rising}[cfg.entropy_rule]
            self.prev_h = torch.where(real, h, self.prev_h)
        elif cfg.mode == "space":
            space = _space_like(ids)
            end = space & (ids != BOS) & ~(self.prev_space & ~first)
            self.prev_space = torch.where(real, space, self.prev_space)
        elif cfg.mode == "static":
            end = (self.seen + 1) % cfg.static_size == 0
        else:
            end = torch.ones_like(real)
        end = end | (ids == EOS)
        run = self.run + 1
        if cfg.max_patch_len is not None:
            end = end | (run == cfg.max_patch_len)
        end = end & real
        self.run = torch.where(real, torch.where(end, 0, run), self.run)
        self.seen += real.long()
        return end


def _cross_kv(block: CrossAttentionBlock, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected keys and values [H, S, Dh] of slots [S, d] for a decoder cross-attention block."""
    a = block.attn
    kv = block.kv_norm(slots)[None]
    return a._split(a.wk(kv))[0], a._split(a.wv(kv))[0]


def _cross_step(
    block: CrossAttentionBlock, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask
) -> torch.Tensor:
    """x [n, d] attending projected slots k/v [H, S, Dh] under mask [n, S]."""
    a = block.attn
    q = a._split(a.wq(block.q_norm(x))[None])
    out = F.scaled_dot_product_attention(q, k[None], v[None], attn_mask=mask[None, None])
    return x + a.wo(out.transpose(1, 2).reshape(1, x.shape[0], -1))[0]


class _Row:
    """One row's patch state: open patch, latent cache, decoder slots."""

    def __init__(self, model: BLT, start_kv: list[tuple[torch.Tensor, torch.Tensor]]):
        cfg = model.cfg
        self.open: list[list[torch.Tensor]] = []  # per byte: its states at each encoder cross-attention
        self.open_doc = 0
        self.latent = [
            TitansCache(cfg.global_.window) if isinstance(block, TitansBlock) else KVCache(cfg.global_.window)
            for block in model.latent
        ]
        self.patches = 0
        # Per decoder cross-attention layer: projected keys/values of slot groups 0 (start), 1, 2, ...
        self.slot_k = [[k] for k, _ in start_kv]
        self.slot_v = [[v] for _, v in start_kv]
        self.slot_doc = [0]


class BLTStepper:
    def __init__(self, model: BLT, batch: int, patcher: PatcherConfig, entropy_model: ByteLM | None = None):
        cfg = model.cfg
        if patcher.mode == "entropy" and entropy_model is None:
            raise ValueError("patcher.mode=entropy: incremental decoding needs the entropy model")
        self.model, self.cfg = model, cfg
        self.device = device = model.embed.weight.device
        self.clock = ByteClock(batch, cfg.doc_mask, device)
        self.tracker = PatchTracker(batch, patcher, device)
        self.entropy = ByteLMStepper(entropy_model, batch) if patcher.mode == "entropy" else None
        self.enc_caches = [KVCache(cfg.encoder.window) for _ in model.encoder]
        self.dec_caches = [KVCache(cfg.decoder.window) for _ in model.decoder]
        self.context = max(cfg.ngram.sizes, default=1) - 1  # earlier bytes a hash n-gram reads
        self.hist_ids = torch.zeros(batch, 0, dtype=torch.long, device=device)
        self.hist_seg = torch.zeros(batch, 0, dtype=torch.long, device=device)
        k, d = cfg.patch_queries, cfg.encoder.dim
        start = model.from_global(model.start_latent[None]).view(k, d)
        start_kv = [_cross_kv(block, start) for block in model.decoder_cross]
        self.rows = [_Row(model, start_kv) for _ in range(batch)]

    @property
    def patches(self) -> list[int]:
        return [row.patches for row in self.rows]

    def _embed(self, ids, real, doc):
        seg = doc if self.cfg.doc_mask else torch.where(real, 0, PAD_DOC)
        ctx_ids, ctx_seg = torch.cat([self.hist_ids, ids], 1), torch.cat([self.hist_seg, seg], 1)
        grams = self.model.ngram(ctx_ids, ctx_seg)[:, -ids.shape[1] :]
        keep = max(ctx_ids.shape[1] - self.context, 0)
        self.hist_ids, self.hist_seg = ctx_ids[:, keep:], ctx_seg[:, keep:]
        return self.model.embed(ids) + grams

    def _close(self, row: _Row) -> None:
        """The open patch is complete: its queries, one latent step, its decoder slots."""
        m, cfg = self.model, self.cfg
        k, d = cfg.patch_queries, cfg.encoder.dim
        layers = list(zip(*row.open))  # per cross layer: the bytes' states
        states = [torch.stack(s)[None] for s in layers]
        queries = m.patch_init(states[0].amax(dim=1, keepdim=True)).view(1, k, d)
        for block, s in zip(m.encoder_cross, states):
            queries = block(queries, s)  # a patch's queries see all of its bytes
        g = m.to_global(queries.view(1, 1, k * d))
        pos = torch.tensor([[row.patches]], device=self.device)
        doc = torch.tensor([[row.open_doc if cfg.doc_mask else 0]], device=self.device)
        real = torch.ones(1, 1, dtype=torch.bool, device=self.device)
        for layer, cache in zip(m.latent, row.latent):
            if isinstance(layer, TitansBlock):
                g = layer.step(g, cache, row.patches, doc, cfg.doc_mask)
            else:
                g = block_step(layer, g, cache, pos, doc, real, cfg.global_.window, cfg.doc_mask)
        slots = m.from_global(m.latent_norm(g)[0]).view(k, d)
        for i, block in enumerate(m.decoder_cross):
            kk, vv = _cross_kv(block, slots)
            row.slot_k[i].append(kk)
            row.slot_v[i].append(vv)
        row.slot_doc.append(int(doc))
        row.patches += 1
        row.open = []

    def _decoder_cross(
        self, block_index: int, h: torch.Tensor, closed: torch.Tensor, doc: torch.Tensor
    ) -> torch.Tensor:
        """Each row's new bytes attend the start slot and their latest complete patches."""
        m, cfg, k = self.model, self.cfg, self.cfg.patch_queries
        block, window = m.decoder_cross[block_index], cfg.decoder_cross_window
        out = []
        for r, row in enumerate(self.rows):
            c = closed[r]  # [n] complete patches at each new byte
            lo = 1 if window is None else max(int(c.min()) - window + 1, 1)
            groups = torch.tensor([0] + list(range(lo, int(c.max()) + 1)), device=self.device)
            kk = torch.cat([row.slot_k[block_index][g] for g in groups.tolist()], dim=1)
            vv = torch.cat([row.slot_v[block_index][g] for g in groups.tolist()], dim=1)
            gdoc = torch.tensor([row.slot_doc[g] for g in groups.tolist()], device=self.device)
            seen = closed_visible(
                c[:, None],
                groups[None],
                window,
                doc[r][:, None] if cfg.doc_mask else None,
                gdoc[None] if cfg.doc_mask else None,
            )
            out.append(_cross_step(block, h[r], kk, vv, seen.repeat_interleave(k, dim=1)))
        return torch.stack(out)

    @torch.no_grad()
    def step(self, ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        m, cfg = self.model, self.cfg
        B, n = ids.shape
        entropies = token_entropies(self.entropy.step(ids, real)) if self.entropy is not None else None
        pos, doc = self.clock.advance(ids, real)
        h = self._embed(ids, real, doc)
        cross_states = []
        for i, (layer, cache) in enumerate(zip(m.encoder, self.enc_caches)):
            h = block_step(layer, h, cache, pos, doc, real, cfg.encoder.window, cfg.doc_mask)
            if cfg.encoder.cross_attn_all_layers or i == len(m.encoder) - 1:
                cross_states.append(h)
        if not m.encoder:
            cross_states.append(h)

        # Patch bookkeeping, byte by byte: whole-work steps happen only when a patch completes.
        closed = torch.zeros(B, n, dtype=torch.long)
        real_cpu, doc_cpu = real.cpu(), doc.cpu()  # read byte by byte: one transfer
        for t in range(n):
            ends = self.tracker.closes(
                ids[:, t], real[:, t], None if entropies is None else entropies[:, t]
            ).cpu()
            for r, row in enumerate(self.rows):
                if not real_cpu[r, t]:
                    continue
                if not row.open:
                    row.open_doc = int(doc_cpu[r, t])
                row.open.append([s[r, t] for s in cross_states])
                if ends[r]:
                    self._close(row)
            closed[:, t] = torch.tensor(self.patches)
        closed = closed.to(self.device)

        x = h
        cross = 0
        for i, (layer, cache) in enumerate(zip(m.decoder, self.dec_caches)):
            if cfg.decoder.cross_attn_all_layers or i == 0:
                x = self._decoder_cross(cross, x, closed, doc)
                cross += 1
            x = block_step(layer, x, cache, pos, doc, real, cfg.decoder.window, cfg.doc_mask)
        if not m.decoder:
            x = self._decoder_cross(0, x, closed, doc)
        return m.output(m.norm(x))


def make_stepper(model, batch: int, patcher: PatcherConfig, entropy_model: ByteLM | None = None):
    if isinstance(model, ByteLM):
        return ByteLMStepper(model, batch)
    if type(model) in (BLT, MVoTBLT):  # MVoT's forward is the BLT's
        return BLTStepper(model, batch, patcher, entropy_model)
    raise ValueError(f"incremental decoding takes a byte LM or a BLT, not {type(model).__name__}")

"""FLOP and parameter accounting: the one place blt-scale counts compute.

Forward FLOPs per byte, by component, split into
- `linear`: products with weight matrices (2 * in * out per row they are applied to);
- `attention`: score (QK^T) and value (AV) products, 2 * 2 * dim per visible key (2 * 3 * dim for
  differential attention), honouring causality and sliding windows (document masks are not
  counted: this is the upper bound).
Embedding and hash-table lookups cost 0. Per-patch work (the latent transformer and the
projections into and out of it) is divided by the mean bytes per patch. Training = 3 x forward.

A Titans memory in the latent blocks (titans.py, memory.py) counts its projections as `linear`
and the products inside the memory (writes, reads, the chunk's decay coefficients) under
`attention` ("latent_memory"), per patch, for full chunks and no document reset inside a chunk
(a reset adds the initial weights' products for that chunk); its persistent tokens add their
projections and one visible key each per latent query.

Sequences are taken to be `seq_len` bytes cut into patches of `patch_bytes` bytes each, the
quantity a trainer measures and a sweep plans with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from blt_scale.model.blt import BLTConfig
from blt_scale.model.brain_blt import BrainBLTConfig
from blt_scale.model.brain_encoder import BrainEncoderConfig
from blt_scale.model.byte_lm import ByteLMConfig
from blt_scale.model.layers import TransformerConfig
from blt_scale.model.meg_to_text import MegToTextConfig
from blt_scale.model.mvot_blt import MVoTBLTConfig
from blt_scale.model.svf import SVFConfig, svf_vector_size
from blt_scale.model.titans import LatentConfig
from blt_scale.model.vocab import VOCAB_SIZE
from blt_scale.model.vq_image import VQImageConfig


@dataclass
class FlopReport:
    params: dict[str, int]
    linear: dict[str, float]  # forward FLOPs per byte
    attention: dict[str, float]  # forward FLOPs per byte
    seq_len: int
    patch_bytes: float
    # Training work per byte as forward-pass equivalents over the row (3: forward and backward), plus
    # FLOPs per byte spent on other sequences (SVF's REINFORCE samples and scores completions).
    train_forwards: float = 3.0
    extra_train_per_byte: float = 0.0

    @property
    def forward_per_byte(self) -> float:
        return sum(self.linear.values()) + sum(self.attention.values())

    @property
    def train_per_byte(self) -> float:
        return self.train_forwards * self.forward_per_byte + self.extra_train_per_byte

    @property
    def total_params(self) -> int:
        return sum(self.params.values())

    def as_dict(self) -> dict:
        return asdict(self) | {
            "total_params": self.total_params,
            "forward_flops_per_byte": self.forward_per_byte,
            "train_flops_per_byte": self.train_per_byte,
        }


def _block_params(t: TransformerConfig) -> int:
    lambdas = 4 * t.head_dim if t.attention_kind == "differential" else 0
    return 4 * t.dim * t.dim + 3 * t.dim * t.ffn_dim + 2 * t.dim + lambdas


def _block_linear(t: TransformerConfig) -> float:
    return 2.0 * (4 * t.dim * t.dim + 3 * t.dim * t.ffn_dim)


def mean_visible_keys(length: float, window: int | None) -> float:
    """Average number of keys a causal query sees in a sequence of `length`, within `window`."""
    n = max(int(round(length)), 1)
    w = n if window is None else min(window, n)
    # sum_{t<n} min(t+1, w) = w(w+1)/2 + (n-w)w
    return (w * (w + 1) / 2 + (n - w) * w) / n


def _plus_one(window: int | None) -> int | None:
    return None if window is None else window + 1


def _stack_attention(t: TransformerConfig, length: float) -> float:
    return t.layers * attention_per_key(t) * mean_visible_keys(length, t.window)


def attention_per_key(t: TransformerConfig) -> float:
    """FLOPs of one query against one visible key in a layer: 2 * dim for the scores and 2 * dim for
    the values; differential attention multiplies values of twice the width by both of its maps."""
    return (6.0 if t.attention_kind == "differential" else 4.0) * t.dim


def memory_parts(lat: LatentConfig, patches: float) -> tuple[int, float, float]:
    """Per latent layer with a Titans memory, in sequences of `patches` patches: (params, linear
    FLOPs per patch, FLOPs inside the memory per patch)."""
    m, D = lat.memory, lat.dim
    n, H, shapes = m.chunk, m.heads, m.shapes(lat.dim)
    params = 4 * D * D + 3 * H * D + 3 * H + sum(H * o * i for o, i in shapes) + D + m.persistent * D
    # Per head and position: the keys through the base weights, the write's backward (layers
    # after the first), reads of base and momentum terms, the chunk's [n, n] products of reads
    # with earlier keys and errors, the state after the chunk (weights, momentum), the decay
    # coefficients (an [n, n] @ [n, n] and an [n, n] @ [n, 1] product per chunk).
    inner = sum(10 * o * i + 2 * n * (i + o) for o, i in shapes) + sum(2 * o * i for o, i in shapes[1:])
    inner += 2 * n * n + 2 * n
    # The persistent tokens' q, k, v projections (titans.py): once per sequence (MAG) or segment
    # (MAC) of a batch, whose rows share them: counted per row, an upper bound.
    persistent = 2.0 * 3 * D * D * m.persistent
    if m.variant == "mag":
        return params, 2.0 * (4 * D * D + 3 * H * D) + persistent / patches, float(H * inner)
    # MAC: a read before the segment (wq, memory, wo), the write's wq/wk/wv/gates and read-out wo
    # on the attention output, and q/k/v of the read-outs interleaved in the attention.
    inner += sum(2 * o * i for o, i in shapes)
    return params, 2.0 * (6 * D * D + 3 * H * D) + 2.0 * 3 * D * D + persistent / n, float(H * inner)


def memory_attention_keys(lat: LatentConfig, patches: float) -> float:
    """Keys a latent patch's attention sees, per patch, with a Titans memory: MAG's causal (windowed)
    keys, or within MAC's segments of 2 * chunk interleaved positions (position p seeing p + 1)
    2 * chunk + 1; plus the persistent tokens for each query (2 per patch in MAC)."""
    m = lat.memory
    if m.variant == "mag":
        return mean_visible_keys(patches, lat.window) + m.persistent
    return 2 * m.chunk + 1 + 2 * m.persistent


def byte_lm_flops(cfg: ByteLMConfig, seq_len: int) -> FlopReport:
    d = cfg.dim
    params = {
        "embedding": VOCAB_SIZE * d,
        "transformer": cfg.layers * _block_params(cfg) + d,
        "output": d * VOCAB_SIZE,
    }
    linear = {"transformer": cfg.layers * _block_linear(cfg), "output": 2.0 * d * VOCAB_SIZE}
    attention = {"transformer": _stack_attention(cfg, seq_len)}
    return FlopReport(params, linear, attention, seq_len, 1.0)


def blt_flops(cfg: BLTConfig, seq_len: int, patch_bytes: float) -> FlopReport:
    enc, lat, dec, k = cfg.encoder, cfg.global_, cfg.decoder, cfg.patch_queries
    d, D = enc.dim, lat.dim
    T = float(seq_len)
    P = T / patch_bytes  # patches per sequence
    n_enc_x, n_dec_x = cfg.cross_layers(enc), cfg.cross_layers(dec)
    cross_params = 4 * d * d + 2 * d

    vocab = getattr(cfg, "vocab_size", VOCAB_SIZE)  # MVoT adds the image ids
    params = {
        "embedding": vocab * d,
        "hash_embeddings": len(cfg.ngram.sizes) * cfg.ngram.buckets * d,
        "local_encoder": enc.layers * _block_params(enc),
        "encoder_cross_attn": d * k * d + n_enc_x * cross_params,
        "latent": k * d * D + lat.layers * _block_params(lat) + D + D + D * k * d,
        "decoder_cross_attn": n_dec_x * cross_params,
        "local_decoder": dec.layers * _block_params(dec) + d + d * vocab,
    }
    # Per sequence, then / T: queries and slots are applied per patch (P * k rows), keys and
    # values of the encoder cross-attention per byte.
    per_seq = {
        "local_encoder": T * enc.layers * _block_linear(enc),
        "encoder_cross_attn": 2.0 * P * d * k * d + n_enc_x * (2.0 * d * d * (2 * P * k + 2 * T)),
        "latent": 2.0 * P * k * d * D + P * lat.layers * _block_linear(lat) + 2.0 * P * D * k * d,
        "decoder_cross_attn": n_dec_x * (2.0 * d * d * (2 * T + 2 * P * k)),
        "local_decoder": T * dec.layers * _block_linear(dec) + 2.0 * T * d * vocab,
    }
    linear = {name: flops / T for name, flops in per_seq.items()}
    attention = {
        "local_encoder": _stack_attention(enc, T),
        # each of a patch's k queries sees that patch's bytes: k * T keys per sequence
        "encoder_cross_attn": n_enc_x * 4.0 * d * k,
        "latent": _stack_attention(lat, P) * P / T,
        # a byte sees the start slot and up to decoder_cross_window complete patches, k slots each
        "decoder_cross_attn": n_dec_x
        * 4.0
        * d
        * k
        * mean_visible_keys(P, _plus_one(cfg.decoder_cross_window)),
        "local_decoder": _stack_attention(dec, T),
    }
    if lat.memory is not None:
        mem_params, mem_linear, mem_inner = memory_parts(lat, P)
        params["latent_memory"] = lat.layers * mem_params
        linear["latent_memory"] = lat.layers * mem_linear * P / T
        attention["latent"] = lat.layers * attention_per_key(lat) * memory_attention_keys(lat, P) * P / T
        attention["latent_memory"] = lat.layers * mem_inner * P / T
    return FlopReport(params, linear, attention, seq_len, patch_bytes)


# -- brain variants: per window (one text sample of seq_len bytes), then / seq_len ----------------
def brain_encoder_parts(b: BrainEncoderConfig) -> tuple[int, float, float]:
    """(params, linear FLOPs, attention FLOPs) of the brain encoder per window of b.samples."""
    S, E, C, T, N = b.spatial_channels, b.dim, b.channels, float(b.samples), float(b.tokens())
    params = (
        b.fourier_dim * S
        + b.subjects * S * S
        + (S * b.stride * E + E)
        + E * E
        + b.layers * _block_params(b)
        + E
    )
    linear = (
        2.0 * b.fourier_dim * S * C
        + 2.0 * S * C * T
        + 2.0 * S * S * T  # spatial weights, mix, subject
        + 2.0 * S * b.stride * E * N
        + 2.0 * E * E * N
        + N * b.layers * _block_linear(b)
    )
    attention = b.layers * 4.0 * E * N * N  # bidirectional: every token sees all N
    return params, linear, attention


def brain_blt_flops(cfg: BrainBLTConfig, seq_len: int, patch_bytes: float) -> FlopReport:
    report = blt_flops(cfg, seq_len, patch_bytes)
    D, E, T = cfg.global_.dim, cfg.brain.dim, float(seq_len)
    P, N, n = T / patch_bytes, float(cfg.brain.tokens()), len(cfg.fusion.layers)
    enc_params, enc_linear, enc_attention = brain_encoder_parts(cfg.brain)
    # n fused latent layers over P patches, plus one for the decoder's start slot (1 query).
    report.params |= {"brain_encoder": enc_params, "fusion": (n + 1) * (2 * D * D + 2 * E * D + D + E + D)}
    report.linear |= {
        "brain_encoder": enc_linear / T,
        "fusion": (n * (4.0 * D * D * P + 4.0 * E * D * N) + 4.0 * D * D + 4.0 * E * D * N) / T,
    }
    report.attention |= {"brain_encoder": enc_attention / T, "fusion": (n * P + 1) * 4.0 * D * N / T}
    return report


def _lora_params(cfg: MegToTextConfig) -> int:
    if cfg.lora is None:
        return 0
    d, f = cfg.decoder.dim, cfg.decoder.ffn_dim
    per_layer = {
        "wq": (d, d),
        "wk": (d, d),
        "wv": (d, d),
        "wo": (d, d),
        "w1": (d, f),
        "w3": (d, f),
        "w2": (f, d),
    }
    total = (
        sum(cfg.lora.rank * sum(per_layer[t]) for t in cfg.lora.targets if t in per_layer)
        * cfg.decoder.layers
    )
    return total + (cfg.lora.rank * (d + VOCAB_SIZE) if "output" in cfg.lora.targets else 0)


def meg_to_text_flops(cfg: MegToTextConfig, seq_len: int) -> FlopReport:
    """The language-modelling phase's forward (encoder, quantiser, decoder over prefix + bytes);
    the codebooks are buffers, not parameters."""
    b, q, dec = cfg.brain, cfg.rvq, cfg.decoder
    E, Q, d, T, N = b.dim, q.dim, dec.dim, float(seq_len), float(b.tokens())
    enc_params, enc_linear, enc_attention = brain_encoder_parts(b)
    text = byte_lm_flops(dec, int(T + N))
    params = {
        "brain_encoder": enc_params + E + E * b.channels * b.stride,  # + mask token and MAE head
        "rvq": E * Q + Q * E,
        "prefix": E * d,
        "decoder": text.total_params + _lora_params(cfg),
    }
    linear = {
        "brain_encoder": enc_linear / T,
        "rvq": (2.0 * E * Q + 2.0 * q.quantizers * q.codebook_size * Q + 2.0 * Q * E) * N / T,
        "prefix": 2.0 * E * d * N / T,
        "decoder": (T + N) * dec.layers * _block_linear(dec) / T + 2.0 * d * VOCAB_SIZE,
    }
    attention = {"brain_encoder": enc_attention / T, "decoder": text.attention["transformer"] * (T + N) / T}
    return FlopReport(params, linear, attention, seq_len, 1.0)


def vq_image_flops(cfg: VQImageConfig, seq_len: int) -> FlopReport:
    """Per "byte" = per pixel value of an image (the tokenizer's recipe sets data.seq_len to 3·H·W).
    The codebook search is a matmul against K codes per patch; the EMA update is left out. The
    codebook is a buffer (EMA-updated), so it is not among the parameters."""
    pixels, h, dim, K = 3 * cfg.patch**2, cfg.hidden, cfg.rvq.dim, cfg.rvq.codebook_size
    per_patch = {
        "encoder": 2.0 * (pixels * h + h * dim),
        "vq": 2.0 * dim * K,
        "decoder": 2.0 * (dim * h + h * pixels),
    }
    params = {
        "encoder": pixels * h + h + h * dim + dim,
        "decoder": dim * h + h + h * pixels + pixels,
    }  # the codebook is a buffer
    linear = {name: flops / pixels for name, flops in per_patch.items()}
    return FlopReport(params, linear, {}, seq_len, 1.0)


def svf_flops(cfg: SVFConfig, seq_len: int, patch_bytes: float) -> FlopReport:
    """The base model's work (W' is formed once per forward; z adds parameters). With the REINFORCE
    objective a step does no backward over the rows: one forward for the logged next-byte loss, then
    per row and sample a forward over every prefix while sampling, a forward and backward of the
    completed sequence under π_z and one forward under the base (train/objectives.py)."""
    report = model_flops(cfg.base, seq_len, patch_bytes)
    report.params["svf"] = svf_vector_size(cfg)
    objective = cfg.objective
    if objective.kind == "reinforce":
        P, L = objective.prompt_bytes, objective.completion_bytes

        def row(n: int) -> float:  # forward FLOPs over a sequence of n ids
            return model_flops(cfg.base, n, patch_bytes).forward_per_byte * n

        per_sample = sum(row(P + t) for t in range(L)) + (3 + 1) * row(P + L - 1)
        report.train_forwards = 1.0
        report.extra_train_per_byte = objective.samples * per_sample / seq_len
    return report


def model_flops(cfg, seq_len: int, patch_bytes: float = 1.0) -> FlopReport:
    if isinstance(cfg, SVFConfig):
        return svf_flops(cfg, seq_len, patch_bytes)
    if isinstance(cfg, VQImageConfig):
        return vq_image_flops(cfg, seq_len)
    if isinstance(cfg, BrainBLTConfig):
        return brain_blt_flops(cfg, seq_len, patch_bytes)
    if isinstance(cfg, MegToTextConfig):
        return meg_to_text_flops(cfg, seq_len)
    if isinstance(cfg, MVoTBLTConfig):  # the BLT's work; its frozen tokenizer only decodes generations
        report = blt_flops(cfg, seq_len, patch_bytes)
        report.params["image_tokenizer"] = vq_image_flops(cfg.tokenizer, seq_len).total_params
        return report
    if isinstance(cfg, BLTConfig):
        return blt_flops(cfg, seq_len, patch_bytes)
    return byte_lm_flops(cfg, seq_len)

"""MVoT's token discrepancy loss (Li et al. 2025, arXiv:2501.07542, section 3.3).

A multimodal byte stream holds the 259 byte ids (vocab.py) followed by K image-token ids: visual
code c is id VOCAB_SIZE + c. At a position whose target is an image token t_i, cross-entropy only
rewards the right code; the discrepancy loss also charges every other code by how far its codebook
embedding lies from the right one:

    L_D = Σ_i Σ_k S(t_i, e_k) · P(t_i = k)

S(t_i, e_k) = mean over dimensions of (e_{t_i} − e_k)², the MSE between the true token's codebook
embedding and entry k; P the model's predicted distribution over the K image tokens (a softmax over
the image-token logits). The sum runs over image positions only; the objective adds
`discrepancy_weight · L_D` to the cross-entropy (`model.mvot.discrepancy_weight`).

Image codes in byte shards: shards hold raw bytes, and valid UTF-8 never contains 0xFF, so visual
code c (< 256) is stored as the two bytes 0xFF, c. `image_bytes` writes that form and `stream_ids`
reads it back into ids; they are the only code that knows it (data prep and the loaders call them).
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from blt_scale.config import Config
from blt_scale.model.vocab import BOS, EOS, OFFSET, VOCAB_SIZE

IMAGE_OFFSET = VOCAB_SIZE  # visual code c -> id IMAGE_OFFSET + c
IMAGE_MARK = 0xFF  # never in valid UTF-8: in shards, the byte before each visual code


def image_bytes(codes) -> bytes:
    """Visual codes (ints < 256) in their byte-shard form: 0xFF, c for each code."""
    codes = np.asarray(codes, dtype=np.int64).reshape(-1)
    if codes.size and (codes.min() < 0 or codes.max() > 255):
        raise ValueError(
            f"visual codes must lie in 0..255 to be stored in bytes, got {codes.min()}..{codes.max()}"
        )
    out = np.empty(2 * codes.size, dtype=np.uint8)
    out[0::2], out[1::2] = IMAGE_MARK, codes
    return out.tobytes()


def stream_ids(data: bytes, bos: bool = False, eos: bool = False) -> np.ndarray:
    """Ids of a byte stream with images: byte b -> b + OFFSET, each pair 0xFF, c -> IMAGE_OFFSET + c
    (read left to right: the byte after a mark is always a code, even 0xFF)."""
    raw = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    ids, keep, code_at = raw + OFFSET, np.ones(len(raw), dtype=bool), -1
    for m in np.flatnonzero(raw == IMAGE_MARK):
        if m == code_at:
            continue
        if m + 1 >= len(raw):
            raise ValueError("an image mark (0xFF) ends the document: its visual code is missing")
        ids[m], keep[m + 1], code_at = IMAGE_OFFSET + raw[m + 1], False, m + 1
    return np.concatenate([[BOS] * bos, ids[keep], [EOS] * eos]).astype(np.int64)


def stream_bytes(ids) -> bytes:
    """The inverse of stream_ids: bytes, and 0xFF, c for each image id; special ids are dropped."""
    out = bytearray()
    for v in torch.as_tensor(ids).flatten().tolist():
        if OFFSET <= v < VOCAB_SIZE:
            out.append(v - OFFSET)
        elif v >= IMAGE_OFFSET:
            out += image_bytes([v - IMAGE_OFFSET])
    return bytes(out)


def split_images(ids, codes_per_image: int) -> list[bytes | torch.Tensor]:
    """A generated id sequence as pieces: bytes of text runs, and code tensors [codes_per_image] of
    the images (a run of image ids is cut into whole images; a shorter tail is an image's start,
    kept as a tensor with fewer codes). Special ids are dropped."""
    pieces: list[bytes | torch.Tensor] = []
    text, codes = bytearray(), []

    def flush_codes() -> None:
        for at in range(0, len(codes), codes_per_image):
            pieces.append(torch.tensor(codes[at : at + codes_per_image]))
        codes.clear()

    for v in torch.as_tensor(ids).flatten().tolist():
        if v >= IMAGE_OFFSET:
            if text:
                pieces.append(bytes(text))
                text.clear()
            codes.append(v - IMAGE_OFFSET)
        elif v >= OFFSET:
            flush_codes()
            text.append(v - OFFSET)
    flush_codes()
    if text:
        pieces.append(bytes(text))
    return pieces


class MVoTConfig(Config):
    discrepancy_weight: float = Field(
        default=0.0, ge=0, description="weight of the token discrepancy loss added to cross-entropy"
    )


def code_distances(codebook: torch.Tensor) -> torch.Tensor:
    """S [K, K]: S[t, k] = mean_d (codebook[t, d] − codebook[k, d])²."""
    cb = codebook.float()
    sq = cb.pow(2).sum(-1)
    return ((sq[:, None] + sq[None, :] - 2 * cb @ cb.T) / cb.shape[-1]).clamp_min(0)


def discrepancy_loss(
    logits: torch.Tensor, targets: torch.Tensor, codebook: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_D summed over the image positions, their number). logits [..., VOCAB_SIZE + K] over the
    whole vocabulary, targets [...] ids, codebook [K, d]. Positions whose target is not an image
    token add nothing."""
    K = codebook.shape[0]
    if logits.shape[-1] < IMAGE_OFFSET + K:
        raise ValueError(f"logits have {logits.shape[-1]} ids; an MVoT model needs {IMAGE_OFFSET} + {K}")
    flat_targets = targets.reshape(-1)
    image = (flat_targets >= IMAGE_OFFSET) & (flat_targets < IMAGE_OFFSET + K)
    if not bool(image.any()):
        return logits.new_zeros(()).float(), image.sum()
    image_logits = logits.reshape(-1, logits.shape[-1])[image][:, IMAGE_OFFSET : IMAGE_OFFSET + K]
    p = torch.softmax(image_logits.float(), dim=-1)  # P(t_i = k) over the image tokens
    s = code_distances(codebook)[flat_targets[image] - IMAGE_OFFSET]  # S(t_i, e_k)
    return (s * p).sum(), image.sum()

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
"""

from __future__ import annotations

import torch
from pydantic import Field

from blt_scale.config import Config
from blt_scale.model.vocab import VOCAB_SIZE

IMAGE_OFFSET = VOCAB_SIZE  # visual code c -> id IMAGE_OFFSET + c


class MVoTConfig(Config):
    image_codes: int = Field(default=64, gt=1, description="visual codebook size K; ids 259 ... 259+K-1")
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

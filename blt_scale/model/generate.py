"""Sampling bytes from any byte model: greedy, temperature and top-k.

Without a KV cache each new byte costs a full forward pass over the prefix; that is simple and
exactly right, because every patcher decides a patch start from the bytes before it: the prefix's
patches, and whether its last patch is complete, do not depend on what comes next. For entropy
patching, pass the entropy model that computes the entropies.
"""

from __future__ import annotations

import torch
from torch import nn

from blt_scale.model.patcher import PatcherConfig, patch_lengths_with_next
from blt_scale.model.vocab import EOS


def _next_logits(model: nn.Module, ids: torch.Tensor, patcher: PatcherConfig, entropy_model: nn.Module | None):
    entropies = entropy_model.entropies(ids) if patcher.mode == "entropy" and entropy_model is not None else None
    return model(ids, patch_lengths_with_next(ids, patcher, entropies))[:, -1].float()


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    max_new_bytes: int,
    patcher_cfg: PatcherConfig,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    entropy_model: nn.Module | None = None,
    stop_at_eos: bool = True,
) -> torch.Tensor:
    """Prompt [1, T] -> prompt plus up to max_new_bytes generated ids. temperature 0 is greedy."""
    if prompt_ids.dim() != 2 or prompt_ids.shape[0] != 1:
        raise ValueError(f"prompt_ids must have shape [1, T], got {list(prompt_ids.shape)}")
    ids = prompt_ids
    for _ in range(max_new_bytes):
        logits = _next_logits(model, ids, patcher_cfg, entropy_model)
        if temperature == 0.0:
            nxt = logits.argmax(dim=-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
        ids = torch.cat([ids, nxt.to(ids.dtype)], dim=1)
        if stop_at_eos and int(nxt) == EOS:
            break
    return ids

"""Brain batches: samples of different montages and lengths padded or cropped to one layout.

A batch is a dict of tensors:
    signal         float32 [B, C, T]   C = max_channels, T = window_samples; zeros where padded
    channel_mask   bool    [B, C]      True for a real channel
    ch_pos         float32 [B, C, 3]   sensor positions in metres (zeros where padded)
    subject        int64   [B]         index into the subject vocabulary
    tokens         int64   [B, L + 1]  BOS, text bytes + vocab.OFFSET, EOS, then PAD (L = text_bytes + 1)
    patch_lengths  int64   [B, P]      the recipe's patcher over tokens[:, :-1] (rows sum to L)
A sample with more channels than C keeps its first C (file order); a longer window keeps its
first T samples; text longer than text_bytes keeps its first text_bytes bytes (EOS still ends it).
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from blt_scale.config import Config
from blt_scale.model.patcher import PatcherConfig, patch_lengths
from blt_scale.model.vocab import BOS, EOS, OFFSET, PAD


class BrainDataConfig(Config):
    """`data.brain`: the layout brain batches are padded/cropped to. None: from the manifests."""

    max_channels: int | None = Field(
        default=None, gt=0, description="channels per sample; None: the most in any source"
    )
    window_samples: int | None = Field(
        default=None, gt=0, description="time samples per window; None: the sources'"
    )
    text_bytes: int = Field(
        default=64, gt=0, description="text bytes kept per sample; tokens are text_bytes + 2 long"
    )
    subjects: list[str] | None = Field(
        default=None, description="subject vocabulary (index = id); None: sorted union of the manifests'"
    )


def resolve(cfg: BrainDataConfig | None, manifests: dict[str, dict]) -> BrainDataConfig:
    """The config with every None filled from the manifests {uri: manifest} of kind brain."""
    cfg = cfg or BrainDataConfig()
    windows = {m["window_samples"] for m in manifests.values()}
    rates = {m["sfreq"] for m in manifests.values()}
    if len(rates) > 1:
        raise ValueError(
            f"data.sources: brain datasets at different sampling rates {sorted(rates)}; prepare them "
            f"with one preprocess.resample"
        )
    if cfg.window_samples is None and len(windows) > 1:
        raise ValueError(
            f"data.sources: brain datasets with different window lengths {sorted(windows)}; "
            f"set data.brain.window_samples"
        )
    return cfg.model_copy(
        update={
            "max_channels": cfg.max_channels or max(m["channels"]["max"] for m in manifests.values()),
            "window_samples": cfg.window_samples or windows.pop(),
            "subjects": cfg.subjects
            if cfg.subjects is not None
            else sorted({s for m in manifests.values() for s in m["subjects"]}),
        }
    )


def text_tokens(texts: list[bytes], text_bytes: int) -> torch.Tensor:
    tokens = np.full((len(texts), text_bytes + 2), PAD, dtype=np.int64)
    for b, text in enumerate(texts):
        ids = np.frombuffer(text[:text_bytes], dtype=np.uint8).astype(np.int64) + OFFSET
        tokens[b, 0] = BOS
        tokens[b, 1 : 1 + len(ids)] = ids
        tokens[b, 1 + len(ids)] = EOS
    return torch.from_numpy(tokens)


def collate(samples: list[dict], cfg: BrainDataConfig, patcher: PatcherConfig) -> dict[str, torch.Tensor]:
    """cfg must be resolved (see resolve)."""
    B, C, T = len(samples), cfg.max_channels, cfg.window_samples
    signal = np.zeros((B, C, T), dtype=np.float32)
    mask = np.zeros((B, C), dtype=bool)
    pos = np.zeros((B, C, 3), dtype=np.float32)
    index = {s: i for i, s in enumerate(cfg.subjects)}
    subject = np.empty(B, dtype=np.int64)
    for b, s in enumerate(samples):
        sig = s["signal"]
        c, t = min(sig.shape[0], C), min(sig.shape[1], T)
        signal[b, :c, :t] = sig[:c, :t]
        mask[b, :c] = True
        pos[b, :c] = s["ch_pos"][:c]
        if s["subject"] not in index:
            raise ValueError(
                f"subject {s['subject']!r} of recording {s.get('recording')} is not in data.brain.subjects "
                f"({cfg.subjects[:8]}...)"
            )
        subject[b] = index[s["subject"]]
    tokens = text_tokens([s["text"] for s in samples], cfg.text_bytes)
    return {
        "signal": torch.from_numpy(signal),
        "channel_mask": torch.from_numpy(mask),
        "ch_pos": torch.from_numpy(pos),
        "subject": torch.from_numpy(subject),
        "tokens": tokens,
        "patch_lengths": patch_lengths(tokens[:, :-1], patcher),
    }

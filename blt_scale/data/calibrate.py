"""Entropy thresholds for a target mean patch size, measured on a prepared dataset.

`blt calibrate RECIPE --data URI --target-patch-bytes X` reads documents with their entropies
(written by `blt prep entropies`) and bisects the recipe's entropy rule's threshold so that its
patches average X bytes there (model.patcher.calibrate_threshold). Documents are taken evenly
spaced through the split, so the sample covers every shard's part of the corpus.
"""

from __future__ import annotations

import numpy as np
import torch

from blt_scale.data.mds_reader import MDSSplit
from blt_scale.data.packing import document_ids
from blt_scale.model.patcher import PatcherConfig, calibrate_threshold, mean_patch_bytes


def entropy_sample(
    uri: str, split: str, documents: int, cache_dir: str | None = None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(ids [1, L], entropies [1, L], documents read): documents of the split, end to end."""
    data = MDSSplit(uri, split, cache_dir)
    if "entropy" not in data.columns:
        raise ValueError(f"{uri}: has no entropies; run `blt prep entropies` on it first")
    if len(data) == 0:
        raise ValueError(f"{uri}: the {split} split has no documents")
    picks = np.unique(np.linspace(0, len(data) - 1, min(documents, len(data))).round().astype(np.int64))
    ids, ent = [], []
    for i in picks:
        sample = data[int(i)]
        ids.append(document_ids(sample["text"]))
        ent.append(np.frombuffer(sample["entropy"], dtype=np.float16).astype(np.float32))
    return (
        torch.from_numpy(np.concatenate(ids))[None],
        torch.from_numpy(np.concatenate(ent))[None],
        len(picks),
    )


def calibrate(
    uri: str,
    patcher: PatcherConfig,
    target: float,
    documents: int = 512,
    split: str = "train",
    cache_dir: str | None = None,
) -> dict:
    """{"threshold", "field" (the patcher key it sets), "mean_patch_bytes", "documents"}."""
    if patcher.mode != "entropy":
        raise ValueError(
            f"calibration needs patcher.mode=entropy, the recipe has patcher.mode={patcher.mode}"
        )
    ids, ent, n = entropy_sample(uri, split, documents, cache_dir)
    tuned = calibrate_threshold(ids, ent, patcher, target)
    field = "relative_threshold" if patcher.entropy_rule == "monotonic" else "threshold"
    return {
        "threshold": getattr(tuned, field),
        "field": f"patcher.{field}",
        "mean_patch_bytes": mean_patch_bytes(ids, tuned, ent),
        "documents": n,
    }


def recipe_patch_bytes(model_kind: str, patcher: PatcherConfig) -> float:
    """Mean bytes per patch a recipe's model will see: exact for static and byte patching (1 for
    kinds without patches), measured on the embedded corpus for space patching. Entropy patching
    depends on the data and its entropy model, so it must be given (`blt calibrate` finds it)."""
    from blt_scale.data.builtin import stdlib_documents
    from blt_scale.model.build import KINDS

    if not KINDS[model_kind].patched or patcher.mode == "byte":
        return 1.0
    if patcher.mode == "static":
        return float(min(patcher.static_size, patcher.max_patch_len or patcher.static_size))
    if patcher.mode == "space":
        ids = torch.from_numpy(np.concatenate([document_ids(d) for d in stdlib_documents(1_000_000)]))[None]
        return mean_patch_bytes(ids, patcher)
    raise ValueError(
        "patcher.mode=entropy: give the mean patch size (it depends on the data; see `blt calibrate`)"
    )

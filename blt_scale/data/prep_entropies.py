"""`blt prep entropies`: per-byte entropies of a prepared text dataset under an entropy model.

Output: an MDS dataset with the same splits and documents in the same order, each sample the
document's bytes plus float16 entropies aligned with packing.document_ids (BOS, bytes, EOS):
entropy[t] is the entropy (nats) of the model's prediction made at id t. The loader cuts rows
out of ids and entropies alike and patches them with the recipe's patcher and threshold.

Long documents are cut into context windows of `context` ids that overlap by `overlap`: each
window only contributes the positions after the overlap, so every position is predicted with at
least `overlap` ids of context (all of its context when the model's receptive field, layers x
window, fits in the overlap). Windows of several documents are batched, right-padded: the model
is causal, so padding cannot change the positions before it.

`--part i/n` converts the i-th slice of every split's documents; once every part is marked done,
`--merge` (or a run without --part) writes the indexes, manifest and completion marker.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

import numpy as np
import torch
from pydantic import Field, model_validator
from tqdm import tqdm

from blt_scale.config import Config
from blt_scale.data.assemble import PartStager, finalize, part_name, upload_part
from blt_scale.data.mds_reader import MDSSplit
from blt_scale.data.packing import document_ids
from blt_scale.data.splits import SPLITS
from blt_scale.data.store import MANIFEST, PARTS, PLAN, Root
from blt_scale.model.vocab import PAD


class EntropyPrepConfig(Config):
    data: str = Field(description="text dataset from `blt prep text`")
    model: str = Field(description="exported entropy-model checkpoint directory")
    out: str
    part: int = Field(default=0, ge=0)
    parts: int = Field(default=1, gt=0)
    batch_size: int = Field(default=16, gt=0, description="context windows per forward pass")
    context: int | None = Field(
        default=None, gt=1, description="window length in ids; None: the model's data.seq_len"
    )
    overlap: int | None = Field(
        default=None, ge=0, description="ids of context carried between windows; None: context/2"
    )
    shard_size: int = Field(default=64 << 20, gt=0)
    device: str = "cpu"

    @model_validator(mode="after")
    def _part_in_range(self) -> EntropyPrepConfig:
        if self.part >= self.parts:
            raise ValueError(
                f"--part {self.part}/{self.parts}: the part index must be below the number of parts"
            )
        return self


def windows(length: int, context: int, overlap: int) -> list[tuple[int, int, int]]:
    """(start, keep_from, end) for each window: ids [start, end) go in, [keep_from, end) are kept."""
    out, kept = [], 0
    while kept < length:
        start = max(0, kept - overlap)
        end = min(start + context, length)
        out.append((start, kept, end))
        kept = end
    return out


class EntropyComputer:
    def __init__(self, model: torch.nn.Module, context: int, overlap: int, batch_size: int, device: str):
        if not hasattr(model, "entropies"):
            raise ValueError(
                f"--model: a {type(model).__name__} has no next-byte entropies; give an entropy model "
                "(byte_lm)"
            )
        if not 0 <= overlap < context:
            raise ValueError(f"--overlap ({overlap}) must be at least 0 and below --context ({context})")
        self.model, self.context, self.overlap = model.to(device).eval(), context, overlap
        self.batch_size, self.device = batch_size, device

    def __call__(self, documents: list[bytes]) -> list[np.ndarray]:
        """float16 entropies [len(doc) + 2] for each document."""
        ids = [document_ids(d) for d in documents]
        out = [np.zeros(len(i), dtype=np.float16) for i in ids]
        jobs = [(d, w) for d, i in enumerate(ids) for w in windows(len(i), self.context, self.overlap)]
        for b in range(0, len(jobs), self.batch_size):
            chunk = jobs[b : b + self.batch_size]
            width = max(end - start for _, (start, _, end) in chunk)
            batch = torch.full((len(chunk), width), PAD, dtype=torch.long)
            for row, (d, (start, _, end)) in enumerate(chunk):
                batch[row, : end - start] = torch.from_numpy(ids[d][start:end])
            with torch.no_grad():
                ent = self.model.entropies(batch.to(self.device)).float().cpu().numpy()
            for row, (d, (start, keep, end)) in enumerate(chunk):
                out[d][keep:end] = ent[row, keep - start : end - start]
        return out


def _part_documents(split: MDSSplit, part: int, parts: int) -> range:
    n = len(split)
    return range(n * part // parts, n * (part + 1) // parts)


def _batches(split: MDSSplit, indices: range, size: int) -> Iterator[list[bytes]]:
    for b in range(indices.start, indices.stop, size):
        yield [split[i]["text"] for i in range(b, min(b + size, indices.stop))]


def prep_entropies(cfg: EntropyPrepConfig, progress: bool = True) -> dict:
    from blt_scale.checkpoint.export import load_exported

    root = Root(cfg.out)
    model, run_cfg = load_exported(cfg.model, cfg.device)
    context = cfg.context or run_cfg.data.seq_len
    overlap = cfg.overlap if cfg.overlap is not None else context // 2
    plan = {
        "kind": "entropies",
        "data": cfg.data,
        "model": cfg.model,
        "context": context,
        "overlap": overlap,
        "parts": cfg.parts,
    }
    if root.exists(PLAN) and root.read_json(PLAN) != plan:
        old = root.read_json(PLAN)
        keys = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
        raise ValueError(
            f"{root.name(PLAN)}: holds entropies made with other settings (differs in {keys}); use another "
            "--out"
        )
    if root.is_complete():
        return {**root.read_json(MANIFEST), "converted_parts": 0, "complete": True}
    root.write_json(PLAN, plan)
    name = part_name(cfg.part, cfg.parts)
    converted = 0
    if not root.exists(f"{PARTS}/{name}.json"):
        splits = {s: MDSSplit(cfg.data, s) for s in SPLITS}
        compute = EntropyComputer(model, context, overlap, cfg.batch_size, cfg.device)
        ranges = {s: _part_documents(sp, cfg.part, cfg.parts) for s, sp in splits.items()}
        bar = tqdm(
            total=sum(len(r) for r in ranges.values()),
            unit="doc",
            desc=f"entropies {cfg.part}/{cfg.parts}",
            disable=not progress,
        )
        with tempfile.TemporaryDirectory(prefix="blt-entropies-") as staging:
            stager = PartStager("mds", staging, name, cfg.shard_size, with_entropy=True)
            for split, sp in splits.items():
                for docs in _batches(sp, ranges[split], max(cfg.batch_size, 8)):
                    for doc, ent in zip(docs, compute(docs)):
                        stager.write(split, doc, ent.tobytes())
                    bar.update(len(docs))
            upload_part(root, "mds", stager.finish())
        bar.close()
        converted = 1
    if cfg.parts == 1:
        return {**merge_parts(cfg.out), "converted_parts": converted}
    return {"part": f"{cfg.part}/{cfg.parts}", "converted_parts": converted, "complete": False}


def merge_parts(out: str) -> dict:
    """Indexes, manifest and completion marker from the finished parts; a missing part is an error."""
    root = Root(out)
    if not root.exists(PLAN):
        raise FileNotFoundError(f"{root.name(PLAN)}: missing; run `blt prep entropies --part i/n` first")
    plan = root.read_json(PLAN)
    names = [part_name(i, plan["parts"]) for i in range(plan["parts"])]
    missing = [n for n in names if not root.exists(f"{PARTS}/{n}.json")]
    if missing:
        raise ValueError(
            f"{out}: parts not finished yet: {missing[:8]} (run them with --part i/{plan['parts']})"
        )
    if root.is_complete():
        return {**root.read_json(MANIFEST), "complete": True}
    extra = {
        "kind": "entropies",
        "columns": ["text", "entropy"],
        "data": plan["data"],
        "model": plan["model"],
    }
    return {**finalize(root, "mds", names, extra), "complete": True}

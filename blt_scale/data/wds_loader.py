"""Webdataset sources, read resampled: each rank and each worker draws shards at random, with
replacement, from its own seeded sequence (webdataset's ResampledShards with a seed made of
(seed, rank, worker)), so ranks never need to agree on a split of the shard list.

Resampling has no cursor, so exact resume is impossible: `state_dict()` says so, and
`load_state_dict()` refuses it with an error rather than replaying data silently. Use MDS
sources where exactly-once resume matters.
"""

from __future__ import annotations

import io
import posixpath
from collections.abc import Iterator

import fsspec
import numpy as np
import torch
import webdataset as wds
from streaming.base.hashing import get_hash
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from blt_scale.data.packing import document_ids
from blt_scale.data.store import open_complete
from blt_scale.model.mvot import stream_ids
from blt_scale.model.patcher import PatcherConfig, patch_lengths


def _open_shards(urls: Iterator[dict], expected: dict[str, tuple[int, str]]) -> Iterator[dict]:
    """Each shard read whole (through fsspec: memory://, s3://, ... all work) and checked against
    the size and xxh64 hash the manifest recorded at prep time before a sample is decoded."""
    for sample in urls:
        url = sample["url"]
        with fsspec.open(url, "rb") as stream:
            data = stream.read()
        size, digest = expected[url]
        if len(data) != size:
            raise ValueError(
                f"shard {url}: truncated or wrong size ({len(data)} bytes, manifest says {size})"
            )
        if get_hash("xxh64", data) != digest:
            raise ValueError(f"shard {url}: corrupted (xxh64 hash mismatch with the manifest)")
        yield {**sample, "stream": io.BytesIO(data)}


def shard_urls(uri: str, split: str) -> dict[str, tuple[int, str]]:
    """URL -> (bytes, xxh64) of every non-empty shard of the split."""
    root, manifest = open_complete(uri)
    if manifest["format"] != "wds":
        raise ValueError(f"{uri}: a {manifest['format']} dataset, not webdataset")
    files = manifest["splits"][split].get("files", [])
    if any("xxh64" not in f for f in files):
        raise ValueError(
            f"{uri}: prepared without shard checksums; convert it again (`blt prep text ... --overwrite`)"
        )
    return {
        root.fs.unstrip_protocol(root.join(posixpath.join(split, f["basename"]))): (f["bytes"], f["xxh64"])
        for f in files
        if f["samples"]
    }


class _WdsRows(IterableDataset):
    def __init__(self, loader: WdsLoader):
        self.ld = loader

    def _documents(self, urls: list[str], worker: int) -> Iterator[bytes]:
        ld = self.ld
        shards = wds.ResampledShards(
            urls, seed=ld.seed, deterministic=True, worker_seed=lambda: ld.rank * 1000 + worker
        )
        for sample in group_by_keys(tar_file_expander(_open_shards(iter(shards), self.ld.expected))):
            yield sample["bin"]

    def __iter__(self) -> Iterator[tuple]:
        info = get_worker_info()
        worker = info.id if info else 0
        ld = self.ld
        docs = [self._documents(u, worker) for u in ld.urls]
        rng = np.random.default_rng([ld.seed, ld.rank, worker])
        p = ld.weights / ld.weights.sum()
        buffer = np.empty(0, dtype=np.int64)
        while True:
            while len(buffer) < ld.row_len:
                doc = next(docs[rng.choice(len(docs), p=p)])
                ids = stream_ids(doc, bos=True, eos=True) if ld.images else document_ids(doc)
                buffer = np.concatenate([buffer, ids])
            ids, buffer = buffer[: ld.row_len], buffer[ld.row_len :]
            yield ids, patch_lengths(torch.from_numpy(ids[None, :-1]), ld.patcher)[0].numpy()


class WdsLoader:
    def __init__(
        self,
        cfg,
        patcher: PatcherConfig,
        micro_batch: int,
        split: str,
        rank: int,
        world_size: int,
        seed: int,
        images: bool = False,
    ):
        """images: documents hold image codes as 0xFF c byte pairs (`blt prep gridworld --format wds`)."""
        if patcher.mode == "entropy":
            raise ValueError(
                "patcher.mode=entropy needs MDS entropy shards (`blt prep entropies`); webdataset sources "
                "have none"
            )
        self.patcher, self.micro_batch, self.rank, self.seed = patcher, micro_batch, rank, seed
        self.images = images
        self.row_len, self.workers = cfg.seq_len + 1, cfg.workers
        checked = [shard_urls(s.uri, split) for s in cfg.sources]
        self.expected = {url: sums for source in checked for url, sums in source.items()}
        self.urls = [list(source) for source in checked]
        self.weights = np.array([s.weight if u else 0.0 for s, u in zip(cfg.sources, self.urls)])
        if not self.weights.any():
            raise ValueError(f"{[s.uri for s in cfg.sources]}: no {split} shards")
        self.urls = [u or ["unused"] for u in self.urls]
        self.rows = 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        rows = _WdsRows(self)
        items = (
            iter(DataLoader(rows, batch_size=None, num_workers=self.workers)) if self.workers else iter(rows)
        )
        while True:
            batch = [next(items) for _ in range(self.micro_batch)]
            self.rows += len(batch)
            lengths = torch.zeros(len(batch), max(len(b[1]) for b in batch), dtype=torch.long)
            for i, (_, lens) in enumerate(batch):
                lengths[i, : len(lens)] = torch.as_tensor(lens)  # tensors when they come from workers
            yield {"tokens": torch.stack([torch.as_tensor(b[0]) for b in batch]), "patch_lengths": lengths}

    def state_dict(self) -> dict:
        return {"kind": "wds", "exact": False, "rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        raise ValueError(
            "webdataset sources are read resampled and cannot resume exactly-once "
            "(no cursor to restore); convert them with `blt prep text --format mds` to resume"
        )

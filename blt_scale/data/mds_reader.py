"""Random access to the documents of one split of a prepared MDS dataset, on any fsspec URI.

mosaicml-streaming's StreamingDataset does its own partitioning and shuffling and only reads
local paths or its own cloud schemes (file:// and memory:// are rejected), so the loader uses
streaming's shard reader instead: each shard is fetched through fsspec, its size and xxh64
hashes are checked against the index, it is decompressed into a local cache named by its
hash (so ranks and workers that share a cache fetch it once, and a changed dataset can never
be served stale bytes), and samples are decoded by streaming's MDSReader.
"""

from __future__ import annotations

import os
import tempfile
import uuid

import numpy as np
from streaming.base.compression import decompress
from streaming.base.format.mds.reader import MDSReader
from streaming.base.hashing import get_hash

from blt_scale.data.store import open_complete

HASH = "xxh64"


def default_cache_dir() -> str:
    return os.path.join(tempfile.gettempdir(), "blt_scale_shards")


class MDSSplit:
    def __init__(self, uri: str, split: str, cache_dir: str | None = None):
        self.root, self.manifest = open_complete(uri)
        if self.manifest["format"] != "mds":
            raise ValueError(f"{uri}: a {self.manifest['format']} dataset, not MDS")
        self.split = split
        self.columns = self.manifest.get("columns", ["text"])
        self.cache_dir = cache_dir or default_cache_dir()
        os.makedirs(self.cache_dir, exist_ok=True)
        self.shards = self.root.read_json(f"{split}/index.json")["shards"]
        self.ends = np.cumsum([s["samples"] for s in self.shards], dtype=np.int64)
        self._readers: dict[int, MDSReader] = {}

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def _local_name(self, shard: dict) -> str:
        return f"{shard['raw_data']['hashes'][HASH]}-{shard['raw_data']['bytes']}.mds"

    def _fetch(self, index: int) -> MDSReader:
        shard = self.shards[index]
        local = os.path.join(self.cache_dir, self._local_name(shard))
        if not os.path.exists(local):
            stored = shard["zip_data"] or shard["raw_data"]
            rel = f"{self.split}/{stored['basename']}"
            where = f"shard {self.root.name(rel)}"
            try:
                data = self.root.read_bytes(rel)
            except FileNotFoundError:
                raise FileNotFoundError(f"{where}: missing") from None
            if len(data) != stored["bytes"]:
                raise ValueError(f"{where}: truncated or wrong size ({len(data)} bytes, index says {stored['bytes']})")
            if get_hash(HASH, data) != stored["hashes"][HASH]:
                raise ValueError(f"{where}: corrupted ({HASH} hash mismatch with the index)")
            if shard["zip_data"]:
                try:
                    data = decompress(shard["compression"], data)
                except Exception as err:
                    raise ValueError(f"{where}: cannot decompress ({err})") from None
                if get_hash(HASH, data) != shard["raw_data"]["hashes"][HASH]:
                    raise ValueError(f"{where}: corrupted (decompressed {HASH} hash mismatch)")
            tmp = f"{local}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, local)
        obj = {**shard, "raw_data": {**shard["raw_data"], "basename": os.path.basename(local)}}
        return MDSReader.from_json(self.cache_dir, "", obj)

    def __getitem__(self, idx: int) -> dict:
        """{'text': bytes, 'entropy': bytes (float16) if the dataset has entropies}."""
        shard = int(np.searchsorted(self.ends, idx, side="right"))
        if shard not in self._readers:
            self._readers[shard] = self._fetch(shard)
        start = int(self.ends[shard - 1]) if shard else 0
        return self._readers[shard].get_item(idx - start)

    def prefetch_all(self) -> None:
        """Fetch and check every shard now (errors surface at start-up, not mid-run)."""
        for i in range(len(self.shards)):
            if i not in self._readers:
                self._readers[i] = self._fetch(i)

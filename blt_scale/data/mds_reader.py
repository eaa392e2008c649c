"""Random access to the documents of one split of a prepared MDS dataset, on any fsspec URI.

mosaicml-streaming's StreamingDataset does its own partitioning and shuffling and only reads
local paths or its own cloud schemes (file:// and memory:// are rejected), so the loader uses
streaming's shard reader instead: each shard is fetched through fsspec, its size and xxh64
hashes are checked against the index, it is decompressed into a local cache named by its
hash (so ranks and workers that share a cache fetch it once, and a changed dataset can never
be served stale bytes), and samples are decoded by streaming's MDSReader.

The cache is bounded (`limit` bytes): after each fetch the least recently used shards go,
except those a live process holds (the blocks its streams read). Every process sharing the
cache (the ranks and loader workers of a node) lists what it holds in `.held-PID-KEY`; evicting
takes a file lock; a reader whose shard was removed anyway fetches it again. Partial files of
killed writers (`*.tmp`) older than an hour are removed. Each stream's next block is fetched
ahead in a background thread when it fits under the limit, so a step rarely waits on a download.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from streaming.base.compression import decompress
from streaming.base.format.mds.reader import MDSReader
from streaming.base.hashing import get_hash

from blt_scale.data.store import open_complete

HASH = "xxh64"
SHARD_SUFFIX = ".mds"
# Only files named like ours are ever counted or removed: a cache_dir may hold other files.
OURS = re.compile(r"^[0-9a-f]{16}-\d+\.mds$")
OUR_PARTIAL = re.compile(r"^([0-9a-f]{16}-\d+\.mds|\.held-\d+-[0-9a-f]{12})\.[0-9a-f]{32}\.tmp$")
SAFE_ENCODINGS = frozenset({"bytes", "str", "json", "ndarray", "float64"})  # what shard writers here use
STALE_TMP_S = 3600  # a partial file this old belongs to a killed writer


def default_cache_dir() -> str:
    return os.path.join(tempfile.gettempdir(), "blt_scale_shards")


def default_cache_limit(cache_dir: str) -> int:
    """Half the free space of the cache's disk at start-up."""
    os.makedirs(cache_dir, exist_ok=True)
    return shutil.disk_usage(cache_dir).free // 2


def cache_bytes(cache_dir: str) -> int:
    """Bytes of complete shards in the cache."""
    total = 0
    with os.scandir(cache_dir) as entries:
        for e in entries:
            if OURS.match(e.name):
                try:
                    total += e.stat().st_size
                except FileNotFoundError:  # evicted meanwhile
                    pass
    return total


class MDSSplit:
    def __init__(self, uri: str, split: str, cache_dir: str | None = None, limit: int | None = None):
        self.root, self.manifest = open_complete(uri)
        if self.manifest["format"] != "mds":
            raise ValueError(f"{uri}: a {self.manifest['format']} dataset, not MDS")
        self.split = split
        self.columns = self.manifest.get("columns", ["text"])
        self.cache_dir = cache_dir or default_cache_dir()
        os.makedirs(self.cache_dir, exist_ok=True)
        self.limit = limit
        self.shards = self.root.read_json(f"{split}/index.json")["shards"]
        self._check_encodings(uri, split)
        self.sizes = [s["samples"] for s in self.shards]
        self.ends = np.cumsum(self.sizes, dtype=np.int64)
        self._readers: dict[int, MDSReader] = {}
        self._held: dict[int, set[int]] = {}  # stream -> the shards it reads now
        self._key = hashlib.sha1(f"{uri}\0{split}".encode()).hexdigest()[:12]
        self._lock = threading.Lock()
        self._ahead: ThreadPoolExecutor | None = None
        self._remove_stale_partials()

    def _check_encodings(self, uri: str, split: str) -> None:
        """Only column encodings this project writes are decoded: streaming would unpickle a `pkl`
        column, i.e. run code from the dataset."""
        for i, shard in enumerate(self.shards):
            bad = sorted({e for e in shard.get("column_encodings", []) if e not in SAFE_ENCODINGS})
            if bad:
                raise ValueError(
                    f"{uri}/{split}/index.json: shard {i} declares column encodings {bad}; only "
                    f"{sorted(SAFE_ENCODINGS)} are read (a pickle column would run code from the data)"
                )

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def __getstate__(self):  # DataLoader workers get their own readers, lock and prefetch thread
        return {**self.__dict__, "_readers": {}, "_lock": None, "_ahead": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _local(self, index: int) -> str:
        shard = self.shards[index]
        return os.path.join(
            self.cache_dir, f"{shard['raw_data']['hashes'][HASH]}-{shard['raw_data']['bytes']}{SHARD_SUFFIX}"
        )

    def _remove_stale_partials(self) -> None:
        now = time.time()
        with os.scandir(self.cache_dir) as entries:
            for e in entries:
                if OUR_PARTIAL.match(e.name):
                    try:
                        if now - e.stat().st_mtime > STALE_TMP_S:
                            os.remove(e.path)
                    except FileNotFoundError:
                        pass

    def _download(self, index: int) -> None:
        """Fetch, check and place shard `index` in the cache (atomically), then keep it under the limit."""
        shard, local = self.shards[index], self._local(index)
        if os.path.exists(local):
            return
        stored = shard["zip_data"] or shard["raw_data"]
        rel = f"{self.split}/{stored['basename']}"
        where = f"shard {self.root.name(rel)}"
        try:
            data = self.root.read_bytes(rel)
        except FileNotFoundError:
            raise FileNotFoundError(f"{where}: missing") from None
        if len(data) != stored["bytes"]:
            raise ValueError(
                f"{where}: truncated or wrong size ({len(data)} bytes, index says {stored['bytes']})"
            )
        if get_hash(HASH, data) != stored["hashes"][HASH]:
            raise ValueError(f"{where}: corrupted ({HASH} hash mismatch with the index)")
        if shard["zip_data"]:
            try:
                data = decompress(shard["compression"], data)
            except Exception as err:
                raise ValueError(f"{where}: cannot decompress ({err})") from None
            if get_hash(HASH, data) != shard["raw_data"]["hashes"][HASH]:
                raise ValueError(f"{where}: corrupted (decompressed {HASH} hash mismatch)")
        self._evict(incoming=len(data))  # make room first: the cache never holds more than the limit
        tmp = f"{local}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, local)

    @property
    def held(self) -> set[int]:
        return set().union(*self._held.values()) if self._held else set()

    def hold(self, stream: int, shards) -> None:
        """The shards `stream` reads now (replacing what it held): no process sharing the cache evicts
        them."""
        self._held[stream] = {int(i) for i in shards}
        for i in self._held[stream]:  # just used: last in the least-recently-used order
            try:
                os.utime(self._local(i))
            except FileNotFoundError:
                pass
        path = os.path.join(self.cache_dir, f".held-{os.getpid()}-{self._key}")
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "w") as f:
            json.dump(sorted(os.path.basename(self._local(i)) for i in self.held), f)
        os.replace(tmp, path)

    def _held_by_anyone(self) -> set[str]:
        names = set()
        with os.scandir(self.cache_dir) as entries:
            for e in entries:
                if not re.fullmatch(r"\.held-\d+-[0-9a-f]{12}", e.name):
                    continue
                pid = int(e.name.split("-")[1])
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:  # its process is gone
                    os.remove(e.path)
                    continue
                except PermissionError:
                    pass
                try:
                    with open(e.path) as f:
                        names.update(json.load(f))
                except (FileNotFoundError, ValueError):
                    pass
        return names

    def _evict(self, incoming: int) -> None:
        """Remove least recently used shards nobody holds until `incoming` more bytes fit."""
        if self.limit is None:
            return
        with open(os.path.join(self.cache_dir, ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            files = []
            with os.scandir(self.cache_dir) as entries:
                for e in entries:
                    if OURS.match(e.name):
                        try:
                            st = e.stat()
                        except FileNotFoundError:
                            continue
                        files.append((st.st_mtime, st.st_size, e.path))
            keep = self._held_by_anyone() | {os.path.basename(self._local(i)) for i in self.held}
            total = sum(f[1] for f in files)
            for _, size, path in sorted(files):
                if total + incoming <= self.limit:
                    break
                if os.path.basename(path) in keep:
                    continue
                try:
                    os.remove(path)
                    total -= size
                except FileNotFoundError:
                    pass

    def _reader(self, index: int) -> MDSReader:
        with self._lock:
            self._download(index)
            if index not in self._readers:
                obj = {
                    **self.shards[index],
                    "raw_data": {
                        **self.shards[index]["raw_data"],
                        "basename": os.path.basename(self._local(index)),
                    },
                }
                self._readers[index] = MDSReader.from_json(self.cache_dir, "", obj)
            return self._readers[index]

    def __getitem__(self, idx: int) -> dict:
        """{'text': bytes, 'entropy': bytes (float16) if the dataset has entropies}."""
        shard = int(np.searchsorted(self.ends, idx, side="right"))
        start = int(self.ends[shard - 1]) if shard else 0
        try:
            return self._reader(shard).get_item(idx - start)
        except FileNotFoundError:  # another process evicted it: fetch it again
            return self._reader(shard).get_item(idx - start)

    def fetch_ahead(self, shards: list[int]) -> None:
        """Fetch shards in a background thread, when they fit under the limit next to the held ones."""
        todo = [i for i in shards if not os.path.exists(self._local(i))]
        if not todo:
            return
        if self.limit is not None:
            need = sum(self.shards[i]["raw_data"]["bytes"] for i in set(todo) | self.held)
            if need > self.limit:
                return
        if self._ahead is None:
            self._ahead = ThreadPoolExecutor(1, thread_name_prefix="blt-shard-ahead")

        def fetch():
            with self._lock:
                for i in todo:
                    self._download(i)

        self._ahead.submit(fetch)

    def prefetch_all(self) -> None:
        """Fetch and check every shard now (errors surface at start-up, not mid-run)."""
        for i in range(len(self.shards)):
            self._reader(i)

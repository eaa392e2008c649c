"""Writing one part of a dataset into local shard files, before they are uploaded.

A sample is a document's bytes (`text`) and, for entropy shards, its per-id entropies
(`entropy`, float16, aligned with packing.document_ids: BOS, bytes..., EOS).
MDS shards are written by mosaicml-streaming's MDSWriter (zstd, xxh64 hashes of the compressed
and raw files); webdataset shards are plain tar files with members KEY.bin (and KEY.entropy).
"""

from __future__ import annotations

import io
import json
import os
import tarfile

from streaming import MDSWriter
from streaming.base.hashing import get_hash

COMPRESSION, HASHES = "zstd", ["xxh64"]


class MDSPartWriter:
    def __init__(self, local_dir: str, shard_size: int, with_entropy: bool):
        columns = {"text": "bytes", **({"entropy": "bytes"} if with_entropy else {})}
        self.local_dir = local_dir
        self.writer = MDSWriter(
            columns=columns,
            out=local_dir,
            compression=COMPRESSION,
            hashes=HASHES,
            size_limit=shard_size,
            exist_ok=True,
        )

    def write(self, text: bytes, entropy: bytes | None = None) -> None:
        self.writer.write({"text": text} if entropy is None else {"text": text, "entropy": entropy})

    def finish(self) -> list[dict]:
        """The shards written: their streaming index entries, basenames relative to local_dir."""
        self.writer.finish()
        with open(os.path.join(self.local_dir, "index.json")) as f:
            return json.load(f)["shards"]


class WdsPartWriter:
    def __init__(self, local_dir: str, shard_size: int, with_entropy: bool, prefix: str):
        os.makedirs(local_dir, exist_ok=True)
        self.local_dir, self.shard_size, self.prefix = local_dir, shard_size, prefix
        self.shards: list[dict] = []
        self.tar: tarfile.TarFile | None = None
        self.count = 0

    def _roll(self) -> None:
        self._close()
        name = f"{self.prefix}-{len(self.shards):06d}.tar"
        self.tar = tarfile.open(os.path.join(self.local_dir, name), "w")
        self.shards.append({"basename": name, "samples": 0})

    def _close(self) -> None:
        if self.tar is not None:
            self.tar.close()
            with open(os.path.join(self.local_dir, self.shards[-1]["basename"]), "rb") as f:
                data = f.read()
            # Checked by the loader like MDS's index hashes: flipped bytes are never trained on.
            self.shards[-1].update(bytes=len(data), xxh64=get_hash("xxh64", data))
            self.tar = None

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data))

    def write(self, text: bytes, entropy: bytes | None = None) -> None:
        if self.tar is None or self.tar.fileobj.tell() >= self.shard_size:
            self._roll()
        key = f"{self.prefix}-{self.count:09d}"  # no dots: webdataset splits keys at the first dot
        self._add(f"{key}.bin", text)
        if entropy is not None:
            self._add(f"{key}.entropy", entropy)
        self.shards[-1]["samples"] += 1
        self.count += 1

    def finish(self) -> list[dict]:
        self._close()
        return self.shards


def shard_files(fmt: str, shards: list[dict]) -> list[str]:
    """Basenames of the files that make up these shards (what has to be uploaded)."""
    if fmt == "wds":
        return [s["basename"] for s in shards]
    return [(s["zip_data"] or s["raw_data"])["basename"] for s in shards]

"""Building a dataset from parts: stage a part's shards locally, upload them, mark the part
done; once every part is done, write the split indexes, the manifest and the completion marker.

Parts are the unit of parallelism (`--workers`, `--part i/n`) and of resume: a part whose
marker exists is never converted again; a part without one is converted from scratch.
"""

from __future__ import annotations

import os
import posixpath
import shutil

from blt_scale.data.shard_writer import MDSPartWriter, WdsPartWriter, shard_files
from blt_scale.data.splits import SPLITS
from blt_scale.data.store import COMPLETE, MANIFEST, PARTS, Root


class PartStager:
    """Writes one part's samples into local shards, one writer per split."""

    def __init__(self, fmt: str, staging: str, name: str, shard_size: int, with_entropy: bool):
        self.fmt, self.name, self.dir = fmt, name, os.path.join(staging, name)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.writers = {
            split: MDSPartWriter(os.path.join(self.dir, split), shard_size, with_entropy)
            if fmt == "mds"
            else WdsPartWriter(os.path.join(self.dir, split), shard_size, with_entropy, name)
            for split in SPLITS
        }
        self.documents = dict.fromkeys(SPLITS, 0)
        self.bytes = dict.fromkeys(SPLITS, 0)

    def write(self, split: str, text: bytes, entropy: bytes | None = None) -> None:
        self.writers[split].write(text, entropy)
        self.documents[split] += 1
        self.bytes[split] += len(text)

    def finish(self, **extra) -> dict:
        """The part's record (what its marker will hold); its shard files stay in staging."""
        shards = {split: w.finish() for split, w in self.writers.items()}
        return {
            "name": self.name,
            "dir": self.dir,
            "shards": shards,
            "documents": self.documents,
            "bytes": self.bytes,
            **extra,
        }


def upload_part(root: Root, fmt: str, record: dict) -> None:
    """Shards first, marker last: a part counts as done only once all its files are in place."""
    name = record["name"]
    for split in record["shards"]:
        for base in shard_files(fmt, record["shards"][split]):
            root.put(os.path.join(record["dir"], split, base), f"{split}/{name}/{base}")
    shutil.rmtree(record.pop("dir"), ignore_errors=True)
    root.write_json(f"{PARTS}/{name}.json", record)


def _relocated(shard: dict, prefix: str) -> dict:
    shard = dict(shard)
    if "raw_data" in shard:
        for key in ("raw_data", "zip_data"):
            if shard.get(key):
                shard[key] = {**shard[key], "basename": posixpath.join(prefix, shard[key]["basename"])}
    else:
        shard["basename"] = posixpath.join(prefix, shard["basename"])
    return shard


def part_name(index: int, parts: int) -> str:
    """The name of part `index` of `parts` (its record under parts/, its shards' prefix)."""
    return f"{index:05d}-of-{parts:05d}"


def finalize(
    root: Root, fmt: str, part_names: list[str], extra: dict, splits: tuple[str, ...] = SPLITS
) -> dict:
    """Write split indexes and the manifest from the part markers, then the completion marker."""
    records = [root.read_json(f"{PARTS}/{name}.json") for name in part_names]
    manifest = {"format": fmt, "splits": {}, **extra}
    for key in ("bad_lines", "empty_documents"):
        manifest[key] = sum(r.get(key, 0) for r in records)
    manifest["skipped_inputs"] = [s for r in records for s in r.get("skipped_inputs", [])]
    indexes = {}
    for split in splits:
        shards = [_relocated(s, r["name"]) for r in records for s in r["shards"][split]]
        manifest["splits"][split] = {
            "documents": sum(r["documents"][split] for r in records),
            "bytes": sum(r["bytes"][split] for r in records),
            "shards": len(shards),
        }
        if fmt == "mds":
            indexes[split] = {"version": 2, "shards": shards}
        else:
            manifest["splits"][split]["files"] = [
                {"basename": s["basename"], "samples": s["samples"], "bytes": s["bytes"], "xxh64": s["xxh64"]}
                for s in shards
            ]
    if sum(manifest["splits"][s]["documents"] for s in splits) == 0:
        raise ValueError(
            f"{root.uri}: the corpus has no documents (empty corpus); skipped inputs: "
            f"{manifest['skipped_inputs'][:5]}, bad lines: {manifest['bad_lines']}"
        )
    for split, index in indexes.items():
        root.write_json(f"{split}/index.json", index)
    root.write_json(MANIFEST, manifest)
    root.write_bytes(COMPLETE, b"")
    return manifest

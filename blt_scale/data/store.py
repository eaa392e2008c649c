"""Prepared datasets on any fsspec URI (a local path, file://, memory://, s3://, ...).

A prepared dataset is one directory:

    prep.json        what was asked (inputs, options); a re-run that asks something else is refused
    parts/NAME.json  one per finished part, written after the part's shards: the unit of resume
    train/, val/     shards. MDS: index.json + PART/shard.NNNNN.mds.zstd; wds: PART-NNNNNN.tar
    manifest.json    documents, bytes, shards and skipped inputs
    _COMPLETE        written last; readers refuse a dataset without it

Every file is written under a temporary name and renamed, so a killed writer leaves either the
old file or none, never a truncated one that looks whole.
"""

from __future__ import annotations

import json
import posixpath
import uuid

import fsspec

PLAN, MANIFEST, COMPLETE, PARTS = "prep.json", "manifest.json", "_COMPLETE", "parts"
KINDS = ("text", "brain", "entropies")  # the "kind" of every plan `blt prep` writes
OWN_ENTRIES = {PLAN, MANIFEST, COMPLETE, PARTS, "train", "val"}  # and temporaries named .tmp-*


class Root:
    """A dataset directory addressed by URI; paths below it are '/'-separated and relative."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/") or uri
        self.fs, self.path = fsspec.core.url_to_fs(uri)

    def join(self, rel: str = "") -> str:
        return posixpath.join(self.path, rel) if rel else self.path

    def name(self, rel: str) -> str:
        """How errors name a file: the URI the user gave plus the relative path."""
        return f"{self.uri}/{rel}"

    def exists(self, rel: str = "") -> bool:
        return self.fs.exists(self.join(rel))

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open(self.join(rel), "rb") as f:
            return f.read()

    def read_json(self, rel: str):
        try:
            return json.loads(self.read_bytes(rel))
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.name(rel)}: missing") from None
        except ValueError as err:
            raise ValueError(f"{self.name(rel)}: not valid JSON ({err})") from None

    def _commit(self, tmp: str, rel: str) -> None:
        if self.fs.exists(self.join(rel)):
            self.fs.rm(self.join(rel))
        self.fs.mv(tmp, self.join(rel))

    def _tmp(self, rel: str) -> str:
        parent = posixpath.dirname(self.join(rel))
        self.fs.makedirs(parent, exist_ok=True)
        return posixpath.join(parent, f".tmp-{uuid.uuid4().hex}-{posixpath.basename(rel)}")

    def write_bytes(self, rel: str, data: bytes) -> None:
        tmp = self._tmp(rel)
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        self._commit(tmp, rel)

    def write_json(self, rel: str, obj) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=1, sort_keys=True).encode())

    def put(self, local_path: str, rel: str) -> None:
        tmp = self._tmp(rel)
        self.fs.put_file(local_path, tmp)
        self._commit(tmp, rel)

    def is_own(self) -> bool:
        """Whether this directory holds a dataset `blt prep` wrote: its plan is a JSON object with
        one of our kinds (a file merely named prep.json is not enough)."""
        try:
            plan = json.loads(self.read_bytes(PLAN))
        except (OSError, ValueError):
            return False
        return isinstance(plan, dict) and plan.get("kind") in KINDS and "parts" in plan

    def remove_dataset(self) -> None:
        """Delete a dataset `blt prep` wrote, entry by entry; a directory holding anything else is
        refused with nothing deleted."""
        if not self.exists():
            return
        entries = [posixpath.basename(p.rstrip("/")) for p in self.fs.ls(self.path, detail=False)]
        if not entries:
            return
        if not self.is_own():
            raise ValueError(
                f"{self.uri}: not a dataset written by `blt prep` (no {PLAN} of ours); "
                "refusing to delete it: choose another --out"
            )
        foreign = sorted(e for e in entries if e not in OWN_ENTRIES and not e.startswith(".tmp-"))
        if foreign:
            raise ValueError(
                f"{self.uri}: also holds {foreign[:3]}, which `blt prep` did not write; "
                "refusing to delete it: move them or choose another --out"
            )
        for entry in entries:
            self.fs.rm(self.join(entry), recursive=True)

    def remove(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.rm(self.join(rel), recursive=True)

    def is_complete(self) -> bool:
        return self.exists(COMPLETE)


def open_complete(uri: str) -> tuple[Root, dict]:
    """The dataset at uri and its manifest; an unfinished or missing one is an error."""
    root = Root(uri)
    if not root.exists():
        raise FileNotFoundError(f"{uri}: no such dataset")
    if not root.is_complete():
        raise ValueError(
            f"{uri}: conversion not finished (no {COMPLETE} marker); re-run `blt prep` to complete it"
        )
    return root, root.read_json(MANIFEST)

"""Canonical streams: the unit of data order and of loader state.

There are N streams, a number fixed for a run (independent of how many ranks read them). Each
source deals its *shards* to streams: epoch e of source k has a seeded permutation of its shards,
and shard position Q of the endless sequence (epoch Q // S, the (Q mod S)-th shard of that
epoch's permutation, S shards) goes to stream Q mod N. So within an epoch every shard, hence
every document, goes to exactly one stream, and a rank opens only the shards of the streams it
serves (about 1/W of them per epoch), not all of them.

A stream reads its shards of an epoch in blocks of `block_shards` consecutive ones; the
documents of a block are read in a seeded random order. Order state is O(shards + streams):
one shard permutation per epoch in use, one block's documents at a time. Everything depends on
(seed, source, epoch, stream, block) only, never on the world size.

With several sources, stream s draws its d-th document from the source picked by a seeded
weighted choice that depends only on (seed, s, d), so the mixture does not depend on ranks.

Each stream packs its own documents (BOS + bytes + EOS, as packing.document_ids) into rows of
row_len ids, carrying the remainder of a document over into its next row. A stream's state is
(documents drawn, per-source {epoch, block, offset}, current document, offset into it): small,
and the same whatever rank serves the stream, which is what makes resume exact across world sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from blt_scale.data.packing import document_ids
from blt_scale.model.mvot import stream_ids


class Source:
    """One dataset split: random access to its documents, and how its shards are dealt."""

    def __init__(
        self,
        docs: Sequence,
        shard_sizes: Sequence[int],
        seed: int,
        index: int,
        name: str,
        block_shards: int,
        real_shards: bool = True,
    ):
        """real_shards=False: the "shards" are single documents (dealt one by one), not files to cache."""
        self.docs, self.seed, self.index, self.name, self.block_shards = docs, seed, index, name, block_shards
        self.real_shards = real_shards
        sizes = np.asarray(shard_sizes, dtype=np.int64)
        self.shard_ids = np.flatnonzero(sizes > 0)  # shards with documents in this split
        self.sizes = sizes
        self.starts = np.cumsum(sizes) - sizes
        self.n = int(sizes.sum())
        self._perms: dict[int, np.ndarray] = {}

    def epoch_shards(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, self.index, epoch]).permutation(
                self.shard_ids.astype(np.int32 if len(self.sizes) < 2**31 else np.int64)
            )
        return self._perms[epoch]

    def stream_shards(self, stream: int, num_streams: int, epoch: int) -> np.ndarray:
        """The shards dealt to `stream` in `epoch`, in reading order."""
        S = len(self.shard_ids)
        first = epoch * S + (stream - epoch * S) % num_streams  # the first position of the epoch that is ours
        return self.epoch_shards(epoch)[np.arange(first - epoch * S, S, num_streams)]

    def block_shards_of(self, stream: int, num_streams: int, epoch: int, block: int) -> np.ndarray:
        mine = self.stream_shards(stream, num_streams, epoch)
        return mine[block * self.block_shards : (block + 1) * self.block_shards]

    def block_documents(self, stream: int, num_streams: int, epoch: int, block: int) -> np.ndarray:
        """Global document indices of one block, in the seeded order the stream reads them."""
        shards = self.block_shards_of(stream, num_streams, epoch, block)
        docs = (
            np.concatenate([np.arange(self.starts[s], self.starts[s] + self.sizes[s]) for s in shards])
            if len(shards)
            else np.zeros(0, dtype=np.int64)
        )
        return np.random.default_rng([self.seed, self.index, epoch, stream, block]).permutation(docs)

    def epoch_documents(self, stream: int, num_streams: int, epoch: int) -> int:
        return int(self.sizes[self.stream_shards(stream, num_streams, epoch)].sum())


def fresh_state(num_sources: int) -> dict:
    return {"drawn": 0, "cursors": [[0, 0, 0] for _ in range(num_sources)], "current": None, "offset": 0}


class StreamPacker:
    def __init__(
        self,
        stream: int,
        num_streams: int,
        sources: list[Source],
        weights: np.ndarray,
        seed: int,
        row_len: int,
        with_entropy: bool,
        state: dict,
        images: bool = False,
    ):
        """images: documents hold image codes as 0xFF c byte pairs (model/mvot.py), read as image ids."""
        self.stream, self.num_streams, self.sources = stream, num_streams, sources
        self.images = images
        self.cum_weights = np.cumsum(weights / weights.sum())
        self.seed, self.row_len, self.with_entropy = seed, row_len, with_entropy
        cursors = state["cursors"]
        if cursors and not isinstance(cursors[0], list):
            raise ValueError(
                "loader state from an older data order (per-source document cursors): it cannot "
                "resume this loader exactly; start the data order afresh (a new run_dir)"
            )
        self.state = {**state, "cursors": [list(c) for c in cursors]}
        self._blocks: dict[int, tuple[tuple[int, int], np.ndarray]] = {}  # source -> ((epoch, block), docs)
        self._doc: tuple[np.ndarray, np.ndarray | None] | None = None
        if self.state["current"] is not None:
            self._doc = self._load(*self.state["current"])

    def _pick_source(self, draw: int) -> int:
        if len(self.sources) == 1:
            return 0
        u = np.random.default_rng([self.seed, 1_000_003, self.stream, draw]).random()
        return min(int(np.searchsorted(self.cum_weights, u, side="right")), len(self.sources) - 1)

    def _load(self, source: int, doc: int) -> tuple[np.ndarray, np.ndarray | None]:
        sample = self.sources[source].docs[doc]
        ids = stream_ids(sample["text"], bos=True, eos=True) if self.images else document_ids(sample["text"])
        if not self.with_entropy:
            return ids, None
        ent = np.frombuffer(sample["entropy"], dtype=np.float16)
        if len(ent) != len(ids):
            raise ValueError(
                f"{self.sources[source].name}: document {doc} has {len(ent)} entropies for {len(ids)} ids"
            )
        return ids, ent.astype(np.float32)

    def _block(self, k: int, epoch: int, block: int) -> np.ndarray:
        key = (epoch, block)
        if k not in self._blocks or self._blocks[k][0] != key:
            src = self.sources[k]
            self._blocks[k] = (key, src.block_documents(self.stream, self.num_streams, epoch, block))
            if src.real_shards and hasattr(
                src.docs, "hold"
            ):  # a shard cache: keep this block, fetch the next ahead
                src.docs.hold(self.stream, src.block_shards_of(self.stream, self.num_streams, epoch, block))
                ahead = src.block_shards_of(self.stream, self.num_streams, epoch, block + 1)
                if not len(ahead):
                    ahead = src.block_shards_of(self.stream, self.num_streams, epoch + 1, 0)
                src.docs.fetch_ahead([int(s) for s in ahead])
        return self._blocks[k][1]

    def _next_from(self, k: int) -> int:
        """The next document of source k for this stream; its cursor then points past it."""
        cursor = self.state["cursors"][k]
        for _ in range(10_000):  # an epoch may deal this stream no shard (fewer shards than streams)
            epoch, block, offset = cursor
            docs = self._block(k, epoch, block)
            if offset < len(docs):
                cursor[2] += 1
                return int(docs[offset])
            shards_left = len(
                self.sources[k].block_shards_of(self.stream, self.num_streams, epoch, block + 1)
            )
            cursor[:] = [epoch, block + 1, 0] if shards_left else [epoch + 1, 0, 0]
        raise ValueError(f"{self.sources[k].name}: no documents")

    def _next_document(self) -> None:
        st = self.state
        k = self._pick_source(st["drawn"])
        doc = self._next_from(k)
        st["drawn"] += 1
        st["current"], st["offset"] = [k, doc], 0
        self._doc = self._load(k, doc)

    def next_row(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The stream's next row of ids (and entropies); the state then points just past it."""
        ids = np.empty(self.row_len, dtype=np.int64)
        ent = np.empty(self.row_len, dtype=np.float32) if self.with_entropy else None
        filled = 0
        while filled < self.row_len:
            if self._doc is None or self.state["offset"] >= len(self._doc[0]):
                self._next_document()
            doc_ids, doc_ent = self._doc
            start = self.state["offset"]
            take = min(self.row_len - filled, len(doc_ids) - start)
            ids[filled : filled + take] = doc_ids[start : start + take]
            if ent is not None:
                ent[filled : filled + take] = doc_ent[start : start + take]
            filled += take
            self.state["offset"] = start + take
        return ids, ent

    def snapshot(self) -> dict:
        st = self.state
        return {
            "drawn": st["drawn"],
            "cursors": [list(c) for c in st["cursors"]],
            "current": None if st["current"] is None else list(st["current"]),
            "offset": st["offset"],
        }


def rank_streams(num_streams: int, rank: int, world_size: int) -> list[int]:
    """The streams rank r serves: a contiguous slice, so a global step's rows are the same set
    of streams whatever the world size."""
    if num_streams % world_size:
        raise ValueError(f"data.streams ({num_streams}) must be a multiple of the world size ({world_size})")
    per = num_streams // world_size
    return list(range(rank * per, (rank + 1) * per))

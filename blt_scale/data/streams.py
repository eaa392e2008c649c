"""Canonical streams: the unit of data order and of loader state.

There are N streams, a number fixed for a run (independent of how many ranks read them).
Documents of source k are dealt to streams from an endless sequence of seeded permutations,
one per epoch: position P of that sequence is document perm_{k, P // n_k}[P % n_k], and goes
to stream P mod N. Within an epoch every document is dealt exactly once, to exactly one stream.
With several sources, stream s draws its d-th document from the source picked by a seeded
weighted choice that depends only on (seed, s, d), so the mixture does not depend on ranks.

Each stream packs its own documents (BOS + bytes + EOS, as packing.document_ids) into rows of
row_len ids, carrying the remainder of a document over into its next row. A stream's state is
(documents drawn, per-source cursors, offset into the current document): small, and the same
whatever rank serves the stream, which is what makes resume exact across world sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from blt_scale.data.packing import document_ids


class Source:
    """One dataset split plus its document permutations."""

    def __init__(self, docs: Sequence, seed: int, index: int, name: str):
        self.docs, self.seed, self.index, self.name = docs, seed, index, name
        self.n = len(docs)
        self._perms: dict[int, np.ndarray] = {}

    def document(self, position: int) -> int:
        epoch = position // self.n
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            order = np.arange(self.n, dtype=np.int32 if self.n < 2**31 else np.int64)  # half the memory
            self._perms[epoch] = np.random.default_rng([self.seed, self.index, epoch]).permutation(order)
        return int(self._perms[epoch][position % self.n])


def fresh_state(num_sources: int) -> dict:
    return {"drawn": 0, "cursors": [0] * num_sources, "current": None, "offset": 0}


class StreamPacker:
    def __init__(self, stream: int, num_streams: int, sources: list[Source], weights: np.ndarray,
                 seed: int, row_len: int, with_entropy: bool, state: dict):
        self.stream, self.num_streams, self.sources = stream, num_streams, sources
        self.cum_weights = np.cumsum(weights / weights.sum())
        self.seed, self.row_len, self.with_entropy = seed, row_len, with_entropy
        self.state = {**state, "cursors": list(state["cursors"])}
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
        ids = document_ids(sample["text"])
        if not self.with_entropy:
            return ids, None
        ent = np.frombuffer(sample["entropy"], dtype=np.float16)
        if len(ent) != len(ids):
            raise ValueError(f"{self.sources[source].name}: document {doc} has {len(ent)} entropies for {len(ids)} ids")
        return ids, ent.astype(np.float32)

    def _next_document(self) -> None:
        st = self.state
        k = self._pick_source(st["drawn"])
        position = st["cursors"][k] * self.num_streams + self.stream
        doc = self.sources[k].document(position)
        st["cursors"][k] += 1
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
            ids[filled:filled + take] = doc_ids[start:start + take]
            if ent is not None:
                ent[filled:filled + take] = doc_ent[start:start + take]
            filled += take
            self.state["offset"] = start + take
        return ids, ent

    def snapshot(self) -> dict:
        st = self.state
        return {"drawn": st["drawn"], "cursors": list(st["cursors"]),
                "current": None if st["current"] is None else list(st["current"]), "offset": st["offset"]}


def rank_streams(num_streams: int, rank: int, world_size: int) -> list[int]:
    """The streams rank r serves: a contiguous slice, so a global step's rows are the same set
    of streams whatever the world size."""
    if num_streams % world_size:
        raise ValueError(f"data.streams ({num_streams}) must be a multiple of the world size ({world_size})")
    per = num_streams // world_size
    return list(range(rank * per, (rank + 1) * per))

"""The brain streaming loader: mds_loader.MDSLoader with one window per row.

Same canonical streams (streams.py), same state, same exactly-once resume across world sizes:
stream s is dealt windows exactly as it would be dealt documents, and its state after a row is
(drawn, cursors, current window, offset 0). Only the row differs: instead of packing document
bytes, a row is one window, collated by collate.py. Windows are decoded in the main process
(data.workers must be 0).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from blt_scale.data.brain.collate import BrainDataConfig, collate, resolve
from blt_scale.data.mds_loader import MDSLoader
from blt_scale.data.store import open_complete
from blt_scale.data.streams import StreamPacker
from blt_scale.model.patcher import PatcherConfig


def brain_manifests(uris: list[str]) -> dict[str, dict]:
    manifests = {uri: open_complete(uri)[1] for uri in uris}
    other = [u for u, m in manifests.items() if m.get("kind") != "brain"]
    if other:
        raise ValueError(
            f"{other[0]}: a {manifests[other[0]].get('kind', 'text')} dataset; data.sources must all be "
            f"brain datasets (blt prep brain) or none"
        )
    return manifests


def brain_layout(data_cfg) -> BrainDataConfig:
    """data.brain with every None filled from the sources' manifests (what a model sizes itself by)."""
    return resolve(data_cfg.brain, brain_manifests([s.uri for s in data_cfg.sources]))


class WindowStream(StreamPacker):
    """A canonical stream whose rows are single windows."""

    def _load(self, source: int, doc: int):
        return source, doc  # read in next_row: restoring a state must not fetch anything

    def next_row(self) -> dict:
        self._next_document()
        source, doc = self._doc
        return self.sources[source].docs[doc]


class BrainLoader(MDSLoader):
    def __init__(
        self, cfg, patcher: PatcherConfig, micro_batch: int, split: str, rank: int, world_size: int, seed: int
    ):
        if patcher.mode == "entropy":
            raise ValueError(
                "patcher.mode=entropy: brain datasets have no entropies; use space, static or byte"
            )
        if cfg.workers:
            raise ValueError(
                f"data.workers={cfg.workers}: brain datasets are read in the main process; set data.workers=0"
            )
        self.brain = resolve(cfg.brain, brain_manifests([s.uri for s in cfg.sources]))
        super().__init__(cfg, patcher, micro_batch, split, rank, world_size, seed)

    def packer(self, stream: int, state: dict) -> WindowStream:
        sources = [s if s is not None else _NoWindows() for s in self.sources]
        return WindowStream(stream, self.num_streams, sources, self.weights, self.seed, 1, False, state)

    def _rows(self) -> Iterator[tuple]:
        order = self._order()
        streams = {s: self.packer(s, self.states[s]) for s in order}
        while True:
            for s in order:
                sample = streams[s].next_row()
                yield s, sample, streams[s].snapshot()

    def _collate(self, batch: list[tuple]) -> dict[str, torch.Tensor]:
        out = collate([b[1] for b in batch], self.brain, self.patcher)
        for stream, _, state in batch:
            self.states[stream] = {**state, "rows": self.states[stream].get("rows", 0) + 1}
        return out


class _NoWindows:
    """Stands in for a source with no windows in this split (weight 0: never drawn)."""

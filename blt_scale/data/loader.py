"""Training and validation batches: packed byte rows with their patch lengths.

Loader state: `state_dict()` returns this rank's part; the trainer gathers the parts of all ranks
and stores `merge_states(parts)`; `load_state_dict(merged)` works on any rank of any world size.

A batch is a dict: `tokens` [B, seq_len + 1] (inputs are tokens[:, :-1], targets tokens[:, 1:])
and `patch_lengths` [B, P] for the inputs (each row sums to seq_len, zero-padded).

Four loaders, chosen by `data.sources` (and the dataset's manifest):
- data.gridworld: grid-world images or MVoT traces made on the fly (gridworld.GridWorldLoader).
- none: the embedded corpus (BuiltinLoader below). Rows are dealt out by a global cursor: step s
  uses rows [s * G, (s + 1) * G) of the epoch's seeded order, G = micro_batch * world_size, rank
  r taking its slice; the state is that cursor.
- MDS datasets (`blt prep text`/`entropies`): mds_loader.MDSLoader, exactly-once resume
  across world sizes through per-stream state.
- webdataset datasets: wds_loader.WdsLoader, resampled, no exact resume.
- brain datasets (`blt prep brain`, manifest kind: brain): brain.loader.BrainLoader, the MDS
  loader with one window per row; its batches add signal, channel_mask, ch_pos and subject.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from pydantic import Field, field_validator

from blt_scale.config import Config, size_bytes
from blt_scale.data.brain.collate import BrainDataConfig
from blt_scale.data.builtin import stdlib_documents
from blt_scale.data.gridworld import GridWorldConfig, GridWorldLoader
from blt_scale.data.packing import pack
from blt_scale.data.splits import is_validation
from blt_scale.model.patcher import PatcherConfig, patch_lengths


class SourceConfig(Config):
    uri: str = Field(
        description="a dataset written by `blt prep text` or `blt prep entropies` (path or fsspec URI)"
    )
    weight: float = Field(default=1.0, gt=0, description="relative share of documents drawn from this source")


class DataConfig(Config):
    seq_len: int = Field(default=512, gt=1, description="bytes per training sequence")
    sources: list[SourceConfig] = Field(
        default=[], description="prepared datasets; none: the embedded corpus"
    )
    streams: int | None = Field(
        default=None,
        gt=0,
        description="canonical streams of the data order (sources only); keep it fixed for a run, e.g. the "
        "global batch. None: micro_batch x world size at the start; a resumed run keeps the saved number",
    )
    workers: int = Field(default=0, ge=0, description="loader processes per rank (sources only)")
    cache_dir: str | None = Field(
        default=None, description="local cache of decompressed MDS shards; None: system temp dir"
    )
    cache_limit: int | str | None = Field(
        default=None,
        description="most bytes of shards the cache keeps (e.g. 20GB; least recently used go first); "
        "None: half the free space of the cache's disk",
    )
    shuffle_block_shards: int = Field(
        default=2,
        gt=0,
        description="a stream reads its shards in blocks of this many, documents shuffled within a "
        "block: larger is more random, smaller opens fewer shards at a time",
    )
    corpus_bytes: int = Field(default=8_000_000, gt=0, description="embedded corpus only: bytes to read")
    val_fraction: float = Field(
        default=0.02, ge=0, lt=1, description="embedded corpus only: documents held out, by hash"
    )
    brain: BrainDataConfig | None = Field(
        default=None, description="brain sources only: channel/time/text layout of batches"
    )
    gridworld: GridWorldConfig | None = Field(
        default=None,
        description="grid-world images or traces generated on the fly (data/gridworld.py) instead of sources",
    )

    @field_validator("cache_limit")
    @classmethod
    def _bytes(cls, value):
        return None if value is None else size_bytes(value)


class BuiltinLoader:
    """The embedded corpus, packed in memory."""

    def __init__(
        self,
        cfg: DataConfig,
        patcher: PatcherConfig,
        micro_batch: int,
        split: str = "train",
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ):
        if patcher.mode == "entropy":
            raise ValueError("patcher.mode=entropy needs entropy shards; the embedded corpus has none")
        docs = (
            d
            for d in stdlib_documents(cfg.corpus_bytes)
            if is_validation(d, cfg.val_fraction) == (split == "val")
        )
        rows = list(pack(docs, cfg.seq_len + 1))
        if len(rows) < micro_batch * world_size:
            raise ValueError(
                f"the embedded corpus gives {len(rows)} {split} rows of {cfg.seq_len + 1} ids; "
                f"one step needs {micro_batch * world_size}: raise data.corpus_bytes"
            )
        self.rows = np.stack(rows).astype(np.int16)  # ids < 259 fit
        self.patcher, self.micro_batch, self.seed = patcher, micro_batch, seed
        self.rank, self.world_size = rank, world_size
        self.consumed = 0  # rows dealt to all ranks so far
        self._orders: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))}
        return self._orders[epoch]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        n = len(self.rows)
        while True:
            start = self.consumed + self.rank * self.micro_batch
            idx = [self._order((start + i) // n)[(start + i) % n] for i in range(self.micro_batch)]
            self.consumed += self.micro_batch * self.world_size
            tokens = torch.from_numpy(self.rows[idx].astype(np.int64))
            yield {"tokens": tokens, "patch_lengths": patch_lengths(tokens[:, :-1], self.patcher)}

    def state_dict(self) -> dict:
        return {"consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.consumed = int(state["consumed"])


def build_loader(
    cfg: DataConfig,
    patcher: PatcherConfig,
    micro_batch: int,
    split: str = "train",
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
):
    """The loader for a data config: what the trainer calls."""
    if cfg.gridworld is not None:
        if cfg.sources:
            raise ValueError(
                "data.gridworld generates its data: leave data.sources empty, or unset data.gridworld"
            )
        return GridWorldLoader(cfg, patcher, micro_batch, split, rank, world_size, seed)
    if not cfg.sources:
        return BuiltinLoader(cfg, patcher, micro_batch, split, rank, world_size, seed)
    from blt_scale.data.store import open_complete

    manifests = {s.uri: open_complete(s.uri)[1] for s in cfg.sources}
    formats = {uri: m["format"] for uri, m in manifests.items()}
    if any(m.get("kind") == "brain" for m in manifests.values()):
        from blt_scale.data.brain.loader import BrainLoader

        return BrainLoader(cfg, patcher, micro_batch, split, rank, world_size, seed)
    if cfg.brain is not None:
        raise ValueError(
            f"data.brain is set but no source in data.sources is a brain dataset ({list(manifests)})"
        )
    # grid-world traces (`blt prep gridworld`) hold image codes as 0xFF c byte pairs: read them as image ids
    images = [uri for uri, m in manifests.items() if m.get("kind") == "gridworld"]
    if images and len(images) < len(manifests):
        raise ValueError(f"data.sources mix grid-world traces ({images[0]}) with text datasets: use one kind")
    if set(formats.values()) == {"mds"}:
        from blt_scale.data.mds_loader import MDSLoader

        return MDSLoader(cfg, patcher, micro_batch, split, rank, world_size, seed, images=bool(images))
    if set(formats.values()) == {"wds"}:
        from blt_scale.data.wds_loader import WdsLoader

        return WdsLoader(cfg, patcher, micro_batch, split, rank, world_size, seed, images=bool(images))
    raise ValueError(f"data.sources mix formats {formats}: use all MDS or all webdataset")


def merge_states(parts: list[dict]) -> dict:
    """One loader state from every rank's `state_dict()`: the union of the ranks' streams for
    MDS sources; the builtin loader's cursor (and the wds marker) is global, any part will do."""
    if parts and parts[0].get("kind") == "streams":
        from blt_scale.data.mds_loader import merge_stream_states

        return merge_stream_states(parts)
    return parts[0]

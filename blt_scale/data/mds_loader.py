"""The streaming loader for MDS datasets: canonical streams (streams.py) served by ranks.

Rank r of W serves the contiguous slice of streams rank_streams(N, r, W) round-robin: each
micro-batch takes the next micro_batch rows of that cycle. With `workers` > 0, worker w of a
rank packs every workers-th stream of the cycle and torch's DataLoader hands rows back in
worker order, which is the cycle order again, so batches do not depend on the worker count.

State: per stream {drawn, cursors, current, offset, rows} (streams.py), plus the number of
streams and the seed. The cycle resumes at the first stream that has produced the fewest rows,
so a resume on the same world size continues exactly where the run stopped, and one on another
world size serves the least advanced streams first. Rows produced by workers but not yet
returned in a batch are not in the state: prefetching never counts as consumption.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from blt_scale.data.mds_reader import MDSSplit, cache_bytes, default_cache_dir, default_cache_limit
from blt_scale.data.streams import Source, StreamPacker, fresh_state, rank_streams
from blt_scale.model.patcher import PatcherConfig, patch_lengths


class _Cycles(IterableDataset):
    """Rows of the streams one worker packs: each item holds a few cycles (one row of each of
    those streams per cycle, in cycle order) and the stream state after every row. Patch lengths
    are computed per batch in the main process: one vectorised call per batch costs far less
    than one per row."""

    def __init__(self, loader: MDSLoader, order: list[int], states: dict[int, dict]):
        self.loader, self.order, self.states = loader, order, states

    def __iter__(self) -> Iterator[tuple]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        try:
            mine = self.order[worker::workers]
            packers = [self.loader.packer(s, self.states[s]) for s in mine]
            # Several cycles per item: each DataLoader item costs about a millisecond of overhead.
            cycles = max(1, ROWS_PER_ITEM // len(packers))
            while True:
                rows, states = [], []
                for _ in range(cycles):
                    for p in packers:
                        rows.append(p.next_row())
                        states.append(p.snapshot())
                ids = np.stack([r[0] for r in rows]).astype(
                    np.int16
                )  # ids < 259: a quarter of the bytes to ship
                ent = np.stack([r[1] for r in rows]).astype(np.float16) if rows[0][1] is not None else None
                yield mine, ids, ent, states, cycles
        except (ValueError, FileNotFoundError, OSError) as err:
            # One line for the user: a worker's exception would otherwise arrive wrapped in a traceback.
            yield "error", f"{type(err).__name__}: {err}", None, None, 0


ROWS_PER_ITEM = 64


def _as_is(item):
    """DataLoader collate that leaves numpy arrays alone (tensors would go through shared memory)."""
    return item


class MDSLoader:
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
        """images: documents hold image codes as 0xFF c byte pairs (`blt prep gridworld`)."""
        self.patcher, self.micro_batch, self.split, self.images = patcher, micro_batch, split, images
        self.rank, self.world_size, self.seed, self.workers = rank, world_size, seed, cfg.workers
        self.row_len = cfg.seq_len + 1
        self.with_entropy = patcher.mode == "entropy"
        self.uris = [s.uri for s in cfg.sources]
        cache_dir = cfg.cache_dir or default_cache_dir()
        limit = cfg.cache_limit if cfg.cache_limit is not None else default_cache_limit(cache_dir)
        splits = [MDSSplit(s.uri, split, cache_dir, limit) for s in cfg.sources]
        self.cache_dir = cache_dir
        if self.with_entropy:
            for s, sp in zip(cfg.sources, splits):
                if "entropy" not in sp.columns:
                    raise ValueError(
                        f"{s.uri}: has no entropies, but patcher.mode=entropy; run `blt prep entropies` on it"
                    )
        used = [i for i, sp in enumerate(splits) if len(sp)]
        if split == "train" and len(used) < len(splits):
            empty = [self.uris[i] for i in range(len(splits)) if i not in used]
            raise ValueError(f"{empty[0]}: the {split} split has no documents")
        if not used:  # a validation split may be empty in some sources, not in all
            raise ValueError(
                f"{self.uris}: no {split} documents in any source (prepare with --val-fraction > 0)"
            )
        self.sources = [
            self._source(splits[i], seed, i, f"{self.uris[i]} ({split})", cfg.shuffle_block_shards)
            if i in used
            else None
            for i in range(len(splits))
        ]
        self.shards_total = sum(len(sp.sizes) for sp in splits)
        self.opened: set[tuple[int, int]] = set()  # (source, shard) this rank's streams have read
        self._blocks_seen: dict[tuple[int, int], tuple[int, int]] = {}
        self.weights = np.array([s.weight if i in used else 0.0 for i, s in enumerate(cfg.sources)])
        self.num_streams = cfg.streams or micro_batch * world_size
        self.configured_streams = cfg.streams
        self.states = {s: fresh_state(len(splits)) for s in range(self.num_streams)}
        self._layout()
        self._generation = 0

    def _source(self, split: MDSSplit, seed: int, index: int, name: str, block_shards: int) -> Source:
        """Training deals shards to streams. Validation deals single documents (each its own "shard"):
        held-out sets are small and read a few batches at a time, and dealing shards would give some
        streams no document of the first epoch, so the first batches could repeat documents."""
        if self.split == "train":
            return Source(split, split.sizes, seed, index, name, block_shards)
        return Source(
            split, np.ones(len(split), dtype=np.int64), seed, index, name, block_shards=1, real_shards=False
        )

    def _layout(self) -> None:
        self.my_streams = rank_streams(self.num_streams, self.rank, self.world_size)
        if self.workers and len(self.my_streams) % self.workers:
            raise ValueError(
                f"data.workers ({self.workers}) must divide the streams each rank serves "
                f"({len(self.my_streams)} = data.streams {self.num_streams} / world size {self.world_size})"
            )

    def packer(self, stream: int, state: dict) -> StreamPacker:
        sources = [s if s is not None else _Empty() for s in self.sources]
        return StreamPacker(
            stream,
            self.num_streams,
            sources,
            self.weights,
            self.seed,
            self.row_len,
            self.with_entropy,
            state,
            images=self.images,
        )

    def _order(self) -> list[int]:
        rows = [self.states[s].get("rows", 0) for s in self.my_streams]
        first = rows.index(min(rows))
        return self.my_streams[first:] + self.my_streams[:first]

    def _rows(self) -> Iterator[tuple]:
        """(stream, ids, entropies, state after the row), in cycle order."""
        cycles = _Cycles(self, self._order(), {s: self.states[s] for s in self.my_streams})
        workers = self.workers
        items = (
            iter(cycles)
            if not workers
            else iter(
                DataLoader(cycles, batch_size=None, num_workers=workers, collate_fn=_as_is, prefetch_factor=4)
            )
        )
        while True:
            groups = [next(items) for _ in range(max(workers, 1))]  # one item per worker, in worker order
            for group in groups:
                if group[0] == "error":
                    raise ValueError(group[1])
            # worker w packs cycle positions w, w + workers, ...: interleave them back
            for c in range(groups[0][4]):
                for i in range(len(groups[0][0])):
                    for streams, ids, ent, states, _ in groups:
                        row = c * len(streams) + i
                        yield streams[i], ids[row], None if ent is None else ent[row], states[row]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            generation = self._generation
            rows = self._rows()
            while self._generation == generation:  # load_state_dict() was called: restart there
                yield self._collate([next(rows) for _ in range(self.micro_batch)])
            rows.close()

    def _collate(self, batch: list[tuple]) -> dict[str, torch.Tensor]:
        tokens = torch.from_numpy(np.stack([b[1] for b in batch]).astype(np.int64))
        ent = None
        if self.with_entropy:
            ent = torch.from_numpy(np.stack([b[2] for b in batch])[:, :-1].astype(np.float32))
        lengths = patch_lengths(tokens[:, :-1], self.patcher, ent)
        for stream, _, _, state in batch:
            self.states[stream] = {**state, "rows": self.states[stream].get("rows", 0) + 1}
            self._count_opened(stream, state)
        return {"tokens": tokens, "patch_lengths": lengths}

    def _count_opened(self, stream: int, state: dict) -> None:
        """Add the shards of the block each source cursor of `stream` reads now."""
        for k, (epoch, block, offset) in enumerate(state["cursors"]):
            if offset == 0 or self.sources[k] is None or self._blocks_seen.get((stream, k)) == (epoch, block):
                continue
            self._blocks_seen[(stream, k)] = (epoch, block)
            shards = self.sources[k].block_shards_of(stream, self.num_streams, epoch, block)
            self.opened.update((k, int(s)) for s in shards)

    def stats(self) -> dict:
        """data_shards_opened (distinct shards this rank's streams read so far), data_shards_total,
        data_cache_bytes (shards in this node's cache now)."""
        return {
            "data_shards_opened": len(self.opened),
            "data_shards_total": self.shards_total,
            "data_cache_bytes": cache_bytes(self.cache_dir),
        }

    def state_dict(self) -> dict:
        return {
            "kind": "streams",
            "num_streams": self.num_streams,
            "seed": self.seed,
            "split": self.split,
            "sources": self.uris,
            "streams": {str(s): self.states[s] for s in self.my_streams},
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "streams":
            raise ValueError(
                f"loader state of kind {state.get('kind')!r} cannot resume a streaming (MDS) loader"
            )
        for key, mine in (("sources", self.uris), ("seed", self.seed), ("split", self.split)):
            if state[key] != mine:
                raise ValueError(
                    f"loader state was saved with {key}={state[key]!r}, this run has {mine!r}: "
                    f"resuming would not be exactly-once"
                )
        n = int(state["num_streams"])
        if self.configured_streams not in (None, n):
            raise ValueError(
                f"loader state has {n} streams but data.streams={self.configured_streams}; set "
                f"data.streams={n}"
            )
        missing = [s for s in range(n) if str(s) not in state["streams"]]
        if missing:
            raise ValueError(
                f"loader state lacks streams {missing[:8]}: merge every rank's part with merge_states()"
            )
        self.num_streams = n
        self._layout()
        self.states = {s: dict(state["streams"][str(s)]) for s in range(n)}
        self._generation += 1


class _Empty:
    """Stands in for a source with no documents in this split (weight 0: never drawn)."""


def merge_stream_states(parts: list[dict]) -> dict:
    merged = {**parts[0], "streams": {}}
    for part in parts:
        if part["num_streams"] != merged["num_streams"]:
            raise ValueError("loader state parts disagree on the number of streams")
        merged["streams"].update(part["streams"])
    return merged

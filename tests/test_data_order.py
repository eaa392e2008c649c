"""Shard-local data order at cluster scale: shards opened per rank, a bounded shard cache,
O(shards) order state, and an order that is still random."""

from __future__ import annotations

import json
import os
import tempfile
import time
import tracemalloc

import numpy as np
import pytest
from data_helpers import make_documents, split_documents, stream_sequences, write_text_files

from blt_scale import cli
from blt_scale.data.loader import DataConfig, build_loader
from blt_scale.data.mds_reader import cache_bytes
from blt_scale.data.streams import Source, StreamPacker, fresh_state
from blt_scale.model.patcher import PatcherConfig

SEQ, M = 64, 2


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """About 40 shards of ~10 documents each."""
    tmp = tmp_path_factory.mktemp("order")
    old = tempfile.tempdir
    tempfile.tempdir = str(tmp)
    docs = make_documents(400, seed=5, lo=100, hi=300)
    write_text_files(tmp / "src", docs)
    assert (
        cli.main(
            [
                "prep",
                "text",
                str(tmp / "src"),
                "--out",
                str(tmp / "ds"),
                "--val-fraction",
                "0",
                "--shard-size",
                "2KB",
                "--quiet",
            ]
        )
        == 0
    )
    index = json.loads((tmp / "ds" / "train" / "index.json").read_text())
    assert 35 <= len(index["shards"]) <= 60
    yield tmp, docs, index["shards"]
    tempfile.tempdir = old


def loaders(tmp, world, streams, tag, **kw):
    """One loader per rank, each with its own cache directory tmp/cache-TAG-RANK."""
    return [
        build_loader(
            DataConfig(
                seq_len=SEQ,
                sources=[{"uri": str(tmp / "ds")}],
                streams=streams,
                cache_dir=str(tmp / f"cache-{tag}-{r}"),
                **kw,
            ),
            PatcherConfig(),
            M,
            rank=r,
            world_size=world,
            seed=3,
        )
        for r in range(world)
    ]


def test_two_ranks_open_a_fraction_of_the_shards_in_half_an_epoch(corpus):
    tmp, docs, shards = corpus
    ranks = loaders(tmp, 2, streams=8, tag="half")
    corpus_ids = sum(len(d) + 2 for d in docs)
    rows_per_rank = corpus_ids // (2 * 2 * (SEQ + 1))  # half an epoch over two ranks
    for loader in ranks:
        it = iter(loader)
        for _ in range(rows_per_rank // M):
            next(it)
        stats = loader.stats()
        assert stats["data_shards_total"] == len(shards)
        assert 0 < stats["data_shards_opened"] <= 0.35 * len(shards), stats


def test_a_bounded_cache_stays_under_its_limit_and_reads_the_same_rows(corpus):
    tmp, docs, shards = corpus
    limit = 5 * max(s["raw_data"]["bytes"] for s in shards)
    corpus_ids = sum(len(d) + 2 for d in docs)
    batches = 2 * corpus_ids // (4 * (SEQ + 1)) // M + 2  # two epochs over 4 streams
    cache = tmp / "cache-bounded-0"
    cache.mkdir()
    foreign = [cache / "notes.mds", cache / "draft.tmp"]  # not ours: never counted, never removed
    partial = cache / ("0123456789abcdef-99.mds." + "a" * 32 + ".tmp")  # a killed writer's, hours old
    for path in foreign + [partial]:
        path.write_bytes(b"x" * 100)
        os.utime(path, (time.time() - 7200, time.time() - 7200))
    bounded = iter(loaders(tmp, 1, streams=4, cache_limit=limit, shuffle_block_shards=1, tag="bounded")[0])
    free = iter(loaders(tmp, 1, streams=4, shuffle_block_shards=1, tag="free")[0])
    for _ in range(batches):
        a, b = next(bounded), next(free)
        assert np.array_equal(a["tokens"].numpy(), b["tokens"].numpy())
        assert cache_bytes(str(tmp / "cache-bounded-0")) <= limit
    assert cache_bytes(str(tmp / "cache-free-0")) > limit  # the limit did bind
    assert all(p.exists() for p in foreign) and not partial.exists()


def synthetic_source(shards=100_000, per_shard=1000, block=2):
    return Source(None, np.full(shards, per_shard), seed=1, index=0, name="synthetic", block_shards=block)


class _Docs:
    """Documents of a synthetic index: only their position is needed."""

    def __getitem__(self, i):
        return {"text": b"%d" % i}


def test_order_state_of_1e8_documents_in_1e5_shards_is_small():
    tracemalloc.start()
    source = synthetic_source()
    source.docs = _Docs()
    packers = [StreamPacker(s, 64, [source], np.ones(1), 1, 32, False, fresh_state(1)) for s in range(8)]
    for p in packers:
        for _ in range(200):
            p.next_row()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 100e6, peak
    assert len(json.dumps([p.snapshot() for p in packers])) < 2000


def test_every_shard_goes_to_one_stream_per_epoch_and_positions_do_not_persist():
    source = synthetic_source(shards=300, per_shard=7, block=3)
    N = 12
    for epoch in range(3):
        dealt = np.concatenate([source.stream_shards(s, N, epoch) for s in range(N)])
        assert sorted(dealt.tolist()) == list(range(300))
    # A document's global position (draw d of stream s -> d * N + s) in epoch 0 vs epoch 1.
    position = [{}, {}]
    for s in range(N):
        for epoch in range(2):
            blocks = len(range(0, len(source.stream_shards(s, N, epoch)), 3))
            docs = np.concatenate([source.block_documents(s, N, epoch, b) for b in range(blocks)])
            for d, doc in enumerate(docs):
                position[epoch][int(doc)] = d * N + s
    first = np.array([position[0][d] for d in range(source.n)])
    second = np.array([position[1][d] for d in range(source.n)])
    rho = np.corrcoef(first.argsort().argsort(), second.argsort().argsort())[0, 1]  # Spearman
    assert abs(rho) < 0.1, rho


def test_rows_of_a_batch_come_from_different_shards(corpus):
    tmp, _, shards = corpus
    loader = loaders(tmp, 1, streams=4, tag="rows")[0]
    starts = np.cumsum([0] + [s["samples"] for s in shards])
    it = iter(loader)
    for _ in range(20):  # within the first epoch the streams' shards are disjoint
        next(it)
        current = [st["current"][1] for st in loader.states.values() if st["current"] is not None]
        assert len({int(np.searchsorted(starts, d, side="right")) for d in current}) == len(current) > 1


def test_documents_are_read_exactly_once_per_epoch_across_the_boundary(corpus):
    """Stream by stream, epoch 0 then epoch 1 each deal every document exactly once."""
    tmp, docs, _ = corpus
    loader = loaders(tmp, 1, streams=4, tag="epochs")[0]
    src = loader.sources[0]
    need = max(sum(src.epoch_documents(s, 4, e) for e in (0, 1)) for s in range(4))
    it = iter(loader)
    batches = [next(it) for _ in range(need * 320 // (SEQ + 1) // M * 4)]
    streams = stream_sequences(batches, loader.my_streams, M)
    for epoch in (0, 1):
        seen = []
        for s, rows in streams.items():
            got = split_documents(np.concatenate(rows))
            before = sum(src.epoch_documents(s, 4, e) for e in range(epoch))
            assert len(got) >= before + src.epoch_documents(s, 4, epoch), "raise the number of batches"
            seen += got[before : before + src.epoch_documents(s, 4, epoch)]
        assert sorted(seen) == sorted(docs)


def test_training_logs_shard_and_cache_figures_under_the_limit(corpus, tmp_path):
    from blt_scale.parallel.env import DistEnv
    from blt_scale.train.loop import Trainer
    from blt_scale.train.recipe import load_recipe

    tmp, _, shards = corpus
    limit = 5 * max(s["raw_data"]["bytes"] for s in shards)
    cfg = load_recipe(
        "cpu_tiny",
        [
            "model.encoder.dim=32",
            "model.decoder.dim=32",
            "model.global.dim=32",
            "model.global.layers=1",
            f"data.sources=[{{uri: {tmp / 'ds'}}}]",
            "data.seq_len=64",
            "data.streams=4",
            "data.shuffle_block_shards=1",
            f"data.cache_dir={tmp_path / 'cache'}",
            f"data.cache_limit={limit}",
            "train.global_batch=4",
            "train.steps=40",
            "train.log_every=1",
            "train.eval_every=null",
            "checkpoint.every=null",
            "wandb.enabled=false",
            f"run_dir={tmp_path / 'run'}",
        ],
    )
    rows = Trainer(cfg, DistEnv(), resume="never").fit()
    train = [r for r in rows if "split" not in r]
    assert len(train) == 40 and all(r["data_shards_total"] == len(shards) for r in train)
    assert all(0 < r["data_cache_bytes"] <= limit for r in train)
    opened = [r["data_shards_opened"] for r in train]
    assert opened == sorted(opened) and 4 <= opened[-1] <= len(shards)

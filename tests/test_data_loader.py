"""The streaming MDS loader: exactly-once resume (1 and 2 ranks, 2->1, 1->2, in new processes),
mixing weights, packed rows and their patch lengths.

Exactly-once is checked against brute force: rows are grouped by canonical stream with the
documented serving order (rank r of W serves streams [r*N/W, (r+1)*N/W) round-robin), each
stream's ids are cut into BOS...EOS documents, and the documents each stream was dealt in the
first epoch (those of the shards dealt to it: Source.epoch_documents) must be the corpus, each
exactly once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import REPO, make_documents, split_documents, stream_sequences, write_text_files

from blt_scale import cli
from blt_scale.data.loader import DataConfig, build_loader, merge_states
from blt_scale.model.patcher import PatcherConfig, patch_lengths
from blt_scale.model.vocab import BOS, OFFSET

N, M, SEQ, SEED = 4, 2, 48, 7  # streams, micro batch, seq_len; the global batch is N rows
TOTAL, SAVE_AT = 110, 37  # global steps of the reference run, and where the interrupted run saves


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loader")
    old = tempfile.tempdir
    tempfile.tempdir = str(tmp)
    docs = make_documents(80, seed=11)
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
                "3KB",
                "--quiet",
            ]
        )
        == 0
    )
    yield tmp, docs
    tempfile.tempdir = old


def data_cfg(tmp: Path, **kw) -> dict:
    return {
        "seq_len": SEQ,
        "sources": [{"uri": str(tmp / "ds")}],
        "streams": N,
        "cache_dir": str(tmp / "cache"),
        **kw,
    }


def micro_steps(global_steps: int, world: int) -> int:
    return global_steps * N // (M * world)


def run(
    tmp: Path, world: int, global_steps: int, state: dict | None = None, **kw
) -> tuple[list[list[dict]], dict]:
    loaders = [
        build_loader(
            DataConfig(**data_cfg(tmp, **kw)), PatcherConfig(), M, rank=r, world_size=world, seed=SEED
        )
        for r in range(world)
    ]
    for loader in loaders:
        if state is not None:
            loader.load_state_dict(state)
    its = [iter(loader) for loader in loaders]
    batches = [[next(it) for _ in range(micro_steps(global_steps, world))] for it in its]
    return batches, merge_states([loader.state_dict() for loader in loaders])


def by_stream(batches: list[list[dict]], world: int) -> dict[int, list[np.ndarray]]:
    out = {}
    for rank in range(world):
        out.update(
            stream_sequences(batches[rank], list(range(rank * N // world, (rank + 1) * N // world)), M)
        )
    return out


def first_epoch_documents(streams: dict[int, list[np.ndarray]], tmp: Path) -> Counter:
    source = build_loader(DataConfig(**data_cfg(tmp)), PatcherConfig(), M, seed=SEED).sources[0]
    seen: Counter = Counter()
    for s, rows in streams.items():
        docs = split_documents(np.concatenate(rows))
        dealt = source.epoch_documents(s, N, 0)
        assert len(docs) >= dealt, f"stream {s} did not finish its epoch: raise TOTAL"
        seen.update(docs[:dealt])
    return seen


@pytest.fixture(scope="module")
def reference(corpus):
    tmp, _ = corpus
    batches, _ = run(tmp, 1, TOTAL)
    return by_stream(batches, 1)


def test_uninterrupted_epoch_sees_every_document_once(corpus, reference):
    tmp, docs = corpus
    assert first_epoch_documents(reference, tmp) == Counter(docs)


@pytest.mark.parametrize("before,after", [(1, 1), (2, 2), (2, 1), (1, 2)])
def test_exactly_once_across_resume(corpus, reference, before, after):
    tmp, docs = corpus
    first, state = run(tmp, before, SAVE_AT)
    state = json.loads(json.dumps(state))  # what a checkpoint stores
    second, _ = run(tmp, after, TOTAL - SAVE_AT, state)
    a, b = by_stream(first, before), by_stream(second, after)
    resumed = {s: a[s] + b[s] for s in range(N)}
    assert first_epoch_documents(resumed, tmp) == Counter(docs)
    for s in range(N):  # and the very same rows as a run that was never interrupted
        assert np.array_equal(np.stack(resumed[s]), np.stack(reference[s]))


def test_load_state_restarts_a_running_iterator(corpus, reference):
    tmp, _ = corpus
    loader = build_loader(DataConfig(**data_cfg(tmp)), PatcherConfig(), M, seed=SEED)
    it = iter(loader)
    for _ in range(micro_steps(SAVE_AT, 1)):
        next(it)
    state = merge_states([loader.state_dict()])
    for _ in range(5):
        next(it)
    loader.load_state_dict(state)
    rows = [next(it)["tokens"].numpy() for _ in range(2)]
    assert np.array_equal(rows[0][0], reference[0][micro_steps(SAVE_AT, 1) * M // N])


def _subprocess(args: dict) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": args.pop("tmpdir")}
    return subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "data_helpers.py"), "loader", json.dumps(args)], env=env
    )


@pytest.mark.multiproc
def test_one_process_with_workers_then_two_new_processes(corpus, reference):
    """One rank whose loader packs with 2 worker processes saves; ranks 0 and 1 of a new run,
    each in its own new process, resume from the merged state (1 -> 2)."""
    tmp, docs = corpus
    first, state = run(tmp, 1, SAVE_AT, workers=2)
    (tmp / "merged.json").write_text(json.dumps(state))
    procs = [
        _subprocess(
            {
                "data": data_cfg(tmp),
                "micro_batch": M,
                "seed": SEED,
                "tmpdir": str(tmp),
                "rank": r,
                "world_size": 2,
                "steps": micro_steps(TOTAL - SAVE_AT, 2),
                "state": str(tmp / "merged.json"),
                "out": str(tmp / f"rank{r}"),
            }
        )
        for r in range(2)
    ]
    assert [p.wait(timeout=150) for p in procs] == [0, 0]
    as_batches = lambda arr: [{"tokens": torch.from_numpy(x)} for x in arr]  # noqa: E731
    second = by_stream([as_batches(np.load(tmp / f"rank{r}.npy")) for r in range(2)], 2)
    combined = {s: by_stream(first, 1)[s] + second[s] for s in range(N)}
    assert first_epoch_documents(combined, tmp) == Counter(docs)
    for s in range(N):
        assert np.array_equal(np.stack(combined[s]), np.stack(reference[s]))


@pytest.mark.parametrize(
    "patcher", [PatcherConfig(mode="space", max_patch_len=6), PatcherConfig(mode="static", static_size=5)]
)
def test_rows_have_seq_len_bytes_and_their_patch_lengths(corpus, patcher):
    tmp, _ = corpus
    it = iter(build_loader(DataConfig(**data_cfg(tmp)), patcher, M, seed=SEED))
    for _ in range(20):
        batch = next(it)
        tokens, lengths = batch["tokens"], batch["patch_lengths"]
        assert tokens.dtype == torch.long and tokens.shape == (M, SEQ + 1)
        assert (lengths.sum(dim=1) == SEQ).all()
        direct = patch_lengths(tokens[:, :-1], patcher)
        assert torch.equal(lengths[:, : direct.shape[1]], direct) and not lengths[:, direct.shape[1] :].any()


def test_mixing_weights_are_honoured(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for tag in "AB":
        write_text_files(tmp_path / tag, make_documents(60, seed=ord(tag), lo=5, hi=30, tag=tag.encode()))
        assert (
            cli.main(
                [
                    "prep",
                    "text",
                    str(tmp_path / tag),
                    "--out",
                    str(tmp_path / f"ds{tag}"),
                    "--val-fraction",
                    "0",
                    "--quiet",
                ]
            )
            == 0
        )
    cfg = DataConfig(
        seq_len=64,
        sources=[{"uri": str(tmp_path / "dsA"), "weight": 3}, {"uri": str(tmp_path / "dsB")}],
        streams=8,
        cache_dir=str(tmp_path / "cache"),
    )
    it = iter(build_loader(cfg, PatcherConfig(), 8, seed=1))
    tokens = torch.cat([next(it)["tokens"] for _ in range(60)])
    starts = tokens[:, 1:][tokens[:, :-1] == BOS]  # the first byte of every document that starts in a row
    a, b = int((starts == OFFSET + ord("A")).sum()), int((starts == OFFSET + ord("B")).sum())
    n = a + b
    assert n == len(starts) and n > 500
    # documents are drawn from A with probability 3/4: allow 4 binomial standard deviations
    assert abs(a / n - 0.75) < 4 * (0.75 * 0.25 / n) ** 0.5


def test_validation_split_serves_only_validation_documents(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    docs = make_documents(120, seed=3, lo=5, hi=40)
    write_text_files(tmp_path / "src", docs)
    assert (
        cli.main(
            [
                "prep",
                "text",
                str(tmp_path / "src"),
                "--out",
                str(tmp_path / "ds"),
                "--val-fraction",
                "0.25",
                "--quiet",
            ]
        )
        == 0
    )
    import zlib

    val = {d for d in docs if zlib.crc32(d) % 10_000 < 2_500}
    cfg = DataConfig(seq_len=64, sources=[{"uri": str(tmp_path / "ds")}], cache_dir=str(tmp_path / "cache"))
    it = iter(
        build_loader(cfg, PatcherConfig(), 2, split="val")
    )  # 2 streams by default: micro_batch x 1 rank
    streams = stream_sequences([next(it) for _ in range(40)], [0, 1], 2)
    seen = Counter(d for rows in streams.values() for d in split_documents(np.concatenate(rows)))
    assert set(seen) == val

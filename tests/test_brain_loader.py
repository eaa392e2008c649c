"""The brain streaming loader: batches against brute force (padding/cropping of channels, time
and text, masks, positions, subject ids, tokens and patch lengths) and exactly-once resume
across world sizes (1->1, 2->1, 1->2), with the technique of test_data_loader.py: rows grouped
by canonical stream in the documented serving order must equal an uninterrupted run's, and
the first epoch of every stream together must be the dataset, each window exactly once."""

from __future__ import annotations

import json
import tempfile
from collections import Counter

import numpy as np
import pytest
import torch
from brain_helpers import EEG_CHANNELS, make_eeg_raw, prep_fixture_dataset
from data_helpers import read_mds_split

from blt_scale import cli
from blt_scale.data.brain.loader import brain_layout
from blt_scale.data.loader import DataConfig, build_loader, merge_states
from blt_scale.model.patcher import PatcherConfig, patch_lengths
from blt_scale.model.vocab import BOS, EOS, OFFSET, PAD

N, M, SEED = 4, 2, 3  # streams, micro batch
TOTAL, SAVE_AT = (
    30,
    11,
)  # global steps: every stream sees its first-epoch windows (its shards', up to 26) within TOTAL
WIN = 70  # samples per window: -0.1 ... 0.6 s at 100 Hz


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two recordings: 10 channels (subject 01) and 7 channels (subject 02), 30 words each."""
    tmp = tmp_path_factory.mktemp("brain_loader")
    old, tempfile.tempdir = tempfile.tempdir, str(tmp)
    src = tmp / "src"
    src.mkdir()
    make_eeg_raw(n_words=30, seed=0)[0].save(src / "sub-01_raw.fif", verbose="error")
    make_eeg_raw(n_words=30, seed=1, channels=EEG_CHANNELS[:7])[0].save(
        src / "sub-02_raw.fif", verbose="error"
    )
    assert (
        cli.main(
            [
                "prep",
                "brain",
                str(src),
                "--out",
                str(tmp / "ds"),
                "windows.tmin=-0.1",
                "windows.tmax=0.6",
                "val_fraction=0",
                "shard_size=20000",
                "--quiet",
            ]
        )
        == 0
    )
    samples = read_mds_split(str(tmp / "ds"), "train", tmp)  # streaming's own reader
    yield tmp, samples
    tempfile.tempdir = old


def key(signal: np.ndarray) -> bytes:
    """A window's identity: its first 7 channels (every sample has them) over WIN samples."""
    return np.ascontiguousarray(signal[:7, :WIN], dtype=np.float16).tobytes()


def data_cfg(tmp, **brain) -> DataConfig:
    return DataConfig(
        seq_len=16,
        sources=[{"uri": str(tmp / "ds")}],
        streams=N,
        cache_dir=str(tmp / "cache"),
        brain=brain or None,
    )


def test_batches_match_brute_force(dataset):
    tmp, samples = dataset
    by_key = {key(s["signal"]): s for s in samples}
    assert len(by_key) == len(samples) == 60
    layout = {
        "max_channels": 8,
        "window_samples": 80,
        "text_bytes": 3,
    }  # crop 10 -> 8, pad 7 -> 8 and 70 -> 80
    patcher = PatcherConfig(mode="static", static_size=2)
    loader = build_loader(data_cfg(tmp, **layout), patcher, M, seed=SEED)
    it = iter(loader)
    seen = {s: [] for s in range(N)}  # row b of batch i comes from stream (i * M + b) mod N
    for i in range(20):
        batch = next(it)
        assert {k: (v.dtype, tuple(v.shape)) for k, v in batch.items() if k != "patch_lengths"} == {
            "signal": (torch.float32, (M, 8, 80)),
            "channel_mask": (torch.bool, (M, 8)),
            "ch_pos": (torch.float32, (M, 8, 3)),
            "subject": (torch.int64, (M,)),
            "tokens": (torch.int64, (M, 5)),
        }
        for b in range(M):
            s = by_key[key(batch["signal"][b].numpy())]
            seen[(i * M + b) % N].append(key(s["signal"]))
            c = min(8, s["signal"].shape[0])
            signal = np.zeros((8, 80), np.float32)
            signal[:c, :WIN] = s["signal"][:c].astype(np.float32)
            assert np.array_equal(batch["signal"][b].numpy(), signal)
            assert batch["channel_mask"][b].tolist() == [True] * c + [False] * (8 - c)
            pos = np.zeros((8, 3), np.float32)
            pos[:c] = s["ch_pos"][:c]
            assert np.array_equal(batch["ch_pos"][b].numpy(), pos)
            assert int(batch["subject"][b]) == ["01", "02"].index(s["subject"])
            text = list(s["text"][:3])
            expected = [BOS, *(t + OFFSET for t in text), EOS] + [PAD] * (3 - len(text))
            assert batch["tokens"][b].tolist() == expected
        assert torch.equal(batch["patch_lengths"], patch_lengths(batch["tokens"][:, :-1], patcher))
        assert (batch["patch_lengths"].sum(dim=1) == 4).all()
    # No window twice within the first epoch: each stream's share of it is the windows of its shards.
    first = [w for s in range(N) for w in seen[s][: loader.sources[0].epoch_documents(s, N, 0)]]
    assert len(first) == len(set(first)) >= 30


def test_layout_defaults_come_from_the_manifest(dataset):
    tmp, _ = dataset
    layout = brain_layout(data_cfg(tmp))
    assert (layout.max_channels, layout.window_samples, layout.subjects) == (10, WIN, ["01", "02"])
    batch = next(iter(build_loader(data_cfg(tmp), PatcherConfig(), M, seed=SEED)))
    assert batch["signal"].shape == (M, 10, WIN) and batch["tokens"].shape == (M, 64 + 2)


def run(tmp, world: int, global_steps: int, state: dict | None = None):
    loaders = [
        build_loader(data_cfg(tmp), PatcherConfig(), M, rank=r, world_size=world, seed=SEED)
        for r in range(world)
    ]
    if state is not None:
        for loader in loaders:
            loader.load_state_dict(state)
    its = [iter(loader) for loader in loaders]
    batches = [[next(it) for _ in range(global_steps * N // (M * world))] for it in its]
    return batches, merge_states([loader.state_dict() for loader in loaders])


def by_stream(batches: list[list[dict]], world: int) -> dict[int, list[bytes]]:
    """Window keys per stream: rank r serves streams [r*N/W, (r+1)*N/W) round-robin, row b of its
    micro-batch i coming from streams[(i*M + b) % k]."""
    out: dict[int, list[bytes]] = {}
    for rank in range(world):
        streams = list(range(rank * N // world, (rank + 1) * N // world))
        for s in streams:
            out[s] = []
        for i, batch in enumerate(batches[rank]):
            for b, signal in enumerate(batch["signal"].numpy()):
                out[streams[(i * M + b) % len(streams)]].append(key(signal))
    return out


@pytest.fixture(scope="module")
def reference(dataset):
    tmp, _ = dataset
    return by_stream(run(tmp, 1, TOTAL)[0], 1)


def first_epoch(streams: dict[int, list[bytes]], tmp) -> Counter:
    """The windows each stream was dealt in the first epoch (those of its shards), counted."""
    source = build_loader(data_cfg(tmp), PatcherConfig(), M, seed=SEED).sources[0]
    seen: Counter = Counter()
    for s, rows in streams.items():
        dealt = source.epoch_documents(s, N, 0)
        assert len(rows) >= dealt
        seen.update(rows[:dealt])
    return seen


@pytest.mark.parametrize("before,after", [(1, 1), (2, 1), (1, 2)])
def test_exactly_once_across_resume(dataset, reference, before, after):
    tmp, samples = dataset
    assert first_epoch(reference, tmp) == Counter(key(s["signal"]) for s in samples)
    first, state = run(tmp, before, SAVE_AT)
    state = json.loads(json.dumps(state))  # what a checkpoint stores
    second, _ = run(tmp, after, TOTAL - SAVE_AT, state)
    a, b = by_stream(first, before), by_stream(second, after)
    resumed = {s: a[s] + b[s] for s in range(N)}
    assert resumed == reference
    assert first_epoch(resumed, tmp) == Counter(key(s["signal"]) for s in samples)


def test_loader_errors(dataset, tmp_path, monkeypatch):
    tmp, _ = dataset
    with pytest.raises(ValueError, match="data.workers=1: brain datasets"):
        build_loader(data_cfg(tmp).model_copy(update={"workers": 1}), PatcherConfig(), M)
    with pytest.raises(ValueError, match="patcher.mode=entropy: brain datasets have no entropies"):
        build_loader(data_cfg(tmp), PatcherConfig(mode="entropy"), M)
    with pytest.raises(
        ValueError, match="subject '02' of recording .*sub-02_raw.fif is not in data.brain.subjects"
    ):
        it = iter(build_loader(data_cfg(tmp, subjects=["01"]), PatcherConfig(), M, seed=SEED))
        for _ in range(10):
            next(it)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.txt").write_text("some text " * 20)
    assert cli.main(["prep", "text", str(tmp_path / "t"), "--out", str(tmp_path / "text"), "--quiet"]) == 0
    text = {"uri": str(tmp_path / "text")}
    with pytest.raises(ValueError, match="data.brain is set but no source"):
        build_loader(DataConfig(sources=[text], brain={"text_bytes": 8}), PatcherConfig(), M)
    with pytest.raises(ValueError, match="a text dataset; data.sources must all be brain datasets"):
        build_loader(DataConfig(sources=[text, {"uri": str(tmp / "ds")}]), PatcherConfig(), M)


def test_fixture_dataset_is_ready_for_training(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    uri = prep_fixture_dataset(tmp_path, n_words=10, kind="meg", subjects=1)
    batch = next(
        iter(
            build_loader(
                DataConfig(sources=[{"uri": uri}], cache_dir=str(tmp_path / "c")), PatcherConfig(), 2
            )
        )
    )
    assert batch["signal"].shape == (2, 12, WIN) and batch["channel_mask"].all()

"""Held-out brain windows share no signal sample with training windows.

The fixture is the decodable one of brain_helpers with the presets' real word windows
(-0.5...2.5 s around words one second apart), so neighbouring windows overlap by two seconds:
the old per-window hash split leaks (shown below from the window sample ranges alone), and every
new split mode must not. Sample ranges are recomputed here from each written window's onset
(start = round(onset * f) + round(tmin * f), n = round((tmax - tmin) * f)), not taken from the
library.
"""

import json
import tempfile
import zlib

import numpy as np
import pytest
from brain_helpers import write_eeg_fif
from data_helpers import read_mds_split

from blt_scale import cli
from blt_scale.data.brain.config import load_prep_config
from blt_scale.data.brain.prep import prep_brain
from blt_scale.data.brain.split import check_disjoint

SFREQ, TMIN, TMAX = 100.0, -0.5, 2.5
N = int(round((TMAX - TMIN) * SFREQ))  # 300 samples per window
OFFSET = int(round(TMIN * SFREQ))


@pytest.fixture(autouse=True)
def _tmpdir(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """Three subjects, one recording each, 60 decodable words one second apart."""
    src = tmp_path_factory.mktemp("src")
    return [
        (write_eeg_fif(src / f"sub-{i + 1:02d}_raw.fif", n_words=60, seed=i, sfreq=SFREQ)) for i in range(3)
    ]


def prep(recordings, out, *overrides):
    cfg = load_prep_config([str(p) for p, _ in recordings], str(out), "eeg-default", list(overrides))
    return prep_brain(cfg, progress=False)


def windows_by_split(out, manifest, tmp) -> dict[str, list[dict]]:
    return {
        split: read_mds_split(str(out), split, tmp) if manifest["splits"][split]["documents"] else []
        for split in ("train", "val", "test")
    }


def sample_ranges(samples: list[dict]) -> dict[str, list[tuple[int, int]]]:
    """{recording: [(first, last + 1) sample of each window]} from the stored onsets."""
    out: dict[str, list[tuple[int, int]]] = {}
    for s in samples:
        start = int(round(s["onset_s"] * SFREQ)) + OFFSET
        out.setdefault(s["recording"], []).append((start, start + N))
    return out


def shared_samples(held: list[dict], train: list[dict]) -> int:
    """Signal samples of held-out windows that lie inside some training window (same recording)."""
    train_ranges = sample_ranges(train)
    total = 0
    for rec, ranges in sample_ranges(held).items():
        covered = np.zeros(max(e for _, e in ranges + train_ranges.get(rec, [(0, 0)])), dtype=bool)
        for a, b in train_ranges.get(rec, []):
            covered[a:b] = True
        total += sum(int(covered[a:b].sum()) for a, b in ranges)
    return total


def min_gap(held: list[dict], train: list[dict]) -> int:
    """Fewest samples strictly between a held-out window and a training window of one recording."""
    train_ranges = sample_ranges(train)
    gaps = [
        max(a2 - b1, a1 - b2)
        for rec, ranges in sample_ranges(held).items()
        for a1, b1 in ranges
        for a2, b2 in train_ranges.get(rec, [])
    ]
    return min(gaps) if gaps else 10**9


def test_the_old_per_window_split_leaks_samples(recordings):
    """The old rule (val iff crc32('recording:start') % 10000 < 0.05 * 10000) on these windows."""
    val, train = [], []
    for path, events in recordings:
        name = path.name  # not the tmp path: the example must not change with pytest's folder
        for onset, word in events:
            start = int(round(onset * SFREQ)) + OFFSET
            assert 0 <= start and start + N <= 64 * SFREQ  # 1 s lead, 60 words, 3 s tail
            sample = {"onset_s": onset, "recording": name, "text": word}
            (val if zlib.crc32(f"{name}:{start}".encode()) % 10_000 < 500 else train).append(sample)
    assert val and train
    leaked = shared_samples(val, train)
    # words 100 samples apart: a val window's 300 samples lie inside its neighbours' windows
    assert leaked >= 0.5 * len(val) * N, (leaked, len(val))


@pytest.mark.parametrize(
    "mode, extra",
    [
        ("by-block", ["block_s=10", "val_fraction=0.2", "test_fraction=0.1"]),
        ("by-recording", ["val_fraction=0.3", "test_fraction=0.3"]),
        ("by-subject", ["val_fraction=0.3"]),
    ],
)
def test_each_split_mode_holds_out_windows_that_share_no_sample(recordings, tmp_path, mode, extra):
    manifest = prep(recordings, tmp_path / "ds", f"split={mode}", *extra)
    got = windows_by_split(tmp_path / "ds", manifest, tmp_path)
    assert manifest["split"]["unit"] == mode and got["train"] and got["val"]
    held = got["val"] + got["test"]
    assert shared_samples(held, got["train"]) == 0
    assert shared_samples(got["val"], got["test"]) == 0 and shared_samples(got["test"], got["val"]) == 0
    if mode == "by-block":
        # held-out blocks: a gap of at least one window length to any training window
        assert min_gap(held, got["train"]) >= N and min_gap(got["val"], got["test"]) >= N
        assert manifest["skipped"]["windows_in_split_gaps"] > 0
        for split in ("val", "test"):
            assert got[split] and manifest["split"][split]
            for s in got[split]:
                start = int(round(s["onset_s"] * SFREQ)) + OFFSET
                assert f"{s['recording']}#block{int(start / SFREQ // 10)}" in manifest["split"][split]
    elif mode == "by-recording":
        recs = {split: {s["recording"] for s in got[split]} for split in got}
        assert recs["val"] == set(manifest["split"]["val"]) and recs["test"] == set(manifest["split"]["test"])
        assert not recs["train"] & (recs["val"] | recs["test"]) and len(recs["train"]) == 1
    else:
        subs = {split: {s["subject"] for s in got[split]} for split in got}
        assert subs["val"] == set(manifest["split"]["val"]) and not subs["train"] & subs["val"]
        assert len(subs["train"]) == 2 and not got["test"]
    # nothing lost besides the gaps: every window is in exactly one split or counted as dropped
    total = sum(len(v) for v in got.values()) + manifest["skipped"]["windows_in_split_gaps"]
    assert total == 3 * 60 - manifest["skipped"]["windows_outside_recording"]


def test_prep_refuses_a_split_that_leaks(recordings, tmp_path, monkeypatch):
    """The prep-time check stands on its own: with the old per-window assignment put back, prep
    stops with one line naming the recording and the overlapping windows."""
    import blt_scale.data.brain.prep as prep_module

    def per_window(starts, units, held, gap, n):
        return ["val" if zlib.crc32(str(s).encode()) % 4 == 0 else "train" for s in starts]

    monkeypatch.setattr(prep_module, "assign_windows", per_window)
    with pytest.raises(ValueError) as info:
        prep(recordings[:1], tmp_path / "ds", "split=by-block", "block_s=20")
    msg = str(info.value)
    assert "\n" not in msg and str(recordings[0][0]) in msg and "shares samples with" in msg


def test_check_disjoint_counts_the_gap():
    check_disjoint("r", [0, 300, 600, 1200], ["train", None, None, "val"], 300, 300)  # gap 900
    check_disjoint("r", [0, 600], ["train", "val"], 300, 300)  # gap exactly one window
    with pytest.raises(ValueError, match="lies within 300 samples of"):
        check_disjoint("r", [0, 599], ["train", "val"], 300, 300)
    with pytest.raises(ValueError, match="shares samples with"):
        check_disjoint("r", [0, 299], ["test", "val"], 300, 300)


def test_cli_split_options_and_too_few_units(recordings, tmp_path, capsys):
    args = ["prep", "brain", *(str(p) for p, _ in recordings), "--quiet", "--split", "by-subject"]
    assert cli.main([*args, "--out", str(tmp_path / "a"), "--test-fraction", "0.3"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["split"]["unit"] == "by-subject" and len(printed["split"]["test"]) == 1
    assert printed["splits"]["test"]["documents"] > 0 and len(printed["split"]["val"]) == 1
    # three subjects cannot give two to val and two to test (round(0.5 x 3)) and keep one for training
    assert (
        cli.main([*args, "--out", str(tmp_path / "b"), "--val-fraction", "0.5", "--test-fraction", "0.5"])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "split=by-subject: 3 unit(s)" in err and "more subjects" in err and len(err.splitlines()) == 1


def test_brain_prep_refuses_webdataset_with_its_reason(recordings, tmp_path, capsys):
    args = ["prep", "brain", str(recordings[0][0]), "--out", str(tmp_path / "w"), "--format", "wds"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "--format wds" in err and "MDS only" in err and "exactly-once resume" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "w").exists()


def held_out(got: dict[str, list[dict]]) -> list[dict]:
    return got["val"] + got["test"]


def test_held_out_blocks_hold_windows_and_the_split_survives_moving_the_corpus(tmp_path):
    """Recordings with a long silent tail: of 8 ten-second blocks only the first holds word
    windows. A block without windows must not be held out (val would be empty however large
    val_fraction). Recordings are named by their path below the folder holding them all, so the
    same corpus copied to a folder of another depth gets the same split."""
    manifests, held = [], []
    for where in ("a/deeper/folder", "b"):
        src = tmp_path / where
        src.mkdir(parents=True)
        recs = [
            write_eeg_fif(src / f"sub-{i + 1:02d}_raw.fif", n_words=10, seed=i, sfreq=SFREQ, tail=60.0)
            for i in range(3)
        ]
        out = tmp_path / f"ds-{where.replace('/', '-')}"
        manifest = prep(recs, out, "block_s=10", "val_fraction=0.3", "test_fraction=0.1")
        got = windows_by_split(out, manifest, tmp_path)
        for split in ("val", "test"):
            blocks = {f"{s['recording']}#block0" for s in got[split]}
            assert blocks == set(manifest["split"][split]) and len(blocks) == 1
        names = {"sub-01_raw.fif", "sub-02_raw.fif", "sub-03_raw.fif"}
        assert {s["recording"] for s in got["train"]} == names - {s["recording"] for s in held_out(got)}
        manifests.append(manifest["split"])
        held.append(sorted((s["recording"], s["onset_s"]) for s in held_out(got)))
    assert manifests[0] == manifests[1] and held[0] == held[1]
    # Same names and sizes, other files: converting them into the first corpus's finished
    # directory is refused, not answered with the first corpus's shards.
    with pytest.raises(ValueError, match=r"different finished conversion \(differs in \['inputs'\]\)"):
        prep(recs, tmp_path / "ds-a-deeper-folder", "block_s=10", "val_fraction=0.3", "test_fraction=0.1")

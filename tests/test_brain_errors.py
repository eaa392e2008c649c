"""Bad brain inputs: each gives one clear error naming the file and what was expected, or,
with skip_bad, a logged skip counted in the manifest; never a silently empty dataset."""

from __future__ import annotations

import tempfile

import mne
import numpy as np
import pytest
from brain_helpers import direct_preprocess, make_eeg_raw, write_bids_meg_masc, write_eeg_fif
from data_helpers import read_mds_split

from blt_scale import cli
from blt_scale.data.brain.config import load_prep_config
from blt_scale.data.brain.prep import prep_brain
from blt_scale.data.store import Root

WIN = ["windows.tmin=-0.1", "windows.tmax=0.6", "val_fraction=0"]


@pytest.fixture(autouse=True)
def _tmpdir(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def prep(tmp_path, inputs, *overrides, preset="eeg-default", out="ds") -> dict:
    cfg = load_prep_config([str(i) for i in inputs], str(tmp_path / out), preset, [*WIN, *overrides])
    return prep_brain(cfg, progress=False)


def fails(tmp_path, inputs, *overrides, match: str, preset="eeg-default"):
    with pytest.raises((ValueError, FileNotFoundError), match=match) as info:
        prep(tmp_path, inputs, *overrides, preset=preset)
    assert "\n" not in str(info.value)
    assert not Root(str(tmp_path / "ds")).is_complete()  # nothing that looks like a dataset
    return str(info.value)


def write_with_bad_channels(path, n_bad=2, **kw):
    raw, events = make_eeg_raw(n_words=8, **kw)
    data = raw._data  # noqa: SLF001
    data[2, 100:110] = np.nan  # F3: NaN samples
    if n_bad > 1:
        data[5] = 0.0  # C4: flat
    for i in range(6, 6 + max(0, n_bad - 2)):
        data[i] *= 1e4  # extreme variance
    raw.save(path, overwrite=True, verbose="error")
    return path, events


@pytest.mark.parametrize("action", ["interpolate", "drop"])
def test_nan_and_flat_channels_are_interpolated_or_dropped_and_counted(tmp_path, action):
    path, _ = write_with_bad_channels(tmp_path / "rec_raw.fif")
    report = prep(tmp_path, [path], f"preprocess.bad_channels.action={action}")
    assert report["skipped"]["bad_channels"] == {"nan": 1, "flat": 1}
    got = read_mds_split(str(tmp_path / "ds"), "train", tmp_path)
    assert len(got) == 8 and all(np.isfinite(s["signal"]).all() for s in got)
    names = got[0]["ch_names"]
    if action == "drop":
        assert "F3" not in names and "C4" not in names and got[0]["signal"].shape[0] == 8
    else:  # the independent mne route: zero the NaNs, mark bad, interpolate
        assert len(names) == 10
        raw = mne.io.read_raw_fif(path, preload=True, verbose="error")
        raw._data[2] = 0.0  # noqa: SLF001
        raw.info["bads"] = ["F3", "C4"]
        raw.interpolate_bads(reset_bads=True, verbose="error")
        data, sfreq = direct_preprocess(raw, "eeg", [], 0.5, 40.0, None, "average")
        for s in got:
            start = int(round(s["onset_s"] * sfreq)) - 10
            np.testing.assert_allclose(
                s["signal"].astype(float), data[:, start : start + 70], rtol=2e-3, atol=2e-3
            )


def test_channels_marked_bad_in_the_file_are_counted_and_interpolated(tmp_path):
    raw, _ = make_eeg_raw(n_words=4)
    raw.info["bads"] = ["O2"]
    raw.save(tmp_path / "marked_raw.fif", verbose="error")
    report = prep(tmp_path, [tmp_path / "marked_raw.fif"])
    assert report["skipped"]["bad_channels"] == {"marked": 1}
    got = read_mds_split(str(tmp_path / "ds"), "train", tmp_path)
    assert got[0]["ch_names"][-1] == "O2" and got[0]["signal"].shape[0] == 10


def test_too_many_bad_channels_is_an_error_or_a_counted_skip(tmp_path):
    bad, _ = write_with_bad_channels(tmp_path / "bad_raw.fif", n_bad=6)
    good, _ = write_eeg_fif(tmp_path / "good_raw.fif", n_words=5)
    msg = fails(tmp_path, [good, bad], match="6 of 10 channels are bad")
    assert str(bad) in msg and "max_fraction" in msg
    report = prep(tmp_path, [good, bad], "skip_bad=true")
    assert report["skipped"]["recordings"] == 1 and report["skipped_inputs"][0]["input"] == str(bad)
    assert report["splits"]["train"]["documents"] == 5 and report["subjects"] == ["good_raw"]


def test_recording_shorter_than_one_window(tmp_path):
    short, _ = write_eeg_fif(tmp_path / "short_raw.fif", n_words=1, lead=0.1, tail=0.2, spacing=0.1)
    good, _ = write_eeg_fif(tmp_path / "good_raw.fif", n_words=5)
    msg = fails(
        tmp_path, [good, short], "windows.tmin=-1.5", "windows.tmax=0.5", match="shorter than one window"
    )
    assert str(short) in msg and "0.400 s" in msg and "2 s" in msg
    report = prep(tmp_path, [good, short], "windows.tmin=-1.5", "windows.tmax=0.5", "skip_bad=true")
    assert (
        report["skipped"]["recordings"] == 1
        and "shorter than one window" in report["skipped_inputs"][0]["reason"]
    )
    # windows that cross the ends of a long enough recording are counted, not errors
    assert report["skipped"]["windows_outside_recording"] == 1 and report["splits"]["train"]["documents"] == 4


@pytest.mark.parametrize("held_out", [[], ["val_fraction=0.3"]], ids=["no-val", "val"])
def test_no_text_events(tmp_path, held_out):
    """The same errors whether or not a split is planned (the plan reads every recording's events
    first, and must not turn a recording's error into a split error)."""
    raw, _ = make_eeg_raw(n_words=5)
    raw.set_annotations(mne.Annotations([1.0], [0.5], ["BAD_movement"], orig_time=raw.info["meas_date"]))
    raw.save(tmp_path / "silent_raw.fif", verbose="error")
    msg = fails(tmp_path, [tmp_path / "silent_raw.fif"], *held_out, match="no text events")
    assert "silent_raw.fif" in msg
    # skipping the only recording leaves nothing: still an error, and no dataset
    fails(
        tmp_path,
        [tmp_path / "silent_raw.fif"],
        *held_out,
        "skip_bad=true",
        match="no windows from 1 recording",
    )


def test_no_event_leaves_a_whole_window(tmp_path):
    # 4.2 s long, one word at 0.2 s: its window (-1.5...0.5 s) starts before the recording
    early, _ = write_eeg_fif(tmp_path / "early_raw.fif", n_words=1, lead=0.2, tail=3.0)
    good, _ = write_eeg_fif(tmp_path / "good_raw.fif", n_words=12)
    window = ["windows.tmin=-1.5", "windows.tmax=0.5", "val_fraction=0.3", "block_s=5"]
    msg = fails(tmp_path, [good, early], *window, match="none of 1 text events leaves a whole window")
    assert str(early) in msg and "-1.5...0.5 s" in msg
    report = prep(tmp_path, [good, early], *window, "skip_bad=true")
    assert report["skipped"]["recordings"] == 1 and report["skipped_inputs"][0]["input"] == str(early)
    assert report["splits"]["val"]["documents"] > 0 and report["splits"]["train"]["documents"] > 0


def test_sampling_rate_mismatch_names_the_file(tmp_path):
    a, _ = write_eeg_fif(tmp_path / "a_raw.fif", n_words=4, sfreq=100.0)
    b, _ = write_eeg_fif(tmp_path / "b_raw.fif", n_words=4, sfreq=128.0)
    msg = fails(tmp_path, [a, b], match="sampling rate 128 Hz differs from 100 Hz")
    assert str(b) in msg and str(a) in msg and "preprocess.resample" in msg
    assert prep(tmp_path, [a, b], "preprocess.resample=100")["sfreq"] == 100


def test_unknown_format_and_missing_inputs(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    msg = fails(tmp_path, [tmp_path / "notes.txt"], match="unknown recording format")
    assert "notes.txt" in msg and ".edf" in msg
    (tmp_path / "empty").mkdir()
    fails(tmp_path, [tmp_path / "empty"], match="directory holds no recordings")
    fails(tmp_path, [tmp_path / "nope.fif"], match="no such file")


def test_unreadable_recordings_name_the_file_and_format(tmp_path):
    (tmp_path / "broken.edf").write_bytes(b"0       not really an EDF header" * 4)
    msg = fails(tmp_path, [tmp_path / "broken.edf"], match="cannot read as EDF")
    assert "broken.edf" in msg
    (tmp_path / "rec.set").write_bytes(b"MATLAB 5.0 MAT-file, garbage")
    fails(
        tmp_path,
        [tmp_path / "rec.set"],
        match=r"rec.set: (cannot read as EEGLAB|reading EEGLAB needs the package)",
    )


def test_bids_root_without_events(tmp_path):
    root, _ = write_bids_meg_masc(tmp_path / "bids", subjects=("01",), n_words=4, events=False)
    msg = fails(tmp_path, [root], preset="meg-masc", match="BIDS recording without events")
    assert "sub-01_ses-0_task-story_meg.fif" in msg and "events.tsv" in msg


def test_cli_reports_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    assert (
        cli.main(["prep", "brain", str(tmp_path / "notes.txt"), "--out", str(tmp_path / "ds"), "--quiet"])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("blt prep: error:") and "notes.txt" in err and len(err.splitlines()) == 1

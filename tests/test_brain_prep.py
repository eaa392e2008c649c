"""`blt prep brain`: FIF, EDF, BrainVision, EEGLAB and BIDS (MEG-MASC) fixtures -> shards whose windows equal
the same windows cut from independent mne calls (pick, notch, filter, resample, reference) plus a
numpy median/IQR scaling, and whose texts and onsets match the events; sentences, sliding
windows, presets and overrides, idempotent re-runs and the CLI."""

from __future__ import annotations

import json
import tempfile

import mne
import numpy as np
import pytest
from brain_helpers import (
    EEG_CHANNELS,
    direct_preprocess,
    meg_masc_description,
    read_events_tsv,
    write_bids_meg_masc,
    write_brainvision,
    write_eeg_edf,
    write_eeg_fif,
    write_eeglab,
)
from data_helpers import read_mds_split

from blt_scale import cli
from blt_scale.data.brain.config import EventsConfig, WindowConfig, load_prep_config
from blt_scale.data.brain.events import parse_description, sentences
from blt_scale.data.brain.prep import prep_brain
from blt_scale.data.brain.windows import cut_windows

TMIN, TMAX = -0.1, 0.6


@pytest.fixture(autouse=True)
def _tmpdir(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # streaming's lock files stay in this test


def samples(out, tmp) -> list[dict]:
    return read_mds_split(str(out), "train", tmp) + read_mds_split(str(out), "val", tmp)


def check_windows(
    got: list[dict], data: np.ndarray, sfreq: float, events: list[tuple[float, str]], recording_end: str
):
    """Every event has its window: text, onset and signal equal to the independent cut."""
    mine = {round(s["onset_s"], 6): s for s in got if s["recording"].endswith(recording_end)}
    n = int(round((TMAX - TMIN) * sfreq))
    assert len(mine) == len(events)
    for onset, word in events:
        s = mine[round(onset, 6)]
        assert s["text"].decode() == word
        start = int(round(onset * sfreq)) + int(round(TMIN * sfreq))
        expected = data[:, start : start + n]
        assert s["signal"].dtype == np.float16 and s["signal"].shape == expected.shape
        np.testing.assert_allclose(s["signal"].astype(np.float64), expected, rtol=2e-3, atol=2e-3)
        assert s["sfreq"] == sfreq


def prep(inputs, out, preset="eeg-default", *overrides) -> dict:
    cfg = load_prep_config(
        [str(i) for i in inputs],
        str(out),
        preset,
        [f"windows.tmin={TMIN}", f"windows.tmax={TMAX}", "val_fraction=0.3", *overrides],
    )
    return prep_brain(cfg, progress=False)


def test_fif_edf_brainvision_eeglab_windows_equal_direct_mne(tmp_path):
    fif, fif_events = write_eeg_fif(tmp_path / "sub-01_raw.fif", n_words=12, seed=0)
    edf, edf_events = write_eeg_edf(tmp_path / "sub-02_eeg.edf", n_words=12, seed=1)
    vhdr, vhdr_events = write_brainvision(tmp_path / "sub-03_eeg.vhdr", n_words=12, seed=2)
    eeglab, eeglab_events = write_eeglab(tmp_path / "sub-04_eeg.set", n_words=12, seed=3)
    report = prep(
        [fif, edf, vhdr, eeglab],
        tmp_path / "ds",
        "eeg-default",
        "preprocess.notch=[25]",
        "preprocess.h_freq=20",
        "preprocess.resample=50",
    )
    assert report["kind"] == "brain" and report["sfreq"] == 50 and report["window_samples"] == 35
    assert report["subjects"] == ["01", "02", "03", "04"] and report["splits"]["val"]["documents"] > 0
    assert report["channels"] == {"max": len(EEG_CHANNELS), "names": EEG_CHANNELS}
    got = samples(tmp_path / "ds", tmp_path)
    assert len(got) == 48
    for path, events, reader in (
        (fif, fif_events, mne.io.read_raw_fif),
        (edf, edf_events, mne.io.read_raw_edf),
        (vhdr, vhdr_events, mne.io.read_raw_brainvision),
        (eeglab, eeglab_events, mne.io.read_raw_eeglab),
    ):
        raw = reader(path, preload=True, verbose="error")
        data, sfreq = direct_preprocess(raw, "eeg", [25], 0.5, 20.0, 50, "average")
        check_windows(got, data, sfreq, events, path.name)
        pos = np.array([ch["loc"][:3] for ch in raw.info["chs"]])
        if not (
            np.isfinite(pos).all() and np.abs(pos).sum()
        ):  # EDF and BrainVision carry no positions: the preset's montage gives them
            pos = np.array([ch["loc"][:3] for ch in raw.copy().set_montage("standard_1020").info["chs"]])
        s = next(s for s in got if s["recording"].endswith(path.name))
        assert s["ch_names"] == EEG_CHANNELS and s["subject"] == path.name[4:6]
        np.testing.assert_allclose(s["ch_pos"], pos, atol=1e-6)
        assert np.isfinite(s["ch_pos"]).all() and s["ch_pos"].dtype == np.float32


def test_meg_masc_bids_words_at_the_right_samples(tmp_path):
    root, words = write_bids_meg_masc(tmp_path / "bids", subjects=("01", "02"), n_words=10, bom=True)
    report = prep([root], tmp_path / "ds", "meg-masc", "preprocess.h_freq=30")
    assert report["subjects"] == ["01", "02"] and report["sessions"] == ["0"] and report["sfreq"] == 100
    got = samples(tmp_path / "ds", tmp_path)
    for sub in ("01", "02"):
        tsv = next((root / f"sub-{sub}" / "ses-0" / "meg").glob("*_events.tsv"))
        assert tsv.read_bytes().startswith(b"\xef\xbb\xbf")
        rows = [r for r in read_events_tsv(tsv) if r["trial_type"]["kind"] == "word"]
        assert [r["trial_type"]["word"] for r in rows] == [
            w for _, w in words[sub]
        ]  # phonemes and sounds left out
        mine = sorted((s for s in got if s["subject"] == sub), key=lambda s: s["onset_s"])
        assert [s["text"].decode() for s in mine] == [r["trial_type"]["word"] for r in rows]
        # the BIDS `sample` column (at the recording's 200 Hz) is where each word's onset is
        assert [round(s["onset_s"] * 200) for s in mine] == [int(r["sample"]) for r in rows]
        fif = next(tsv.parent.glob("*_meg.fif"))
        raw = mne.io.read_raw_fif(fif, preload=True, verbose="error")
        data, sfreq = direct_preprocess(raw, "meg", [50.0], 0.5, 30.0, 100, None)
        check_windows(
            got, data, sfreq, [(float(r["onset"]), r["trial_type"]["word"]) for r in rows], fif.name
        )
        assert mine[0]["session"] == "0" and mine[0]["ch_pos"].shape == (12, 3)


def test_dict_literals_and_plain_text_with_every_preset():
    cfg = EventsConfig()
    assert parse_description(meg_masc_description("Tara"), cfg) == "Tara"
    assert parse_description(meg_masc_description("Tara", kind="phoneme"), cfg) is None
    assert (
        parse_description(meg_masc_description("Tara", kind="phoneme"), EventsConfig(kinds=["phoneme"]))
        == "T"
    )
    assert parse_description(str({"kind": "sound", "sound": "a.wav"}), cfg) is None
    assert parse_description("hello, world", cfg) == "hello, world"
    assert (
        parse_description("BAD_segment", cfg) is None
        and parse_description("{not a dict", cfg) == "{not a dict"
    )
    for preset in ("eeg-default", "meg-masc"):
        opts = load_prep_config(["x"], "y", preset).events
        assert (
            parse_description(meg_masc_description("x"), opts) == "x" and parse_description("x", opts) == "x"
        )


def test_sentences_and_sliding_windows():
    words = [(1.0, "The"), (1.3, "cat"), (1.6, "sat."), (2.0, "A"), (2.2, "dog"), (5.0, "ran")]
    assert sentences(words, gap_s=1.0) == [(1.0, "The cat sat."), (2.0, "A dog"), (5.0, "ran")]
    win, outside = cut_windows(words, 600, 100.0, WindowConfig(mode="sliding", length_s=2.0, step_s=2.0))
    assert [(w.start, w.text) for w in win] == [
        (0, "The cat sat."),
        (200, "A dog"),
        (400, "ran"),
    ] and outside == 0
    win, outside = cut_windows(words, 560, 100.0, WindowConfig(tmin=-0.5, tmax=0.7))
    assert [w.start for w in win] == [50, 80, 110, 150, 170] and outside == 1  # the last one crosses the end


def test_rerun_is_idempotent_and_cli_uses_presets_and_overrides(tmp_path, capsys):
    fif, _ = write_eeg_fif(tmp_path / "rec_raw.fif", n_words=6)
    args = [
        "prep",
        "brain",
        str(fif),
        "--out",
        str(tmp_path / "ds"),
        f"windows.tmin={TMIN}",
        "--quiet",
        f"windows.tmax={TMAX}",
        "events.unit=sentence",
        "events.sentence_gap_s=0.5",
        "block_s=2",  # by-block: a 10 s recording needs blocks shorter than the default 20 windows
    ]
    assert cli.main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert (
        first["converted_parts"] == 1 and first["window_samples"] == 70 and first["subjects"] == ["rec_raw"]
    )
    assert cli.main(args) == 0 and json.loads(capsys.readouterr().out)["converted_parts"] == 0
    assert cli.main([*args, "windows.tmax=0.9"]) == 2
    err = capsys.readouterr().err
    assert (
        "different finished conversion" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    )
    assert cli.main([*args[:2], str(fif), "--out", str(tmp_path / "ds2"), "--preset", "nope", "--quiet"]) == 2
    assert "brain preset 'nope'" in capsys.readouterr().err
    assert cli.main([*args[:2], str(fif), "--out", str(tmp_path / "ds3"), "windows.tmnx=1", "--quiet"]) == 2
    assert "did you mean 'windows.tmin'" in capsys.readouterr().err


@pytest.mark.parametrize("decodable", [True, False])
def test_decodable_fixture_is_decodable_by_nearest_class_mean(tmp_path, decodable):
    """The fixture the model tests train on: with decodable=True a nearest-class-mean classifier
    on the prepared windows names held-out words (10 words: chance is ~0.1); without, it cannot."""
    from brain_helpers import prep_fixture_dataset

    uri = prep_fixture_dataset(
        tmp_path,
        n_words=60,
        subjects=2,
        decodable=decodable,
        overrides=["windows.tmin=0", "windows.tmax=0.5", "val_fraction=0.3"],
    )
    train, val = read_mds_split(uri, "train", tmp_path), read_mds_split(uri, "val", tmp_path)
    words = sorted({s["text"] for s in train})
    flat = lambda ss: np.stack([s["signal"].astype(np.float32).ravel() for s in ss])  # noqa: E731
    means = np.stack([flat([s for s in train if s["text"] == w]).mean(0) for w in words])
    hits = [words[int(np.argmin(((means - x) ** 2).sum(1)))] == s["text"] for x, s in zip(flat(val), val)]
    assert len(val) >= 20
    assert (np.mean(hits) > 0.9) if decodable else (np.mean(hits) < 0.4)


@pytest.mark.multiproc
def test_workers_write_the_same_dataset(tmp_path):
    inputs = [write_eeg_fif(tmp_path / f"sub-{i}_raw.fif", n_words=6, seed=i)[0] for i in range(3)]
    indexes = []
    for workers in (1, 2):
        cfg = load_prep_config(
            [str(i) for i in inputs],
            str(tmp_path / f"ds{workers}"),
            "eeg-default",
            [f"windows.tmin={TMIN}", f"windows.tmax={TMAX}", "val_fraction=0.3"],
            workers=workers,
        )
        assert prep_brain(cfg, progress=False)["converted_parts"] == 3
        indexes.append(
            {
                s: json.loads((tmp_path / f"ds{workers}" / s / "index.json").read_text())
                for s in ("train", "val")
            }
        )
    assert indexes[0] == indexes[1]


def test_interrupted_conversion_resumes_at_the_next_recording(tmp_path, monkeypatch):
    import blt_scale.data.brain.prep as prep_module

    inputs = [write_eeg_fif(tmp_path / f"sub-{i}_raw.fif", n_words=6, seed=i)[0] for i in range(2)]
    real, calls = prep_module.convert_recording, []

    def dies_on_the_second(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if killed after the first recording's part was marked done
        return real(*args)

    monkeypatch.setattr(prep_module, "convert_recording", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        prep(inputs, tmp_path / "ds")
    assert (tmp_path / "ds" / "parts" / "00000-of-00002.json").exists() and not (
        tmp_path / "ds" / "_COMPLETE"
    ).exists()
    assert prep(inputs, tmp_path / "ds")["converted_parts"] == 1
    monkeypatch.setattr(prep_module, "convert_recording", real)
    assert prep(inputs, tmp_path / "clean")["converted_parts"] == 2
    for split in ("train", "val"):
        assert (tmp_path / "ds" / split / "index.json").read_text() == (
            tmp_path / "clean" / split / "index.json"
        ).read_text()

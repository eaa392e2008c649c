"""Fixture recordings for the brain tests, written with mne, and a one-call prepared dataset.

- EEG on standard_1020 (RawArray + set_montage) saved as FIF or EDF; text events as annotations
  (the word itself, or a MEG-MASC dict literal); BrainVision and EEGLAB written by hand.
- MEG-like FIF: magnetometers with explicit positions and orientations (mne.find_layout would
  guess an unrelated layout for made-up MEG channels).
- A BIDS root written by mne_bids whose events.tsv has MEG-MASC's dict-literal trial_type
  (kinds word, phoneme and sound), optionally with a UTF-8 byte-order mark.

`decodable=True`: after each word onset, for DECODE_S seconds, every channel carries a
sinusoid whose frequency, phase and per-channel gain are a deterministic function of the word
(word_pattern), on top of small noise; so the text is decodable from the signal.
"""

from __future__ import annotations

import ast
import sys
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

EEG_CHANNELS = ["Fp1", "Fp2", "F3", "F4", "C3", "C4", "P3", "P4", "O1", "O2"]
WORDS = ["the", "cat", "sat", "on", "a", "warm", "mat", "dog", "ran", "café"]
DECODE_S = 0.5
MEAS_DATE = 1_600_000_000  # EDF needs a meas_date between 1985 and 2084
EEG_SCALE, MEG_SCALE = 1e-5, 1e-12  # volts, teslas


def word_pattern(word: str, n_channels: int, sfreq: float, seconds: float = DECODE_S) -> np.ndarray:
    """[n_channels, samples] unit-scale pattern that identifies `word`: a sinusoid of 3-12 Hz
    with a word-specific phase, times a word-specific spatial gain per channel."""
    rng = np.random.default_rng(zlib.crc32(word.encode()))
    freq, phase = 3.0 + 9.0 * rng.random(), 2 * np.pi * rng.random()
    gains = rng.normal(size=n_channels)
    t = np.arange(int(round(seconds * sfreq))) / sfreq
    return gains[:, None] * np.sin(2 * np.pi * freq * t + phase)[None, :]


def word_sequence(n_words: int, seed: int = 0, words: list[str] = WORDS) -> list[str]:
    rng = np.random.default_rng(seed)
    return [words[i] for i in rng.integers(0, len(words), n_words)]


def synth(
    n_channels: int,
    sfreq: float,
    n_words: int,
    seed: int = 0,
    spacing: float = 1.0,
    lead: float = 1.0,
    tail: float = 3.0,
    decodable: bool = True,
    noise: float = 0.3,
    words: list[str] | None = None,
):
    """(data [C, T] in unit scale, [(onset_s, word)]): words every `spacing` s after `lead` s."""
    words = words if words is not None else word_sequence(n_words, seed)
    duration = lead + spacing * len(words) + tail
    rng = np.random.default_rng(seed + 1000)
    data = noise * rng.normal(size=(n_channels, int(round(duration * sfreq))))
    events = []
    for i, word in enumerate(words):
        onset = lead + i * spacing
        events.append((onset, word))
        if decodable:
            pat = word_pattern(word, n_channels, sfreq)
            start = int(round(onset * sfreq))
            stop = min(start + pat.shape[1], data.shape[1])
            data[:, start:stop] += pat[:, : stop - start]
    return data, events


def meg_masc_description(word: str, story: str = "lw1", kind: str = "word") -> str:
    return str(
        {"story": story, "story_uid": 0, "sound_id": 0, "kind": kind, "word": word, "phoneme": word[:1]}
    )


def _annotate(raw, events, meg_masc: bool):
    import mne

    descriptions = [meg_masc_description(w) if meg_masc else w for _, w in events]
    raw.set_annotations(
        mne.Annotations(
            [o for o, _ in events], [0.3] * len(events), descriptions, orig_time=raw.info["meas_date"]
        )
    )
    return raw


def make_eeg_raw(
    n_words: int = 20,
    sfreq: float = 100.0,
    channels: list[str] = EEG_CHANNELS,
    seed: int = 0,
    meg_masc: bool = False,
    **kw,
):
    """(mne Raw with standard_1020 positions and text annotations, [(onset_s, word)])."""
    import mne

    data, events = synth(len(channels), sfreq, n_words, seed, **kw)
    raw = mne.io.RawArray(data * EEG_SCALE, mne.create_info(list(channels), sfreq, "eeg"), verbose="error")
    raw.set_montage("standard_1020", verbose="error")
    raw.set_meas_date(MEAS_DATE)
    return _annotate(raw, events, meg_masc), events


def meg_info(n_channels: int, sfreq: float):
    """Magnetometers on a hemisphere of radius 0.1 m, each pointing outwards (positions explicit)."""
    import mne

    info = mne.create_info([f"MEG{i:03d}" for i in range(n_channels)], sfreq, "mag")
    golden = np.pi * (3 - np.sqrt(5))
    for i, ch in enumerate(info["chs"]):
        z = 1 - (i + 0.5) / n_channels  # upper hemisphere, evenly spread
        r, theta = np.sqrt(1 - z * z), golden * i
        normal = np.array([r * np.cos(theta), r * np.sin(theta), z])
        ex = np.cross([0.0, 0.0, 1.0], normal) if abs(z) < 0.999 else np.array([1.0, 0.0, 0.0])
        ex /= np.linalg.norm(ex)
        ey = np.cross(normal, ex)
        ch["loc"][:3] = 0.1 * normal + np.array([0.0, 0.0, 0.04])
        ch["loc"][3:12] = np.concatenate([ex, ey, normal])
    return info


def make_meg_raw(
    n_words: int = 20, sfreq: float = 200.0, n_channels: int = 12, seed: int = 0, meg_masc: bool = True, **kw
):
    import mne

    data, events = synth(n_channels, sfreq, n_words, seed, **kw)
    raw = mne.io.RawArray(data * MEG_SCALE, meg_info(n_channels, sfreq), verbose="error")
    raw.set_meas_date(MEAS_DATE)
    return _annotate(raw, events, meg_masc), events


def write_eeg_fif(path: Path, **kw) -> tuple[Path, list]:
    raw, events = make_eeg_raw(**kw)
    raw.save(path, overwrite=True, verbose="error")
    return path, events


def write_eeg_edf(path: Path, **kw) -> tuple[Path, list]:
    import mne

    raw, events = make_eeg_raw(**kw)
    mne.export.export_raw(path, raw, fmt="edf", overwrite=True, verbose="error")
    return path, events


def write_meg_fif(path: Path, **kw) -> tuple[Path, list]:
    raw, events = make_meg_raw(**kw)
    raw.save(path, overwrite=True, verbose="error")
    return path, events


def write_brainvision(path: Path, **kw) -> tuple[Path, list]:
    """EEG as BrainVision (.vhdr/.vmrk/.eeg, float32 multiplexed, written by hand: pybv is not a
    dependency). Markers are plain-text comments: BrainVision cannot hold commas in them."""
    raw, events = make_eeg_raw(**kw)
    stem = path.with_suffix("")
    data = (raw.get_data() * 1e6).astype("<f4")  # microvolts, resolution 1
    stem.with_suffix(".eeg").write_bytes(data.T.tobytes())
    channels = "".join(f"Ch{i + 1}={name},,1,µV\n" for i, name in enumerate(raw.ch_names))
    path.write_text(
        "Brain Vision Data Exchange Header File Version 1.0\n[Common Infos]\nCodepage=UTF-8\n"
        f"DataFile={stem.name}.eeg\nMarkerFile={stem.name}.vmrk\nDataFormat=BINARY\nDataOrientation=MULTIPLEXED\n"
        f"NumberOfChannels={len(raw.ch_names)}\nSamplingInterval={1e6 / raw.info['sfreq']:g}\n"
        "[Binary Infos]\nBinaryFormat=IEEE_FLOAT_32\n[Channel Infos]\n" + channels,
        encoding="utf-8",
    )
    markers = "".join(
        f"Mk{i + 2}=Comment,{word},{int(round(onset * raw.info['sfreq'])) + 1},1,0\n"
        for i, (onset, word) in enumerate(events)
    )
    stem.with_suffix(".vmrk").write_text(
        "Brain Vision Data Exchange Marker File, Version 1.0\n[Common Infos]\nCodepage=UTF-8\n"
        f"DataFile={stem.name}.eeg\n[Marker Infos]\nMk1=New Segment,,1,1,0\n" + markers,
        encoding="utf-8",
    )
    return path, events


def write_eeglab(path: Path, **kw) -> tuple[Path, list]:
    """EEG as an EEGLAB .set (one MATLAB struct with the data inside, written with scipy: eeglabio
    is not a dependency); events are EEGLAB events whose type is the word."""
    import scipy.io

    raw, events = make_eeg_raw(**kw)
    sfreq, data = raw.info["sfreq"], raw.get_data() * 1e6  # microvolts
    pos = [ch["loc"][:3] for ch in raw.info["chs"]]
    chanlocs = np.array(
        [(n, p[0], p[1], p[2]) for n, p in zip(raw.ch_names, pos)],
        dtype=[("labels", object), ("X", float), ("Y", float), ("Z", float)],
    )
    evs = np.array(
        [(w, o * sfreq + 1, 0.0) for o, w in events],
        dtype=[("type", object), ("latency", float), ("duration", float)],
    )
    eeg = {
        "setname": "fixture",
        "nbchan": float(len(pos)),
        "trials": 1.0,
        "pnts": float(data.shape[1]),
        "srate": sfreq,
        "xmin": 0.0,
        "xmax": (data.shape[1] - 1) / sfreq,
        "data": data.astype(np.float32),
        "chanlocs": chanlocs,
        "event": evs,
        "icawinv": np.array([]),
        "icasphere": np.array([]),
        "icaweights": np.array([]),
        "times": np.array([]),
        "ref": "common",
        "epoch": np.array([]),
    }
    scipy.io.savemat(path, {"EEG": eeg}, appendmat=False)
    return path, events


def write_bids_meg_masc(
    root: Path,
    subjects=("01", "02"),
    session: str = "0",
    n_words: int = 20,
    bom: bool = False,
    phonemes: bool = True,
    events: bool = True,
    **kw,
) -> tuple[Path, dict]:
    """A BIDS root of MEG-like recordings, one per subject; events.tsv holds MEG-MASC dict
    literals: each word, a phoneme 0.05 s after it, and a sound event at 0. Returns the root
    and {subject: [(onset_s, word)]}."""
    import mne
    import mne_bids

    words_by_subject = {}
    for i, sub in enumerate(subjects):
        raw, evs = make_meg_raw(n_words=n_words, seed=i, meg_masc=False, **kw)
        rows = [(0.0, str({"kind": "sound", "sound": "stimuli/audio/lw1_0.wav", "story": "lw1"}))]
        for onset, word in evs:
            rows.append((onset, meg_masc_description(word)))
            if phonemes:
                rows.append((onset + 0.05, meg_masc_description(word, kind="phoneme")))
        raw.set_annotations(
            mne.Annotations(
                [o for o, _ in rows], [0.1] * len(rows), [d for _, d in rows], orig_time=raw.info["meas_date"]
            )
        )
        bp = mne_bids.BIDSPath(subject=sub, session=session, task="story", datatype="meg", root=root)
        fif = root.parent / f"_tmp_{sub}_raw.fif"
        raw.save(fif, overwrite=True, verbose="error")
        mne_bids.write_raw_bids(mne.io.read_raw_fif(fif, verbose="error"), bp, overwrite=True, verbose=False)
        fif.unlink()
        tsv = bp.copy().update(suffix="events", extension=".tsv").fpath
        if not events:
            tsv.unlink()
        elif bom:
            tsv.write_bytes(b"\xef\xbb\xbf" + tsv.read_bytes())
        words_by_subject[sub] = evs
    return root, words_by_subject


def read_events_tsv(path: Path) -> list[dict]:
    """Rows of an events.tsv with trial_type parsed (what the tests compare against)."""
    import csv

    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [{**r, "trial_type": ast.literal_eval(r["trial_type"])} for r in rows]


def direct_preprocess(
    raw, picks, notch, l_freq, h_freq, resample, reference, clamp=20.0
) -> tuple[np.ndarray, float]:
    """The default preprocessing done with direct mne calls and numpy, not the library: what
    prepared windows are compared against. Returns (data [C, T], sfreq)."""
    raw = raw.copy().load_data().pick(picks)
    if notch:
        raw.notch_filter(notch, verbose="error")
    raw.filter(l_freq, h_freq, verbose="error")
    if resample:
        raw.resample(resample, verbose="error")
    if reference:
        raw.set_eeg_reference("average", projection=False, verbose="error")
    x = raw.get_data()
    med = np.median(x, axis=1, keepdims=True)
    iqr = np.subtract(*np.percentile(x, [75, 25], axis=1, keepdims=True))
    return np.clip((x - med) / iqr, -clamp, clamp), raw.info["sfreq"]


def prep_fixture_dataset(
    tmp_path: Path,
    n_words: int = 40,
    kind: str = "eeg",
    subjects: int = 2,
    decodable: bool = True,
    overrides: list[str] = (),
    name: str = "brain_ds",
    **kw,
) -> str:
    """Write `subjects` recordings (EEG FIFs or a MEG-MASC BIDS root) and prepare them with the
    library into an MDS dataset; returns its URI. Defaults keep it small: 10 EEG channels at
    100 Hz (or 12 MEG at 200 Hz -> 100 Hz), one word per second, windows -0.1...0.6 s."""
    from blt_scale.data.brain.config import load_prep_config
    from blt_scale.data.brain.prep import prep_brain

    src = tmp_path / f"{name}_src"
    src.mkdir(parents=True, exist_ok=True)
    # by-block split (the default) in 5 s blocks: fixtures of a few words still have several
    base = ["windows.tmin=-0.1", "windows.tmax=0.6", "val_fraction=0.1", "block_s=5"]
    if kind == "eeg":
        inputs = [
            str(
                write_eeg_fif(
                    src / f"sub-{i + 1:02d}_raw.fif", n_words=n_words, seed=i, decodable=decodable, **kw
                )[0]
            )
            for i in range(subjects)
        ]
        preset = "eeg-default"
    elif kind == "meg":
        root, _ = write_bids_meg_masc(
            src / "bids",
            subjects=[f"{i + 1:02d}" for i in range(subjects)],
            n_words=n_words,
            decodable=decodable,
            **kw,
        )
        inputs, preset = [str(root)], "meg-masc"
        base.append("preprocess.notch=[]")  # 200 Hz fixtures: keep it quick
    else:
        raise ValueError(f"kind must be eeg or meg, got {kind!r}")
    out = str(tmp_path / name)
    prep_brain(load_prep_config(inputs, out, preset, [*base, *overrides]), progress=False)
    return out

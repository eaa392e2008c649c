"""The preprocessing pipeline, in order; each step is one documented mne call or a small
function here:

1. picks               raw.pick(types or names)
2. positions           raw.set_montage(montage) when channels lack one; channels still without
                       a position are dropped (the encoders need every sensor's position)
3. bad channels        NaN/inf, flat (std < flat_ratio x median std) or extreme (std >
                       extreme_ratio x median std, per channel type), or marked bad in the file
                       (info["bads"], BIDS channels.tsv); NaN samples are zeroed, then
                       raw.interpolate_bads() or raw.drop_channels()
4. notch               raw.notch_filter(freqs below Nyquist)
5. band-pass           raw.filter(l_freq, h_freq)
6. resample            raw.resample(sfreq)
7. re-reference        raw.set_eeg_reference("average", projection=False)
8. robust scaling      per channel (x - median) / IQR over the whole recording, then clipping
                       to +-clamp (robust_scale below)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from blt_scale.data.brain.config import PreprocessConfig
from blt_scale.data.brain.errors import BadRecording


@dataclass
class Prepared:
    data: np.ndarray  # [C, T] float32
    sfreq: float
    ch_names: list[str]
    ch_pos: np.ndarray  # [C, 3] float32, metres
    bad_channels: dict[str, list[str]] = field(default_factory=dict)  # reason -> names
    dropped_no_position: list[str] = field(default_factory=list)


def channel_positions(raw) -> np.ndarray:
    return np.array([ch["loc"][:3] for ch in raw.info["chs"]], dtype=np.float64)


def _has_position(pos: np.ndarray) -> np.ndarray:
    return np.isfinite(pos).all(axis=1) & (np.abs(pos).sum(axis=1) > 0)


def detect_bad_channels(raw, flat_ratio: float, extreme_ratio: float) -> dict[str, list[str]]:
    """{'nan': [...], 'flat': [...], 'extreme': [...]}; ratios are to the median std of the
    channels of the same type, so EEG volts and MEG teslas are judged on their own scales."""
    data = raw.get_data()
    names = raw.ch_names
    finite = np.isfinite(data).all(axis=1)
    bad = {"nan": [names[i] for i in np.flatnonzero(~finite)], "flat": [], "extreme": []}
    types = np.array(raw.get_channel_types())
    std = np.zeros(len(names))
    std[finite] = data[finite].std(axis=1)
    for kind in set(types):
        idx = np.flatnonzero((types == kind) & finite)
        if not len(idx):
            continue
        ref = np.median(std[idx])
        for i in idx:
            if ref == 0 or std[i] <= flat_ratio * ref:
                bad["flat"].append(names[i])
            elif std[i] >= extreme_ratio * ref:
                bad["extreme"].append(names[i])
    return {k: v for k, v in bad.items() if v}


def robust_scale(data: np.ndarray, clamp: float) -> np.ndarray:
    median = np.median(data, axis=1, keepdims=True)
    q75, q25 = np.percentile(data, [75, 25], axis=1, keepdims=True)
    iqr = q75 - q25
    out = (data - median) / np.where(iqr > 0, iqr, 1.0)  # a constant channel stays 0, not inf
    return np.clip(out, -clamp, clamp)


def preprocess(raw, cfg: PreprocessConfig, name: str) -> Prepared:
    """Run the pipeline on a loaded copy of raw; `name` is how errors name the recording."""
    raw = raw.copy().load_data(verbose="error")
    try:
        raw.pick(cfg.picks, verbose="error")
    except ValueError:
        raw = None
    if raw is None or not raw.ch_names:
        raise BadRecording(f"{name}: no channels match preprocess.picks={cfg.picks}")
    pos = channel_positions(raw)
    if cfg.montage and not _has_position(pos).all():
        raw.set_montage(cfg.montage, match_case=False, on_missing="ignore", verbose="error")
        pos = channel_positions(raw)
    missing = [n for n, ok in zip(raw.ch_names, _has_position(pos)) if not ok]
    if len(missing) == len(raw.ch_names):
        raise BadRecording(
            f"{name}: no channel has a sensor position; set preprocess.montage (e.g. standard_1020) "
            f"or give the file a montage"
        )
    if missing:
        raw.drop_channels(missing)

    bc = cfg.bad_channels
    bad = detect_bad_channels(raw, bc.flat_ratio, bc.extreme_ratio)
    marked = [n for n in raw.info["bads"] if n in raw.ch_names and not any(n in v for v in bad.values())]
    if marked:  # marked bad by the file or a BIDS channels.tsv
        bad["marked"] = marked
    names = sorted({n for v in bad.values() for n in v}, key=raw.ch_names.index)
    if len(names) > bc.max_fraction * len(raw.ch_names) or len(names) == len(raw.ch_names):
        raise BadRecording(
            f"{name}: {len(names)} of {len(raw.ch_names)} channels are bad ({bad}); expected at most "
            f"preprocess.bad_channels.max_fraction={bc.max_fraction} of them"
        )
    if names:
        data = raw._data  # noqa: SLF001 -- NaN samples would poison every filter below
        for n in bad.get("nan", []):
            data[raw.ch_names.index(n)] = 0.0
        if bc.action == "interpolate":
            raw.info["bads"] = names
            raw.interpolate_bads(reset_bads=True, verbose="error")
        else:
            raw.drop_channels(names)

    nyquist = raw.info["sfreq"] / 2
    notch = [f for f in cfg.notch if f < nyquist]
    if notch:
        raw.notch_filter(notch, verbose="error")
    if cfg.h_freq is not None and cfg.h_freq >= nyquist:
        raise ValueError(
            f"{name}: preprocess.h_freq={cfg.h_freq} Hz is not below the Nyquist frequency "
            f"{nyquist} Hz of this {raw.info['sfreq']} Hz recording"
        )
    if cfg.l_freq is not None or cfg.h_freq is not None:
        raw.filter(cfg.l_freq, cfg.h_freq, verbose="error")
    if cfg.resample is not None and cfg.resample != raw.info["sfreq"]:
        raw.resample(cfg.resample, verbose="error")
    if cfg.reference == "average" and "eeg" in raw.get_channel_types():
        raw.set_eeg_reference("average", projection=False, verbose="error")
    data = robust_scale(raw.get_data(), cfg.clamp)
    return Prepared(
        data.astype(np.float32),
        float(raw.info["sfreq"]),
        list(raw.ch_names),
        channel_positions(raw).astype(np.float32),
        bad,
        missing,
    )

"""Leak-free held-out splits for brain windows.

Word windows (-0.5...2.5 s around events a few hundred ms apart) overlap their neighbours, so a
split drawn per window puts samples of every validation window into training windows. Here the
unit held out is whole:

by-recording  whole recordings          (unit id: the recording's name)
by-subject    every recording of a subject (unit id: the subject)
by-block      contiguous blocks of block_s seconds of a recording, numbered from its first
              sample (unit id: "RECORDING#block<i>"); a window belongs to the block its first
              sample lies in. Windows that come closer than one window length (the gap) to a
              window of another split are dropped, held-out splits winning (test over val
              over train), and counted.

Which units are held out is decided once, before any recording is converted, from all inputs'
units that hold at least one text window (an empty unit held out would hold out nothing): the
units sorted by crc32 of their id, the first round(test_fraction x N) to test, the next
round(val_fraction x N) to val (at least one each when its fraction is > 0, and at least one
unit left for training). So the split depends only on the inputs and options, never on the
number of workers or the order of conversion.

check_disjoint is the prep-time guarantee: within each recording, every window of a held-out
split is at least `gap` samples away from every window of another split (recordings never share
samples). It is computed from the final sample ranges, independently of how they were chosen,
and raises naming the recording.
"""

from __future__ import annotations

import zlib

import numpy as np

SPLIT_NAMES = ("train", "val", "test")
BLOCK_WINDOWS = 20  # default block length, in window lengths
_PRIORITY = {"test": 2, "val": 1, "train": 0}
_HINT = {
    "by-block": "set a shorter block_s (seconds), give longer recordings, or lower the fractions",
    "by-recording": "give more recordings, lower the fractions, or use split=by-block",
    "by-subject": "give more subjects, lower the fractions, or use split=by-block",
}


def block_seconds(cfg) -> float:
    return cfg.block_s if cfg.block_s is not None else BLOCK_WINDOWS * cfg.windows.seconds()


def block_id(name: str, index: int) -> str:
    return f"{name}#block{index}"


def _count(fraction: float, units: int) -> int:
    return 0 if fraction == 0 else max(1, round(fraction * units))


def held_out_units(units: list[str], cfg) -> dict[str, str]:
    """{unit: "val" | "test"} for the held-out units (the rest train)."""
    units = sorted(set(units))
    order = sorted(units, key=lambda u: (zlib.crc32(u.encode()), u))
    n_test, n_val = _count(cfg.test_fraction, len(order)), _count(cfg.val_fraction, len(order))
    if n_test + n_val and n_test + n_val >= len(order):
        raise ValueError(
            f"split={cfg.split}: {len(order)} unit(s) ({order[:3]}) cannot hold out {n_val} for val_fraction="
            f"{cfg.val_fraction} and {n_test} for test_fraction={cfg.test_fraction} and keep one for "
            f"training; {_HINT[cfg.split]}"
        )
    return {u: "test" for u in order[:n_test]} | {u: "val" for u in order[n_test : n_test + n_val]}


def window_unit(cfg, name: str, subject: str, start: int, sfreq: float) -> str:
    if cfg.split == "by-recording":
        return name
    if cfg.split == "by-subject":
        return subject
    return block_id(name, int(start / sfreq // block_seconds(cfg)))


def assign_windows(
    starts: list[int], units: list[str], held: dict[str, str], gap: int, n: int
) -> list[str | None]:
    """The split of each window (None: dropped in a gap). A window is dropped when one of a
    higher-priority split (test > val > train) kept before it starts fewer than n + gap samples
    away, i.e. the two sample ranges [start, start + n) are closer than `gap`."""
    wanted = [held.get(u, "train") for u in units]
    out: list[str | None] = [None] * len(starts)
    kept = np.empty(0, dtype=np.int64)  # starts of kept windows of higher priority, sorted
    for split in sorted(_PRIORITY, key=_PRIORITY.get, reverse=True):
        mine = [i for i, w in enumerate(wanted) if w == split]
        for i in mine:
            j = np.searchsorted(kept, starts[i])
            near = [kept[k] for k in (j - 1, j) if 0 <= k < len(kept)]
            if all(abs(int(starts[i]) - int(h)) >= n + gap for h in near):
                out[i] = split
        kept = np.sort(np.concatenate([kept, [starts[i] for i in mine if out[i] == split]]).astype(np.int64))
    return out


def check_disjoint(recording: str, starts: list[int], splits: list[str | None], n: int, gap: int) -> None:
    """Raise unless every held-out window of the recording keeps `gap` samples from every window of
    another split (gap 0: no shared sample). Checked on the sample ranges [start, start + n)."""
    starts_a = np.asarray(starts, dtype=np.int64)
    labels = np.array([s or "" for s in splits])
    for split in ("val", "test"):
        held = starts_a[labels == split]
        other = starts_a[(labels != split) & (labels != "")]
        if not len(held) or not len(other):
            continue
        # distance between [h, h+n) and [o, o+n): samples strictly between them (< 0: they overlap)
        dist = np.abs(held[:, None] - other[None, :]) - n
        if int(dist.min()) < gap:
            i, j = np.unravel_index(int(dist.argmin()), dist.shape)
            h, o = int(held[i]), int(other[j])
            what = "shares samples with" if dist[i, j] < 0 else f"lies within {gap} samples of"
            raise ValueError(
                f"{recording}: {split} window at samples [{h}, {h + n}) {what} a window at [{o}, {o + n}) "
                f"of another split; held-out windows must keep a gap of {gap} samples (one window)"
            )

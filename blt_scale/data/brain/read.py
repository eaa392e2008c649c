"""Finding and opening recordings: single files in any format mne reads, directories of them,
globs, and BIDS roots (through mne-bids; a BIDS recording's text events come from its
events.tsv, read as UTF-8 with or without a byte-order mark).

Recordings are read from local paths (mne opens files itself); the output may be any URI.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

# Suffix -> the mne reader mne.io.read_raw dispatches to (KIT: .con/.sqd; EEGLAB: .set).
FORMATS = {
    ".fif": "FIF",
    ".fif.gz": "FIF",
    ".edf": "EDF",
    ".bdf": "BDF",
    ".gdf": "GDF",
    ".vhdr": "BrainVision",
    ".set": "EEGLAB",
    ".con": "KIT",
    ".sqd": "KIT",
    ".cnt": "Neuroscan",
    ".mff": "EGI",
}
BIDS_DATATYPES = ["meg", "eeg"]


@dataclass
class Recording:
    path: str  # local file mne opens
    name: str  # stable identifier in manifests, errors and validation hashing
    subject: str
    session: str
    events_tsv: str | None = None  # BIDS only
    bids: object | None = field(default=None, repr=False)  # mne_bids.BIDSPath


def recording_format(path: str) -> str | None:
    low = path.lower()
    return next((fmt for suffix, fmt in FORMATS.items() if low.endswith(suffix)), None)


def _unknown(path: str) -> ValueError:
    return ValueError(
        f"{path}: unknown recording format; expected a file ending in one of "
        f"{sorted(set(FORMATS))} (or a directory / BIDS root holding them)"
    )


def _entities(path: str) -> tuple[str, str]:
    """Subject and session from BIDS-like names (sub-XX, ses-YY); otherwise the file's stem."""
    sub = re.search(r"sub-([A-Za-z0-9]+)", path)
    ses = re.search(r"ses-([A-Za-z0-9]+)", path)
    stem = os.path.basename(path)
    for suffix in FORMATS:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    return (sub.group(1) if sub else stem), (ses.group(1) if ses else "")


def is_bids_root(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "dataset_description.json"))


def bids_recordings(root: str) -> list[Recording]:
    import mne_bids

    exts = sorted({s for s in FORMATS if s != ".fif.gz"})
    paths = mne_bids.find_matching_paths(
        root, datatypes=BIDS_DATATYPES, extensions=exts, suffixes=BIDS_DATATYPES
    )
    paths = [p for p in paths if p.fpath.is_file() or p.fpath.suffix == ".mff"]
    if not paths:
        raise ValueError(
            f"{root}: BIDS root without {'/'.join(BIDS_DATATYPES)} recordings in a format mne reads"
        )
    out = []
    for bp in sorted(paths, key=lambda p: str(p.fpath)):
        tsv = bp.copy().update(suffix="events", extension=".tsv").fpath
        name = os.path.relpath(bp.fpath, root)
        out.append(
            Recording(
                str(bp.fpath),
                f"{os.path.basename(os.path.abspath(root))}/{name}",
                bp.subject,
                bp.session or "",
                str(tsv) if tsv.is_file() else None,
                bp,
            )
        )
    return out


def find_recordings(inputs: list[str]) -> list[Recording]:
    """Every recording named by the inputs, in a stable order; an input that holds none, or a
    file of unknown format, is an error."""
    out: list[Recording] = []
    for item in inputs:
        matches = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
        if not matches:
            raise FileNotFoundError(f"{item}: no such file or directory")
        for path in matches:
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path}: no such file or directory")
            if is_bids_root(path):
                out += bids_recordings(path)
            elif os.path.isdir(path) and recording_format(path) is None:
                found = sorted(
                    str(p) for p in Path(path).rglob("*") if recording_format(str(p)) and p.is_file()
                )
                if not found:
                    raise ValueError(f"{path}: directory holds no recordings ({sorted(set(FORMATS))})")
                out += [_plain(p) for p in found]
            elif recording_format(path) is None:
                raise _unknown(path)
            else:
                out.append(_plain(path))
    _name_relative(out)
    names = [r.name for r in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{dupes[0]}: the same recording is given twice")
    return out


def _plain(path: str) -> Recording:
    sub, ses = _entities(path)
    return Recording(path, os.path.abspath(path), sub, ses)


def _name_relative(recs: list[Recording]) -> None:
    """Plain recordings named by their path below the deepest folder holding them all, so that
    the names, and the held-out split hashed from them, stay the same when the corpus moves."""
    plain = [r for r in recs if r.bids is None]
    if plain:
        base = os.path.commonpath([os.path.dirname(r.name) for r in plain])
        for r in plain:
            r.name = os.path.relpath(r.name, base)


def open_raw(rec: Recording, preload: bool):
    """The recording as an mne Raw (BIDS: through mne_bids.read_raw_bids, whose events are
    replaced by ours, see events.py)."""
    import mne

    try:
        if rec.bids is not None:
            import mne_bids

            # read_raw_bids applies the sidecars (electrodes, channel status); the text events are
            # read from events.tsv by events.py, not from the annotations it makes.
            raw = mne_bids.read_raw_bids(rec.bids, verbose="error", extra_params={"preload": preload})
        else:
            raw = mne.io.read_raw(rec.path, preload=preload, verbose="error")
    except ImportError as err:
        raise ValueError(
            f"{rec.path}: reading {recording_format(rec.path)} needs the package {err.name or err}; "
            f"install it into the environment"
        ) from None
    except (ValueError, OSError, RuntimeError, KeyError, IndexError) as err:
        raise ValueError(
            f"{rec.path}: cannot read as {recording_format(rec.path)} ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''})"
        ) from None
    return raw

"""One raw recording -> model inputs, without preparing shards (`blt eval-brain RUN --recording`).

The recording goes through exactly what `blt prep brain` does to it (prep.recording_windows:
the same reader, text events, preprocessing and windows), with the options the run's dataset was
prepared with (its prep.json) or a preset's. Its windows become the rows a shard would hold,
the signal rounded to float16 as shards store it, so decoding them equals decoding the shards
prepared from the same recording. A recording without text events (in events mode) is cut
into consecutive windows of the same length; they carry no reference text.
"""

from __future__ import annotations

import numpy as np

from blt_scale.config import load
from blt_scale.data.brain.config import BrainPrepOptions, preset_path
from blt_scale.data.brain.prep import recording_windows, window_sample
from blt_scale.data.brain.read import find_recordings
from blt_scale.data.store import PLAN, Root


def dataset_options(uri: str) -> BrainPrepOptions:
    """The options a brain dataset was prepared with (its prep.json)."""
    root = Root(uri)
    if not root.exists(PLAN):
        raise ValueError(f"{uri}: no {PLAN}; cannot tell how it was prepared (pass --preset P)")
    plan = root.read_json(PLAN)
    if plan.get("kind") != "brain":
        raise ValueError(
            f"{uri}/{PLAN}: a {plan.get('kind', 'text')} dataset, not prepared by blt prep brain"
        )
    return BrainPrepOptions.model_validate(plan["options"])


def preset_options(preset: str) -> BrainPrepOptions:
    return load(BrainPrepOptions, preset_path(preset))


def recording_samples(path: str, options: BrainPrepOptions, sfreq: float) -> tuple[list[dict], bool]:
    """(shard rows of every window of the recording at `path`, whether it has text events)."""
    recs = find_recordings([path])
    if len(recs) != 1:
        raise ValueError(f"{path}: expected one recording, found {len(recs)}; pass a single file")
    rec = recs[0]
    prep, windows, _, n = recording_windows(rec, options, events_required=False)
    if prep.sfreq != sfreq:
        raise ValueError(
            f"{path}: preprocessed to {prep.sfreq:g} Hz but the run's data is at {sfreq:g} Hz; use the "
            f"run's dataset options or a preset with preprocess.resample={sfreq:g}"
        )
    rows = []
    for w in windows:
        row = window_sample(rec, prep, w, n)
        row["signal"] = np.ascontiguousarray(row["signal"], dtype=np.float16)  # as shards hold it
        row["ch_pos"] = np.ascontiguousarray(row["ch_pos"], dtype=np.float32)
        rows.append(row)
    return rows, any(w.text for w in windows)

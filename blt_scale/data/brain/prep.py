"""`blt prep brain`: recordings -> windows -> MDS shards, one part per recording.

Like `blt prep text`: prep.json records what was asked (a different finished conversion in the
same directory is refused), a part marker is written after its shards (re-running skips finished
recordings and does nothing once _COMPLETE exists), and the manifest is written last.

Checks made before any shard is written: every input is a recording of a known format, BIDS
recordings have an events.tsv, all inputs share one sampling rate unless preprocess.resample
is set, each recording is at least one window long and has a text event whose window lies
inside it. Recordings that are bad (too short, no text events, too many bad channels) stop the
conversion with an error naming the file, or, with skip_bad, are skipped, logged and counted in
the manifest. Windows that cross a recording's ends are always skipped and counted.

Splits (split.py): train, val and test hold whole units (time blocks, recordings or subjects)
chosen once from all inputs; the manifest's `split` records the unit and the held-out ids, and
every recording is checked before its windows are written: no held-out window comes within one
window length of a window of another split.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import tempfile
import time

from tqdm import tqdm

from blt_scale.data.assemble import finalize, part_name, upload_part
from blt_scale.data.brain.config import BrainPrepConfig
from blt_scale.data.brain.errors import BadRecording
from blt_scale.data.brain.events import text_events
from blt_scale.data.brain.preprocess import preprocess
from blt_scale.data.brain.read import Recording, find_recordings, open_raw
from blt_scale.data.brain.shards import COLUMNS, BrainPartStager
from blt_scale.data.brain.split import (
    SPLIT_NAMES,
    assign_windows,
    block_seconds,
    check_disjoint,
    held_out_units,
    window_unit,
)
from blt_scale.data.brain.windows import cut_windows, window_samples
from blt_scale.data.prep_text import _Inline, check_plan
from blt_scale.data.store import MANIFEST, PARTS, PLAN, Root

log = logging.getLogger(__name__)


def _check_inputs(
    recs: list[Recording], cfg: BrainPrepConfig
) -> tuple[dict[str, BadRecording], dict[str, list[str]]]:
    """Checks of every recording from its header and events (no signal is read); returns the bad
    ones (errors unless skip_bad) and the split units each good recording's text windows fall in."""
    bad: dict[str, BadRecording] = {}
    units_of: dict[str, list[str]] = {}
    first: tuple[float, str] | None = None
    for rec in recs:
        if rec.bids is not None and rec.events_tsv is None:
            bad[rec.name] = BadRecording(
                f"{rec.path}: BIDS recording without events; expected "
                f"{os.path.basename(rec.path).rsplit('_', 1)[0]}_events.tsv beside it"
            )
            continue
        raw = open_raw(rec, preload=False)
        sfreq, seconds = float(raw.info["sfreq"]), raw.n_times / raw.info["sfreq"]
        if cfg.preprocess.resample is None:
            if first is None:
                first = (sfreq, rec.path)
            elif sfreq != first[0]:
                raise ValueError(
                    f"{rec.path}: sampling rate {sfreq:g} Hz differs from {first[0]:g} Hz of {first[1]}; "
                    f"set preprocess.resample=HZ to bring all inputs to one rate"
                )
        if seconds < cfg.windows.seconds():
            bad[rec.name] = BadRecording(
                f"{rec.path}: recording of {seconds:.3f} s is shorter than one window "
                f"({cfg.windows.seconds():g} s of windows.*)"
            )
            continue
        try:
            units_of[rec.name] = window_units(rec, raw, cfg)
        except BadRecording as err:
            bad[rec.name] = err
    if bad and not cfg.skip_bad:
        raise next(iter(bad.values()))
    return bad, units_of


def window_units(rec: Recording, raw, cfg: BrainPrepConfig) -> list[str]:
    """The split units that hold at least one of the recording's text windows, found from its
    header and events before any signal is read. Units without a window are left out of the
    split plan: holding one out would hold out nothing. (The window count is taken at the
    resampled length, which mne rounds the same way; a window touching the recording's last
    sample is the only one this can misjudge.)"""
    sfreq = float(raw.info["sfreq"])
    target = float(cfg.preprocess.resample or sfreq)
    n_times = int(round(raw.n_times * target / sfreq))
    events = text_events(raw, rec.events_tsv, cfg.events)
    if not events and cfg.windows.mode == "events":
        raise no_text_events(rec, cfg)
    windows, _ = cut_windows(events, n_times, target, cfg.windows)
    if not windows:
        raise no_whole_window(rec, len(events), cfg)
    return sorted({window_unit(cfg, rec.name, rec.subject, w.start, target) for w in windows if w.text})


def no_text_events(rec: Recording, cfg: BrainPrepConfig) -> BadRecording:
    return BadRecording(
        f"{rec.path}: no text events in {rec.events_tsv or 'its annotations'} (kinds {cfg.events.kinds}; "
        f"ignored {cfg.events.ignore}); expected word or sentence descriptions"
    )


def no_whole_window(rec: Recording, events: int, cfg: BrainPrepConfig) -> BadRecording:
    return BadRecording(
        f"{rec.path}: none of {events} text events leaves a whole window "
        f"({cfg.windows.tmin:g}...{cfg.windows.tmax:g} s) inside the recording"
    )


def split_plan(recs: list[Recording], cfg: BrainPrepConfig, bad: dict, units_of: dict) -> dict[str, str]:
    """{unit: val|test} of the held-out units of all good inputs (see split.py); none when no
    input has a text window (the manifest step then says there is nothing to train on)."""
    units = [u for r in recs if r.name not in bad for u in units_of[r.name]]
    return held_out_units(units, cfg) if units else {}


def recording_windows(rec: Recording, cfg, events_required: bool = True):
    """(Prepared recording, its windows, windows left out at its ends, samples per window): the
    reading, preprocessing and cutting that prep and raw-recording decoding share. Without text
    events and events_required=False, events-mode windows become consecutive windows of the same
    length (no text)."""
    raw = open_raw(rec, preload=True)
    events = text_events(raw, rec.events_tsv, cfg.events)
    windows_cfg = cfg.windows
    if not events and cfg.windows.mode == "events":
        if events_required:
            raise no_text_events(rec, cfg)
        seconds = cfg.windows.seconds()
        windows_cfg = cfg.windows.model_copy(
            update={"mode": "sliding", "length_s": seconds, "step_s": seconds}
        )
    prep = preprocess(raw, cfg.preprocess, rec.path)
    windows, outside = cut_windows(events, prep.data.shape[1], prep.sfreq, windows_cfg)
    n = window_samples(windows_cfg, prep.sfreq)
    if not windows:
        raise no_whole_window(rec, len(events), cfg)
    return prep, windows, outside, n


def window_sample(rec: Recording, prep, w, n: int) -> dict:
    """One window as a shard row (shards.COLUMNS; the signal still float32)."""
    return {
        "signal": prep.data[:, w.start : w.start + n],
        "text": w.text.encode("utf-8"),
        "subject": rec.subject,
        "session": rec.session,
        "recording": rec.name,
        "sfreq": prep.sfreq,
        "ch_names": prep.ch_names,
        "ch_pos": prep.ch_pos,
        "onset_s": w.onset_s,
    }


def convert_recording(
    rec: Recording, cfg: BrainPrepConfig, stager: BrainPartStager, held: dict[str, str] | None = None
) -> dict:
    """Write one recording's windows into the splits `held` (split_plan) gives them; returns its
    statistics for the part marker."""
    prep, windows, outside, n = recording_windows(rec, cfg)
    empty = sum(not w.text for w in windows)
    windows = [w for w in windows if w.text]
    starts = [w.start for w in windows]
    units = [window_unit(cfg, rec.name, rec.subject, s, prep.sfreq) for s in starts]
    splits = assign_windows(starts, units, held or {}, n, n)
    check_disjoint(rec.path, starts, splits, n, n)
    for w, split in zip(windows, splits):
        if split is None:
            continue
        stager.write(split, window_sample(rec, prep, w, n))
    return {
        "subject": rec.subject,
        "session": rec.session,
        "sfreq": prep.sfreq,
        "ch_names": prep.ch_names,
        "window_samples": n,
        "windows_outside": outside,
        "empty_text": empty,
        "in_split_gaps": splits.count(None),
        "bad_channels": prep.bad_channels,
        "no_position": prep.dropped_no_position,
    }


def _convert_part(
    cfg: BrainPrepConfig, rec: Recording, name: str, staging: str, bad: str | None, held: dict[str, str]
) -> dict:
    """One recording -> its part record: its windows, or with skip_bad a skip with the reason."""
    stager = BrainPartStager(staging, name, cfg.shard_size)
    try:
        if bad is not None:
            raise BadRecording(bad)
        stats = convert_recording(rec, cfg, stager, held)
        return stager.finish(recording=rec.name, **stats)
    except BadRecording as err:
        if not cfg.skip_bad:
            raise
        log.warning("skipping %s", err)
        stager = BrainPartStager(staging, name, cfg.shard_size)  # nothing of it is kept
        return stager.finish(recording=rec.name, skipped_inputs=[{"input": rec.path, "reason": str(err)}])


def prep_brain(cfg: BrainPrepConfig, progress: bool = True) -> dict:
    """Convert (or finish converting) cfg.inputs into cfg.out; returns the manifest plus
    `converted_parts` (0 when it was already complete)."""
    root = Root(cfg.out)
    if cfg.overwrite:
        root.remove_dataset()  # only a dataset this tool wrote
    recs = find_recordings(cfg.inputs)
    options = cfg.model_dump(exclude={"inputs", "out", "overwrite", "preset", "workers"})
    sizes = [os.path.getsize(r.path) if os.path.isfile(r.path) else 0 for r in recs]
    plan = {
        "kind": "brain",
        "options": options,
        # where the files are, not their names: the same names elsewhere are another corpus
        "inputs": [[os.path.abspath(r.path), s] for r, s in zip(recs, sizes)],
        "parts": [[i] for i in range(len(recs))],
    }
    check_plan(root, plan)
    if root.is_complete():
        return {**root.read_json(MANIFEST), "converted_parts": 0}
    bad, units_of = _check_inputs(recs, cfg)
    held = split_plan(recs, cfg, bad, units_of)
    root.write_json(PLAN, plan)
    names = [part_name(i, len(recs)) for i in range(len(recs))]
    todo = [i for i, n in enumerate(names) if not root.exists(f"{PARTS}/{n}.json")]
    bar = tqdm(
        total=len(todo),
        unit="rec",
        desc=f"prep brain ({len(todo)}/{len(recs)} recordings)",
        disable=not progress,
    )
    with tempfile.TemporaryDirectory(prefix="blt-prep-brain-") as staging:
        # Recordings are independent: workers convert them in parallel; uploads, markers and the
        # progress bar stay in this process. Spawned, not forked: a forked child can inherit a lock
        # held by another thread of this process and hang.
        ctx = mp.get_context("spawn")
        jobs = [
            (cfg, recs[i], names[i], staging, str(bad[recs[i].name]) if recs[i].name in bad else None, held)
            for i in todo
        ]
        with (
            ctx.Pool(min(cfg.workers, len(jobs))) if cfg.workers > 1 and len(jobs) > 1 else _Inline() as pool
        ):
            pending = [pool.apply_async(_convert_part, job) for job in jobs]
            while pending:
                for result in [r for r in pending if r.ready()]:
                    record = result.get()  # re-raises a worker's error here
                    pending.remove(result)
                    for skip in record.get("skipped_inputs", []):
                        bar.write(f"prep brain: skipped {skip['reason']}")
                    upload_part(root, "mds", record)
                    bar.update(1)
                    bar.set_postfix(windows=sum(record["documents"].values()), refresh=False)
                if pending:
                    time.sleep(0.05)
    bar.close()
    records = [root.read_json(f"{PARTS}/{n}.json") for n in names]
    extra = _manifest_extra(cfg, records, root, held)
    manifest = finalize(root, "mds", names, extra, splits=SPLIT_NAMES)
    return {**manifest, "converted_parts": len(todo)}


def _manifest_extra(cfg: BrainPrepConfig, records: list[dict], root: Root, held: dict[str, str]) -> dict:
    done = [r for r in records if "sfreq" in r]
    skipped = [s for r in records for s in r.get("skipped_inputs", [])]
    if not any(sum(r["documents"].values()) for r in done):
        raise ValueError(
            f"{root.uri}: no windows from {len(records)} recording(s) (skipped: "
            f"{[s['reason'] for s in skipped][:3]}); nothing to train on"
        )
    rates = sorted({r["sfreq"] for r in done})
    if len(rates) > 1:
        raise ValueError(
            f"{root.uri}: recordings ended at different sampling rates {rates}; set preprocess.resample"
        )
    names: list[str] = []
    for r in done:
        names += [n for n in r["ch_names"] if n not in names]
    bad_counts: dict[str, int] = {}
    for r in done:
        for reason, chans in r["bad_channels"].items():
            bad_counts[reason] = bad_counts.get(reason, 0) + len(chans)
    return {
        "kind": "brain",
        "columns": list(COLUMNS),
        "preset": cfg.preset,
        "sfreq": rates[0],
        "window_samples": done[0]["window_samples"],
        "window_s": cfg.windows.seconds(),
        "windows": cfg.windows.model_dump(),
        "recordings": len(records),
        "channels": {"max": max(len(r["ch_names"]) for r in done), "names": names},
        "subjects": sorted({r["subject"] for r in done}),
        "sessions": sorted({r["session"] for r in done}),
        "split": {
            "unit": cfg.split,
            "val": sorted(u for u, s in held.items() if s == "val"),
            "test": sorted(u for u, s in held.items() if s == "test"),
            "gap_samples": done[0]["window_samples"],
            **({"block_s": block_seconds(cfg)} if cfg.split == "by-block" else {}),
        },
        "skipped": {
            "recordings": len(skipped),
            "windows_outside_recording": sum(r["windows_outside"] for r in done),
            "windows_without_text": sum(r["empty_text"] for r in done),
            "windows_in_split_gaps": sum(r.get("in_split_gaps", 0) for r in done),
            "bad_channels": bad_counts,
            "channels_without_position": sum(len(r["no_position"]) for r in done),
            "bad_channels_action": cfg.preprocess.bad_channels.action,
        },
    }

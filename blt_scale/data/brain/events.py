"""Text events of a recording: (onset in seconds from the first data sample, text).

Sources: a BIDS recording's events.tsv (`onset` and `trial_type` columns, read as utf-8-sig so
a byte-order mark does no harm), otherwise the recording's annotations. A description is the
text itself, or a MEG-MASC dict literal such as {'kind': 'word', 'word': 'Tara', ...}, kept
when its kind is one of `events.kinds`; its text is the value under the kind's own key (`word`,
`phoneme`), else the first of `events.text_keys` present.
"""

from __future__ import annotations

import ast
import csv
import fnmatch
import re

from blt_scale.data.brain.config import EventsConfig


def parse_description(desc: str, cfg: EventsConfig) -> str | None:
    """The text a description stands for, or None when it is not a text event."""
    desc = desc.strip()
    for prefix in cfg.strip_prefixes:
        desc = desc.removeprefix(prefix)
    if not desc or any(fnmatch.fnmatchcase(desc, p) for p in cfg.ignore):
        return None
    if desc.startswith("{"):
        try:
            value = ast.literal_eval(desc)
        except (ValueError, SyntaxError):
            return desc  # braces in plain text
        if not isinstance(value, dict):
            return desc
        kind = value.get("kind", "word")
        if kind not in cfg.kinds:
            return None
        # A phoneme event also names its word: the key named by the kind comes first.
        text = next((value[k] for k in [kind, *cfg.text_keys] if value.get(k) not in (None, "")), None)
        return None if text is None else str(text).strip() or None
    return desc


def events_from_tsv(path: str, cfg: EventsConfig) -> list[tuple[float, str]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = {"onset", "trial_type"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(
                f"{path}: events.tsv lacks column(s) {sorted(missing)}; expected onset and trial_type"
            )
        rows = list(reader)
    out = []
    for row in rows:
        text = parse_description(row["trial_type"] or "", cfg)
        if text is not None:
            try:
                out.append((float(row["onset"]), text))
            except ValueError:
                raise ValueError(f"{path}: onset {row['onset']!r} is not a number") from None
    return out


def events_from_annotations(raw, cfg: EventsConfig) -> list[tuple[float, str]]:
    ann = raw.annotations
    # With an orig_time, onsets count from meas_date; the data start first_time later.
    shift = raw.first_time if ann.orig_time is not None else 0.0
    out = []
    for onset, desc in zip(ann.onset, ann.description):
        text = parse_description(str(desc), cfg)
        if text is not None:
            out.append((float(onset) - shift, text))
    return out


def text_events(raw, events_tsv: str | None, cfg: EventsConfig) -> list[tuple[float, str]]:
    events = events_from_tsv(events_tsv, cfg) if events_tsv else events_from_annotations(raw, cfg)
    events.sort(key=lambda e: e[0])
    return sentences(events, cfg.sentence_gap_s) if cfg.unit == "sentence" else events


_END = re.compile(r"[.!?…]['\")\]]*$")


def sentences(words: list[tuple[float, str]], gap_s: float) -> list[tuple[float, str]]:
    """Words joined into sentences at final punctuation or a pause of gap_s; the onset is the
    first word's."""
    out: list[tuple[float, str]] = []
    current: list[tuple[float, str]] = []
    for _, (onset, word) in enumerate(words):
        if current and onset - current[-1][0] > gap_s:
            out.append((current[0][0], " ".join(w for _, w in current)))
            current = []
        current.append((onset, word))
        if _END.search(word):
            out.append((current[0][0], " ".join(w for _, w in current)))
            current = []
    if current:
        out.append((current[0][0], " ".join(w for _, w in current)))
    return out

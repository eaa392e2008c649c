"""Windows: which samples of a preprocessed recording become training samples.

events:  for an event at onset t (s), samples [round(t*f) + round(tmin*f), ... + n),
         n = round((tmax - tmin)*f)
sliding: starts 0, s, 2s, ... (s = round(step_s*f)), n = round(length_s*f); the text is the
         events whose onset falls inside, joined by spaces (possibly empty).
Windows that do not fit inside the recording are skipped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from blt_scale.data.brain.config import WindowConfig


@dataclass
class Window:
    start: int  # first sample
    text: str
    onset_s: float  # the event onset (events) or the window start (sliding), in seconds


def window_samples(cfg: WindowConfig, sfreq: float) -> int:
    return int(round(cfg.seconds() * sfreq))


def cut_windows(
    events: list[tuple[float, str]], n_times: int, sfreq: float, cfg: WindowConfig
) -> tuple[list[Window], int]:
    """(windows inside the recording, number left out because they cross its ends)."""
    n = window_samples(cfg, sfreq)
    if cfg.mode == "sliding":
        step = max(1, int(round(cfg.step_s * sfreq)))
        out = []
        for start in range(0, n_times - n + 1, step):
            text = " ".join(t for o, t in events if start <= round(o * sfreq) < start + n)
            out.append(Window(start, text, start / sfreq))
        return out, 0
    offset = int(round(cfg.tmin * sfreq))
    out, outside = [], 0
    for onset, text in events:
        start = int(round(onset * sfreq)) + offset
        if start < 0 or start + n > n_times:
            outside += 1
        else:
            out.append(Window(start, text, onset))
    return out, outside

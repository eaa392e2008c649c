"""`blt prep brain` options and presets.

A preset is a YAML file of these options (recipes/brain/NAME.yaml, or any path); `--preset`
picks one (default `eeg-default`) and dotted KEY=VALUE overrides change single options, as for
recipes. Every option has its default here, so a preset lists only what differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from blt_scale.config import Config, load

PRESETS = Path(__file__).resolve().parents[3] / "recipes" / "brain"


class BadChannelConfig(Config):
    flat_ratio: float = Field(
        default=1e-3, gt=0, description="flat: std below this times the median channel std"
    )
    extreme_ratio: float = Field(
        default=20.0, gt=1, description="extreme: std above this times the median channel std"
    )
    action: Literal["interpolate", "drop"] = Field(
        default="interpolate",
        description="bad channels (flat, NaN, extreme) are interpolated from their neighbours or dropped",
    )
    max_fraction: float = Field(
        default=0.5, gt=0, le=1, description="a recording with more bad channels than this is bad"
    )


class PreprocessConfig(Config):
    picks: list[str] = Field(
        default=["eeg"], description="channel types (eeg, meg, mag, grad, ...) or names to keep"
    )
    montage: str | None = Field(
        default="standard_1020", description="standard montage for channels the file gives no position"
    )
    bad_channels: BadChannelConfig = BadChannelConfig()
    notch: list[float] = Field(
        default=[], description="line-noise frequencies (Hz) removed by raw.notch_filter"
    )
    l_freq: float | None = Field(
        default=0.5, description="band-pass low edge (Hz) for raw.filter; null: none"
    )
    h_freq: float | None = Field(
        default=40.0, description="band-pass high edge (Hz) for raw.filter; null: none"
    )
    resample: float | None = Field(
        default=None, gt=0, description="target sampling rate (Hz); null: keep (inputs must agree)"
    )
    reference: Literal["average"] | None = Field(
        default=None, description="EEG re-reference (raw.set_eeg_reference)"
    )
    # Robust scaling always runs and clipping keeps values finite: shards hold float16, which
    # cannot hold volts (~1e-5) or teslas (~1e-12), nor values beyond 65504.
    clamp: float = Field(
        default=20.0, gt=0, le=60000, description="clip robust-scaled values (median 0, IQR 1) to +-clamp"
    )


class EventsConfig(Config):
    kinds: list[str] = Field(default=["word"], description="MEG-MASC dict literals: `kind` values kept")
    text_keys: list[str] = Field(
        default=["word", "text", "sentence", "phoneme"],
        description="dict literals: the first of these keys present holds the text",
    )
    ignore: list[str] = Field(
        default=[
            "BAD*",
            "bad*",
            "EDGE*",
            "edge*",
            "Stimulus/*",
            "Response/*",
            "New Segment*",
            "SyncStatus/*",
        ],
        description="descriptions skipped (fnmatch patterns): not text",
    )
    strip_prefixes: list[str] = Field(
        default=["Comment/"], description="removed from descriptions (BrainVision comments)"
    )
    unit: Literal["word", "sentence"] = Field(
        default="word", description="one window per word, or per sentence"
    )
    sentence_gap_s: float = Field(default=1.0, gt=0, description="a pause this long also ends a sentence")


class WindowConfig(Config):
    mode: Literal["events", "sliding"] = Field(
        default="events", description="aligned to text events, or fixed sliding windows"
    )
    tmin: float = Field(default=-0.5, description="events: window start relative to the event onset (s)")
    tmax: float = Field(default=2.5, description="events: window end relative to the event onset (s)")
    length_s: float = Field(default=3.0, gt=0, description="sliding: window length (s)")
    step_s: float = Field(default=3.0, gt=0, description="sliding: step between window starts (s)")

    def seconds(self) -> float:
        return self.tmax - self.tmin if self.mode == "events" else self.length_s


class BrainPrepOptions(Config):
    """What a preset holds: everything but the inputs and the output."""

    preprocess: PreprocessConfig = PreprocessConfig()
    events: EventsConfig = EventsConfig()
    windows: WindowConfig = WindowConfig()
    split: Literal["by-block", "by-recording", "by-subject"] = Field(
        default="by-block",
        description="unit held out whole: contiguous time blocks of each recording (separated from "
        "training windows by a gap of one window length), whole recordings, or whole subjects",
    )
    val_fraction: float = Field(
        default=0.05, ge=0, lt=1, description="share of the split units held out for validation"
    )
    test_fraction: float = Field(
        default=0.0, ge=0, lt=1, description="share of the split units held out for the test split"
    )
    block_s: float | None = Field(
        default=None, gt=0, description="by-block: block length (s); None: 20 window lengths"
    )
    shard_size: int = Field(default=64 << 20, gt=0, description="uncompressed bytes per shard")
    skip_bad: bool = Field(
        default=False, description="skip bad recordings and count them instead of stopping"
    )


class BrainPrepConfig(BrainPrepOptions):
    inputs: list[str] = Field(
        min_length=1, description="recordings, directories of recordings, BIDS roots, globs"
    )
    out: str = Field(description="dataset directory (local path or fsspec URI)")
    preset: str = "eeg-default"
    workers: int = Field(
        default=1, gt=0, description="recordings converted in parallel (does not change the output)"
    )
    overwrite: bool = False


def preset_path(name: str) -> Path:
    path = Path(name) if name.endswith((".yaml", ".yml")) else PRESETS / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PRESETS.glob("*.yaml"))
        raise ValueError(
            f"brain preset {name!r}: no such file {path}; expected one of {known} or a YAML path"
        )
    return path


def load_prep_config(
    inputs: list[str],
    out: str,
    preset: str = "eeg-default",
    overrides: list[str] = (),
    overwrite: bool = False,
    workers: int = 1,
) -> BrainPrepConfig:
    options = load(BrainPrepOptions, preset_path(preset), list(overrides))
    return BrainPrepConfig(
        **options.model_dump(), inputs=inputs, out=out, preset=preset, overwrite=overwrite, workers=workers
    )

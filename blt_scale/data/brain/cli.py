"""`blt prep brain INPUT... --out URI [--preset NAME] [KEY=VALUE ...]` (registered through
data/prep_cli.PREP_COMMANDS)."""

from __future__ import annotations

import argparse
import json
import re

_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def cmd_brain(args: argparse.Namespace) -> int:
    from blt_scale.data.brain.config import load_prep_config
    from blt_scale.data.brain.prep import prep_brain

    # KEY=VALUE items share the positional list with the inputs.
    items = [*args.inputs, *args.overrides]
    overrides = [i for i in items if _OVERRIDE.match(i)]
    inputs = [i for i in items if not _OVERRIDE.match(i)]
    if not inputs:
        raise ValueError("blt prep brain: expected at least one INPUT (recording, directory or BIDS root)")
    cfg = load_prep_config(
        inputs, args.out, args.preset, overrides, overwrite=args.overwrite, workers=args.workers
    )
    if args.skip_bad:
        cfg.skip_bad = True
    report = prep_brain(cfg, progress=not args.quiet)
    keys = ("converted_parts", "sfreq", "window_samples", "subjects", "skipped", "skipped_inputs")
    splits = {s: {k: v for k, v in d.items() if k != "files"} for s, d in report["splits"].items()}
    print(json.dumps({"out": args.out, **{k: report[k] for k in keys if k in report}, "splits": splits}))
    return 0


def register_prep(prep: argparse._SubParsersAction) -> None:
    p = prep.add_parser(
        "brain", help="EEG/MEG recordings (FIF, EDF/BDF, BrainVision, EEGLAB, KIT, BIDS) -> MDS shards"
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="recordings, directories, BIDS roots, globs; then KEY=VALUE overrides",
    )
    p.add_argument("--out", required=True, help="dataset directory (path or fsspec URI)")
    p.add_argument(
        "--preset", default="eeg-default", help="eeg-default, meg-masc (recipes/brain/) or a YAML path"
    )
    p.add_argument("--workers", type=int, default=1, help="recordings converted in parallel")
    p.add_argument("--skip-bad", action="store_true", help="skip bad recordings, count them in the manifest")
    p.add_argument("--overwrite", action="store_true", help="delete --out and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_brain, overrides=[])

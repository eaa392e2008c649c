#!/usr/bin/env python
"""Convert EEG/MEG recordings into brain shards that `data.sources` can stream. Same as
`blt prep brain`.

    python data_prep/prep_brain.py INPUT... --out URI [--preset eeg-default|meg-masc|FILE.yaml]
        [KEY=VALUE ...] [--skip-bad] [--overwrite] [--quiet]

INPUT: recordings in any format mne reads (FIF, EDF/BDF, BrainVision, EEGLAB, KIT .con/.sqd),
directories of them, globs, or BIDS roots (MEG-MASC included). Presets live in recipes/brain/;
KEY=VALUE overrides change single options (e.g. windows.tmin=-0.2 preprocess.resample=100).
Re-running finishes an interrupted conversion and does nothing for a finished one. The logic
lives in blt_scale/data/brain/.
"""

import sys

from blt_scale.cli import main

if __name__ == "__main__":
    sys.exit(main(["prep", "brain", *sys.argv[1:]]))

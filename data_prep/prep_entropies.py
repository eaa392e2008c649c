#!/usr/bin/env python
"""Store per-byte entropies of an entropy model next to the bytes of a prepared text dataset,
so entropy patching needs no model at training time. Same as `blt prep entropies`.

    python data_prep/prep_entropies.py --data URI --model CKPT --out URI [--part I/N]
    python data_prep/prep_entropies.py --out URI --merge          # after all N parts finished

CKPT is an exported entropy model (`blt export RUN_DIR --out CKPT`). With --part, each task of a
SLURM array (I = $SLURM_ARRAY_TASK_ID) converts a slice; a final --merge (or a run without
--part) writes the index. The logic lives in blt_scale/data/prep_entropies.py.
"""

import sys

from blt_scale.cli import main

if __name__ == "__main__":
    sys.exit(main(["prep", "entropies", *sys.argv[1:]]))

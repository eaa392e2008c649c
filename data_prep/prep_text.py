#!/usr/bin/env python
"""Convert text corpora into shards that `data.sources` can stream. Same as `blt prep text`.

    python data_prep/prep_text.py INPUT... --out URI [--format mds|wds] [--workers N]
        [--text-field F] [--val-fraction F] [--shard-size 64MB] [--part-size 32MB]
        [--skip-bad] [--overwrite]

INPUT: files, directories or globs on any fsspec URI. Plain text files (any extension) are one
document each, kept byte for byte; .jsonl/.jsonl.gz/.jsonl.zst and .parquet hold one document
per line/row in --text-field. Re-running finishes an interrupted conversion and does nothing
for a finished one. The logic lives in blt_scale/data/prep_text.py.
"""

import sys

from blt_scale.cli import main

if __name__ == "__main__":
    sys.exit(main(["prep", "text", *sys.argv[1:]]))

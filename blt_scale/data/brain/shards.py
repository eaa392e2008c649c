"""Brain samples in MDS shards: one sample per window.

Columns (the contract the brain loader and models rely on):
    signal   float16 [channels, time]     preprocessed, robust-scaled
    text     bytes                        the aligned text, UTF-8
    subject  str, session str, recording str (path below the folder of all inputs; see read.py)
    sfreq    float64
    ch_names json (list of str)
    ch_pos   float32 [channels, 3]        metres, head/device frame of the file; NaN-free
    onset_s  float64                      the event onset (or sliding window start), seconds
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
from streaming import MDSWriter

from blt_scale.data.brain.split import SPLIT_NAMES as SPLITS
from blt_scale.data.shard_writer import COMPRESSION, HASHES

COLUMNS = {
    "signal": "ndarray",
    "text": "bytes",
    "subject": "str",
    "session": "str",
    "recording": "str",
    "sfreq": "float64",
    "ch_names": "json",
    "ch_pos": "ndarray",
    "onset_s": "float64",
}


class BrainPartStager:
    """One recording's windows into local shards, one writer per split; finish() gives the
    part record that assemble.upload_part / finalize expect."""

    def __init__(self, staging: str, name: str, shard_size: int):
        self.name, self.dir = name, os.path.join(staging, name)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.writers = {
            s: MDSWriter(
                columns=COLUMNS,
                out=os.path.join(self.dir, s),
                compression=COMPRESSION,
                hashes=HASHES,
                size_limit=shard_size,
                exist_ok=True,
            )
            for s in SPLITS
        }
        self.documents = dict.fromkeys(SPLITS, 0)
        self.bytes = dict.fromkeys(SPLITS, 0)

    def write(self, split: str, sample: dict) -> None:
        sample = {
            **sample,
            "signal": np.ascontiguousarray(sample["signal"], dtype=np.float16),
            "ch_pos": np.ascontiguousarray(sample["ch_pos"], dtype=np.float32),
        }
        self.writers[split].write(sample)
        self.documents[split] += 1
        self.bytes[split] += sample["signal"].nbytes

    def finish(self, **extra) -> dict:
        shards = {}
        for split, writer in self.writers.items():
            writer.finish()
            with open(os.path.join(self.dir, split, "index.json")) as f:
                shards[split] = json.load(f)["shards"]
        return {
            "name": self.name,
            "dir": self.dir,
            "shards": shards,
            "documents": self.documents,
            "bytes": self.bytes,
            **extra,
        }

"""Per-step records beside the metrics: the data trace (a CRC of every row each rank trained on,
for exactly-once checks) and rewinding the run's JSONL records to a resumed step."""

from __future__ import annotations

import json
from pathlib import Path

from blt_scale.files import append_jsonl, read_jsonl


class DataTrace:
    def __init__(self, run_dir: Path, rank: int):
        self.path = Path(run_dir) / "data_trace" / f"rank_{rank}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: list[int] = []
        self.step = 0

    def add(self, step: int, crcs: list[int]) -> None:
        self.step = step
        self.rows += crcs

    def flush(self) -> None:
        append_jsonl(self.path, {"step": self.step, "rows": self.rows})
        self.rows = []


def truncate_after(run_dir: Path, step: int) -> None:
    """Drop rows of steps after `step` from metrics.jsonl and the data trace (all of them when
    step is 0: a fresh start)."""
    paths = [Path(run_dir) / "metrics.jsonl", *sorted((Path(run_dir) / "data_trace").glob("rank_*.jsonl"))]
    for path in paths:
        if not path.exists():
            continue
        kept = [r for r in read_jsonl(path) if r.get("step", 0) <= step] if step else []
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))

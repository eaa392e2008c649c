"""Where checkpoints live and when one counts: RUN_DIR/checkpoints/step_NNNNNN/, complete only
once its marker `COMPLETE` exists (written last, after the directory was renamed from
`step_NNNNNN.tmp`). Every reader of checkpoints (resume, export, eval, SLURM requeue) asks here.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

MARKER, TRAIN_STATE, CONFIG = "COMPLETE", "train_state.json", "config.yaml"
STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_dir(run_dir: str | Path, step: int) -> Path:
    return checkpoints_dir(run_dir) / f"step_{step:06d}"


def is_complete(path: Path) -> bool:
    return bool(STEP_DIR.match(path.name)) and (path / MARKER).is_file()


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    root = checkpoints_dir(run_dir)
    found = [p for p in root.iterdir() if is_complete(p)] if root.is_dir() else []
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def latest_complete(run_dir: str | Path) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def remove_partial(run_dir: str | Path) -> list[Path]:
    """Delete what killed saves left behind (temporary or unmarked directories)."""
    root = checkpoints_dir(run_dir)
    partial = [p for p in root.iterdir() if p.is_dir() and not is_complete(p)] if root.is_dir() else []
    for p in partial:
        shutil.rmtree(p, ignore_errors=True)
    return partial


def read_train_state(path: Path) -> dict:
    if not is_complete(path):
        raise FileNotFoundError(f"{path}: not a complete checkpoint (no {MARKER} marker)")
    return json.loads((path / TRAIN_STATE).read_text())

"""Where checkpoints live and when one counts: RUN_DIR/checkpoints/step_NNNNNN/, complete only
once its marker `COMPLETE` exists (written last, after the directory was renamed from
`step_NNNNNN.tmp`). Every reader of checkpoints (resume, export, eval, SLURM requeue) asks here.

The marker holds the checkpoint's manifest: size and xxh64 of every file written with it.
`verify` checks it; `latest_verified` is the newest complete checkpoint that still matches,
reporting each newer one it skips and why (a truncated shard, a missing file). A marker of the
older format ("step N") has no manifest and is taken as it is.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import xxhash

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


def _xxh64(path: Path) -> str:
    h = xxhash.xxh64()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def file_manifest(directory: Path) -> dict[str, dict]:
    """Size and xxh64 of every file under `directory` (but the marker), by relative path."""
    return {
        str(p.relative_to(directory)): {"size": p.stat().st_size, "xxh64": _xxh64(p)}
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MARKER
    }


def marker_text(step: int, manifest: dict[str, dict]) -> str:
    return json.dumps({"step": step, "files": manifest}, indent=1) + "\n"


def verify(path: Path) -> str | None:
    """Why checkpoint `path` does not match the manifest in its marker (None: it does, or the
    marker predates manifests). Files added later (DeepSpeed's universal/) are not checked."""
    try:
        marker = json.loads((path / MARKER).read_text())
    except ValueError:
        return None  # "step N": written before markers held a manifest
    except OSError as err:
        return f"{MARKER} unreadable ({err.strerror})"
    files = marker.get("files") if isinstance(marker, dict) else None
    if not isinstance(files, dict):
        return f"{MARKER} holds no file manifest"
    for rel, want in files.items():
        f = path / rel
        if not f.is_file():
            return f"{rel} is missing"
        size = f.stat().st_size
        if size != want["size"]:
            return f"{rel} has {size} bytes, {want['size']} were written"
        if _xxh64(f) != want["xxh64"]:
            return f"{rel} does not match its xxh64 checksum (changed after it was written)"
    return None


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def latest_verified(run_dir: str | Path, say: Callable[[str], None] = _stderr) -> Path | None:
    """The newest complete checkpoint that verifies; each newer one skipped is reported via `say`."""
    for path in reversed(complete_checkpoints(run_dir)):
        reason = verify(path)
        if reason is None:
            return path
        say(f"skipping checkpoint {path}: {reason}")
    return None


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

"""Saving and loading one run's checkpoints (layout.py says where they live and when one is
complete): model + optimizer written by the strategy (DCP, sharded: any world size can load them;
or DeepSpeed's own files), `train_state.json` (step, scheduler, merged loader state, counters),
`rank_R.pt` per rank (RNG states), `config.yaml` (the resolved recipe), and the marker, last.

A process killed at any point leaves either a complete checkpoint or one that `latest_complete`
never returns. Only the newest `keep_last` complete checkpoints are kept. The marker lists
every file's size and xxh64 (layout.verify checks them).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from pydantic import Field

from blt_scale.checkpoint.layout import (
    CONFIG,
    MARKER,
    TRAIN_STATE,
    complete_checkpoints,
    file_manifest,
    marker_text,
    read_train_state,
    step_dir,
)
from blt_scale.config import Config
from blt_scale.files import write_atomic


class CheckpointConfig(Config):
    every: int | None = Field(
        default=None, gt=0, description="save every N steps (also on a stop signal and at the end)"
    )
    keep_last: int = Field(default=3, gt=0, description="complete checkpoints kept; older ones are deleted")
    async_save: bool = Field(default=False, description="write in a background thread while training goes on")


def rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state()[1].tolist(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), 624, 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _barrier(group=None) -> None:
    if dist.is_initialized():
        dist.barrier(group=group)


class Checkpointer:
    """Saves and loads checkpoints of one run; every rank calls every method at the same step."""

    def __init__(
        self, cfg: CheckpointConfig, run_dir: str | Path, rank: int, strategy, config_text: str = ""
    ):
        self.cfg, self.run_dir, self.rank, self.strategy = cfg, Path(run_dir), rank, strategy
        self.config_text = config_text  # the resolved recipe, so a checkpoint directory stands alone
        # Async saves talk to each other from a background thread: give them their own group so
        # they never interleave with the training collectives.
        self.group = dist.new_group(backend="gloo") if dist.is_initialized() and cfg.async_save else None
        self.pending: tuple[object, Callable[[], None]] | None = None
        self.last_saved: int | None = None

    def save(self, step: int, model, optimizer, train_state: dict) -> Path:
        self.wait()
        final, tmp = (
            step_dir(self.run_dir, step),
            step_dir(self.run_dir, step).with_name(f"step_{step:06d}.tmp"),
        )
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        torch.save(rng_state(), tmp / f"rank_{self.rank}.pt")
        future = self.strategy.save(
            model, optimizer, tmp, process_group=self.group, async_save=self.cfg.async_save
        )

        def finish() -> None:
            _barrier(self.group)
            if self.rank == 0:
                write_atomic(tmp / TRAIN_STATE, json.dumps(train_state))
                write_atomic(tmp / CONFIG, self.config_text)
                manifest = file_manifest(tmp)  # every rank's files are written (barrier above)
                # An unmarked leftover of a killed save, or a damaged one a resume skipped: unmark first.
                (final / MARKER).unlink(missing_ok=True)
                shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)
                write_atomic(final / MARKER, marker_text(step, manifest))
                _fsync_dir(final.parent)
                self._prune()
            self.last_saved = step

        self.pending = (future, finish)
        if future is None:
            self.wait()
        return final

    def wait(self) -> None:
        """Finish the save in flight (async): all ranks done writing, then the marker."""
        if self.pending is None:
            return
        future, finish = self.pending
        self.pending = None
        if future is not None:
            future.result()
        finish()

    def _prune(self) -> None:
        for old in complete_checkpoints(self.run_dir)[: -self.cfg.keep_last]:
            # Unmark first: a crash halfway through the deletion must not leave a "complete" husk.
            (old / MARKER).unlink()
            shutil.rmtree(old, ignore_errors=True)

    def load(self, path: Path, model, optimizer) -> dict:
        """Load model + optimizer (resharding as needed), this rank's RNG state when the checkpoint
        has one for it, and return the train state."""
        state = read_train_state(path)
        self.strategy.load(model, optimizer, path, saved_world_size=state.get("world_size"))
        rng_file = path / f"rank_{self.rank}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=True))
        return state

"""Weights & Biases logging from rank 0: offline by default (runs sync later with `wandb sync`),
online only when the recipe or WANDB_MODE says so. Optional: `wandb.enabled: false` skips it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from pydantic import Field

from blt_scale.config import Config
from blt_scale.parallel.env import wandb_settings


class WandbConfig(Config):
    enabled: bool = True
    project: str = "blt-scale"
    mode: Literal["offline", "online", "disabled"] | None = Field(
        default=None, description="None: WANDB_MODE if the user set it, else offline"
    )


class WandbSink:
    def __init__(self, cfg: WandbConfig, run_dir: Path, config: dict, resume_id: str | None = None):
        import wandb

        env = wandb_settings()
        mode = cfg.mode or env.get("WANDB_MODE", "offline")
        # One wandb run per training run, resumed across restarts under the same id.
        run_id = resume_id or _run_id(run_dir)
        self.run = wandb.init(
            project=env.get("WANDB_PROJECT", cfg.project),
            mode=mode,
            dir=env.get("WANDB_DIR", str(run_dir)),
            config=config,
            id=run_id,
            resume="allow",
            name=Path(run_dir).name,
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )

    def log(self, row: dict) -> None:
        if self.run is None:
            return
        prefix = f"{row['split']}/" if "split" in row else "train/"
        values = {
            prefix + k: v
            for k, v in row.items()
            if k not in ("step", "split") and isinstance(v, (int, float))
        }
        try:
            self.run.log(values, step=row["step"])
        except Exception as err:  # noqa: BLE001 - wandb's service is gone: training goes on without it
            self._lost(err)

    def finish(self) -> None:
        if self.run is None:
            return
        try:
            self.run.finish()
        except Exception as err:  # noqa: BLE001
            self._lost(err)

    def _lost(self, err: Exception) -> None:
        """wandb's service process died (`scancel` sends SIGTERM to every process of the job, and
        it does not survive it): say so once and go on; metrics.jsonl holds every row."""
        self.run = None
        print(
            f"wandb: logging stopped ({type(err).__name__}: {err}); metrics.jsonl keeps every row",
            file=sys.stderr,
            flush=True,
        )


def _run_id(run_dir: Path) -> str:
    import hashlib

    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]

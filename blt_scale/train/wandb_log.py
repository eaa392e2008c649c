"""Weights & Biases logging from rank 0: offline by default (runs sync later with `wandb sync`),
online only when the recipe or WANDB_MODE says so. Optional: `wandb.enabled: false` skips it."""

from __future__ import annotations

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
        prefix = f"{row['split']}/" if "split" in row else "train/"
        self.run.log(
            {
                prefix + k: v
                for k, v in row.items()
                if k not in ("step", "split") and isinstance(v, (int, float))
            },
            step=row["step"],
        )

    def finish(self) -> None:
        self.run.finish()


def _run_id(run_dir: Path) -> str:
    import hashlib

    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]

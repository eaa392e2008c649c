"""RunConfig: everything a recipe describes, assembled from the config classes that live beside
the code they configure."""

from __future__ import annotations

from pathlib import Path

from pydantic import model_validator

from blt_scale import config
from blt_scale.checkpoint.checkpointer import CheckpointConfig
from blt_scale.checkpoint.layout import CONFIG
from blt_scale.config import Config
from blt_scale.data.loader import DataConfig
from blt_scale.model.build import ModelConfig
from blt_scale.model.patcher import PatcherConfig
from blt_scale.parallel.config import ParallelConfig
from blt_scale.train.loop import TrainConfig
from blt_scale.train.optim import OptimConfig
from blt_scale.train.wandb_log import WandbConfig

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


class RunConfig(Config):
    run_dir: str = "runs/default"
    model: ModelConfig
    patcher: PatcherConfig = PatcherConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig
    optim: OptimConfig = OptimConfig()
    parallel: ParallelConfig = ParallelConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    wandb: WandbConfig = WandbConfig()

    @model_validator(mode="after")
    def _brain_text_is_the_sequence(self) -> RunConfig:
        # The trainer counts bytes, FLOPs and throughput with seq_len; a brain sample's text is
        # text_bytes + 1 input ids (BOS + bytes, or bytes + EOS as targets).
        brain = self.data.brain
        if brain is not None and self.data.seq_len != brain.text_bytes + 1:
            raise ValueError(
                f"data.seq_len ({self.data.seq_len}) must be data.brain.text_bytes + 1 "
                f"({brain.text_bytes + 1}) for brain data"
            )
        return self

    @model_validator(mode="after")
    def _mvot_codes_match_its_tokenizer(self) -> RunConfig:
        if self.model.kind != "mvot":
            return self
        if self.patcher.mode == "entropy":
            raise ValueError(
                "an mvot model cannot use patcher.mode=entropy: entropy models read bytes, not image ids"
            )
        world = self.data.gridworld
        sources = {s.path for s in self.model.init_from if s.prefix == "images."}
        if world is not None and (world.tokenizer is None or (sources and world.tokenizer not in sources)):
            # The loader's codes and the codebook the discrepancy loss compares must be one tokenizer's.
            raise ValueError(
                f"data.gridworld.tokenizer ({world.tokenizer}) must be the tokenizer model.init_from loads "
                f"with prefix 'images.' ({sorted(sources)})"
            )
        return self


def resolve_recipe_path(name: str | Path) -> Path:
    """A path as given, else a name under recipes/ (with or without .yaml)."""
    path = Path(name)
    if path.exists():
        return path
    for candidate in (RECIPES / path, RECIPES / f"{path}.yaml"):
        if candidate.exists():
            return candidate
    raise config.ConfigError(f"recipe {str(name)!r} not found (looked at it as a path and under {RECIPES})")


def load_recipe(name: str | Path, overrides: list[str] = ()) -> RunConfig:
    return config.load(RunConfig, resolve_recipe_path(name), list(overrides))


def saved_recipe(directory: str | Path) -> RunConfig:
    """The resolved recipe a checkpoint or export directory was written with."""
    return load_recipe(Path(directory) / CONFIG)

"""Consolidated checkpoints: a directory with `config.yaml` (the resolved RunConfig) and
`model.safetensors` (the unsharded model weights). `blt generate`, `blt eval` and
`blt prep entropies --model` load this format on one process; it holds tensors only, so loading
it runs no pickled code.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from pydantic import ConfigDict
from safetensors.torch import load_file, save_file
from torch import nn

from blt_scale import config
from blt_scale.checkpoint.layout import CONFIG
from blt_scale.config import Config
from blt_scale.model.build import ModelConfig, build_model
from blt_scale.model.patcher import PatcherConfig

WEIGHTS = "model.safetensors"


class SavedData(Config):
    model_config = ConfigDict(extra="ignore")
    seq_len: int


class SavedModel(Config):
    """What a saved `config.yaml` says about its model: enough to rebuild and use it. The rest of
    the file (the whole RunConfig) is read by the training layer, which owns its schema."""

    model_config = ConfigDict(extra="ignore")
    model: ModelConfig
    patcher: PatcherConfig = PatcherConfig()
    data: SavedData


def read_saved_model(directory: Path) -> SavedModel:
    return config.load(SavedModel, directory / CONFIG)


def save_exported(state_dict: dict[str, torch.Tensor], cfg, out_dir: str | Path) -> Path:
    """Write weights and config under a temporary name, then rename: never a half export."""
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(tmp / WEIGHTS))
    (tmp / CONFIG).write_text(config.dump(cfg))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def load_exported(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, SavedModel]:
    path = Path(path)
    for name in (WEIGHTS, CONFIG):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path}: not an exported checkpoint (missing {name})")
    cfg = read_saved_model(path)
    model = build_model(cfg.model)
    model.load_state_dict(load_file(str(path / WEIGHTS), device=str(device)))
    return model.to(device).eval(), cfg

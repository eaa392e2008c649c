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
from safetensors.torch import load_file, save_file
from torch import nn

from blt_scale import config

WEIGHTS, CONFIG = "model.safetensors", "config.yaml"


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


def load_exported(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, object]:
    from blt_scale.model.build import build_model
    from blt_scale.recipe import load_recipe

    path = Path(path)
    for name in (WEIGHTS, CONFIG):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path}: not an exported checkpoint (missing {name})")
    cfg = load_recipe(path / CONFIG)
    model = build_model(cfg.model)
    model.load_state_dict(load_file(str(path / WEIGHTS), device=str(device)))
    return model.to(device).eval(), cfg

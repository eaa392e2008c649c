"""A trained model on one process from whatever the user points at: an exported directory
(model.safetensors), a checkpoint directory (step_N with COMPLETE), or a run directory (its latest
complete checkpoint). DCP (and DeepSpeed's zero_to_fp32) read sharded checkpoints without a process group."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

from blt_scale.checkpoint.deepspeed import consolidated_state_dict, is_deepspeed_checkpoint
from blt_scale.checkpoint.export import WEIGHTS, SavedModel, load_exported, read_saved_model
from blt_scale.checkpoint.layout import complete_checkpoints, is_complete, latest_verified, verify
from blt_scale.checkpoint.safe_dcp import CheckpointLoadError, safe_load
from blt_scale.model.build import build_model


def resolve_checkpoint(path: str | Path) -> Path:
    """A complete checkpoint that matches its manifest: `path` itself, or the newest such one of
    run directory `path` (newer damaged ones are skipped with a line on stderr)."""
    path = Path(path)
    if is_complete(path):
        reason = verify(path)
        if reason is not None:
            raise CheckpointLoadError(f"{path}: damaged checkpoint: {reason}; pick an earlier one")
        return path
    if path.is_dir() and path.name.startswith("step_"):
        raise FileNotFoundError(
            f"{path}: checkpoint is not complete (no COMPLETE marker); pick an earlier one"
        )
    latest = latest_verified(path)
    if latest is None:
        if complete_checkpoints(path):
            raise CheckpointLoadError(f"{path}: every complete checkpoint is damaged (see the lines above)")
        raise FileNotFoundError(
            f"{path}: no complete checkpoint under {path / 'checkpoints'} (and not an exported model)"
        )
    return latest


def load_checkpoint_model(ckpt: Path) -> tuple[nn.Module, SavedModel]:
    cfg = read_saved_model(ckpt)
    model = build_model(cfg.model)
    if is_deepspeed_checkpoint(ckpt):  # the engine's ZeRO files, consolidated by DeepSpeed
        model.load_state_dict(consolidated_state_dict(ckpt))
        return model.eval(), cfg
    state = {"model": get_model_state_dict(model)}
    safe_load(state, ckpt)  # no pickled code runs, and any failure is one line
    set_model_state_dict(model, state["model"])
    return model.eval(), cfg


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, SavedModel, Path]:
    """(model in eval mode, its saved model config, the directory it came from; its config.yaml
    holds the whole resolved recipe)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if (path / WEIGHTS).is_file():
        model, cfg = load_exported(path, device)
        return model, cfg, path
    ckpt = resolve_checkpoint(path)
    model, cfg = load_checkpoint_model(ckpt)
    return model.to(device), cfg, ckpt

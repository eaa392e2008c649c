"""Consolidated checkpoints: a directory with `config.yaml` (the resolved RunConfig) and
`model.safetensors` (the unsharded model weights). `blt generate`, `blt eval` and
`blt prep entropies --model` load this format on one process; it holds tensors only, so loading
it runs no pickled code.

`blt export` never deletes what it did not write: it fills a new or empty directory, or replaces
one it exported before (recognised by its marker `EXPORTED.json`, holding only export files).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from pydantic import ConfigDict
from safetensors.torch import load_file, save_file
from torch import nn

from blt_scale import config
from blt_scale.checkpoint.layout import CONFIG
from blt_scale.checkpoint.safe_dcp import CheckpointLoadError, one_line
from blt_scale.config import Config
from blt_scale.model.build import ModelConfig, build_model
from blt_scale.model.patcher import PatcherConfig

WEIGHTS = "model.safetensors"
EXPORT_MARKER = "EXPORTED.json"  # written by save_exported: the directory is ours to replace
EXPORT_KIND = "blt-scale export"
EXPORT_FILES = {WEIGHTS, CONFIG, EXPORT_MARKER}


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


def is_own_export(path: Path) -> bool:
    """Whether `path` holds an export this module wrote (its marker says so), and nothing else."""
    try:
        marker = json.loads((path / EXPORT_MARKER).read_text())
    except (OSError, ValueError):
        return False
    names = {p.name for p in path.iterdir()}
    return isinstance(marker, dict) and marker.get("kind") == EXPORT_KIND and names <= EXPORT_FILES


def check_export_target(out_dir: str | Path) -> Path:
    """`out_dir` if an export may go there: it does not exist, is an empty directory, or holds an
    earlier export (and only that); anything else is an error naming it, and nothing is deleted."""
    out = Path(out_dir)
    if not out.exists():
        return out
    if not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a directory; choose a new or empty directory")
    if any(out.iterdir()) and not is_own_export(out):
        raise ValueError(
            f"--out {out}: not empty and not an earlier `blt export` (no {EXPORT_MARKER}, or other files "
            "in it); choose a new or empty directory, nothing was written"
        )
    return out


def save_exported(state_dict: dict[str, torch.Tensor], cfg, out_dir: str | Path, source: str = "") -> Path:
    """Write weights, config and marker into a temporary directory beside `out_dir`, then rename
    it into place: never a half export, and only an empty directory or an earlier export is replaced."""
    out = check_export_target(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:  # everything is written under the temporary name first
        save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(config.dump(cfg))
        (tmp / EXPORT_MARKER).write_text(json.dumps({"kind": EXPORT_KIND, "from": str(source)}) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    try:
        if out.exists() and any(out.iterdir()):  # an earlier export: moved aside, deleted once replaced
            check_export_target(out)  # still nothing but that export
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old)
        os.replace(tmp, out)  # rename(2) replaces an empty directory
    except BaseException:
        if old is not None and not out.exists():
            os.replace(old, out)  # the earlier export stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old)
    return out


def load_exported(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, SavedModel]:
    path = Path(path)
    for name in (WEIGHTS, CONFIG):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path}: not an exported checkpoint (missing {name})")
    cfg = read_saved_model(path)
    model = build_model(cfg.model)
    try:
        weights = load_file(str(path / WEIGHTS), device=str(device))
    except Exception as err:  # noqa: BLE001 - safetensors' own error type: truncated, not safetensors
        raise CheckpointLoadError(
            f"{path / WEIGHTS}: not a readable safetensors file ({one_line(err)})"
        ) from None
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointLoadError(
            f"{path / WEIGHTS}: does not fit the model its {CONFIG} describes ({one_line(err)})"
        ) from None
    return model.to(device).eval(), cfg

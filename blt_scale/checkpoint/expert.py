"""SVF experts on disk (model/svf.py): a directory with

    expert.safetensors   one z vector per adapted layer, keyed by the layer's dotted name in the base model
    expert.yaml          ExpertInfo: base export, target pattern, sizes, objective, training summary
    examples.jsonl       optional: held-out texts of the expert's task ({"text": ...} per line), which
                         `blt generate --dispatch classifier|mix` fits on

Tensors only, so loading runs no pickled code. `blt adapt` writes it; `blt generate --experts` reads it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Literal

import torch
from pydantic import ConfigDict, Field
from safetensors.torch import load_file, save_file

from blt_scale import config
from blt_scale.config import Config, ConfigError

VECTORS, INFO, EXAMPLES = "expert.safetensors", "expert.yaml", "examples.jsonl"


class ExpertInfo(Config):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="what dispatch reports for this expert (default: the directory's name)")
    base: str = Field(description="the exported model the expert was trained on")
    targets: str = Field(description="the regular expression that chose the adapted layers")
    sizes: dict[str, int] = Field(description="layer name -> length of its z vector")
    objective: Literal["next_byte", "reinforce"] = Field(
        default="next_byte", description="what z was trained on (the run's model.objective.kind)"
    )
    steps: int = 0
    val_bpb: float | None = None


def save_expert(
    out_dir: str | Path, z: dict[str, torch.Tensor], info: ExpertInfo, examples: list[str] = ()
) -> Path:
    """Write under a temporary name, then rename: never a half-written expert."""
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".expert.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().float().cpu().contiguous() for k, v in z.items()}, str(tmp / VECTORS))
    (tmp / INFO).write_text(config.dump(info))
    if examples:
        (tmp / EXAMPLES).write_text("".join(json.dumps({"text": t}) + "\n" for t in examples))
    out.mkdir(parents=True, exist_ok=True)
    for name in (VECTORS, INFO, EXAMPLES):
        if (tmp / name).exists():
            os.replace(tmp / name, out / name)
        elif (out / name).exists():
            (out / name).unlink()
    shutil.rmtree(tmp)
    return out


def load_expert(path: str | Path) -> tuple[dict[str, torch.Tensor], ExpertInfo, list[str]]:
    """(z per layer, info, example texts). Errors name the file and what is wrong."""
    path = Path(path)
    for name in (VECTORS, INFO):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path}: not an SVF expert (missing {name}; `blt adapt` writes one)")
    info = config.load(ExpertInfo, path / INFO)
    try:
        z = load_file(str(path / VECTORS))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise ConfigError(f"{path / VECTORS}: not a readable safetensors file ({err})") from None
    if set(z) != set(info.sizes):
        raise ConfigError(f"{path / VECTORS}: its vectors do not match the layers listed in {path / INFO}")
    for name, size in info.sizes.items():
        if tuple(z[name].shape) != (size,):
            raise ConfigError(
                f"{path / VECTORS}: {name!r} has shape {tuple(z[name].shape)}, expected ({size},)"
            )
    examples = []
    if (path / EXAMPLES).is_file():
        for n, line in enumerate((path / EXAMPLES).read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                examples.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ConfigError(f'{path / EXAMPLES}:{n}: expected {{"text": ...}}') from None
    return z, info, examples

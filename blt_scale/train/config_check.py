"""Resuming a run with the recipe it was started with: the model and the data order must match the
run directory's saved config.yaml, checked before anything in the directory is written (a
changed model would otherwise overwrite the saved config and then fail on a tensor shape)."""

from __future__ import annotations

from pathlib import Path

import yaml

from blt_scale.config import ConfigError

# What the weights and the data order depend on: the whole model section and these data keys.
DATA_ORDER = (
    "data.seq_len",
    "data.sources",
    "data.streams",
    "data.shuffle_block_shards",
    "data.corpus_bytes",
    "data.val_fraction",
    "data.brain",
    "train.seed",
)
# Model keys that choose how to compute, not what is learned, or that only act on a fresh start.
NOT_COMPARED = ("model.attention", "model.init_from")


def flatten(tree, prefix: str = "") -> dict[str, object]:
    if isinstance(tree, dict) and tree:
        out = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


def _compared(key: str) -> bool:
    if any(key == k or key.startswith(k + ".") for k in NOT_COMPARED):
        return False
    return key.startswith("model.") or any(key == k or key.startswith(k + ".") for k in DATA_ORDER)


def differing_keys(saved: dict, new: dict) -> list[str]:
    """Compared keys whose values differ; a key one side lacks (an older schema) is not compared."""
    a, b = flatten(saved), flatten(new)
    keys = sorted(k for k in a.keys() & b.keys() if _compared(k) and a[k] != b[k])
    # A section that is a value on one side and a dict on the other (data.brain: null vs set).
    keys += sorted(
        k
        for k in a.keys() ^ b.keys()
        if _compared(k) and any(o.startswith(k + ".") for o in (b.keys() if k in a else a.keys()))
    )
    return keys


def check_resume_config(path: Path, new: dict, run_dir: Path) -> None:
    """Raise one ConfigError line listing what differs between the saved config at `path`
    (RUN_DIR/config.yaml, or the checkpoint's) and the new recipe `new` (saved -> new)."""
    try:
        saved = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read the saved config to resume ({err})") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{path}: not a saved config (expected a mapping)")
    keys = differing_keys(saved, new)
    if keys:
        a, b = flatten(saved), flatten(new)
        shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:6])
        more = f" and {len(keys) - 6} more" if len(keys) > 6 else ""
        raise ConfigError(
            f"{path}: this run was trained with another model or data order ({shown}{more}); to resume, "
            f"use its recipe; otherwise --resume never (starts over here), a new run_dir, or "
            f"model.init_from={Path(run_dir)} (a new run starting from its weights)"
        )

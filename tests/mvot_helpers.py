"""Helpers for the MVoT tests: training a VQ image tokenizer (conftest's `tokenizer_dir` does it
once per session), and overrides that make recipe mvot_tiny small and point it at a tokenizer."""

from __future__ import annotations

from pathlib import Path

from blt_scale.train.recipe import load_recipe
from blt_scale.train.run import run_training

TOKENIZER_STEPS = 60
QUIET = ["wandb.enabled=false", "train.peak_flops=1e11"]


def train_tokenizer(run_dir: Path, steps: int = TOKENIZER_STEPS) -> Path:
    cfg = load_recipe(
        "vq_image_tokenizer_tiny",
        [f"run_dir={run_dir}", f"train.steps={steps}", "train.eval_every=null", *QUIET],
    )
    assert run_training(cfg) == 0
    return run_dir


def mvot_overrides(tokenizer: Path, steps: int = 10) -> list[str]:
    """mvot_tiny, smaller, on `tokenizer`, with no prerequisite to train."""
    return [
        f"model.init_from=[{{path: {tokenizer}, prefix: images.}}]",
        f"data.gridworld.tokenizer={tokenizer}",
        "train.prerequisites=[]",
        f"train.steps={steps}",
        "train.global_batch=4",
        "train.log_every=1",
        "train.eval_every=null",
        "model.global.layers=1",
        "model.decoder.layers=1",
        "optim.warmup_steps=2",
        *QUIET,
    ]

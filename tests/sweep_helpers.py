"""A tiny sweep recipe: 2 variants x 3 sizes x 2 budgets on the embedded corpus."""

from __future__ import annotations

from pathlib import Path

import yaml

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
TINY_BLT = [
    "model.encoder.dim=32",
    "model.decoder.dim=32",
    "model.global.dim=64",
    "model.encoder.heads=2",
    "model.decoder.heads=2",
    "model.global.heads=2",
    "model.global.layers=1",
    "model.decoder.layers=1",
    "model.ngram.buckets=512",
]


def tiny_sweep(tmp_path: Path) -> Path:
    sweep = {
        "run_dir": str(tmp_path / "sweep"),
        "variants": [
            {"name": "blt_space", "recipe": str(RECIPES / "cpu_tiny.yaml"), "overrides": TINY_BLT},
            {
                "name": "byte_baseline",
                "recipe": str(RECIPES / "cpu_tiny_baseline.yaml"),
                "overrides": ["model.dim=32", "model.heads=2", "model.layers=2"],
            },
        ],
        "sizes": [{"name": "s", "width": 0.75}, {"name": "m", "width": 1.0}, {"name": "l", "width": 1.5}],
        "budgets": [3.0e9, 4.5e9],
        "overrides": [
            "data.seq_len=64",
            "data.corpus_bytes=1500000",
            "data.val_fraction=0.1",
            "train.global_batch=2",
            "train.micro_batch=2",
            "train.eval_batches=1",
            "wandb.enabled=false",
            "checkpoint.every=100000",
        ],
    }
    path = tmp_path / "tiny_sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path

"""`blt train` and `blt flops` as a user runs them: run directory contents, exit codes, errors."""

import json

import yaml
from cli_helpers import blt

from blt_scale.train.recipe import load_recipe

DESIGN_KEYS = {
    "step",
    "loss",
    "bpb",
    "lr",
    "grad_norm",
    "bytes_per_s",
    "patches_per_s",
    "mean_patch_bytes",
    "flops_per_s",
    "mfu",
    "mem_gb",
    "data_wait_s",
}


def test_train_writes_resolved_config_and_metrics(tmp_path):
    run_dir = tmp_path / "run"
    out = blt(
        "train",
        "cpu_tiny",
        f"run_dir={run_dir}",
        "train.steps=4",
        "train.log_every=2",
        "train.eval_every=4",
        "train.eval_batches=1",
        "data.corpus_bytes=2000000",
        "train.global_batch=4",
        "train.micro_batch=2",
    )
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["train"]["steps"] == 4 and resolved["model"]["global"]["dim"] == 256
    assert load_recipe(run_dir / "config.yaml").train.micro_batch == 2  # the resolved file is itself a recipe
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "split" not in r]
    assert [r["step"] for r in train_rows] == [2, 4]
    assert all(DESIGN_KEYS <= r.keys() for r in train_rows)
    assert all(r["bpb"] > 0 and r["flops_per_s"] > 0 and 0 < r["mfu"] < 2 for r in train_rows)
    assert [r["step"] for r in rows if r.get("split") == "val"] == [4]


def test_config_error_is_one_line_and_exit_2(tmp_path):
    out = blt("train", "cpu_tiny", "train.stepz=3", f"run_dir={tmp_path}", check=False)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "'train.stepz'" in lines[0] and "'train.steps'" in lines[0]
    assert not (tmp_path / "config.yaml").exists()


def test_flops_for_entropy_patching_needs_a_patch_size():
    out = blt("flops", "blt_1b", check=False)
    assert out.returncode == 2 and "--patch-bytes" in out.stderr

"""DeepSpeed ZeRO-1/2/3 behind the same trainer, over gloo on CPU: losses against one unsharded
process, optimizer-state bytes per rank, kill -9 and bitwise resume with exactly-once data,
2 -> 1 rank through the universal checkpoint, export, and config conflicts.

Cost: 8 rank launches (each pays ~8 s of `import deepspeed`), shared between tests through
dist_helpers.reference. Nothing JIT-builds: the strategy skips DeepSpeed's shm all-reduce and
steps torch's AdamW (also when offloaded), so no TORCH_EXTENSIONS_DIR is needed.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from dist_helpers import (
    DETERMINISTIC,
    TINY,
    expected_rows,
    kill,
    losses,
    reference,
    run,
    start,
    traced_rows,
    train_rows,
    wait_for,
)

from blt_scale.checkpoint.deepspeed import UNIVERSAL_TAG
from blt_scale.checkpoint.layout import checkpoints_dir, latest_complete
from blt_scale.checkpoint.restore import load_checkpoint_model, load_model
from blt_scale.cli import main as blt
from blt_scale.config import ConfigError
from blt_scale.model.build import build_model
from blt_scale.parallel.ds_config import deepspeed_config
from blt_scale.parallel.env import DistEnv
from blt_scale.parallel.strategy import build_strategy
from blt_scale.train.exit_codes import EXIT_CONFIG
from blt_scale.train.recipe import load_recipe

pytestmark = pytest.mark.multiproc

STEPS = ["train.steps=20", "checkpoint.every=5"]
FP32_TOL = 1e-5  # measured: <= 1e-6 over 20 steps for every stage (one process vs 2 ranks)
BF16_TOL = 0.05  # bf16 engine vs the fp32 run
WEIGHT_TOL = 1e-5  # exported weights vs the one-process run's; measured ~1.4e-6
ONE = TINY + STEPS + DETERMINISTIC
DS = ONE + ["parallel.strategy=deepspeed"]
STAGES = {
    1: DS + ["parallel.zero_stage=1"],
    # micro_batch 2 x 2 ranks: two accumulation micro-batches per step (the engine's boundary set by the loop)
    2: DS + ["parallel.zero_stage=2", "train.micro_batch=2"],
    # everything ZeRO-3 offers here at once: parameter + optimizer offload, full activation checkpointing
    3: DS
    + [
        "parallel.zero_stage=3",
        "parallel.offload_optimizer=true",
        "parallel.offload_param=true",
        "parallel.activation_checkpointing=full",
    ],
}


def one_process(factory):
    return reference(factory, "blt_1proc", ONE, 1)


def zero(factory, stage: int):
    return reference(factory, f"zero{stage}", STAGES[stage], 2)


def param_count() -> int:
    return sum(p.numel() for p in build_model(load_recipe("cpu_tiny", TINY).model).parameters())


def worst(a: dict, b: dict, steps=range(1, 21)) -> float:
    assert set(steps) <= set(a) and set(steps) <= set(b)
    return max(abs(a[s] - b[s]) for s in steps)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_two_ranks_match_one_process_and_shard_optimizer_state(stage, tmp_path_factory):
    ref_dir, ds_dir = one_process(tmp_path_factory), zero(tmp_path_factory, stage)
    ref, ds = losses(ref_dir), losses(ds_dir)
    assert sorted(ds) == list(range(1, 21))
    assert worst(ref, ds) <= FP32_TOL
    assert ref[20] < ref[1] - 0.3  # it trains
    # ZeRO 1+: each rank keeps 1/world of the fp32 master copy and both Adam moments (12 B/param
    # in all); the unsharded process has only the moments (8 B/param: its master is the model).
    params = param_count()
    ds_bytes, one_bytes = (
        train_rows(ds_dir)[-1]["optim_state_bytes"],
        train_rows(ref_dir)[-1]["optim_state_bytes"],
    )
    assert abs(one_bytes - 8 * params) <= 8 * 64
    assert abs(ds_bytes - 12 * params / 2) / (12 * params / 2) < 0.01, (
        f"{ds_bytes} B/rank vs {12 * params / 2:.0f}"
    )
    if stage == 3:  # parameters are partitioned too
        assert train_rows(ds_dir)[-1]["shard_bytes"] - ds_bytes < 0.51 * 4 * params


def test_export_of_zero_runs_matches_one_process(tmp_path, tmp_path_factory):
    ref, _ = load_checkpoint_model(latest_complete(one_process(tmp_path_factory)))
    for stage in (1, 3):  # stage 3 also has activation-checkpointing wrappers in its names
        assert blt(["export", str(zero(tmp_path_factory, stage)), "--out", str(tmp_path / f"z{stage}")]) == 0
        exported, _, _ = load_model(tmp_path / f"z{stage}")  # model.safetensors + config.yaml, as for FSDP
        a, b = ref.state_dict(), exported.state_dict()
        assert a.keys() == b.keys() and all(v.dtype == torch.float32 for v in b.values())
        assert max(float((a[k] - b[k]).abs().max()) for k in a) <= WEIGHT_TOL


def test_kill9_then_bitwise_resume_exactly_once(tmp_path, tmp_path_factory):
    ref = losses(zero(tmp_path_factory, 2))
    run_dir = tmp_path / "killed"
    procs, log = start(run_dir, STAGES[2], 2, resume="never")
    try:
        wait_for(
            lambda: latest_complete(run_dir) is not None and max(losses(run_dir), default=0) >= 7,
            what="a checkpoint and step 7",
        )
        kill(procs, signal.SIGKILL)
    finally:
        kill(procs)
        log.close()
    saved = latest_complete(run_dir)
    _, out = run(run_dir, STAGES[2], 2)
    assert f"resumed from {saved}" in out
    assert losses(run_dir) == ref, "resumed trajectory differs from the uninterrupted run"
    assert traced_rows(run_dir) == expected_rows(STAGES[2], 20), "a row was repeated or skipped"


def test_two_ranks_to_one_through_universal_checkpoint(tmp_path, tmp_path_factory):
    ref = losses(one_process(tmp_path_factory))
    run_dir = tmp_path / "shrunk"
    shutil.copytree(zero(tmp_path_factory, 1), run_dir)
    for ckpt in checkpoints_dir(run_dir).iterdir():
        if int(ckpt.name.split("_")[1]) > 10:
            shutil.rmtree(ckpt)
    _, out = run(run_dir, STAGES[1], 1)
    assert "step_000010 at step 10/20" in out
    assert (checkpoints_dir(run_dir) / "step_000010" / UNIVERSAL_TAG).is_dir()  # converted automatically
    rows = train_rows(run_dir)
    assert [r["world_size"] for r in rows if r["step"] > 10] == [1] * 10
    assert worst(ref, losses(run_dir), range(11, 21)) <= FP32_TOL
    assert traced_rows(run_dir) == expected_rows(ONE, 20)
    two = train_rows(zero(tmp_path_factory, 1))[-1]["optim_state_bytes"]
    assert (
        abs(rows[-1]["optim_state_bytes"] - 2 * two) <= 64
    )  # one rank holds what two held (+/- step counters)


def test_convert_ds_command(tmp_path, tmp_path_factory, capsys):
    run_dir = tmp_path / "z3"
    shutil.copytree(zero(tmp_path_factory, 3), run_dir)
    assert blt(["convert-ds", str(run_dir)]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (
        first["out"] == str(checkpoints_dir(run_dir) / "step_000020" / UNIVERSAL_TAG)
        and not first["already_converted"]
    )
    assert any((checkpoints_dir(run_dir) / "step_000020" / UNIVERSAL_TAG / "zero").iterdir())
    assert blt(["convert-ds", str(run_dir)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["already_converted"]
    assert blt(["convert-ds", str(one_process(tmp_path_factory))]) != 0  # a DCP checkpoint: one-line error
    assert "not a DeepSpeed checkpoint" in capsys.readouterr().err


def test_bf16_engine_trains_close_to_fp32(tmp_path, tmp_path_factory):
    ref = losses(one_process(tmp_path_factory))
    run(tmp_path / "bf16", STAGES[2] + ["parallel.mixed_precision=bf16", "train.trace_data=false"], 2)
    bf16 = losses(tmp_path / "bf16")
    assert 0 < worst(ref, bf16) <= BF16_TOL, "bf16 gave bit-identical losses to fp32: the engine ran in fp32"


def test_conflicting_raw_key_names_both_keys():
    cfg = load_recipe("cpu_tiny", ["parallel.strategy=deepspeed", "parallel.deepspeed.gradient_clipping=2.0"])
    with pytest.raises(
        ConfigError,
        match=r"parallel\.deepspeed\.gradient_clipping=2\.0 conflicts with optim\.clip_grad_norm=1\.0",
    ):
        deepspeed_config(cfg, 1)
    cfg = load_recipe(
        "cpu_tiny",
        [
            "parallel.strategy=deepspeed",
            "parallel.zero_stage=2",
            "parallel.deepspeed.zero_optimization.offload_optimizer.device=cpu",
        ],
    )
    with pytest.raises(
        ConfigError, match=r"offload_optimizer\.device=cpu conflicts with parallel\.offload_optimizer=false"
    ):
        deepspeed_config(cfg, 1)
    cfg = load_recipe("cpu_tiny", ["parallel.strategy=deepspeed", "parallel.deepspeed.optimizer.type=Adam"])
    with pytest.raises(ConfigError, match=r"parallel\.deepspeed\.optimizer\.type conflicts with optim"):
        deepspeed_config(cfg, 1)
    # Keys the recipe does not decide pass through; equal values are no conflict.
    cfg = load_recipe(
        "cpu_tiny",
        [
            "parallel.strategy=deepspeed",
            "parallel.deepspeed.gradient_clipping=1.0",
            "parallel.deepspeed.zero_optimization.overlap_comm=true",
        ],
    )
    ds = deepspeed_config(cfg, 1)
    assert ds["zero_optimization"]["overlap_comm"] is True and ds["gradient_clipping"] == 1.0
    # Offloaded tensors are pinned only for an accelerator (pinning means nothing to CPU ranks).
    offload = ["parallel.strategy=deepspeed", "parallel.offload_optimizer=true"]
    assert deepspeed_config(load_recipe("cpu_tiny", offload), 1, accelerator=True)["zero_optimization"][
        "offload_optimizer"
    ] == {"device": "cpu", "pin_memory": True}
    with pytest.raises(ConfigError, match="parallel.offload_param needs parallel.zero_stage=3"):
        load_recipe(
            "cpu_tiny",
            ["parallel.strategy=deepspeed", "parallel.zero_stage=2", "parallel.offload_param=true"],
        )
    with pytest.raises(ConfigError, match="parallel.offload_optimizer needs parallel.strategy=deepspeed"):
        load_recipe("cpu_tiny", ["parallel.strategy=fsdp", "parallel.offload_optimizer=true"])
    cfg = load_recipe("cpu_tiny", ["parallel.strategy=deepspeed", "checkpoint.async_save=true"])
    with pytest.raises(
        ConfigError, match="checkpoint.async_save=true is not supported with parallel.strategy=deepspeed"
    ):
        build_strategy(cfg.parallel, DistEnv(), torch.device("cpu")).configure(cfg)


def test_blt_train_stops_on_a_conflicting_key_before_training(tmp_path):
    """The same error from the command, as one line, before any step (and before DeepSpeed loads)."""
    cmd = [
        sys.executable,
        "-m",
        "blt_scale.cli",
        "train",
        "cpu_tiny",
        f"run_dir={tmp_path / 'run'}",
        "parallel.strategy=deepspeed",
        "parallel.deepspeed.gradient_clipping=2.0",
    ]
    res = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env=os.environ | {"OMP_NUM_THREADS": "1"}
    )
    assert res.returncode == EXIT_CONFIG
    assert (
        "error: parallel.deepspeed.gradient_clipping=2.0 conflicts with optim.clip_grad_norm=1.0"
        in res.stderr
    )
    assert "Traceback" not in res.stderr and not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason=(
        "needs CUDA: the GPU path of parallel.offload_optimizer (pinned host memory, NCCL) with bf16; "
        "the CPU tests run the same options unpinned over gloo"
    ),
)
def test_gpu_zero2_bf16_with_pinned_optimizer_offload(tmp_path):
    opts = [
        "train.device=cuda",
        "train.micro_batch=8",
        "parallel.strategy=deepspeed",
        "parallel.zero_stage=2",
        "parallel.mixed_precision=bf16",
        "parallel.offload_optimizer=true",
    ]
    run(tmp_path / "gpu", TINY + ["train.steps=10", "checkpoint.every=5"] + opts, 1)
    rows = train_rows(tmp_path / "gpu")
    assert rows[-1]["loss"] < rows[0]["loss"] and rows[-1]["skipped_steps"] == 0

"""Interruptions: kill -9 (also in the middle of a checkpoint), a stop signal to one rank, resuming
at another world size, and non-finite steps. Every resumed run is compared with an
uninterrupted one and with the data stream read independently."""

import json
import random
import shutil
import signal

import pytest
import torch
from dist_helpers import (
    DETERMINISTIC,
    FSDP,
    TINY,
    expected_rows,
    kill,
    losses,
    reference,
    run,
    start,
    traced_rows,
    wait_for,
)

from blt_scale.checkpoint.layout import checkpoints_dir, is_complete, latest_complete, read_train_state
from blt_scale.checkpoint.restore import load_checkpoint_model
from blt_scale.train.exit_codes import EXIT_NONFINITE, EXIT_STOPPED
from blt_scale.train.local_ranks import wait_ranks

pytestmark = pytest.mark.multiproc

STEPS = ["train.steps=20", "checkpoint.every=5"]
FP32_TOL = 1e-5
ONE = TINY + STEPS + DETERMINISTIC
TWO = ONE + FSDP


def step_of(path) -> int:
    return int(path.name.split("_")[1].split(".")[0])


def partial_checkpoints(run_dir):
    root = checkpoints_dir(run_dir)
    return [p for p in root.iterdir() if p.is_dir() and not is_complete(p)] if root.is_dir() else []


def test_kill9_during_checkpoint_then_bitwise_resume(tmp_path, tmp_path_factory):
    ref = reference(tmp_path_factory, "blt_2rank", TWO, 2)
    run_dir = tmp_path / "killed"
    target = random.Random().randrange(4, 15, 2)  # a random even step: saves happen every 2
    procs, log = start(run_dir, TWO + ["checkpoint.every=2"], 2, resume="never")
    try:
        wait_for(
            lambda: any(step_of(p) >= target for p in partial_checkpoints(run_dir)),
            what=f"a save at step >= {target}",
        )
        kill(procs, signal.SIGKILL)
    finally:
        kill(procs)
        log.close()
    # keep_last deletes old checkpoints (marker first) after each save; one caught mid-deletion is
    # also incomplete, but it is not the save this test interrupts.
    partial = [p for p in partial_checkpoints(run_dir) if step_of(p) >= target]
    assert partial, f"the kill landed after the save of step {target} completed"
    killed_at = max(step_of(p) for p in partial)
    previous = latest_complete(run_dir)
    assert previous is not None and step_of(previous) < killed_at, f"target step {target}"
    read_train_state(previous)  # loadable

    _, out = run(run_dir, TWO + ["checkpoint.every=2"], 2)
    assert f"resumed from {previous}" in out
    assert losses(run_dir) == losses(ref), "resumed trajectory differs from the uninterrupted run"
    assert traced_rows(run_dir) == expected_rows(TWO, 20), "a row was repeated or skipped"
    assert not partial_checkpoints(run_dir)


def test_stop_signal_to_one_rank_then_resume_on_one_process(tmp_path, tmp_path_factory):
    ref = losses(reference(tmp_path_factory, "blt_2rank", TWO, 2))
    run_dir = tmp_path / "stopped"
    procs, log = start(run_dir, TWO, 2, resume="never")
    try:
        wait_for(lambda: losses(run_dir).get(2) is not None, what="step 2")
        procs[1].send_signal(signal.SIGUSR2)  # rank 1 only
        code = wait_ranks(procs, grace_s=60)
    finally:
        kill(procs)
        log.close()
    assert [p.returncode for p in procs] == [EXIT_STOPPED, EXIT_STOPPED] and code == EXIT_STOPPED
    ckpt = latest_complete(run_dir)
    saved = read_train_state(ckpt)["step"]
    assert 2 <= saved < 20
    assert (ckpt / "rank_0.pt").is_file() and (ckpt / "rank_1.pt").is_file()
    text = open(log.name).read()
    for rank in (0, 1):
        assert f"[rank {rank}/2] stopped by signal after step {saved}; checkpoint saved (exit 75)" in text

    run(run_dir, ONE, 1)  # the same run, now one unsharded process
    resumed = losses(run_dir)
    assert all(resumed[s] == ref[s] for s in range(1, saved + 1))
    assert max(abs(resumed[s] - ref[s]) for s in range(saved + 1, 21)) <= FP32_TOL
    assert traced_rows(run_dir) == expected_rows(ONE, 20)


def test_resume_one_process_on_two_ranks_hsdp_async(tmp_path, tmp_path_factory):
    ref_dir = reference(tmp_path_factory, "blt_1proc", ONE, 1)
    run_dir = tmp_path / "grown"
    shutil.copytree(ref_dir, run_dir)
    for ckpt in checkpoints_dir(run_dir).iterdir():
        if step_of(ckpt) > 10:
            shutil.rmtree(ckpt)
    # The grown run also takes the HSDP mesh (2 replicas x 1 shard) and saves asynchronously.
    _, out = run(run_dir, TWO + ["parallel.replicate=2", "checkpoint.async_save=true"], 2)
    assert "step_000010 at step 10/20" in out
    assert [step_of(c) for c in sorted(checkpoints_dir(run_dir).iterdir())] == [10, 15, 20]
    assert all(is_complete(c) for c in checkpoints_dir(run_dir).iterdir())
    ref, grown = losses(ref_dir), losses(run_dir)
    assert sorted(grown) == list(range(1, 21))
    assert max(abs(grown[s] - ref[s]) for s in range(11, 21)) <= FP32_TOL
    assert traced_rows(run_dir) == expected_rows(ONE, 20)


def test_nan_steps_skipped_then_halt(tmp_path):
    run_dir = tmp_path / "nan"
    opts = [
        "train.inject_nan_at=[3,7,8,9]",
        "train.max_bad_steps=3",
        "checkpoint.every=1",
        "checkpoint.keep_last=30",
    ]
    _, out = run(run_dir, TWO + opts, 2, expect=EXIT_NONFINITE)
    assert "halted: 3 steps in a row had a non-finite loss or gradient norm (last: step 9" in out
    rows = {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}
    assert rows[3]["loss"] != rows[3]["loss"] and rows[3]["skipped_steps"] == 1  # NaN, skipped
    assert rows[4]["loss"] == rows[4]["loss"] and rows[6]["skipped_steps"] == 1  # recovered
    assert max(rows) == 9
    # A skipped step leaves the weights as they were; no checkpoint holds non-finite weights.
    w2, _ = load_checkpoint_model(checkpoints_dir(run_dir) / "step_000002")
    w3, _ = load_checkpoint_model(checkpoints_dir(run_dir) / "step_000003")
    w4, _ = load_checkpoint_model(checkpoints_dir(run_dir) / "step_000004")
    assert all(torch.equal(a, b) for a, b in zip(w2.state_dict().values(), w3.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(w3.state_dict().values(), w4.state_dict().values()))
    for ckpt in checkpoints_dir(run_dir).iterdir():
        model, _ = load_checkpoint_model(ckpt)
        assert all(torch.isfinite(p).all() for p in model.parameters()), ckpt
    assert max(step_of(c) for c in checkpoints_dir(run_dir).iterdir()) == 8  # halted before saving 9

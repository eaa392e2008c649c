"""Differential attention and the Titans memory under FSDP2 over gloo: 2 ranks train the same
losses as one process, and a 2-rank Titans run killed with -9 resumes onto the uninterrupted
trajectory."""

import signal
from pathlib import Path

import pytest
from dist_helpers import DETERMINISTIC, FSDP, TINY, kill, losses, reference, run, start, train_rows, wait_for

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]

STEPS = ["train.steps=20", "checkpoint.every=5"]
FP32_TOL = 1e-5
VARIANTS = {
    "diff": ("cpu_tiny_diff", []),
    "titans_mag": ("cpu_tiny_titans", ["model.global.memory.chunk=8"]),
    "titans_mac": (
        "cpu_tiny_titans_mac",
        ["model.global.memory.chunk=8", "model.global.memory.persistent=4"],
    ),
}


def one_and_two(factory, name):
    recipe, extra = VARIANTS[name]
    base = TINY + extra + STEPS + DETERMINISTIC
    one = reference(factory, f"{name}_1proc", base, 1, recipe)
    two = reference(factory, f"{name}_2rank", base + FSDP, 2, recipe)
    return one, two


@pytest.mark.parametrize("name", VARIANTS)
def test_two_fsdp_ranks_match_one_process(tmp_path_factory, name):
    one, two = (losses(p) for p in one_and_two(tmp_path_factory, name))
    assert sorted(one) == sorted(two) == list(range(1, 21))
    worst = max(abs(one[s] - two[s]) for s in one)
    assert worst <= FP32_TOL, f"largest loss difference {worst:.3g}"
    print(f"{name}: largest |1 process - 2 ranks| loss difference over 20 steps {worst:.2g}")
    assert one[20] < one[1] - 0.3  # it trains


def test_titans_kill9_then_resume_follows_the_uninterrupted_run(tmp_path, tmp_path_factory):
    _, ref = one_and_two(tmp_path_factory, "titans_mag")
    recipe, extra = VARIANTS["titans_mag"]
    overrides = TINY + extra + STEPS + DETERMINISTIC + FSDP
    run_dir = tmp_path / "killed"
    procs, log = start(run_dir, overrides, 2, recipe, resume="never")
    try:
        metrics = Path(run_dir) / "metrics.jsonl"
        wait_for(
            lambda: metrics.exists() and any(r["step"] >= 12 for r in train_rows(run_dir)),
            what="step 12 (after the step-10 checkpoint)",
        )
        kill(procs, signal.SIGKILL)
    finally:
        kill(procs)
        log.close()
    assert max(r["step"] for r in train_rows(run_dir)) < 20, "the run finished before the kill"
    _, out = run(run_dir, overrides, 2, recipe)
    assert "resumed from" in out
    assert losses(run_dir) == losses(ref)

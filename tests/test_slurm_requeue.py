"""Preemption: `scontrol requeue` of a running job sends SIGTERM; every rank saves the same step,
SLURM brings the job back, and the second allocation resumes to the final step on exactly the
loss trajectory of an uninterrupted run."""

from __future__ import annotations

import subprocess

import pytest
from dist_helpers import losses
from slurm_helpers import SHARED, STEPS, assert_same_losses, events, submit, wait_job, wait_metrics

pytestmark = [pytest.mark.slurm, pytest.mark.multiproc]


def test_requeued_job_saves_comes_back_and_matches_uninterrupted(slurm_cluster, reference_run, tmp_path):
    run_dir = tmp_path / "run"
    job = submit(run_dir, SHARED, nodes=2)
    wait_metrics(run_dir, 3, job)
    subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True, timeout=30)
    assert wait_job(job) == "COMPLETED"

    assert [s["restart"] for s in events(run_dir, "start")] == [0, 1]
    stopped, done = events(run_dir, "exit")
    # SIGTERM means SLURM is ending the allocation: the task leaves the requeue to SLURM.
    assert stopped["status"] == "stopped" and stopped["requeue"] == "slurm" and 3 <= stopped["step"] < STEPS
    assert done["status"] == "completed" and done["step"] == STEPS
    assert_same_losses(losses(run_dir), losses(reference_run), rel=1e-6)

"""A job that fails for a real error (here the trainer halts on non-finite losses) is failed in
SLURM and in `blt status`, with one allocation: it is not requeued."""

from __future__ import annotations

import json
import subprocess

import pytest
from cli_helpers import blt
from slurm_helpers import TINY, events, submit, wait_job

pytestmark = pytest.mark.slurm


def test_failing_job_is_reported_failed_and_not_requeued(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    job = submit(run_dir, [*TINY, "train.steps=8", "train.inject_nan_at=[1,2,3]", "train.max_bad_steps=2"], 1)
    assert wait_job(job, hurry_requeue=False) == "FAILED"
    (start,) = events(run_dir, "start")
    (failed,) = events(run_dir, "exit")
    assert failed["status"] == "failed" and failed["code"] == 3  # the trainer's non-finite halt code

    status = json.loads(blt("status", str(run_dir), "--json").stdout)
    assert status["state"] == "failed" and status["jobs"][0]["slurm_state"] == "FAILED"
    text = blt("status", str(run_dir)).stdout
    assert f"job {job} failed" in text
    shown = subprocess.run(
        ["scontrol", "show", "job", job], capture_output=True, text=True, timeout=30
    ).stdout
    assert "Restarts=0" in shown and "JobState=FAILED" in shown

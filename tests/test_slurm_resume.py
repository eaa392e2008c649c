"""`blt resume RUN_DIR --nodes 1` continues a run stopped on two nodes: the trainer reshards 2 -> 1
and goes on from the saved step on the uninterrupted trajectory (to fp32 reduction-order noise)."""

from __future__ import annotations

import json
import subprocess

import pytest
from cli_helpers import blt
from dist_helpers import losses
from slurm_helpers import SHARED, STEPS, assert_same_losses, events, submit, track, wait_job, wait_metrics

pytestmark = [pytest.mark.slurm, pytest.mark.multiproc]


def test_resume_two_node_run_on_one_node(slurm_cluster, reference_run, tmp_path):
    run_dir = tmp_path / "run"
    # No requeue budget: the stop ends the job, as when a run is out of requeues.
    job = submit(run_dir, SHARED, 2, 1, "--max-requeues", "0")
    wait_metrics(run_dir, 3, job)
    subprocess.run(["scancel", "-s", "USR2", job], check=True, capture_output=True, timeout=30)
    assert wait_job(job, hurry_requeue=False) == "FAILED"
    (stopped,) = events(run_dir, "exit")
    saved = stopped["step"]
    assert stopped["status"] == "stopped" and stopped["requeue"] == "none" and 3 <= saved < STEPS
    status = json.loads(blt("status", str(run_dir), "--json").stdout)
    assert status["state"] == "stopped" and status["last_complete_step"] == saved

    r = blt("resume", str(run_dir), "--nodes", "1")
    job2 = r.stdout.split()[1]
    track(job2)
    assert job2 != job
    assert wait_job(job2) == "COMPLETED"
    first, second = events(run_dir, "start")
    assert first["world"] == 2 and second["world"] == 1 and len(second["nodes"]) == 1
    assert events(run_dir, "resume")[0]["nodes"] == 1
    assert events(run_dir, "exit")[-1] == events(run_dir, "exit")[-1] | {"status": "completed", "step": STEPS}

    got, want = losses(run_dir), losses(reference_run)
    assert_same_losses(
        {s: got[s] for s in got if s <= saved}, {s: want[s] for s in want if s <= saved}, rel=1e-6
    )
    assert_same_losses(
        {s: got[s] for s in got if s > saved}, {s: want[s] for s in want if s > saved}, rel=1e-4
    )
    status = json.loads(blt("status", str(run_dir), "--json").stdout)
    assert status["state"] == "completed" and [j["job"] for j in status["jobs"]] == [job, job2]

"""`blt submit` on two nodes x one CPU process: ranks from SLURM, FSDP over gloo, the same losses
as `blt train --nproc 2`, a run directory with the code snapshot the job actually imported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import blt
from dist_helpers import losses
from slurm_helpers import SHARED, STEPS, assert_same_losses, events, submit, wait_job

pytestmark = [pytest.mark.slurm, pytest.mark.multiproc]


def test_two_node_job_matches_local_two_ranks(slurm_cluster, reference_run, tmp_path):
    run_dir = tmp_path / "run"
    job = submit(run_dir, SHARED, nodes=2)
    assert wait_job(job) == "COMPLETED"
    assert_same_losses(losses(run_dir), losses(reference_run), rel=1e-6)

    (start,) = events(run_dir, "start")
    assert (
        start["job"] == job
        and start["nodes"] == ["n1", "n2"]
        and start["world"] == 2
        and start["restart"] == 0
    )
    # The job imported the snapshot taken at submission, not the checkout.
    assert Path(start["code"]) == (run_dir / "code" / "blt_scale").resolve()
    (done,) = events(run_dir, "exit")
    assert done["status"] == "completed" and done["step"] == STEPS
    for name in (
        "config.yaml",
        "job_config.yaml",
        "launch.yaml",
        f"logs/{job}_0_log.err",
        f"logs/{job}_1_log.err",
    ):
        assert (run_dir / name).is_file(), name
    assert f"step {STEPS}/{STEPS}" in (run_dir / f"logs/{job}_0_log.err").read_text()

    status = json.loads(blt("status", str(run_dir), "--json").stdout)
    assert status["state"] == "completed" and status["last_complete_step"] == STEPS
    assert status["jobs"][0]["slurm_state"] == "COMPLETED"
    assert status["last_metrics"]["step"] == STEPS

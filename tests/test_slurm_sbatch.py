"""slurm/train.sbatch: the plain sbatch route runs a run directory prepared by
`blt submit --prepare-only` under the same contract (snapshot imported, jobs.jsonl, logs/)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import blt
from dist_helpers import losses
from slurm_helpers import TINY, events, track, wait_job

pytestmark = pytest.mark.slurm


def test_plain_sbatch_template_runs_a_prepared_run_dir(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    r = blt(
        "submit",
        "cpu_tiny",
        *TINY,
        "train.steps=4",
        f"run_dir={run_dir}",
        "--nodes",
        "1",
        "--tasks-per-node",
        "1",
        "--time",
        "5",
        "--prepare-only",
    )
    command = r.stdout.splitlines()[1].split()
    assert (
        command[0] == "sbatch" and command[-2].endswith("slurm/train.sbatch") and command[-1] == str(run_dir)
    )
    assert not (run_dir / "jobs.jsonl").exists()  # prepared, not submitted

    # sbatch passes the environment on: the venv's python is the one on PATH in the job.
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    out = subprocess.run(
        [command[0], "--parsable", *command[1:]],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=True,
        cwd=tmp_path,
    )
    job = out.stdout.strip()
    track(job)
    assert wait_job(job) == "COMPLETED"
    (start,) = events(run_dir, "start")
    assert start["job"] == job and Path(start["code"]) == (run_dir / "code" / "blt_scale").resolve()
    assert events(run_dir, "exit")[0]["status"] == "completed"
    assert sorted(losses(run_dir)) == [1, 2, 3, 4]
    assert (run_dir / "logs" / f"{job}_0_log.err").is_file()
    assert "job " + job + " completed (sbatch" in blt("status", str(run_dir)).stdout

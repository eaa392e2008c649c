"""Job arrays (blt_scale.launch.submit_runs): three configs in one array with a parallelism
limit; each task trains its own config into its own run directory."""

from __future__ import annotations

import pytest
from dist_helpers import losses
from slurm_helpers import TINY, events, track, wait_job

from blt_scale.launch.config import LaunchConfig
from blt_scale.launch.submit import submit_runs
from blt_scale.train.recipe import load_recipe

pytestmark = pytest.mark.slurm


def test_array_of_three_configs(slurm_cluster, tmp_path):
    cfgs = [
        load_recipe(
            "cpu_tiny", [*TINY, "train.steps=4", f"train.seed={seed}", f"run_dir={tmp_path / f'seed{seed}'}"]
        )
        for seed in range(3)
    ]
    jobs = submit_runs(
        cfgs, LaunchConfig(nodes=1, tasks_per_node=1, time_min=10), tmp_path / "array", parallelism=2
    )
    for job in jobs:
        track(job.job_id)
    array_id = jobs[0].job_id.split("_")[0]
    assert [j.job_id for j in jobs] == [f"{array_id}_{i}" for i in range(3)]
    script = next((tmp_path / "array" / "logs").glob("*_submission.sh")).read_text()
    assert "#SBATCH --array=0-2%2" in script
    for job in jobs:
        assert wait_job(job.job_id) == "COMPLETED"

    first_losses = []
    for seed, job in enumerate(jobs):
        run_dir = tmp_path / f"seed{seed}"
        assert sorted(losses(run_dir)) == [1, 2, 3, 4]
        assert f"seed: {seed}" in (run_dir / "config.yaml").read_text()
        (start,) = events(run_dir, "start")
        assert start["job"] == job.job_id
        assert (run_dir / "logs" / "array" / f"{job.job_id}_0_log.out").exists()
        first_losses.append(losses(run_dir)[1])
    assert len(set(first_losses)) == 3, (
        "three seeds gave identical runs: the tasks did not get their own configs"
    )

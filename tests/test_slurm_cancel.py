"""Issue 15 item 10: `scancel` of a job with wandb on (the default). SLURM sends SIGTERM to every
process of the job, wandb's service included; the trainer must still save, exit 75 and be
recorded as cancelled, and `blt resume` continues with every metrics row once."""

from __future__ import annotations

import json
import subprocess

import pytest
from cli_helpers import blt
from dist_helpers import TINY, losses
from slurm_helpers import events, track, wait_job, wait_metrics

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
STEPS = 60


def test_scancel_with_wandb_on_is_cancelled_and_resumes_once(slurm_cluster, tmp_path):
    env = {"WANDB_MODE": "offline"}
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        env[var] = str(tmp_path / var.lower())
        (tmp_path / var.lower()).mkdir()
    overrides = [o for o in TINY if not o.startswith("wandb.")] + [
        "wandb.enabled=true",
        f"train.steps={STEPS}",
    ]
    run_dir = tmp_path / "run"
    place = ["--nodes", "1", "--tasks-per-node", "1"]
    r = blt("submit", "cpu_tiny", *overrides, f"run_dir={run_dir}", *place, env=env)
    job = r.stdout.split()[1]
    track(job)
    wait_metrics(run_dir, 3, job)
    subprocess.run(["scancel", job], check=True, capture_output=True, timeout=30)
    assert wait_job(job, hurry_requeue=False) == "CANCELLED"
    (stopped,) = events(run_dir, "exit")
    assert stopped["status"] == "cancelled" and stopped["code"] == 75, stopped
    saved = stopped["step"]
    assert 3 <= saved < STEPS and sorted(losses(run_dir)) == list(range(1, saved + 1))
    status = json.loads(blt("status", str(run_dir), "--json").stdout)
    assert status["state"] == "cancelled" and status["last_complete_step"] == saved

    r = blt("resume", str(run_dir), env=env)
    job2 = r.stdout.split()[1]
    track(job2)
    assert wait_job(job2) == "COMPLETED"
    assert events(run_dir, "exit")[-1]["status"] == "completed"
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))  # no row twice, none missing

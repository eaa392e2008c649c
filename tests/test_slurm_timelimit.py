"""Time limit: a job with a short `--time` and more steps than one allocation can train gets
SIGUSR2 before its limit (`--signal`), saves, requeues itself (`scontrol requeue` from rank 0) and
finishes over several allocations with an unbroken step sequence."""

from __future__ import annotations

import math
import statistics
import subprocess
import time

import pytest
from dist_helpers import losses, train_rows
from slurm_helpers import SHARED, STEPS, events, submit, wait_job

pytestmark = [pytest.mark.slurm, pytest.mark.multiproc, pytest.mark.slow]

TIME_MIN, SIGNAL_DELAY_S = 1, 40
# slurmctld checks time limits every 30 s: with a 1-minute limit and a 40 s warning, SIGUSR2
# arrives at most 50 s into an allocation (seen in slurmctld.log as early as 12 s: this Slurm may
# warn at its first check), so no allocation trains for more than 50 s. No larger warning:
# a task process still starting Python has no handler yet and dies of the signal (seen in CI with
# a 50 s warning: rank 0 killed by SIGUSR2 before submitit's first log line, the job lost).
LONGEST_ALLOCATION_S = 50


def test_short_time_limit_requeues_until_done(slurm_cluster, reference_run, tmp_path):
    rows = train_rows(reference_run)
    step_s = statistics.median((r["bytes_consumed"] / r["step"]) / r["bytes_per_s"] for r in rows)
    # More steps than the longest allocation can train at the speed measured on this machine.
    steps = max(STEPS, math.ceil(1.2 * LONGEST_ALLOCATION_S / step_s))
    run_dir = tmp_path / "run"
    overrides = [o for o in SHARED if not o.startswith("train.steps=")] + [f"train.steps={steps}"]
    job = submit(
        run_dir,
        overrides,
        2,
        1,
        "--time",
        str(TIME_MIN),
        "--signal-delay",
        str(SIGNAL_DELAY_S),
        "--max-requeues",
        "20",
    )

    # When the trainer starts slower than the warning comes (a loaded machine), each 1-minute
    # allocation trains a single step; once the time-limit path has been taken, give the job a
    # limit it can finish in, so the test stays short.
    deadline = time.monotonic() + 240
    while not any(e.get("requeue") == "self" for e in events(run_dir, "exit")):
        assert time.monotonic() < deadline, "no time-limit stop within 240 s"
        time.sleep(0.5)
    subprocess.run(
        ["scontrol", "update", f"jobid={job}", "TimeLimit=15"], check=True, capture_output=True, timeout=30
    )
    assert wait_job(job, timeout=600) == "COMPLETED"

    starts, exits = events(run_dir, "start"), events(run_dir, "exit")
    assert len(starts) >= 2 and [s["restart"] for s in starts] == list(range(len(starts)))
    *stops, done = exits
    assert done["status"] == "completed" and done["step"] == steps
    # Every allocation but the last ended on the time-limit warning and requeued itself.
    assert len(stops) == len(starts) - 1
    assert all(e["status"] == "stopped" and e["requeue"] == "self" for e in stops), stops
    assert 1 <= stops[0]["step"] < steps
    assert sorted(losses(run_dir)) == list(range(1, steps + 1))

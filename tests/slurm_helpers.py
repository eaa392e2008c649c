"""Shared pieces of the SLURM tests: tiny training overrides and polling helpers that always have
a deadline. The cluster itself and the reference run are fixtures in conftest.py."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from cli_helpers import blt
from dist_helpers import DETERMINISTIC, FSDP, TINY, losses

from blt_scale.launch import rundir

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "slurm" / "local_cluster.sh"
JOB_TIMEOUT_S = 240
ACTIVE = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "COMPLETING",
    "CONFIGURING",
    "SUSPENDED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
}


# Jobs submitted by the running test: the slurm_cluster fixture cancels those still active.
SUBMITTED: list[str] = []


def submit(run_dir: Path, overrides: list[str], nodes: int, tasks: int = 1, *options: str) -> str:
    r = blt(
        "submit",
        "cpu_tiny",
        *overrides,
        f"run_dir={run_dir}",
        "--nodes",
        str(nodes),
        "--tasks-per-node",
        str(tasks),
        *options,
    )
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines() if " " in line)
    assert lines["run_dir"] == str(run_dir.resolve()), r.stdout
    track(lines["job"])
    return lines["job"]


def track(job: str) -> None:
    """Cancel this job when the test ends, whatever its outcome."""
    SUBMITTED.append(job)


def job_state(job: str) -> tuple[str, str]:
    """(state, reason) from the controller, else from accounting once the job has left the queue."""
    r = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T|%r"], capture_output=True, text=True, timeout=30)
    out = r.stdout.strip()
    if r.returncode == 0 and out:
        state, _, reason = out.partition("|")
        return state, reason
    r = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "State", "-j", job], capture_output=True, text=True, timeout=30
    )
    states = r.stdout.split()
    return (states[0] if states else "UNKNOWN"), ""


def wait_job(job: str, timeout: float = JOB_TIMEOUT_S, hurry_requeue: bool = True) -> str:
    """Wait until the job has ended and return its final state. A requeued job waits out SLURM's
    requeue delay unless `hurry_requeue` releases it with StartTime=now."""
    deadline = time.monotonic() + timeout
    held_since = None
    while True:
        state, reason = job_state(job)
        if state not in ACTIVE and state != "UNKNOWN":
            return state
        held = state == "PENDING" and reason == "BeginTime"
        held_since = (held_since or time.monotonic()) if held else None
        # Not within the second of the requeue: slurmctld revokes the job's credentials with
        # one-second resolution, and an allocation started in that second fails ("Job credential
        # revoked"), which a user's job, waiting out the delay, never meets.
        if hurry_requeue and held and time.monotonic() - held_since >= 2.0:
            subprocess.run(
                ["scontrol", "update", f"jobid={job}", "StartTime=now"], capture_output=True, timeout=30
            )
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job], capture_output=True, timeout=30)
            raise TimeoutError(f"job {job} still {state} after {timeout} s (cancelled)")
        time.sleep(0.5)


def wait_metrics(run_dir: Path, rows: int, job: str, timeout: float = JOB_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while len(losses(run_dir)) < rows:
        state, _ = job_state(job)
        if state not in ACTIVE and state != "UNKNOWN":  # UNKNOWN: squeue failed under load, sacct lags
            raise AssertionError(f"job {job} ended ({state}) before {rows} metric rows")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{run_dir}: fewer than {rows} metric rows after {timeout} s")
        time.sleep(0.1)


def events(run_dir: Path, event: str) -> list[dict]:
    return [r for r in rundir.history(run_dir) if r["event"] == event]


def assert_same_losses(got: dict[int, float], want: dict[int, float], rel: float) -> None:
    assert sorted(got) == sorted(want), f"steps differ: {sorted(got)} vs {sorted(want)}"
    for step in want:
        assert abs(got[step] - want[step]) <= rel * abs(want[step]), (
            f"step {step}: {got[step]} vs {want[step]}"
        )


# The reference run: uninterrupted, local, `blt train --nproc 2` (conftest.reference_run).
STEPS = 24
SHARED = TINY + FSDP + DETERMINISTIC + [f"train.steps={STEPS}"]

"""Shared pieces of the SLURM tests: the project's local cluster (slurm/local_cluster.sh, started
once per session; tests skip, saying why, only when it cannot start — .ci/run starts it first, so
CI never skips), tiny training overrides, and polling helpers that always have a deadline."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dist_helpers import DETERMINISTIC, FSDP, TINY, losses  # noqa: F401 - re-exported for the SLURM tests

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


_STARTED: list[Path] = []
_SUBMITTED: list[str] = []


@pytest.fixture
def slurm_cluster():
    """The running cluster (started on first use); jobs a test leaves behind are cancelled."""
    if not _STARTED:
        try:
            r = subprocess.run([str(CLUSTER), "start"], capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as err:
            pytest.skip(f"local SLURM cluster cannot start ({CLUSTER} start): {err}")
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"local SLURM cluster cannot start ({CLUSTER} start exit {r.returncode}): {last}")
        _STARTED.append(CLUSTER)
    yield CLUSTER
    leftovers = [j for j in _SUBMITTED if job_state(j)[0] in ACTIVE]
    if leftovers:
        subprocess.run(["scancel", *leftovers], capture_output=True, timeout=30)
    _SUBMITTED.clear()


def blt(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "blt_scale.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if check:
        assert r.returncode == 0, (
            f"blt {' '.join(args[:2])} exit {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
        )
    return r


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
    _SUBMITTED.append(job)


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
        if state not in ACTIVE:
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


@pytest.mark.slurm
def test_local_cluster_has_two_idle_nodes_and_accounting(slurm_cluster):
    r = subprocess.run([str(slurm_cluster), "start"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "already running" in r.stderr, r.stderr  # start is a no-op when up
    nodes = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True, timeout=30
    ).stdout.split()
    assert sorted(nodes) == ["n1", "n2"]
    assert subprocess.run(["sacct", "-n", "-X"], capture_output=True, timeout=30).returncode == 0


# One tiny deterministic FSDP run that several tests compare against (same world size resumes
# bit for bit in this mode, so "equal" means equal to float rounding of the JSON).
STEPS = 24
SHARED = TINY + FSDP + DETERMINISTIC + [f"train.steps={STEPS}"]


_REFERENCE: list[Path] = []


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> Path:
    """The uninterrupted run, started locally with `blt train --nproc 2` once per session (test
    modules import this fixture, which gives each its own instance; the cache keeps one run)."""
    if not _REFERENCE:
        run_dir = tmp_path_factory.mktemp("slurm_reference") / "local"
        blt("train", "cpu_tiny", *SHARED, f"run_dir={run_dir}", "--nproc", "2")
        assert len(losses(run_dir)) == STEPS
        _REFERENCE.append(run_dir)
    return _REFERENCE[0]

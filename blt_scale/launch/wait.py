"""Waiting on SLURM jobs with a progress line at least every `every_s` seconds, so a command that
waits (`blt sweep --wait`, `blt prep entropies --slurm-parts`) never sits silent."""

from __future__ import annotations

import sys
import time
from collections import Counter


def job_state(job) -> str:
    """A submitit job's state in one lower-case word; `done` once it has ended either way."""
    if job.done():
        return "done"
    try:
        state = str(job.state).lower()
    except Exception:  # submitit's watcher may not know the job yet
        return "pending"
    return "running" if state in ("running", "completing") else "pending"


def progress_line(what: str, jobs: list, elapsed_s: float) -> str:
    counts = Counter(job_state(j) for j in jobs)
    parts = ", ".join(f"{counts[k]} {k}" for k in ("pending", "running", "done"))
    return f"{what}: {parts} of {len(jobs)} ({elapsed_s:.0f} s)"


def wait_jobs(
    jobs: list, what: str, timeout_s: float | None = None, every_s: float = 30.0, poll_s: float = 2.0
):
    """Block until every job has ended; print a progress line to stderr when anything changes and
    at least every `every_s` seconds. A timeout is an error naming `what`."""
    started = time.monotonic()
    last_line, last_print = None, -float("inf")
    while True:
        elapsed = time.monotonic() - started
        line = progress_line(what, jobs, elapsed)
        counts = line.split(" (")[0]
        if counts != last_line or elapsed - last_print >= every_s:
            print(line, file=sys.stderr, flush=True)
            last_line, last_print = counts, elapsed
        if all(j.done() for j in jobs):
            return
        if timeout_s is not None and elapsed > timeout_s:
            raise RuntimeError(f"{what}: not finished after {timeout_s:.0f} s")
        time.sleep(min(poll_s, every_s))

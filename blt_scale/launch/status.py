"""`blt status RUN_DIR`: the run's job history (jobs.jsonl, with SLURM's view of each job where
sacct answers), its latest complete checkpoint and its last metrics."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from blt_scale.launch import rundir

METRIC_KEYS = ("step", "loss", "bpb", "lr", "grad_norm", "bytes_per_s")


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """State of each job according to SLURM accounting; empty where sacct is missing or fails
    (status then relies on the run directory alone)."""
    if not job_ids or shutil.which("sacct") is None:
        return {}
    try:
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return {}
    states = {}
    for line in out.splitlines():
        job, _, state = line.partition("|")
        states[job.strip()] = state.split()[0] if state.strip() else "UNKNOWN"
    return states


def run_status(run_dir: str | Path) -> dict:
    from blt_scale.launch.task import last_step
    from blt_scale.train.metrics import read_metrics

    run_dir = Path(run_dir).resolve()
    if not (run_dir / rundir.JOBS).exists() and not (run_dir / rundir.LAUNCH).exists():
        raise FileNotFoundError(
            f"{run_dir}: no {rundir.JOBS} or {rundir.LAUNCH}; not a run submitted with `blt submit`"
        )
    rows = rundir.history(run_dir)
    order: list[str] = []
    for r in rows:
        if r.get("job") and r["job"] not in order:
            order.append(r["job"])
    slurm = slurm_states(order)
    jobs = []
    for job in order:
        mine = [r for r in rows if r.get("job") == job]
        starts = [r for r in mine if r["event"] == "start"]
        exits = [r for r in mine if r["event"] == "exit"]
        jobs.append(
            {
                "job": job,
                "submitted_as": next(
                    (r["event"] for r in mine if r["event"] in ("submit", "resume")), "sbatch"
                ),
                "allocations": len(starts),
                "nodes": starts[-1]["nodes"] if starts else None,
                "world": starts[-1]["world"] if starts else None,
                "exits": [
                    {k: e[k] for k in ("status", "code", "step", "requeue", "reason") if k in e}
                    for e in exits
                ],
                "state": _state(exits, slurm.get(job)),
                "slurm_state": slurm.get(job),
            }
        )
    metrics = [m for m in read_metrics(run_dir) if "split" not in m]
    last = {k: metrics[-1][k] for k in METRIC_KEYS if k in metrics[-1]} if metrics else None
    return {
        "run_dir": str(run_dir),
        "state": jobs[-1]["state"] if jobs else "not submitted",
        "last_complete_step": last_step(run_dir),
        "last_metrics": last,
        "jobs": jobs,
    }


def _state(exits: list[dict], slurm: str | None) -> str:
    """One word for a job: what the run directory says happened last, unless SLURM knows it is
    still pending or running (a requeued job's last exit is a stop)."""
    if slurm in (
        "PENDING",
        "RUNNING",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "CONFIGURING",
        "COMPLETING",
    ):
        return slurm.lower()
    if exits:
        last = exits[-1]
        if last["status"] == "stopped" and last.get("requeue") in ("self", "slurm") and slurm is None:
            return "requeued"
        return last["status"]
    return (slurm or "unknown").lower()


def format_status(s: dict) -> str:
    lines = [
        f"run_dir {s['run_dir']}",
        f"state {s['state']}",
        f"last_complete_step {s['last_complete_step']}",
    ]
    if s["last_metrics"]:
        lines.append(
            "last_metrics "
            + " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in s["last_metrics"].items()
            )
        )
    for j in s["jobs"]:
        exits = ", ".join(
            f"{e['status']}@{e.get('step', '?')}"
            + (f"(requeue:{e['requeue']})" if e.get("requeue") else "")
            + (f"(code {e['code']}: {e['reason']})" if e.get("reason") else "")
            for e in j["exits"]
        )
        lines.append(
            f"job {j['job']} {j['state']} ({j['submitted_as']}; {j['allocations']} allocation(s); "
            f"nodes {','.join(j['nodes'] or [])}; world {j['world']}; slurm {j['slurm_state'] or '-'})"
            + (f" exits: {exits}" if exits else "")
        )
    return "\n".join(lines)

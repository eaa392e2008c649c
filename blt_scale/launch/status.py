"""`blt status RUN_DIR`: where any run stands, whether `blt train` or `blt submit` started it: what
it trains (model kind, parameters, strategy, world size), its latest complete checkpoint, its
last training and validation metrics with throughput and ETA, and for SLURM runs the job history
(jobs.jsonl, with SLURM's view of each job where sacct answers)."""

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


def config_summary(run_dir: Path) -> dict | None:
    """Model kind, parameters, strategy and schedule from the run's resolved config.yaml."""
    from blt_scale.checkpoint.layout import CONFIG
    from blt_scale.model.flops import model_flops
    from blt_scale.train.recipe import saved_recipe

    if not (run_dir / CONFIG).is_file():
        return None
    cfg = saved_recipe(run_dir)
    return {
        "model": cfg.model.kind,
        "params": model_flops(cfg.model, cfg.data.seq_len, 1.0).total_params,
        "strategy": cfg.parallel.strategy,
        "steps": cfg.train.steps,
        "global_batch": cfg.train.global_batch,
        "seq_len": cfg.data.seq_len,
    }


def slurm_jobs(run_dir: Path) -> list[dict]:
    """One entry per SLURM job of the run, oldest first ([] for a run never submitted)."""
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
    return jobs


def run_status(run_dir: str | Path) -> dict:
    from blt_scale.checkpoint.layout import latest_complete
    from blt_scale.launch.task import last_step
    from blt_scale.train.metrics import read_metrics
    from blt_scale.train.run_lock import live_holder

    run_dir = Path(run_dir).resolve()
    known = ("config.yaml", "metrics.jsonl", rundir.JOBS, rundir.LAUNCH)
    if not any((run_dir / name).exists() for name in known):
        raise FileNotFoundError(
            f"{run_dir}: none of {', '.join(known)}; "
            "not a run directory (`blt train` or `blt submit` makes one)"
        )
    summary = config_summary(run_dir)
    rows = read_metrics(run_dir)
    train = [m for m in rows if "split" not in m]
    val = [m for m in rows if m.get("split") == "val"]
    last = {k: train[-1][k] for k in METRIC_KEYS if k in train[-1]} if train else None
    jobs = slurm_jobs(run_dir)
    step = train[-1]["step"] if train else 0
    total = summary["steps"] if summary else None
    eta = None
    if train and total and step < total and train[-1].get("bytes_per_s"):
        eta = (total - step) * summary["global_batch"] * summary["seq_len"] / train[-1]["bytes_per_s"]
    checkpoint = latest_complete(run_dir)
    holder = live_holder(run_dir)
    if jobs:
        state = jobs[-1]["state"]
    elif holder is not None:
        state = "running"
    elif total is not None and step >= total:
        state = "finished"
    else:
        state = "not started" if not train else "incomplete"
    return {
        "run_dir": str(run_dir),
        "state": state,
        "config": summary,
        "world_size": train[-1].get("world_size") if train else None,
        "step": step,
        "eta_s": eta,
        "last_complete_step": last_step(run_dir),
        "checkpoint": str(checkpoint) if checkpoint else None,
        "last_metrics": last,
        "last_val": {"step": val[-1]["step"], "bpb": val[-1]["bpb"]} if val else None,
        "trainer": holder,
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
    lines = [f"run_dir {s['run_dir']}", f"state {s['state']}"]
    c = s["config"]
    if c:
        lines.append(
            f"model {c['model']} ({c['params']:,} parameters), strategy {c['strategy']}, "
            f"world size {s['world_size'] or '?'}, step {s['step']}/{c['steps']}"
            + (f", eta {s['eta_s']:.0f} s at the last throughput" if s["eta_s"] is not None else "")
        )
    lines.append(
        f"last_complete_step {s['last_complete_step']}" + (f" ({s['checkpoint']})" if s["checkpoint"] else "")
    )
    if s["last_metrics"]:
        lines.append(
            "last_metrics "
            + " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in s["last_metrics"].items()
            )
        )
    if s["last_val"]:
        lines.append(f"last_val step={s['last_val']['step']} bpb={s['last_val']['bpb']:.4f}")
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

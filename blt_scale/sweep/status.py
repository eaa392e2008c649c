"""`blt status SWEEP_DIR`: the planned runs of a sweep (its plan.jsonl) and where each stands."""

from __future__ import annotations

from pathlib import Path

from blt_scale.files import read_jsonl
from blt_scale.launch.status import run_status

PLAN = "plan.jsonl"


def is_sweep_dir(path: str | Path) -> bool:
    return (Path(path) / PLAN).is_file()


def run_state(run: dict) -> str:
    """planned (nothing written yet), running/pending/failed/stopped (SLURM's word), incomplete
    (trained some steps, no final evaluation), done (final validation row exists)."""
    run_dir = Path(run["run_dir"])
    if not run_dir.is_dir():
        return "planned"
    try:
        status = run_status(run_dir)
    except FileNotFoundError:
        return "planned"
    if status["last_val"] and status["last_val"]["step"] == run["steps"]:
        return "done"
    return {"finished": "incomplete", "completed": "incomplete"}.get(status["state"], status["state"])


def sweep_status(sweep_dir: str | Path) -> dict:
    sweep_dir = Path(sweep_dir).resolve()
    plan = read_jsonl(sweep_dir / PLAN)
    runs = []
    for run in plan:
        val = [r for r in read_jsonl(Path(run["run_dir"]) / "metrics.jsonl") if r.get("split") == "val"]
        final = next((r["bpb"] for r in reversed(val) if r["step"] == run["steps"]), None)
        runs.append(
            {
                "name": f"{run['variant']}-{run['size']}-{run['budget_flops']:.3g}",
                "variant": run["variant"],
                "size": run["size"],
                "budget_flops": run["budget_flops"],
                "state": run_state(run),
                "val_bpb": final,
                "run_dir": run["run_dir"],
            }
        )
    counts: dict[str, int] = {}
    for r in runs:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    return {"sweep_dir": str(sweep_dir), "runs": runs, "counts": counts}


def format_sweep_status(s: dict) -> str:
    lines = [
        f"sweep {s['sweep_dir']}: " + ", ".join(f"{n} {state}" for state, n in sorted(s["counts"].items())),
        "| run | state | val bpb |",
        "|---|---|---:|",
    ]
    for r in s["runs"]:
        bpb = f"{r['val_bpb']:.4f}" if r["val_bpb"] is not None else "-"
        lines.append(f"| {r['name']} | {r['state']} | {bpb} |")
    return "\n".join(lines)

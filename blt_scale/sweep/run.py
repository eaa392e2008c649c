"""Running a sweep: plan, write the plan, train what is not finished (here, one after another,
or as one SLURM job array), then aggregate and fit once every run has its final evaluation."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from blt_scale.launch.wait import wait_jobs
from blt_scale.sweep.plan import PlannedRun, SweepConfig, plan_sweep, plan_table
from blt_scale.sweep.report import (
    collect,
    fit_results,
    fits_markdown,
    plot_results,
    run_finished,
    write_results,
)


def train_command(run: PlannedRun) -> list[str]:
    return [sys.executable, "-m", "blt_scale.cli", "train", run.recipe, *run.overrides]


def run_local(runs: list[PlannedRun]) -> None:
    """Train each run in its own process, one after another; a failure stops the sweep loudly."""
    for run in tqdm(runs, desc="sweep runs", unit="run"):
        log = Path(run.run_dir) / "sweep_train.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as out:
            code = subprocess.run(train_command(run), stdout=out, stderr=subprocess.STDOUT).returncode
        if code != 0:
            raise RuntimeError(f"sweep run {run.name} failed with exit code {code}; see {log}")


def write_plan(runs: list[PlannedRun], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "plan.md").write_text(plan_table(runs) + "\n")
    (out_dir / "plan.jsonl").write_text("".join(json.dumps(asdict(r)) + "\n" for r in runs))


def aggregate(sweep: SweepConfig, runs: list[PlannedRun]) -> dict:
    out = Path(sweep.run_dir)
    rows = collect(runs)
    write_results(rows, out)
    fits = fit_results(rows)
    (out / "fits.md").write_text(fits_markdown(fits, rows))
    plot_results(rows, fits, out)
    return {"results": str(out / "results.csv"), "runs": len(rows)}


def submit_slurm(sweep_cfg: SweepConfig, runs: list[PlannedRun]) -> list:
    """All pending runs as one SLURM job array sharing one code snapshot."""
    from blt_scale.launch.submit import submit_runs
    from blt_scale.train.recipe import load_recipe

    cfgs = [load_recipe(r.recipe, r.overrides) for r in runs]
    return submit_runs(cfgs, sweep_cfg.launch, Path(sweep_cfg.run_dir) / "array", sweep_cfg.max_parallel)


def sweep(sweep_cfg: SweepConfig, sweep_file: Path, local: bool, dry_run: bool, wait: bool = False) -> dict:
    """Plan and print the grid; launch unfinished runs (here or as one SLURM array); aggregate
    once every run has its final evaluation. Running it again launches only what is unfinished."""
    runs = plan_sweep(sweep_cfg, sweep_file)
    write_plan(runs, Path(sweep_cfg.run_dir))
    print(plan_table(runs), file=sys.stderr)
    pending = [r for r in runs if not run_finished(r)]
    if dry_run:
        return {"planned": len(runs), "pending": len(pending)}
    if pending and local:
        run_local(pending)
    elif pending:
        jobs = submit_slurm(sweep_cfg, pending)
        summary = {"planned": len(runs), "submitted": len(pending), "job": str(jobs[0].job_id).split("_")[0]}
        if not wait:
            return summary
        try:
            wait_jobs(jobs, f"sweep array {summary['job']}", sweep_cfg.wait_timeout_s)
        except RuntimeError as err:
            raise RuntimeError(f"{err}; run `blt sweep` again later") from None
        unfinished = [r.name for r in pending if not run_finished(r)]
        if unfinished:
            raise RuntimeError(
                f"array job {summary['job']} ended with unfinished runs: {', '.join(unfinished)}"
            )
    return {"planned": len(runs), "trained": len(pending), **aggregate(sweep_cfg, runs)}

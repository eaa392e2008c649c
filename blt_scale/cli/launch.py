"""`blt submit`, `blt resume` and `blt status`."""

from __future__ import annotations

import argparse
import json

from blt_scale.cli.args import add_json_flag, add_recipe_args, placement_args, placement_changes


def register(sub) -> None:
    p = sub.add_parser(
        "submit", help="submit a training run to SLURM (submitit); prints the job id and run_dir"
    )
    add_recipe_args(p)
    placement_args(p, required=True)
    p.add_argument(
        "--prepare-only",
        action="store_true",
        help="write the run directory and print the `sbatch slurm/train.sbatch` line instead of submitting",
    )
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser(
        "resume", help="resubmit a stopped or failed SLURM run, on the same or another number of nodes"
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory `blt submit` printed")
    placement_args(p, required=False)
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser(
        "status",
        help="where a run stands (model, checkpoint, metrics, ETA, SLURM jobs), or a sweep's table of runs",
    )
    p.add_argument("run_dir", metavar="RUN_DIR|SWEEP_DIR", help="a run directory or a sweep's run_dir")
    add_json_flag(p, "the status")
    p.set_defaults(func=cmd_status)


def _report(job, run_dir, dry_run: bool) -> int:
    if dry_run:
        print(job, end="")
        print(f"# run_dir {run_dir}")
    else:
        print(f"job {job.job_id}")
        print(f"run_dir {run_dir}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from blt_scale.config import ConfigError
    from blt_scale.launch.config import LaunchConfig
    from blt_scale.launch.submit import submit
    from blt_scale.train.recipe import load_recipe

    cfg = load_recipe(args.recipe, args.overrides)
    try:
        launch = LaunchConfig(**placement_changes(args))
    except ValueError as err:
        raise ConfigError(f"blt submit options: {err}".replace("\n", " ")) from None
    job, run_dir = submit(cfg, launch, dry_run=args.dry_run, prepare_only=args.prepare_only)
    if args.prepare_only:
        print(f"run_dir {run_dir}")
        print(job)
        return 0
    return _report(job, run_dir, args.dry_run)


def cmd_resume(args: argparse.Namespace) -> int:
    from blt_scale.launch.submit import RunFinished, resume

    try:
        job, run_dir = resume(args.run_dir, placement_changes(args), dry_run=args.dry_run)
    except RunFinished as done:
        print(f"{done}; no job submitted")
        return 0
    return _report(job, run_dir, args.dry_run)


def cmd_status(args: argparse.Namespace) -> int:
    from blt_scale.launch.status import format_status, run_status
    from blt_scale.sweep.status import format_sweep_status, is_sweep_dir, sweep_status

    if is_sweep_dir(args.run_dir):
        status = sweep_status(args.run_dir)
        print(json.dumps(status, indent=2) if args.json else format_sweep_status(status))
        return 0
    status = run_status(args.run_dir)
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0

"""`blt submit`, `blt resume` and `blt status`."""

from __future__ import annotations

import argparse
import json

from blt_scale.launch.config import parse_time


def placement_args(p: argparse.ArgumentParser, required: bool) -> None:
    """Options shared by submit and resume; on resume, an option not given keeps its saved value."""
    p.add_argument("--nodes", type=int, required=required, default=None)
    ranks = p.add_mutually_exclusive_group(required=required)
    ranks.add_argument("--gpus-per-node", type=int, default=None, help="one rank per GPU")
    ranks.add_argument("--tasks-per-node", type=int, default=None, help="rank processes per node (CPU)")
    p.add_argument("--cpus-per-task", type=int, default=None)
    p.add_argument("--mem", type=float, default=None, metavar="GB", help="memory per node, GB")
    p.add_argument("--time", default=None, help="time limit per allocation: minutes or HH:MM:SS")
    for name in ("partition", "account", "qos", "constraint", "exclude", "job-name"):
        p.add_argument(f"--{name}", default=None)
    p.add_argument(
        "--signal-delay",
        type=int,
        default=None,
        metavar="S",
        help="SIGUSR2 this many seconds before the limit",
    )
    p.add_argument("--max-requeues", type=int, default=None, help="requeues after time-limit stops, per job")
    p.add_argument(
        "--setup",
        action="append",
        default=None,
        metavar="LINE",
        help="shell line run before srun (repeatable)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the sbatch script instead of submitting")


def placement_changes(args: argparse.Namespace) -> dict:
    values = {
        "nodes": args.nodes,
        "gpus_per_node": args.gpus_per_node,
        "tasks_per_node": args.tasks_per_node,
        "cpus_per_task": args.cpus_per_task,
        "mem_gb": args.mem,
        "time_min": parse_time(args.time) if args.time is not None else None,
        "partition": args.partition,
        "account": args.account,
        "qos": args.qos,
        "constraint": args.constraint,
        "exclude": args.exclude,
        "job_name": args.job_name,
        "signal_delay_s": args.signal_delay,
        "max_requeues": args.max_requeues,
        "setup": args.setup,
    }
    changes = {k: v for k, v in values.items() if v is not None}
    # Choosing one way to count ranks replaces the other.
    if args.gpus_per_node is not None:
        changes["tasks_per_node"] = None
    if args.tasks_per_node is not None:
        changes["gpus_per_node"] = None
    return changes


def register(sub) -> None:
    from blt_scale.cli import add_recipe_args

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
    p.add_argument("run_dir", metavar="RUN_DIR")
    placement_args(p, required=False)
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("status", help="job history, last complete step and last metrics of a SLURM run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--json", action="store_true")
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
    from blt_scale.recipe import load_recipe

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
    from blt_scale.launch.submit import resume

    job, run_dir = resume(args.run_dir, placement_changes(args), dry_run=args.dry_run)
    return _report(job, run_dir, args.dry_run)


def cmd_status(args: argparse.Namespace) -> int:
    from blt_scale.launch.status import format_status, run_status

    status = run_status(args.run_dir)
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0

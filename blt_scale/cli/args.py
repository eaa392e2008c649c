"""Argument shapes shared by the commands: a recipe with its dotted overrides, a SLURM placement,
sizes and part indices. Every command module builds its parser from these."""

from __future__ import annotations

import argparse
import re

from blt_scale.config import size_bytes
from blt_scale.launch.config import parse_time


class HelpWithDefaults(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the text already says it or there is
    none to say (None, flags off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            not action.option_strings
            or "default" in text
            or action.default in (None, False, argparse.SUPPRESS)
        ):
            return text
        return text + " (default: %(default)s)"


def use_help_with_defaults(parser: argparse.ArgumentParser) -> None:
    """Give the parser and every subcommand's parser below it HelpWithDefaults."""
    parser.formatter_class = HelpWithDefaults
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                use_help_with_defaults(sub)


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe file, or a name under recipes/ (e.g. cpu_tiny)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.steps=100")


def add_json_flag(p: argparse.ArgumentParser, what: str = "the result") -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as one JSON object")


def parse_size(text: str) -> int:
    """'64MB', '512KiB', '1000000' -> bytes."""
    try:
        return size_bytes(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_part(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not int(match.group(1)) < int(match.group(2)):
        raise argparse.ArgumentTypeError(f"expected --part i/n with 0 <= i < n (e.g. 0/4), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def placement_args(p, required: bool) -> None:
    """SLURM placement options (submit, resume, prep entropies --slurm-parts); on resume, an option
    not given keeps its saved value."""
    p.add_argument("--nodes", type=int, required=required, default=None, help="nodes per job")
    ranks = p.add_mutually_exclusive_group(required=required)
    ranks.add_argument("--gpus-per-node", type=int, default=None, help="one rank per GPU")
    ranks.add_argument("--tasks-per-node", type=int, default=None, help="rank processes per node (CPU)")
    p.add_argument("--cpus-per-task", type=int, default=None, help="CPU cores per rank")
    p.add_argument("--mem", type=float, default=None, metavar="GB", help="memory per node, GB")
    p.add_argument("--time", default=None, help="time limit per allocation: minutes or HH:MM:SS")
    for name in ("partition", "account", "qos", "constraint", "exclude", "job-name"):
        p.add_argument(f"--{name}", default=None, help=f"sbatch --{name} (default: the cluster's)")
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
    """The LaunchConfig fields the placement options set (only those given)."""
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

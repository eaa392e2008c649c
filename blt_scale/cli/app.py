"""The `blt` command. Each subcommand parses its arguments and calls the library; errors become one
line on stderr and a non-zero exit (a traceback only with --debug).

Commands live in one module per group (cli/train.py, cli/prep.py, ...), each with
`register(subparsers)`; the heavy imports happen inside the commands, so `blt --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from blt_scale.cli.args import use_help_with_defaults
from blt_scale.config import ConfigError

EXIT_ERROR = 2

COMMAND_MODULES: list[str] = [
    "blt_scale.cli.prep",
    "blt_scale.cli.train",
    "blt_scale.cli.evaluate",
    "blt_scale.cli.generate",
    "blt_scale.cli.adapt",
    "blt_scale.cli.checkpoint",
    "blt_scale.cli.measure",
    "blt_scale.cli.plot",
    "blt_scale.cli.launch",
    "blt_scale.cli.sweep",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blt", description="Byte Latent Transformer training at scale")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _debug_everywhere(sub)
    use_help_with_defaults(parser)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("blt-scale")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _debug_everywhere(subparsers) -> None:
    """`--debug` after the subcommand too (`blt eval RUN --debug`); given nowhere, it stays False."""
    for parser in subparsers.choices.values():
        parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
        for action in parser._subparsers._group_actions if parser._subparsers else ():
            if isinstance(action, argparse._SubParsersAction):
                _debug_everywhere(action)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # KEY=VALUE overrides may come after options (`blt train cpu_tiny --nproc 2 train.steps=5`):
    # argparse stops filling a positional list at the first option, so collect the rest here.
    args, extra = parser.parse_known_args(argv)
    unknown = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as err:
        if args.debug:
            raise
        print(f"blt {args.command}: error: {err}", file=sys.stderr)
        return EXIT_ERROR

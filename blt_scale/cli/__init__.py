"""The `blt` command line: one module per command group, built on cli/args.py."""

from blt_scale.cli.app import main

__all__ = ["main"]

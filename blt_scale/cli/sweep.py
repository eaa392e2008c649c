"""`blt sweep SWEEP.yaml [KEY=VALUE ...] [--local | --wait] [--dry-run]`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_sweep(args: argparse.Namespace) -> int:
    from blt_scale import config
    from blt_scale.sweep.plan import SweepConfig
    from blt_scale.sweep.run import sweep

    path = Path(args.sweep)
    cfg = config.load(SweepConfig, path, args.overrides)
    print(json.dumps(sweep(cfg, path, local=args.local, dry_run=args.dry_run, wait=args.wait)))
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "sweep", help="FLOP-matched scaling sweep: plan, train (locally or as a SLURM array), fit, plot"
    )
    p.add_argument("sweep", help="sweep recipe, e.g. recipes/sweeps/cpu_isoflop.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides of the sweep recipe")
    p.add_argument("--local", action="store_true", help="train the runs one after another on this machine")
    p.add_argument("--dry-run", action="store_true", help="print and write the planned grid only")
    p.add_argument("--wait", action="store_true", help="SLURM: wait for the array, then aggregate")
    p.set_defaults(func=cmd_sweep)

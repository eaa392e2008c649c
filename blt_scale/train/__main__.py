"""The rank process: `python -m blt_scale.train RECIPE [k=v ...] [--resume auto|never|PATH]`, as
started by `blt train --nproc`, torchrun or srun (one per rank; the environment says which)."""

from __future__ import annotations

import argparse
import sys

from blt_scale.config import ConfigError
from blt_scale.train.exit_codes import EXIT_CONFIG
from blt_scale.train.recipe import load_recipe
from blt_scale.train.run import exit_process, run_training


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m blt_scale.train")
    p.add_argument("recipe", help="recipe file or name under recipes/")
    p.add_argument("overrides", nargs="*", help="dotted KEY=VALUE overrides")
    p.add_argument(
        "--resume", default="auto", help="auto (latest complete checkpoint), never, or a checkpoint dir"
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    try:
        cfg = load_recipe(args.recipe, args.overrides)
    except ConfigError as err:
        print(f"blt train: error: {err}", file=sys.stderr, flush=True)
        exit_process(EXIT_CONFIG)
    exit_process(run_training(cfg, args.resume, args.debug))


if __name__ == "__main__":
    main()

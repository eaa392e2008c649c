"""`blt train RECIPE [k=v ...] [--nproc N] [--resume ...]`."""

from __future__ import annotations

import argparse

from blt_scale.cli.args import add_recipe_args


def register(sub) -> None:
    p = sub.add_parser("train", help="train a recipe: in this process, or on N local ranks with --nproc N")
    add_recipe_args(p)
    p.add_argument(
        "--nproc", type=int, default=None, help="local rank processes (FSDP over gloo on CPU, nccl on GPU)"
    )
    p.add_argument(
        "--resume",
        default="auto",
        help="auto: latest complete checkpoint of run_dir (default); never; or a step_N dir",
    )
    p.set_defaults(func=cmd_train)


def train_prerequisites(cfg, debug: bool) -> int:
    """Train (or finish, or find finished) each recipe of train.prerequisites in this process, before
    any rank of this run starts; the first failure's exit code stops there."""
    import sys

    from blt_scale.train.recipe import load_recipe
    from blt_scale.train.run import run_training

    for name in cfg.train.prerequisites:
        print(f"prerequisite {name}: ", end="", file=sys.stderr, flush=True)
        code = run_training(load_recipe(name), "auto", debug)
        if code:
            return code
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from blt_scale.train.recipe import load_recipe

    cfg = load_recipe(args.recipe, args.overrides)  # fail here, once, before any rank starts
    code = train_prerequisites(cfg, getattr(args, "debug", False))
    if code:
        return code
    if args.nproc is not None:
        from blt_scale.train.local_ranks import launch

        if args.nproc < 1:
            raise ValueError(f"--nproc must be at least 1, got {args.nproc}")
        cfg.train.micro_batch_for(args.nproc)  # a batch that does not split over the ranks fails here too
        return launch([args.recipe, *args.overrides, "--resume", args.resume], args.nproc)
    from blt_scale.train.run import exit_process, run_training

    exit_process(run_training(cfg, args.resume, getattr(args, "debug", False)))

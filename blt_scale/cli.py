"""The `blt` command. Each subcommand parses its arguments and calls the library; errors become one
line on stderr and a non-zero exit (a traceback only with --debug)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from blt_scale.config import ConfigError

EXIT_ERROR = 2


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe file, or a name under recipes/ (e.g. cpu_tiny)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.steps=100")


def default_patch_bytes(cfg) -> float:
    """Mean bytes per patch of the recipe's patcher: exact for static/byte, measured on the
    embedded corpus for space; entropy patching needs it given (it depends on the data)."""
    from blt_scale.data.builtin import stdlib_documents
    from blt_scale.data.packing import document_ids
    from blt_scale.model.patcher import mean_patch_bytes

    mode = cfg.patcher.mode
    if cfg.model.kind not in ("blt", "brain_blt") or mode == "byte":
        return 1.0
    if mode == "static":
        return float(min(cfg.patcher.static_size, cfg.patcher.max_patch_len or cfg.patcher.static_size))
    if mode == "space":
        import numpy as np
        import torch

        ids = torch.from_numpy(np.concatenate([document_ids(d) for d in stdlib_documents(1_000_000)]))[None]
        return mean_patch_bytes(ids, cfg.patcher)
    raise ConfigError("patcher.mode=entropy: give --patch-bytes (the mean patch size depends on the data)")


def cmd_flops(args: argparse.Namespace) -> int:
    from blt_scale.model.flops import model_flops
    from blt_scale.recipe import load_recipe

    cfg = load_recipe(args.recipe, args.overrides)
    patch_bytes = args.patch_bytes or default_patch_bytes(cfg)
    report = model_flops(cfg.model, cfg.data.seq_len, patch_bytes)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    print(f"{args.recipe}: seq_len {cfg.data.seq_len}, {patch_bytes:.3f} bytes/patch")
    print(f"{'component':<22}{'params':>16}{'linear/byte':>16}{'attention/byte':>16}")
    for name in report.params:
        lin, att = report.linear.get(name, 0.0), report.attention.get(name, 0.0)
        print(f"{name:<22}{report.params[name]:>16,}{lin:>16.4g}{att:>16.4g}")
    total_lin, total_att = sum(report.linear.values()), sum(report.attention.values())
    print(f"{'total':<22}{report.total_params:>16,}{total_lin:>16.4g}{total_att:>16.4g}")
    print(
        f"forward FLOPs/byte {report.forward_per_byte:.4g}, training FLOPs/byte {report.train_per_byte:.4g}"
    )
    return 0


# Modules that add their own subcommands: each has `register(subparsers)`; the heavy imports
# happen inside the commands, so `blt --help` stays fast.
COMMAND_MODULES: list[str] = [
    "blt_scale.data.prep_cli",
    "blt_scale.train.cli",
    "blt_scale.sweep.cli",
    "blt_scale.launch.cli",
    "blt_scale.parallel.ds_checkpoint",
    "blt_scale.train.eval_brain",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blt", description="Byte Latent Transformer training at scale")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)

    p = sub.add_parser("flops", help="parameters and FLOPs per byte of a recipe, by component")
    add_recipe_args(p)
    p.add_argument(
        "--patch-bytes", type=float, default=None, help="mean bytes per patch (default: from the patcher)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_flops)

    p = sub.add_parser(
        "calibrate", help="the entropy threshold that gives a target mean patch size on a dataset"
    )
    add_recipe_args(p)
    p.add_argument(
        "--data", required=True, help="a dataset with entropies (`blt prep entropies`), path or fsspec URI"
    )
    p.add_argument(
        "--target-patch-bytes", type=float, required=True, help="the mean patch size wanted, in bytes"
    )
    p.add_argument(
        "--documents", type=int, default=512, help="documents sampled from the split (default: 512)"
    )
    p.add_argument("--split", default="train", help="split to sample (default: train)")
    p.add_argument(
        "--json", action="store_true", help="print threshold, field, mean_patch_bytes, documents as JSON"
    )
    p.set_defaults(func=cmd_calibrate)

    return parser


def cmd_calibrate(args: argparse.Namespace) -> int:
    from blt_scale.data.calibrate import calibrate
    from blt_scale.recipe import load_recipe

    cfg = load_recipe(args.recipe, args.overrides)
    row = calibrate(
        args.data, cfg.patcher, args.target_patch_bytes, args.documents, args.split, cfg.data.cache_dir
    )
    print(
        json.dumps(row)
        if args.json
        else f"{row['field']}={row['threshold']:.6g} gives {row['mean_patch_bytes']:.3f} "
        f"bytes/patch on {row['documents']} documents of {args.data} ({args.split})"
    )
    return 0


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


if __name__ == "__main__":
    sys.exit(main())

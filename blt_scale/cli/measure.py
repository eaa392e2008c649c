"""`blt flops` (parameters and FLOPs per byte of a recipe, by component) and `blt calibrate` (the
entropy threshold that gives a target mean patch size on a dataset)."""

from __future__ import annotations

import argparse
import json

from blt_scale.cli.args import add_json_flag, add_recipe_args


def register(sub) -> None:
    p = sub.add_parser("flops", help="parameters and FLOPs per byte of a recipe, by component")
    add_recipe_args(p)
    p.add_argument(
        "--patch-bytes", type=float, default=None, help="mean bytes per patch (default: from the patcher)"
    )
    add_json_flag(p, "the per-component report")
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


def cmd_flops(args: argparse.Namespace) -> int:
    from blt_scale.config import ConfigError
    from blt_scale.data.calibrate import recipe_patch_bytes
    from blt_scale.model.flops import model_flops
    from blt_scale.train.recipe import load_recipe

    cfg = load_recipe(args.recipe, args.overrides)
    try:
        patch_bytes = args.patch_bytes or recipe_patch_bytes(cfg.model.kind, cfg.patcher)
    except ValueError as err:
        raise ConfigError(f"{err}: pass --patch-bytes") from None
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


def cmd_calibrate(args: argparse.Namespace) -> int:
    from blt_scale.data.calibrate import calibrate
    from blt_scale.train.recipe import load_recipe

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

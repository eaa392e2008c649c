"""`blt export` (consolidated safetensors + config) and `blt convert-ds` (DeepSpeed's universal
format, loadable at any world size)."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser(
        "export", help="consolidated safetensors + config from a run's latest complete checkpoint"
    )
    p.add_argument(
        "path",
        metavar="RUN_DIR|CKPT",
        help="an export, a step_N checkpoint, or a run (its latest complete one)",
    )
    p.add_argument(
        "--out", required=True, help="output directory: new, empty, or an earlier export (replaced)"
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "convert-ds", help="convert a DeepSpeed checkpoint to the universal format (any world size)"
    )
    p.add_argument(
        "path",
        metavar="RUN_DIR|CKPT",
        help="a run directory (its latest complete checkpoint) or a step_N dir",
    )
    p.set_defaults(func=cmd_convert)


def cmd_export(args: argparse.Namespace) -> int:
    from blt_scale.checkpoint.export import check_export_target, save_exported
    from blt_scale.checkpoint.restore import load_model
    from blt_scale.train.recipe import saved_recipe

    check_export_target(args.out)  # before the (slow) load: a refused --out costs nothing
    model, _, source = load_model(args.path)
    out = save_exported(model.state_dict(), saved_recipe(source), args.out, source=source)
    print(json.dumps({"from": str(source), "out": str(out)}))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from blt_scale.checkpoint.deepspeed import DS_TAG, UNIVERSAL_TAG, convert_to_universal
    from blt_scale.checkpoint.restore import resolve_checkpoint

    step = resolve_checkpoint(args.path)
    existed = (step / UNIVERSAL_TAG).is_dir()
    out = convert_to_universal(step)
    print(json.dumps({"from": str(step / DS_TAG), "out": str(out), "already_converted": existed}))
    return 0

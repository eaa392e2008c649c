"""`blt plot RUN_DIR... [--out PNG] [--metric NAME]`: the bpb (or another metric's) curves of several
runs in one picture."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser(
        "plot", help="overlay the train/val bpb (or --metric) curves of several runs in one PNG"
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (their metrics.jsonl)")
    p.add_argument("--out", default="runs.png", help="PNG to write")
    p.add_argument("--x", choices=["step", "bytes"], default="step", help="horizontal axis")
    p.add_argument(
        "--metric",
        default="bpb",
        help="a figure of metrics.jsonl rows: bpb (default), loss, discrepancy, loss_image, reward, ...",
    )
    p.set_defaults(func=cmd_plot)


def cmd_plot(args: argparse.Namespace) -> int:
    from blt_scale.train.plot import compare_runs, save_figure

    out = save_figure(compare_runs(args.run_dirs, args.x, args.metric), args.out)
    print(json.dumps({"plot": str(out), "runs": args.run_dirs}))
    return 0

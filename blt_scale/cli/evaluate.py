"""`blt eval` (validation bits per byte) and `blt eval-brain` (brain -> text scores with their
noise control) of a run, a checkpoint or an export."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from blt_scale.cli.args import add_json_flag


def register(sub) -> None:
    p = sub.add_parser("eval", help="validation bits per byte of a run, checkpoint or exported model")
    p.add_argument(
        "path",
        metavar="RUN_DIR|CKPT",
        help="an export, a step_N checkpoint, or a run (its latest complete one)",
    )
    p.add_argument("--data", default=None, help="held-out data URI (default: the run's own validation split)")
    p.add_argument(
        "--batches", type=int, default=None, help="validation micro-batches (default: train.eval_batches)"
    )
    add_json_flag(p, "bpb, bytes and the source")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "eval-brain", help="brain->text scores (BLEU, ROUGE-L, WER) vs the noise-input control"
    )
    p.add_argument(
        "path",
        metavar="RUN_DIR|CKPT",
        help="an export, a step_N checkpoint, or a run (its latest complete one)",
    )
    p.add_argument(
        "--data",
        default=None,
        help="brain dataset URI (default: the run's own sources); its --split is read",
    )
    p.add_argument("--samples", type=int, default=64, help="windows scored (default 64; 0: all of the split)")
    p.add_argument("--batch", type=int, default=16, help="windows per forward (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data order and of the noise")
    p.add_argument(
        "--split",
        default="val",
        choices=["val", "test", "train"],
        help="split scored (default val; test: datasets prepared with --test-fraction)",
    )
    p.add_argument(
        "--resamples", type=int, default=1000, help="bootstrap resamples of the 95%% intervals (default 1000)"
    )
    raw = p.add_argument_group(
        "raw recording", "--recording FILE: decode a recording end to end instead of scoring a split"
    )
    raw.add_argument(
        "--recording",
        metavar="FILE",
        default=None,
        help="a recording (.fif, .edf, .vhdr, .set, ...) prepared as the run's data was, then decoded",
    )
    raw.add_argument(
        "--preset",
        default=None,
        help="prep options for --recording (default: those the run's dataset was prepared with)",
    )
    raw.add_argument(
        "--subject", default=None, help="subject id the run knows (default: the recording's own)"
    )
    raw.add_argument(
        "--out",
        default=None,
        help="JSONL of {onset_s, text, reference, subject} (default: RUN_DIR/decoded_<file stem>.jsonl)",
    )
    add_json_flag(p, "the scores")
    p.set_defaults(func=cmd_eval_brain)


def data_override(data_uri: str | None, cfg):
    """The run's config with its data pointed at `data_uri` (one source; its validation split is read)."""
    if data_uri is None:
        return cfg
    data_cls = type(cfg.data)
    if "sources" not in data_cls.model_fields:
        raise ValueError(
            f"--data {data_uri}: this data layer ({data_cls.__name__}) reads no URI; omit --data"
        )
    data = data_cls.model_validate(cfg.data.model_dump() | {"sources": [{"uri": data_uri}]})
    return cfg.model_copy(update={"data": data})


def cmd_eval(args: argparse.Namespace) -> int:
    from blt_scale.checkpoint.restore import load_model
    from blt_scale.train.evaluate import evaluate_bpb
    from blt_scale.train.recipe import saved_recipe

    if args.batches is not None and args.batches < 1:
        raise ValueError(f"--batches must be at least 1, got {args.batches}")
    model, _, source = load_model(args.path)
    cfg = data_override(args.data, saved_recipe(source))
    row = evaluate_bpb(model, cfg, batches=args.batches) | {"from": str(source)}
    print(json.dumps(row) if args.json else f"{source}: val bpb {row['bpb']:.4f} over {row['bytes']} bytes")
    return 0


def cmd_eval_brain(args: argparse.Namespace) -> int:
    from blt_scale.checkpoint.restore import load_model
    from blt_scale.model.build import KINDS, kinds_where
    from blt_scale.train.eval_brain import RESULTS, evaluate_brain, format_table, results_dir
    from blt_scale.train.recipe import saved_recipe

    if args.samples < 0 or args.batch < 1 or args.resamples < 1:
        raise ValueError(
            f"--samples must be >= 0, --batch and --resamples >= 1; got {args.samples}, {args.batch} "
            f"and {args.resamples}"
        )
    model, saved, source = load_model(args.path)
    if not KINDS[saved.model.kind].brain:
        raise ValueError(
            f"{source}: a {saved.model.kind} model reads no brain signal (brain kinds: "
            f"{', '.join(kinds_where(brain=True))}); use `blt eval`"
        )
    cfg = data_override(args.data, saved_recipe(source))
    if args.recording is not None:
        return _decode_recording(args, model, cfg, source)
    result = {"from": str(source), "data": [s.uri for s in cfg.data.sources]}
    result |= evaluate_brain(
        model, cfg, args.samples or None, args.batch, args.seed, args.split, args.resamples
    )
    out = results_dir(Path(source)) / (RESULTS if args.split == "val" else f"eval_brain_{args.split}.json")
    out.write_text(json.dumps(result, indent=2))
    result["results_file"] = str(out)
    print(json.dumps(result) if args.json else format_table(result) + f"\nwritten to {out}")
    return 0


def _decode_recording(args: argparse.Namespace, model, cfg, source) -> int:
    from blt_scale.data.brain.recording import preset_options
    from blt_scale.train.eval_brain import decode_recording, results_dir

    options = preset_options(args.preset) if args.preset else None
    rows = decode_recording(model, cfg, args.recording, options, args.subject, args.batch)
    stem = Path(args.recording).name.split(".")[0]
    out = Path(args.out) if args.out else results_dir(Path(source)) / f"decoded_{stem}.jsonl"
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    summary = {"recording": args.recording, "windows": len(rows), "out": str(out), "from": str(source)}
    if rows and rows[0]["reference"] is not None:
        summary["exact"] = sum(r["text"] == r["reference"] for r in rows) / len(rows)
    print(json.dumps(summary) if args.json else f"{len(rows)} windows of {args.recording} decoded into {out}")
    return 0

"""`blt prep ...`: dataset preparation commands. Each kind of data adds a subcommand to the
`prep` group through `PREP_COMMANDS` (text and entropies here; brain recordings elsewhere)."""

from __future__ import annotations

import argparse
import json
import re

from blt_scale.config import size_bytes
from blt_scale.launch.cli import placement_args

# Modules adding `prep` subcommands: each has `register_prep(prep_subparsers)`.
PREP_COMMANDS: list[str] = ["blt_scale.data.prep_cli", "blt_scale.data.brain.cli"]


def parse_size(text: str) -> int:
    """'64MB', '512KiB', '1000000' -> bytes."""
    try:
        return size_bytes(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_part(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not int(match.group(1)) < int(match.group(2)):
        raise argparse.ArgumentTypeError(f"expected --part i/n with 0 <= i < n (e.g. 0/4), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def cmd_text(args: argparse.Namespace) -> int:
    from blt_scale.data.prep_text import TextPrepConfig, convert_text

    cfg = TextPrepConfig(
        inputs=args.inputs,
        out=args.out,
        format=args.format,
        text_field=args.text_field,
        val_fraction=args.val_fraction,
        shard_size=args.shard_size,
        part_size=args.part_size,
        workers=args.workers,
        skip_bad=args.skip_bad,
        overwrite=args.overwrite,
    )
    report = convert_text(cfg, progress=not args.quiet)
    print(json.dumps(_summary(args.out, report)))
    return 0


def cmd_entropies(args: argparse.Namespace) -> int:
    from blt_scale.data.prep_entropies import EntropyPrepConfig, merge_parts, prep_entropies

    if args.merge:
        report = merge_parts(args.out)
    else:
        if not (args.data and args.model):
            raise ValueError("blt prep entropies needs --data URI and --model CKPT (or --merge)")
        index, count = args.part or (0, 1)
        cfg = EntropyPrepConfig(
            data=args.data,
            model=args.model,
            out=args.out,
            part=index,
            parts=count,
            batch_size=args.batch_size,
            context=args.context,
            overlap=args.overlap,
            shard_size=args.shard_size,
            device=args.device,
        )
        if args.slurm_parts is not None:
            return _entropies_on_slurm(args, cfg)
        report = prep_entropies(cfg, progress=not args.quiet)
    print(json.dumps(_summary(args.out, report)))
    return 0


def _entropies_on_slurm(args: argparse.Namespace, cfg) -> int:
    from blt_scale.data.entropy_array import submit_entropy_parts, wait_and_merge
    from blt_scale.launch.cli import placement_changes
    from blt_scale.launch.config import LaunchConfig

    if args.part is not None or args.slurm_parts < 1:
        raise ValueError(
            f"--slurm-parts N (N >= 1, got {args.slurm_parts}) submits every part itself, without --part"
        )
    launch = LaunchConfig(**placement_changes(args))
    if args.dry_run:
        print(
            json.dumps(
                {"parts": args.slurm_parts, "launch": launch.model_dump(), "folder": args.slurm_folder}
            )
        )
        return 0
    jobs = submit_entropy_parts(cfg, args.slurm_parts, launch, args.slurm_folder, args.max_parallel)
    print(
        f"job {jobs[0].job_id.split('_')[0]} ({len(jobs)} parts; logs in {args.slurm_folder}/logs)",
        flush=True,
    )
    report = wait_and_merge(jobs, args.out)
    print(json.dumps(_summary(args.out, report)))
    return 0


def _summary(out: str, report: dict) -> dict:
    keys = ("converted_parts", "bad_lines", "skipped_inputs", "part", "complete")
    splits = {s: {k: v for k, v in d.items() if k != "files"} for s, d in report.get("splits", {}).items()}
    return {"out": out, **{k: report[k] for k in keys if k in report}, "splits": splits}


def register_prep(prep: argparse._SubParsersAction) -> None:
    p = prep.add_parser("text", help="text corpora -> MDS or webdataset shards")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, directories, globs; any fsspec URI")
    p.add_argument("--out", required=True, help="dataset directory (path or fsspec URI)")
    p.add_argument("--format", choices=["mds", "wds"], default="mds")
    p.add_argument("--text-field", default="text", help="jsonl key / parquet column holding the text")
    p.add_argument("--val-fraction", type=float, default=0.01, help="documents held out by hash")
    p.add_argument("--shard-size", type=parse_size, default=64 << 20, help="uncompressed bytes per shard")
    p.add_argument(
        "--part-size", type=parse_size, default=16 << 20, help="input bytes per part (parallelism, resume)"
    )
    p.add_argument("--workers", type=int, default=1)
    p.add_argument(
        "--skip-bad", action="store_true", help="skip malformed lines/unreadable files, count them"
    )
    p.add_argument("--overwrite", action="store_true", help="delete --out and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_text)

    p = prep.add_parser("entropies", help="per-byte entropies of a dataset under an entropy model")
    p.add_argument("--data", help="prepared text dataset (URI)")
    p.add_argument("--model", help="exported entropy-model checkpoint directory")
    p.add_argument("--out", required=True, help="entropy dataset directory (path or URI)")
    p.add_argument(
        "--part", type=parse_part, default=None, metavar="I/N", help="do only part I of N (SLURM arrays)"
    )
    p.add_argument("--merge", action="store_true", help="only merge finished parts into the dataset")
    p.add_argument("--batch-size", type=int, default=16, help="context windows per forward")
    p.add_argument(
        "--context", type=int, default=None, help="window length (default: the model's data.seq_len)"
    )
    p.add_argument(
        "--overlap", type=int, default=None, help="context kept from the previous window (default: context/2)"
    )
    p.add_argument("--shard-size", type=parse_size, default=64 << 20)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true")
    slurm = p.add_argument_group(
        "SLURM array", "--slurm-parts N: the N parts as one job array, then --merge here"
    )
    slurm.add_argument("--slurm-parts", type=int, default=None, metavar="N")
    slurm.add_argument(
        "--slurm-folder", default="runs/prep_entropies", help="submitit folder: code snapshot and logs"
    )
    slurm.add_argument("--max-parallel", type=int, default=16, help="array tasks running at once")
    placement_args(slurm, required=False)
    p.set_defaults(func=cmd_entropies)


def register(subparsers: argparse._SubParsersAction) -> None:
    import importlib

    p = subparsers.add_parser("prep", help="prepare datasets: text, entropies, ...")
    prep = p.add_subparsers(dest="prep_command", required=True)
    for name in PREP_COMMANDS:
        importlib.import_module(name).register_prep(prep)

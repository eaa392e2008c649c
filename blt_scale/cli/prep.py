"""`blt prep text|entropies|brain|gridworld`: corpora, recordings and grid-world traces to shards."""

from __future__ import annotations

import argparse
import json
import re

from blt_scale.cli.args import parse_part, parse_size, placement_args, placement_changes

_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


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


def cmd_gridworld(args: argparse.Namespace) -> int:
    from blt_scale.data.gridworld import GridWorldConfig
    from blt_scale.data.prep_gridworld import GridWorldPrepConfig, prep_gridworld

    world = GridWorldConfig(
        size=args.size,
        max_moves=args.max_moves,
        texture=args.texture,
        interleave=not args.no_images,
        tokenizer=args.tokenizer,
    )
    cfg = GridWorldPrepConfig(
        world=world,
        out=args.out,
        format=args.format,
        traces=args.traces,
        val_traces=args.val_traces,
        seed=args.seed,
        shard_size=args.shard_size,
        prompts_out=args.prompts_out,
        overwrite=args.overwrite,
    )
    print(json.dumps(_summary(args.out, prep_gridworld(cfg))))
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
    from blt_scale.launch.config import LaunchConfig
    from blt_scale.launch.entropy_array import submit_entropy_parts, wait_and_merge

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


def cmd_brain(args: argparse.Namespace) -> int:
    from blt_scale.data.brain.config import load_prep_config
    from blt_scale.data.brain.prep import prep_brain

    # KEY=VALUE items share the positional list with the inputs.
    items = [*args.inputs, *args.overrides]
    overrides = [i for i in items if _OVERRIDE.match(i)]
    inputs = [i for i in items if not _OVERRIDE.match(i)]
    for key, value in (
        ("split", args.split),
        ("val_fraction", args.val_fraction),
        ("test_fraction", args.test_fraction),
    ):
        if value is not None:
            overrides.append(f"{key}={value}")
    if not inputs:
        raise ValueError("blt prep brain: expected at least one INPUT (recording, directory or BIDS root)")
    if args.format != "mds":
        raise ValueError(
            f"blt prep brain --format {args.format}: brain datasets are MDS only (random access to single "
            f"windows and exactly-once resume at any world size; see README, Brain data)"
        )
    cfg = load_prep_config(
        inputs, args.out, args.preset, overrides, overwrite=args.overwrite, workers=args.workers
    )
    if args.skip_bad:
        cfg.skip_bad = True
    report = prep_brain(cfg, progress=not args.quiet)
    keys = ("converted_parts", "sfreq", "window_samples", "subjects", "split", "skipped", "skipped_inputs")
    splits = {s: {k: v for k, v in d.items() if k != "files"} for s, d in report["splits"].items()}
    print(json.dumps({"out": args.out, **{k: report[k] for k in keys if k in report}, "splits": splits}))
    return 0


def _summary(out: str, report: dict) -> dict:
    keys = ("converted_parts", "bad_lines", "skipped_inputs", "part", "complete")
    splits = {s: {k: v for k, v in d.items() if k != "files"} for s, d in report.get("splits", {}).items()}
    return {"out": out, **{k: report[k] for k in keys if k in report}, "splits": splits}


def register_prep(prep: argparse._SubParsersAction) -> None:
    p = prep.add_parser("text", help="text corpora -> MDS or webdataset shards")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, directories, globs; any fsspec URI")
    p.add_argument("--out", required=True, help="dataset directory (path or fsspec URI)")
    p.add_argument(
        "--format",
        choices=["mds", "wds"],
        default="mds",
        help="mds: mosaicml-streaming; wds: webdataset tars",
    )
    p.add_argument("--text-field", default="text", help="jsonl key / parquet column holding the text")
    p.add_argument("--val-fraction", type=float, default=0.01, help="documents held out by hash")
    p.add_argument("--shard-size", type=parse_size, default="64MB", help="uncompressed bytes per shard")
    p.add_argument(
        "--part-size", type=parse_size, default="16MB", help="input bytes per part (parallelism, resume)"
    )
    p.add_argument("--workers", type=int, default=1, help="parts converted in parallel (processes)")
    p.add_argument(
        "--skip-bad", action="store_true", help="skip malformed lines/unreadable files, count them"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="delete --out (a dataset blt prep wrote) and start over"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_text)

    p = prep.add_parser("gridworld", help="FrozenLake-style traces with coded state images -> shards")
    p.add_argument("--tokenizer", required=True, help="a trained vq_image run directory or export")
    p.add_argument("--out", required=True, help="dataset directory (path or fsspec URI)")
    p.add_argument(
        "--format",
        choices=["mds", "wds"],
        default="mds",
        help="mds: mosaicml-streaming (exact resume); wds: webdataset tars (read resampled)",
    )
    p.add_argument("--traces", type=int, required=True, help="training traces")
    p.add_argument("--val-traces", type=int, default=64, help="validation traces (default: 64)")
    p.add_argument("--size", type=int, default=4, help="cells per side of the lake (default: 4)")
    p.add_argument("--max-moves", type=int, default=6, help="most moves of a trace (default: 6)")
    p.add_argument(
        "--texture",
        type=float,
        default=0.0,
        help="brightness of each cell drawn in [1 - T, 1 + T] afresh per image; the tokenizer's "
        "data.gridworld.texture (default: 0, flat colours)",
    )
    p.add_argument(
        "--no-images", action="store_true", help="no state image after each move (only the first map)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the lakes and their moves")
    p.add_argument("--shard-size", type=parse_size, default="64MB", help="uncompressed bytes per shard")
    p.add_argument(
        "--prompts-out",
        default=None,
        metavar="DIR",
        help="also write each validation prompt as DIR/NNN.bin (for blt generate --prompt-file) and its "
        "answer as DIR/NNN.answer",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a dataset `blt prep` wrote there")
    p.set_defaults(func=cmd_gridworld)

    p = prep.add_parser("entropies", help="per-byte entropies of a dataset under an entropy model")
    p.add_argument("--data", metavar="URI", help="prepared text dataset (required unless --merge)")
    p.add_argument(
        "--model", metavar="EXPORT", help="exported entropy model directory (required unless --merge)"
    )
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
    p.add_argument("--shard-size", type=parse_size, default="64MB", help="uncompressed bytes per shard")
    p.add_argument("--device", default="cpu", help="torch device of the entropy model")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    slurm = p.add_argument_group(
        "SLURM array", "--slurm-parts N: the N parts as one job array, then --merge here"
    )
    slurm.add_argument(
        "--slurm-parts", type=int, default=None, metavar="N", help="parts, one array task each"
    )
    slurm.add_argument(
        "--slurm-folder", default="runs/prep_entropies", help="submitit folder: code snapshot and logs"
    )
    slurm.add_argument("--max-parallel", type=int, default=16, help="array tasks running at once")
    placement_args(slurm, required=False)
    p.set_defaults(func=cmd_entropies)

    p = prep.add_parser(
        "brain", help="EEG/MEG recordings (FIF, EDF/BDF, BrainVision, EEGLAB, KIT, BIDS) -> MDS shards"
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="recordings, directories, BIDS roots, globs; then KEY=VALUE overrides",
    )
    p.add_argument("--out", required=True, help="dataset directory (path or fsspec URI)")
    p.add_argument(
        "--preset", default="eeg-default", help="eeg-default, meg-masc (recipes/brain/) or a YAML path"
    )
    p.add_argument(
        "--format",
        choices=["mds", "wds"],
        default="mds",
        help="mds only: wds is refused with the reason (see README, Brain data)",
    )
    p.add_argument(
        "--split",
        choices=["by-block", "by-recording", "by-subject"],
        default=None,
        help="unit held out whole (default: the preset's, by-block): time blocks of each recording "
        "with a one-window gap to training windows, whole recordings, or whole subjects",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="share of split units held out for validation (default: the preset's, 0.05)",
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        default=None,
        help="share of split units held out for the test split (default: the preset's, 0)",
    )
    p.add_argument("--workers", type=int, default=1, help="recordings converted in parallel")
    p.add_argument("--skip-bad", action="store_true", help="skip bad recordings, count them in the manifest")
    p.add_argument(
        "--overwrite", action="store_true", help="delete --out (a dataset blt prep wrote) and start over"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_brain, overrides=[])


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("prep", help="prepare datasets: text, entropies, brain recordings, grid worlds")
    register_prep(p.add_subparsers(dest="prep_command", required=True))

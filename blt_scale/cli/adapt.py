"""`blt adapt EXPORT --data URI --out EXPERT_DIR [--targets PATTERN] [k=v ...]`: train an SVF expert.

The export's model is frozen and decomposed once; only one vector z per chosen weight matrix trains
(model/svf.py), with the ordinary trainer: any strategy, `--nproc N`, checkpoints and resume as
usual (the run lives in EXPERT_DIR/run; running the same command again resumes it). At the end the z
vectors are written as EXPERT_DIR/expert.safetensors with expert.yaml and a few held-out texts of the
task (examples.jsonl) for dispatch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from blt_scale.cli.args import add_json_flag

RECIPE = "svf_expert_tiny"
EXAMPLES = 64  # held-out texts kept with the expert for `--dispatch classifier|mix`


def register(sub) -> None:
    p = sub.add_parser("adapt", help="train an SVF expert (Transformer²) of an exported model on a dataset")
    p.add_argument("export", metavar="EXPORT", help="an exported text model (`blt export RUN --out DIR`)")
    p.add_argument("--data", required=True, metavar="URI", help="a dataset written by `blt prep text`")
    p.add_argument("--out", required=True, metavar="EXPERT_DIR", help="where the expert (and its run) go")
    p.add_argument(
        "--targets",
        default=None,
        metavar="PATTERN",
        help="regular expression over the base model's nn.Linear names (full match); "
        "default: the recipe's, every attention and feed-forward matrix",
    )
    p.add_argument("--recipe", default=RECIPE, help="recipe with the training settings")
    p.add_argument(
        "--name", default=None, help="the expert's name in dispatch reports (default: EXPERT_DIR's name)"
    )
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="local rank processes (FSDP over gloo with parallel.strategy=fsdp)",
    )
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted recipe overrides, e.g. train.steps=50"
    )
    add_json_flag(p, "the expert's summary")
    p.set_defaults(func=cmd_adapt)


def adapt_recipe(args: argparse.Namespace) -> Path:
    """EXPERT_DIR/adapt.yaml: the recipe, extended with what the export and the data say."""
    import yaml

    from blt_scale.checkpoint.export import read_saved_model
    from blt_scale.train.recipe import resolve_recipe_path

    export = Path(args.export).resolve()
    if not (export / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{args.export}: not an exported model (no model.safetensors; `blt export` one)"
        )
    saved = read_saved_model(export)
    if saved.model.kind not in ("blt", "byte_lm"):
        raise ValueError(
            f"{args.export}: SVF adapts a text model (blt or byte_lm), not kind {saved.model.kind}"
        )
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    model = {
        "kind": "svf",
        "base": saved.model.model_dump(mode="json", by_alias=True),
        "init_from": [{"path": str(export), "prefix": "base."}],
    }
    if args.targets is not None:
        model["targets"] = args.targets
    recipe = {
        "extends": str(resolve_recipe_path(args.recipe).resolve()),
        "run_dir": str(out / "run"),
        "model": model,
        "patcher": saved.patcher.model_dump(mode="json", by_alias=True),
        "data": {"seq_len": saved.data.seq_len, "sources": [{"uri": args.data}]},
    }
    path = out / "adapt.yaml"
    path.write_text(
        "# written by `blt adapt`; `blt train` on it resumes the expert's run\n" + yaml.safe_dump(recipe)
    )
    return path


def held_out_texts(cfg, limit: int) -> list[str]:
    """Validation documents of the data (what the trainer evaluates on), as text."""
    from blt_scale.data.loader import build_loader
    from blt_scale.model.vocab import EOS, decode

    loader = build_loader(cfg.data, cfg.patcher, 1, "val", 0, 1, cfg.train.seed)
    texts: list[str] = []
    for _, batch in zip(range(4 * limit), loader):
        row = batch["tokens"][0].tolist()
        start = 0
        for i, t in enumerate(row):
            if t == EOS:
                doc = decode(row[start:i]).decode("utf-8", errors="replace").strip()
                if doc and doc not in texts:
                    texts.append(doc)
                start = i + 1
        if len(texts) >= limit:
            break
    return texts[:limit]


def cmd_adapt(args: argparse.Namespace) -> int:
    from blt_scale.checkpoint.expert import ExpertInfo, save_expert
    from blt_scale.checkpoint.restore import load_model
    from blt_scale.files import read_jsonl
    from blt_scale.model.svf import get_z
    from blt_scale.train.local_ranks import launch
    from blt_scale.train.recipe import load_recipe

    if args.nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {args.nproc}")
    recipe = adapt_recipe(args)
    cfg = load_recipe(recipe, args.overrides)  # fail here, once, before any rank starts
    cfg.train.micro_batch_for(args.nproc)
    code = launch([str(recipe), *args.overrides, "--resume", "auto"], args.nproc)
    if code != 0:
        raise RuntimeError(f"the expert's training ({cfg.run_dir}) exited with code {code}")
    model, _, ckpt = load_model(cfg.run_dir)
    z = get_z(model.base)
    rows = read_jsonl(Path(cfg.run_dir) / "metrics.jsonl")
    val = [r["bpb"] for r in rows if r.get("split") == "val"]
    info = ExpertInfo(
        name=args.name or Path(args.out).resolve().name,
        base=str(Path(args.export).resolve()),
        targets=cfg.model.targets,
        sizes={k: int(v.numel()) for k, v in z.items()},
        objective=cfg.model.objective.kind,
        steps=int(ckpt.name.removeprefix("step_")),
        val_bpb=val[-1] if val else None,
    )
    save_expert(args.out, z, info, held_out_texts(cfg, EXAMPLES))
    summary = {
        "expert": str(args.out),
        **info.model_dump(exclude={"sizes"}),
        "vectors": len(z),
        "numbers": sum(info.sizes.values()),
    }
    print(
        json.dumps(summary)
        if args.json
        else f"expert {args.out}: {len(z)} vectors, {summary['numbers']} numbers, "
        f"{info.steps} steps, val bpb {info.val_bpb}"
    )
    return 0

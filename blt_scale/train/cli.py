"""`blt train`, `blt export`, `blt eval` and `blt generate`."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub) -> None:
    from blt_scale.cli import add_recipe_args

    p = sub.add_parser("train", help="train a recipe: in this process, or on N local ranks with --nproc N")
    add_recipe_args(p)
    p.add_argument("--nproc", type=int, default=None, help="local rank processes (FSDP over gloo on CPU, nccl on GPU)")
    p.add_argument("--resume", default="auto", help="auto: latest complete checkpoint of run_dir (default); never; or a step_N dir")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="consolidated safetensors + config from a run's latest complete checkpoint")
    p.add_argument("path", metavar="RUN_DIR|CKPT")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("eval", help="validation bits per byte of a run, checkpoint or exported model")
    p.add_argument("path", metavar="RUN_DIR|CKPT")
    p.add_argument("--data", default=None, help="held-out data URI (default: the run's own validation split)")
    p.add_argument("--batches", type=int, default=None, help="validation micro-batches (default: train.eval_batches)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", help="sample bytes from a checkpoint or exported model")
    p.add_argument("path", metavar="CKPT")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-bytes", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_generate)


def cmd_train(args: argparse.Namespace) -> int:
    from blt_scale.recipe import load_recipe

    cfg = load_recipe(args.recipe, args.overrides)  # fail here, once, before any rank starts
    if args.nproc is not None:
        from blt_scale.train.launch import launch

        if args.nproc < 1:
            raise ValueError(f"--nproc must be at least 1, got {args.nproc}")
        cfg.train.micro_batch_for(args.nproc)  # a batch that does not split over the ranks fails here too
        return launch([args.recipe, *args.overrides, "--resume", args.resume], args.nproc)
    from blt_scale.train.run import exit_process, run_training

    exit_process(run_training(cfg, args.resume, getattr(args, "debug", False)))


def cmd_export(args: argparse.Namespace) -> int:
    from blt_scale.train.export import save_exported
    from blt_scale.train.restore import load_model

    model, cfg, source = load_model(args.path)
    out = save_exported(model.state_dict(), cfg, args.out)
    print(json.dumps({"from": str(source), "out": str(out)}))
    return 0


def data_override(data_uri: str | None, cfg):
    """The run's config with its data pointed at `data_uri` (one source; its validation split is read)."""
    if data_uri is None:
        return cfg
    data_cls = type(cfg.data)
    if "sources" not in data_cls.model_fields:
        raise ValueError(f"--data {data_uri}: this data layer ({data_cls.__name__}) reads no URI; omit --data")
    data = data_cls.model_validate(cfg.data.model_dump() | {"sources": [{"uri": data_uri}]})
    return cfg.model_copy(update={"data": data})


def cmd_eval(args: argparse.Namespace) -> int:
    from blt_scale.train.evaluate import evaluate_bpb
    from blt_scale.train.restore import load_model

    model, cfg, source = load_model(args.path)
    cfg = data_override(args.data, cfg)
    row = evaluate_bpb(model, cfg, batches=args.batches) | {"from": str(source)}
    print(json.dumps(row) if args.json else f"{source}: val bpb {row['bpb']:.4f} over {row['bytes']} bytes")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from blt_scale.model.build import TEXT_KINDS
    from blt_scale.model.vocab import BOS, decode, encode
    from blt_scale.train.restore import load_model

    try:
        from blt_scale.model.generate import generate
    except ImportError as err:
        raise RuntimeError(f"generation is not available: {err}") from None
    model, cfg, _ = load_model(args.path)
    if cfg.model.kind not in TEXT_KINDS:
        raise ValueError(f"{args.path}: `blt generate` takes a text model (kind blt or byte_lm), not kind "
                         f"{cfg.model.kind}, which needs a brain signal: use `blt eval-brain`")
    if cfg.patcher.mode == "entropy":
        raise ValueError("patcher.mode=entropy: generation needs the entropy model, which `blt generate` does not load yet")
    prompt = torch.cat([torch.tensor([BOS]), encode(args.prompt.encode())])[None]
    gen = torch.Generator().manual_seed(args.seed)
    out = generate(model, prompt, args.max_bytes, cfg.patcher, temperature=args.temperature, top_k=args.top_k, generator=gen)
    sys.stdout.write(decode(out[0]).decode("utf-8", errors="replace") + "\n")
    return 0

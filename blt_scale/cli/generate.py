"""`blt generate EXPORT|RUN_DIR|CKPT --prompt ...`: bytes from a text model, with a KV cache."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "generate", help="sample bytes from an exported model, a run directory or a checkpoint"
    )
    p.add_argument(
        "path",
        metavar="EXPORT|RUN_DIR|CKPT",
        help="an export, a step_N checkpoint, or a run (its latest one)",
    )
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="the prompt text (UTF-8)")
    prompt.add_argument("--prompt-file", help="a file whose bytes are the prompt (any bytes, not only UTF-8)")
    prompt.add_argument(
        "--prompts", help='a JSONL file of {"prompt": TEXT} lines, generated as one left-padded batch'
    )
    p.add_argument(
        "--max-bytes", type=int, default=200, help="most bytes to generate per prompt (default: 200)"
    )
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default: 0)")
    p.add_argument(
        "--top-k", type=int, default=None, help="sample among the k most likely bytes (default: all)"
    )
    p.add_argument(
        "--top-p",
        type=float,
        default=None,
        help="sample among the most likely bytes holding this mass (default: 1)",
    )
    p.add_argument("--stop", action="append", default=[], help="stop before this string (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument(
        "--no-cache", action="store_true", help="re-run the whole prefix for every byte (the reference path)"
    )
    p.add_argument(
        "--entropy-model",
        default=None,
        help="entropy model export for patcher.mode=entropy (default: the recipe's patcher.entropy_model)",
    )
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="weights' dtype (default: float32)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per prompt: text, prefill_s, decode_s_per_byte, bytes, patches "
        "(and with --experts: dispatch, weights, scores)",
    )
    p.add_argument(
        "--experts",
        nargs="+",
        default=None,
        metavar="DIR",
        help="SVF experts of this model (`blt adapt`): pass one picks or mixes them per prompt, pass two "
        "generates with them",
    )
    p.add_argument(
        "--dispatch",
        choices=["prompt", "classifier", "mix"],
        default="prompt",
        help="pass one: the expert under which the prompt is most likely, a classifier fitted on the "
        "experts' examples, or a CEM-weighted mix solved on --few-shot",
    )
    p.add_argument(
        "--few-shot",
        default=None,
        metavar="FILE",
        help='--dispatch mix: JSONL of {"text": ...} examples of the target task '
        "(default: the prompt itself)",
    )
    p.set_defaults(func=cmd_generate)


def read_prompts(args: argparse.Namespace) -> list[bytes]:
    """The prompt bytes of --prompt, --prompt-file or --prompts; each must hold at least one byte."""
    if args.prompt is not None:
        try:
            prompts, where = [args.prompt.encode()], "--prompt"
        except UnicodeEncodeError as err:  # bytes of an argv that is not UTF-8 (surrogate escapes)
            raise ValueError(
                f"--prompt is not valid UTF-8 (character {err.start}); "
                "for a prompt of arbitrary bytes use --prompt-file FILE"
            ) from None
    elif args.prompt_file is not None:
        prompts, where = [Path(args.prompt_file).read_bytes()], f"--prompt-file {args.prompt_file}"
    else:
        prompts, where = [], f"--prompts {args.prompts}"
        for n, line in enumerate(Path(args.prompts).read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{args.prompts}:{n}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise ValueError(f'{args.prompts}:{n}: expected an object with a string "prompt"')
            prompts.append(row["prompt"].encode())
        if not prompts:
            raise ValueError(f"{where}: no prompts")
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise ValueError(f"{where}: prompt {i + 1} is empty (give at least one byte)")
    return prompts


def load_entropy_model(args: argparse.Namespace, cfg, device):
    """The entropy model an entropy-patched BLT needs, from --entropy-model or patcher.entropy_model."""
    from blt_scale.model.build import KINDS

    if cfg.patcher.mode != "entropy" or not KINDS[cfg.model.kind].patched:
        return None
    path = args.entropy_model or cfg.patcher.entropy_model
    if path is None:
        raise ValueError(
            f"{args.path}: patcher.mode=entropy needs its entropy model: set patcher.entropy_model to the "
            "entropy model's export directory (`blt export RUN --out DIR`) or pass --entropy-model DIR"
        )
    from blt_scale.checkpoint.export import load_exported

    model, ecfg = load_exported(path, device)
    if KINDS[ecfg.model.kind].patched or not KINDS[ecfg.model.kind].text:
        raise ValueError(f"{path}: the entropy model must be a byte_lm export, got kind {ecfg.model.kind}")
    return model


def generate_prompts(
    args: argparse.Namespace, model, patcher, prompts: list[bytes], entropy_model, on_bytes=None
):
    """generate_batch over the prompts with the sampling options of the command line."""
    import torch

    from blt_scale.model.generate import generate_batch
    from blt_scale.model.vocab import BOS, encode

    device = next(model.parameters()).device
    return generate_batch(
        model,
        [torch.cat([torch.tensor([BOS]), encode(p)]).to(device) for p in prompts],
        args.max_bytes,
        patcher,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        generator=torch.Generator(device=device).manual_seed(args.seed),
        entropy_model=entropy_model,
        cache=not args.no_cache,
        stops=[s.encode() for s in args.stop],
        on_bytes=on_bytes,
    )


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from blt_scale.checkpoint.restore import load_model
    from blt_scale.model.build import KINDS, kinds_where

    if args.max_bytes < 1:
        raise ValueError(f"--max-bytes must be at least 1, got {args.max_bytes}")
    prompts = read_prompts(args)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model, cfg, _ = load_model(args.path, device)
    if cfg.model.kind == "svf":  # a whole SVF run: its base model with its z applied
        model, cfg.model = model.base, cfg.model.base
    if not KINDS[cfg.model.kind].text:
        raise ValueError(
            f"{args.path}: `blt generate` takes a text model (kind {' or '.join(kinds_where(text=True))}), "
            f"not kind {cfg.model.kind}, which needs a brain signal: use `blt eval-brain`"
        )
    entropy_model = load_entropy_model(args, cfg, device)
    model = model.to(dtype)
    entropy_model = entropy_model.to(dtype) if entropy_model is not None else None

    if args.experts:
        from blt_scale.cli.experts import generate_with_experts

        return generate_with_experts(args, model, cfg, prompts, entropy_model)
    streaming = not args.json and len(prompts) == 1  # the prompt, then each byte as it comes

    def show(row: int, data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()

    if streaming:
        show(0, prompts[0])

    results = generate_prompts(args, model, cfg.patcher, prompts, entropy_model, show if streaming else None)
    for prompt, r in zip(prompts, results):
        text = r.text.decode("utf-8", errors="replace")
        if args.json:
            print(
                json.dumps(
                    {
                        "text": text,
                        "prefill_s": r.prefill_s,
                        "decode_s_per_byte": r.decode_s_per_byte,
                        "bytes": len(r.text),
                        "patches": r.patches,
                    }
                )
            )
        elif streaming:
            show(0, b"\n")
        else:
            print((prompt + r.text).decode("utf-8", errors="replace"))
    return 0

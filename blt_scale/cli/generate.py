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
        "--images",
        default="generated_images",
        metavar="DIR",
        help="models with image tokens (mvot): where generated images go as PNG files, named in the text "
        "as [image: PATH] (default: generated_images); a --prompt-file's 0xFF c byte pairs are image codes",
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


def prompt_ids(model, prompt: bytes):
    """BOS + the prompt's ids; for a model with image tokens, 0xFF c byte pairs are image codes."""
    import torch

    from blt_scale.model.build import KINDS
    from blt_scale.model.mvot import stream_ids
    from blt_scale.model.vocab import BOS, encode

    if KINDS[model.cfg.kind].images:
        return torch.from_numpy(stream_ids(prompt, bos=True))
    return torch.cat([torch.tensor([BOS]), encode(prompt)])


def generate_prompts(
    args: argparse.Namespace, model, patcher, prompts: list[bytes], entropy_model, on_bytes=None
):
    """generate_batch over the prompts with the sampling options of the command line."""
    import torch

    from blt_scale.model.generate import generate_batch

    device = next(model.parameters()).device
    return generate_batch(
        model,
        [prompt_ids(model, p).to(device) for p in prompts],
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
        why = ", which needs a brain signal: use `blt eval-brain`" if KINDS[cfg.model.kind].brain else ""
        raise ValueError(
            f"{args.path}: `blt generate` takes a text model (kind {' or '.join(kinds_where(text=True))}), "
            f"not kind {cfg.model.kind}{why}"
        )
    entropy_model = load_entropy_model(args, cfg, device)
    model = model.to(dtype)
    entropy_model = entropy_model.to(dtype) if entropy_model is not None else None

    if args.experts:
        from blt_scale.cli.experts import generate_with_experts

        return generate_with_experts(args, model, cfg, prompts, entropy_model)
    if KINDS[cfg.model.kind].images:
        return show_with_images(
            args, model, prompts, generate_prompts(args, model, cfg.patcher, prompts, None)
        )
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


def show_with_images(args: argparse.Namespace, model, prompts: list[bytes], results) -> int:
    """Prompt and generated text of a model with image tokens (mvot): each whole image is decoded by
    the model's tokenizer and written as a PNG file under --images (ROW_prompt_K.png for the prompt's,
    ROW_K.png for generated ones, 8x enlarged), named in the text as [image: PATH]."""
    from matplotlib.image import imsave

    from blt_scale.model.mvot import split_images, stream_ids

    out = Path(args.images)
    out.mkdir(parents=True, exist_ok=True)
    per_image = model.images.cfg.codes_per_image

    def render(ids, stem: str, paths: list[str]) -> str:
        parts = []
        for piece in split_images(ids, per_image):
            if isinstance(piece, bytes):
                parts.append(piece.decode("utf-8", errors="replace"))
            elif len(piece) < per_image:
                parts.append(f"[incomplete image: {len(piece)} of {per_image} codes]")
            else:
                pixels = model.images.decode(piece[None].to(model.images.codebook.device))[0].float().cpu()
                path = out / f"{stem}{len(paths)}.png"
                imsave(path, pixels.repeat_interleave(8, 1).repeat_interleave(8, 2).permute(1, 2, 0).numpy())
                paths.append(str(path))
                parts.append(f"[image: {path}]")
        return "".join(parts)

    for row, (prompt, r) in enumerate(zip(prompts, results)):
        prompt_images: list[str] = []
        images: list[str] = []
        shown_prompt = render(stream_ids(prompt), f"{row:03d}_prompt_", prompt_images)
        text = render(r.ids, f"{row:03d}_", images)
        if args.json:
            row_json = {"text": text, "images": images, "prompt_images": prompt_images}
            print(json.dumps(row_json | {"prefill_s": r.prefill_s, "decode_s_per_byte": r.decode_s_per_byte}))
        else:
            print(shown_prompt + text)
    return 0

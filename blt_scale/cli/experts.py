"""`blt generate EXPORT --experts DIR... --dispatch prompt|classifier|mix`: two-pass inference.

Helpers of cli/generate.py (not a command of its own): load the experts, apply SVF to the model
once, then per prompt run pass one (model/two_pass.py) and generate with the chosen z'.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load_experts(dirs: list[str]):
    from blt_scale.checkpoint.expert import load_expert
    from blt_scale.model.two_pass import Expert

    experts, targets = [], None
    for d in dirs:
        z, info, examples = load_expert(d)
        if targets is not None and info.targets != targets:
            raise ValueError(
                f"{d}: its targets {info.targets!r} differ from {dirs[0]}'s {targets!r}; experts that are "
                "mixed or switched must adapt the same layers"
            )
        targets = info.targets
        if any(e.name == info.name for e in experts):
            raise ValueError(f"{d}: two experts are named {info.name!r} (set --name when adapting)")
        experts.append(Expert(info.name, z, examples))
    return experts, targets


def read_few_shot(path: str | None) -> list[bytes] | None:
    if path is None:
        return None
    texts = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            texts.append(json.loads(line)["text"].encode())
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise ValueError(f'{path}:{n}: expected {{"text": ...}}') from None
    if not texts:
        raise ValueError(f"--few-shot {path}: no examples")
    return texts


def generate_with_experts(args: argparse.Namespace, model, cfg, prompts: list[bytes], entropy_model) -> int:

    from blt_scale.cli.generate import generate_prompts
    from blt_scale.model.svf import apply_svf, set_z
    from blt_scale.model.two_pass import choose

    experts, targets = load_experts(args.experts)
    few_shot = read_few_shot(args.few_shot)
    if args.dtype != "float32":
        raise ValueError("--experts: decompose and generate in float32 (--dtype float32)")
    apply_svf(model, targets)
    for prompt in prompts:
        choice = choose(args.dispatch, model, experts, prompt, cfg.patcher, entropy_model, few_shot)
        set_z(model, choice.z)
        r = generate_prompts(args, model, cfg.patcher, [prompt], entropy_model)[0]
        text = r.text.decode("utf-8", errors="replace")
        if args.json:
            row = {
                "text": text,
                "dispatch": args.dispatch,
                "weights": choice.weights,
                "scores": choice.scores,
                "prefill_s": r.prefill_s,
                "decode_s_per_byte": r.decode_s_per_byte,
                "bytes": len(r.text),
                "patches": r.patches,
            }
            print(json.dumps(row))
        else:
            chosen = ", ".join(f"{k}={v:.3g}" for k, v in choice.weights.items())
            print(f"[{args.dispatch}: {chosen}]", file=sys.stderr)
            print((prompt + r.text).decode("utf-8", errors="replace"))
    return 0

"""Generation cost against prefix length.

For cpu_tiny (BLT, space patches) and cpu_tiny_baseline (byte LM) at their recipe shapes (weights
as initialised: the cost does not depend on them), greedy generation of --new bytes:
1. decode_s_per_byte after a 4096-byte prefix / after a 64-byte prefix, with caches (goal <= 1.5);
2. bytes/s with caches / bytes/s without (`--no-cache`, the full forward per byte) after 1024 bytes.
Prefixes are Python standard-library source text. Ratios come from one run of this script.

    .venv/bin/python benchmarks/bench_generate.py [--new 64] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import sysconfig
from pathlib import Path

import torch

from blt_scale.model.build import build_model
from blt_scale.model.generate import generate_batch
from blt_scale.model.vocab import encode
from blt_scale.train.recipe import load_recipe


def stdlib_text(n: int) -> bytes:
    text = b"".join(p.read_bytes() for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:40])
    return text[:n]


def decode_s_per_byte(model, patcher, prefix: int, new: int, cache: bool) -> float:
    prompt = encode(stdlib_text(prefix), bos=True)
    runs = [
        generate_batch(model, [prompt], new, patcher, cache=cache, stop_at_eos=False)[0] for _ in range(2)
    ]
    return min(r.decode_s_per_byte for r in runs)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--new", type=int, default=64, help="bytes generated per measurement")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    report = {}
    for recipe in ("cpu_tiny", "cpu_tiny_baseline"):
        cfg = load_recipe(recipe)
        torch.manual_seed(0)
        model = build_model(cfg.model).eval()
        short = decode_s_per_byte(model, cfg.patcher, 64, args.new, cache=True)
        long = decode_s_per_byte(model, cfg.patcher, 4096, args.new, cache=True)
        cached = decode_s_per_byte(model, cfg.patcher, 1024, args.new // 4, cache=True)
        uncached = decode_s_per_byte(model, cfg.patcher, 1024, args.new // 4, cache=False)
        report[recipe] = {
            "decode_s_per_byte_prefix64": short,
            "decode_s_per_byte_prefix4096": long,
            "ratio_4096_over_64": long / short,
            "cached_bytes_per_s_prefix1024": 1 / cached,
            "no_cache_bytes_per_s_prefix1024": 1 / uncached,
            "cached_speedup_prefix1024": uncached / cached,
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for recipe, r in report.items():
        print(
            f"{recipe}: {r['decode_s_per_byte_prefix64'] * 1e3:.2f} ms/byte after 64 bytes, "
            f"{r['decode_s_per_byte_prefix4096'] * 1e3:.2f} ms/byte after 4096: ratio "
            f"{r['ratio_4096_over_64']:.2f} (goal <= 1.5)"
        )
        print(
            f"  after 1024 bytes: cached {r['cached_bytes_per_s_prefix1024']:.0f} B/s, no cache "
            f"{r['no_cache_bytes_per_s_prefix1024']:.0f} B/s ({r['cached_speedup_prefix1024']:.1f}x)"
        )


if __name__ == "__main__":
    main()

"""Attention cost against sequence length.

1. cpu_tiny (windows 128) trained at seq_len 512 and at 8192 with the same bytes per step
   (16 x 512 = 1 x 8192): bytes/s at 8192 / bytes/s at 512 (goal >= 0.7) and peak memory at
   8192 / at 512 (goal <= 1.3), backend `auto` (chunked on CPU).
2. Training-step time of each backend at seq 2048 and 8192 (same bytes per step), and forward
   time, flex included (torch has no flex backward on CPU, so flex is timed forward-only here).

Each configuration runs in a fresh process so peak memory (VmHWM, reset after the first step) is
its own. Ratios are taken within one run of this script.

    .venv/bin/python benchmarks/bench_attention.py [--steps 6] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import torch

from blt_scale.parallel.env import DistEnv
from blt_scale.train.recipe import load_recipe

BYTES_PER_STEP = 8192
COMMON = [
    "wandb.enabled=false",
    "train.log_every=1000",
    "train.eval_every=null",
    "data.corpus_bytes=1500000",
    "model.encoder.window=128",
    "model.decoder.window=128",
]


def vm_hwm_gb() -> float:
    line = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 2**20


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # Linux: "5" resets VmHWM
        f.write("5")


def child(seq_len: int, backend: str, steps: int) -> dict:
    from blt_scale.train.loop import Trainer

    batch = BYTES_PER_STEP // seq_len
    cfg = load_recipe(
        "cpu_tiny",
        COMMON
        + [
            f"data.seq_len={seq_len}",
            f"train.global_batch={batch}",
            f"train.micro_batch={batch}",
            f"train.steps={steps + 1}",
            f"model.attention={backend}",
            f"run_dir={tempfile.mkdtemp(prefix='bench_attn_')}",
        ],
    )
    t = Trainer(cfg, DistEnv(), resume="never")
    model, batch_data = t.model, next(iter(t.loader))
    ids, lengths = batch_data["tokens"][:, :-1], batch_data["patch_lengths"]
    result = {"seq_len": seq_len, "backend": backend}
    if backend != "flex":  # no flex backward on CPU
        t.train_step()  # the first step allocates optimizer state and gradients
        reset_peak()
        rows = [t.train_step() for _ in range(steps)]
        result |= {
            "bytes_per_s": statistics.median(r["bytes_per_s"] for r in rows),
            "step_s": BYTES_PER_STEP / statistics.median(r["bytes_per_s"] for r in rows),
            "peak_rss_gb": vm_hwm_gb(),
        }
    with torch.no_grad():
        model(ids, lengths)  # warm-up (flex builds its block masks' kernels)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            model(ids, lengths)
            times.append(time.perf_counter() - start)
    result["forward_s"] = min(times)
    return result


def run(seq_len: int, backend: str, steps: int, threads: int) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            f"{seq_len},{backend}",
            "--steps",
            str(steps),
            "--threads",
            str(threads),
        ],
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise SystemExit(f"bench child seq_len={seq_len} backend={backend} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        warnings.filterwarnings("ignore")
        seq_len, backend = args.child.split(",")
        print(json.dumps(child(int(seq_len), backend, args.steps)))
        return
    short, long = run(512, "auto", args.steps, args.threads), run(8192, "auto", args.steps, args.threads)
    report = {
        "seq512": short,
        "seq8192": long,
        "bytes_per_s_ratio_8192_over_512": long["bytes_per_s"] / short["bytes_per_s"],
        "peak_rss_ratio_8192_over_512": long["peak_rss_gb"] / short["peak_rss_gb"],
        "backends": [
            run(s, b, args.steps, args.threads) for s in (2048, 8192) for b in ("chunked", "dense", "flex")
        ],
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"cpu_tiny, windows 128, {BYTES_PER_STEP} bytes/step, backend auto:")
    for r in (short, long):
        print(f"  seq {r['seq_len']:5d}: {r['bytes_per_s']:8.0f} B/s, peak RSS {r['peak_rss_gb']:.2f} GB")
    print(
        f"  bytes/s 8192 / 512 = {report['bytes_per_s_ratio_8192_over_512']:.2f} (goal >= 0.7), "
        f"peak memory 8192 / 512 = {report['peak_rss_ratio_8192_over_512']:.2f} (goal <= 1.3)"
    )
    print("backend  seq   train step s   forward s   peak RSS GB")
    for r in report["backends"]:
        step = f"{r['step_s']:12.3f}" if "step_s" in r else "  (no CPU bwd)"
        peak = f"{r['peak_rss_gb']:10.2f}" if "peak_rss_gb" in r else "         -"
        print(f"{r['backend']:8s} {r['seq_len']:5d} {step} {r['forward_s']:11.3f} {peak}")


if __name__ == "__main__":
    main()

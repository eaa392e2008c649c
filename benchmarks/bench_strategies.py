"""Step time and peak memory of FSDP and DeepSpeed ZeRO-1/2/3 for the same recipe, in one run.

Each strategy trains the same recipe on N local ranks (the launcher of `blt train --nproc`), one
strategy after the other, and its metrics.jsonl gives:
  step_s     median seconds per optimizer step after the warm-up steps
  peak_gb    peak memory of the busiest rank (CUDA: max allocated; CPU: peak RSS of the process,
             which includes the interpreter and the imported libraries, ~0.1 GB more for DeepSpeed)
  state_mb   parameters + optimizer state one rank holds (the metric `shard_bytes`)
  optim_mb   optimizer state one rank holds (moments, and for ZeRO the fp32 master partition)

    .venv/bin/python benchmarks/bench_strategies.py [--nproc 2] [--steps 12] [--recipe cpu_tiny]
        [k=v ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from blt_scale.files import read_jsonl
from blt_scale.train.local_ranks import spawn_ranks, wait_ranks

COMMON = [
    "wandb.enabled=false",
    "train.micro_batch=4",
    "train.log_every=1",
    "train.eval_every=null",
    "checkpoint.every=null",
    "train.peak_flops=1e12",
    "data.corpus_bytes=2000000",
]
STRATEGIES = {
    "fsdp": ["parallel.strategy=fsdp"],
    "zero1": ["parallel.strategy=deepspeed", "parallel.zero_stage=1"],
    "zero2": ["parallel.strategy=deepspeed", "parallel.zero_stage=2"],
    "zero3": ["parallel.strategy=deepspeed", "parallel.zero_stage=3"],
    "zero3_offload": [
        "parallel.strategy=deepspeed",
        "parallel.zero_stage=3",
        "parallel.offload_optimizer=true",
        "parallel.offload_param=true",
    ],
}


def measure(
    name: str, recipe: str, overrides: list[str], nproc: int, steps: int, warmup: int, root: Path
) -> dict:
    run_dir = root / name
    args = [
        recipe,
        *COMMON,
        *overrides,
        *STRATEGIES[name],
        f"train.steps={steps + warmup}",
        f"run_dir={run_dir}",
        "--resume",
        "never",
    ]
    log = root / f"{name}.log"
    with open(log, "w") as out:
        code = wait_ranks(
            spawn_ranks(
                args, nproc, env=os.environ | {"OMP_NUM_THREADS": "1"}, stdout=out, stderr=subprocess.STDOUT
            )
        )
    if code != 0:
        raise SystemExit(f"{name}: ranks exited {code}; see {log}:\n{log.read_text()[-3000:]}")
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "split" not in r]
    timed = [r for r in rows if r["step"] > warmup]
    step_bytes = rows[0]["bytes_consumed"]  # one global batch
    return {
        "step_s": statistics.median(step_bytes / r["bytes_per_s"] for r in timed),
        "peak_gb": max(r["mem_gb"] for r in rows),
        "state_mb": rows[-1]["shard_bytes"] / 2**20,
        "optim_mb": rows[-1]["optim_state_bytes"] / 2**20,
        "final_loss": rows[-1]["loss"],
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("overrides", nargs="*", help="recipe overrides for every strategy, e.g. data.seq_len=1024")
    p.add_argument("--recipe", default="cpu_tiny")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--steps", type=int, default=10, help="timed steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--only", nargs="*", default=list(STRATEGIES), choices=list(STRATEGIES))
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_strategies_") as tmp:
        report = {
            name: measure(name, args.recipe, args.overrides, args.nproc, args.steps, args.warmup, Path(tmp))
            for name in args.only
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"{args.recipe} {' '.join(args.overrides)}: {args.nproc} ranks, median of {args.steps} steps after "
        f"{args.warmup}"
    )
    print(f"{'strategy':<15}{'step s':>9}{'peak GB':>9}{'state MB/rank':>15}{'optim MB/rank':>15}{'loss':>8}")
    for name, r in report.items():
        print(
            f"{name:<15}{r['step_s']:>9.3f}{r['peak_gb']:>9.3f}{r['state_mb']:>15.2f}{r['optim_mb']:>15.2f}{r['final_loss']:>8.3f}"
        )


if __name__ == "__main__":
    sys.exit(main())

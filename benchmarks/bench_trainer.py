"""Trainer throughput on this machine and activation-checkpointing memory.

P1: achieved FLOP/s of a BLT training step / that of a dense byte baseline with (about) the same
    training FLOPs per step; steps of the two are interleaved in one process so machine noise
    hits both alike. FLOPs come from blt_scale.model.flops (the trainer's own metric).
P2: achieved training FLOP/s / fp32 matmul peak (2048^2 torch.mm) measured in the same run.
Memory: peak RSS during training steps (after the first) of a BLT at seq 2048, AC none / selective / full,
    each in a fresh process.

    .venv/bin/python benchmarks/bench_trainer.py [--steps 10] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile

import torch

from blt_scale.model.flops import model_flops
from blt_scale.parallel.env import DistEnv
from blt_scale.train.metrics import measure_matmul_peak
from blt_scale.train.recipe import load_recipe

COMMON = [
    "wandb.enabled=false",
    "train.log_every=1000",
    "train.eval_every=null",
    "data.corpus_bytes=2000000",
    "train.peak_flops=1e12",
]
SIZES = {
    # cpu_tiny as shipped, and two and four times as wide (local 256/512, latent 512/1024) at the same
    # patching.
    "cpu_tiny": ([], 128),
    "cpu_tiny_x2": (
        [
            "model.encoder.dim=256",
            "model.decoder.dim=256",
            "model.global.dim=512",
            "model.encoder.window=512",
            "model.decoder.window=512",
        ],
        256,
    ),
    "cpu_tiny_x4": (
        [
            "model.encoder.dim=512",
            "model.decoder.dim=512",
            "model.global.dim=1024",
            "model.encoder.window=512",
            "model.decoder.window=512",
            "model.global.heads=8",
            "model.encoder.heads=8",
            "model.decoder.heads=8",
        ],
        512,
    ),
}


def matched_baseline(blt_cfg, dim: int) -> list[str]:
    """A dense byte LM of width `dim` whose training FLOPs per byte are closest to the BLT's."""
    target = model_flops(blt_cfg.model, blt_cfg.data.seq_len, 7.5).train_per_byte
    best = min(
        range(1, 33),
        key=lambda L: abs(
            model_flops(
                load_recipe(
                    "cpu_tiny_baseline", [f"model.dim={dim}", f"model.layers={L}", "model.heads=4"]
                ).model,
                blt_cfg.data.seq_len,
                1.0,
            ).train_per_byte
            - target
        ),
    )
    return [f"model.dim={dim}", f"model.layers={best}", "model.heads=4"]


def trainer(recipe: str, overrides: list[str]):
    from blt_scale.train.loop import Trainer

    cfg = load_recipe(recipe, COMMON + overrides + [f"run_dir={tempfile.mkdtemp(prefix='bench_')}"])
    return Trainer(cfg, DistEnv(), resume="never")


def throughput(steps: int, warmup: int) -> dict:
    out = {}
    peak = measure_matmul_peak(torch.device("cpu"))
    for name, (overrides, dim) in SIZES.items():
        blt = trainer("cpu_tiny", overrides + [f"train.steps={steps + warmup}"])
        base = trainer(
            "cpu_tiny_baseline", matched_baseline(blt.cfg, dim) + [f"train.steps={steps + warmup}"]
        )
        rows = {"blt": [], "baseline": []}
        for i in range(steps + warmup):
            for key, t in (("blt", blt), ("baseline", base)):
                row = t.train_step()
                if i >= warmup:
                    rows[key].append(row)
        fps = {k: statistics.median(r["flops_per_s"] for r in v) for k, v in rows.items()}
        flops_step = {
            k: statistics.median(r["flops_per_s"] * r["bytes_per_s"] ** -1 for r in v)
            * t.cfg.train.global_batch
            * t.cfg.data.seq_len
            for (k, v), t in zip(rows.items(), (blt, base))
        }
        out[name] = {
            "blt_train_flops_per_step": flops_step["blt"],
            "baseline_train_flops_per_step": flops_step["baseline"],
            "baseline_layers": base.cfg.model.layers,
            "blt_mean_patch_bytes": statistics.median(r["mean_patch_bytes"] for r in rows["blt"]),
            "blt_flops_per_s": fps["blt"],
            "baseline_flops_per_s": fps["baseline"],
            "P1_blt_over_baseline": fps["blt"] / fps["baseline"],
            "P2_blt_over_peak": fps["blt"] / peak,
            "P2_baseline_over_peak": fps["baseline"] / peak,
        }
    peak = max(peak, measure_matmul_peak(torch.device("cpu")))
    for r in out.values():  # against the better of the two peak measurements: the stricter ratio
        r["P2_blt_over_peak"], r["P2_baseline_over_peak"] = (
            r["blt_flops_per_s"] / peak,
            r["baseline_flops_per_s"] / peak,
        )
    return {"matmul_peak_flops": peak, "sizes": out}


def vm_hwm_gb() -> float:
    """Peak resident memory of this process since the last reset (VmHWM), GB."""
    line = next(row for row in open("/proc/self/status") if row.startswith("VmHWM:"))
    return int(line.split()[1]) / 2**20


def memory_child(ac: str) -> None:
    t = trainer(
        "cpu_tiny",
        [
            "data.seq_len=2048",
            "train.steps=3",
            f"parallel.activation_checkpointing={ac}",
            "parallel.ac_every=2",
        ],
    )
    t.train_step()  # the first step allocates optimizer state and gradients
    # Reset the peak (Linux: "5" to clear_refs) so start-up, e.g. reading the corpus, cannot set it.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    t.train_step()
    t.train_step()
    print(json.dumps({"ac": ac, "peak_rss_gb": vm_hwm_gb()}))


def memory() -> dict:
    res = {}
    for ac in ("none", "selective", "full"):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", ac], capture_output=True, text=True, check=True
        )
        res[ac] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_gb"]
    return {"peak_rss_gb_seq2048": res}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true")
    p.add_argument("--memory-child", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child)
        return
    report = throughput(args.steps, args.warmup) | memory()
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"fp32 matmul peak: {report['matmul_peak_flops'] / 1e9:.1f} GFLOP/s")
    for name, r in report["sizes"].items():
        print(
            f"{name}: BLT {r['blt_flops_per_s'] / 1e9:.2f} GFLOP/s "
            f"({r['blt_train_flops_per_step'] / 1e9:.2f} GFLOP/step, {r['blt_mean_patch_bytes']:.2f} "
            f"B/patch), baseline ({r['baseline_layers']} layers) {r['baseline_flops_per_s'] / 1e9:.2f} "
            f"GFLOP/s ({r['baseline_train_flops_per_step'] / 1e9:.2f} GFLOP/step)"
        )
        print(
            f"  P1 BLT/baseline {r['P1_blt_over_baseline']:.3f}   P2 BLT/peak {r['P2_blt_over_peak']:.3f}   "
            f"baseline/peak {r['P2_baseline_over_peak']:.3f}"
        )
    print(
        "peak RSS (GB), BLT seq 2048, one process:",
        {k: round(v, 3) for k, v in report["peak_rss_gb_seq2048"].items()},
    )


if __name__ == "__main__":
    main()

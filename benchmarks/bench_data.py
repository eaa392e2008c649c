#!/usr/bin/env python
"""Data-path figures (a benchmark, not a test):

1. `blt prep text` conversion MB/s on a >= 200 MB corpus (the Python standard library's sources,
   repeated), and its ratio to `zstd -3` compressing the same bytes in the same run;
2. the streaming loader's packed bytes/s with 2 workers (cpu_tiny's seq_len, micro batch and
   patcher), and its ratio to the bytes/s `cpu_tiny` trains at (measured here by training it);
3. with 2 ranks and their own shard caches, the shard bytes each rank fetches over one epoch /
   the dataset's (shard-local streams: about 0.5).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_data.py [--mb 200] [--workers 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from blt_scale.data.builtin import stdlib_files
from blt_scale.data.loader import DataConfig, build_loader
from blt_scale.data.prep_text import TextPrepConfig, convert_text  # imported here: not part of a timing
from blt_scale.train.recipe import load_recipe

REPO = Path(__file__).resolve().parent.parent


def make_corpus(directory: Path, megabytes: int) -> tuple[int, Path]:
    """Stdlib files copied round after round (each round its own folder) up to `megabytes`;
    also their concatenation, for zstd."""
    files = [p for p in stdlib_files() if p.stat().st_size]
    total, rounds = 0, 0
    with open(directory / "all.bin", "wb") as concat:
        while total < megabytes * 1e6:
            folder = directory / "corpus" / f"round{rounds:03d}"
            folder.mkdir(parents=True)
            for i, path in enumerate(files):
                data = path.read_bytes()
                (folder / f"{i:05d}.py").write_bytes(data)
                concat.write(data)
                total += len(data)
            rounds += 1
    return total, directory / "all.bin"


def zstd_seconds(path: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["zstd", "-3", "-q", "-c", str(path)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def conversion_seconds(corpus: Path, out: Path, workers: int) -> float:
    started = time.perf_counter()
    convert_text(TextPrepConfig(inputs=[str(corpus)], out=str(out), workers=workers), progress=False)
    return time.perf_counter() - started


def loader_bytes_per_s(dataset: Path, cache: Path, workers: int, batches: int = 300) -> float:
    recipe = load_recipe("cpu_tiny")
    micro = recipe.train.micro_batch_for(1)
    cfg = DataConfig(
        seq_len=recipe.data.seq_len,
        sources=[{"uri": str(dataset)}],
        workers=workers,
        streams=micro,
        cache_dir=str(cache),
    )
    it = iter(build_loader(cfg, recipe.patcher, micro, seed=0))
    for _ in range(20):  # worker start-up and shard fetching are not the steady state
        next(it)
    started = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * micro * recipe.data.seq_len / (time.perf_counter() - started)


def fetched_per_rank_over_dataset(corpus: Path, tmp: Path) -> float:
    """Two ranks (own caches) read one epoch's rows of one round of the corpus in 256 KB shards:
    shard bytes each fetched / dataset bytes, averaged."""
    dataset, cache = tmp / "ds_small_shards", tmp / "caches"
    convert_text(
        TextPrepConfig(inputs=[str(corpus / "round000")], out=str(dataset), shard_size=256_000),
        progress=False,
    )
    recipe = load_recipe("cpu_tiny")
    micro = recipe.train.micro_batch_for(2)
    shards = json.loads((dataset / "train" / "index.json").read_text())["shards"]
    stored = [(s["zip_data"] or s["raw_data"])["bytes"] for s in shards]
    epoch_ids = sum(s["raw_data"]["bytes"] for s in shards)  # about one id per stored byte
    ratios = []
    for rank in range(2):
        cfg = DataConfig(
            seq_len=recipe.data.seq_len,
            sources=[{"uri": str(dataset)}],
            streams=2 * micro,
            cache_dir=str(cache / f"rank{rank}"),
        )
        loader = build_loader(cfg, recipe.patcher, micro, rank=rank, world_size=2, seed=0)
        it = iter(loader)
        for _ in range(epoch_ids // (2 * micro * (recipe.data.seq_len + 1))):
            next(it)
        ratios.append(sum(stored[k] for _, k in loader.opened) / sum(stored))
    return statistics.mean(ratios)


def train_bytes_per_s(run_dir: Path, steps: int = 20) -> float:
    cmd = [
        str(REPO / ".venv/bin/blt"),
        "train",
        "cpu_tiny",
        f"train.steps={steps}",
        f"run_dir={run_dir}",
        "wandb.enabled=false",
        "train.log_every=1",
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["bytes_per_s"] for r in rows if "bytes_per_s" in r and r.get("split") is None]
    return statistics.median(rates[2:] or rates)  # the first steps include warm-up


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mb", type=int, default=200)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        size, concat = make_corpus(tmp, args.mb)
        zstd_s = zstd_seconds(concat)
        prep_s = conversion_seconds(tmp / "corpus", tmp / "ds", args.workers)
        load = loader_bytes_per_s(tmp / "ds", tmp / "cache", args.workers)
        fetched = fetched_per_rank_over_dataset(tmp / "corpus", tmp)
        train = train_bytes_per_s(tmp / "run")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    figures = {
        "corpus_mb": size / 1e6,
        "prep_workers": args.workers,
        "prep_mb_per_s": size / 1e6 / prep_s,
        "zstd3_mb_per_s": size / 1e6 / zstd_s,
        "prep_vs_zstd3": zstd_s / prep_s,
        "loader_workers": args.workers,
        "loader_bytes_per_s": load,
        "cpu_tiny_train_bytes_per_s": train,
        "loader_vs_train": load / train,
        "cpus": os.cpu_count(),
        "fetched_per_rank_over_dataset_2_ranks": fetched,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(
        f"corpus {figures['corpus_mb']:.0f} MB; conversion ({args.workers} workers) "
        f"{figures['prep_mb_per_s']:.1f} MB/s, zstd -3 {figures['zstd3_mb_per_s']:.1f} MB/s, ratio "
        f"{figures['prep_vs_zstd3']:.2f} (goal >= 0.5)"
    )
    print(
        f"loader ({args.workers} workers) {load / 1e6:.2f} MB/s packed; cpu_tiny trains at {train / 1e3:.2f} "
        f"kB/s; ratio {figures['loader_vs_train']:.0f}x (goal >= 50x)"
    )
    print(f"2 ranks, one epoch: each fetched {fetched:.2f} of the dataset's shard bytes (goal about 0.5)")


if __name__ == "__main__":
    sys.exit(main())

"""Helpers for the trainer tests: tiny recipes, real rank processes over gloo (the same launcher
`blt train --nproc` uses), and readers for what a run leaves in its run directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from blt_scale.checkpoint.layout import latest_complete
from blt_scale.data.loader import build_loader
from blt_scale.files import read_jsonl
from blt_scale.train.local_ranks import spawn_ranks, wait_ranks
from blt_scale.train.recipe import load_recipe


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """In-process training or generation of a tiny model: thousands of small ops, where a second
    thread on 2 shared cores mostly waits (a generation test ran 10x slower with 2)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# A BLT small enough that a 20-step, 2-rank run takes seconds; fixed peak so no matmul benchmark.
TINY = [
    "model.encoder.dim=32",
    "model.encoder.layers=1",
    "model.encoder.heads=2",
    "model.encoder.window=64",
    "model.global.dim=64",
    "model.global.layers=2",
    "model.global.heads=2",
    "model.decoder.dim=32",
    "model.decoder.layers=1",
    "model.decoder.heads=2",
    "model.decoder.window=64",
    "model.ngram.buckets=512",
    "data.seq_len=64",
    "data.corpus_bytes=600000",
    "data.val_fraction=0.1",
    "train.global_batch=8",
    "train.micro_batch=4",
    "train.log_every=1",
    "train.eval_every=null",
    "train.peak_flops=1e11",
    "optim.warmup_steps=3",
    "wandb.enabled=false",
]
BASELINE = ["model.dim=32", "model.layers=2", "model.heads=2", "model.window=null"] + [
    o for o in TINY if not o.startswith("model.")
]
FSDP = ["parallel.strategy=fsdp"]
DETERMINISTIC = ["train.deterministic=true", "train.trace_data=true"]
LAUNCH_TIMEOUT_S = 240


def start(run_dir: Path, overrides: list[str], nproc: int, recipe: str = "cpu_tiny", resume: str = "auto"):
    """Start the ranks; stderr of all of them goes to run_dir/../<name>.log."""
    log = open(Path(str(run_dir) + f".{time.monotonic_ns()}.log"), "w")
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    args = [recipe, *overrides, f"run_dir={run_dir}", "--resume", resume]
    return spawn_ranks(args, nproc, env=env, stdout=log, stderr=subprocess.STDOUT), log


def run(
    run_dir: Path,
    overrides: list[str],
    nproc: int,
    recipe: str = "cpu_tiny",
    resume: str = "auto",
    expect: int | None = 0,
) -> tuple[int, str]:
    procs, log = start(run_dir, overrides, nproc, recipe, resume)
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        code = wait_ranks(procs, grace_s=10)
    finally:
        kill(procs)
        log.close()
    text = Path(log.name).read_text()
    if expect is not None:
        assert code == expect, f"exit {code}, expected {expect}; output:\n{text[-4000:]}"
    return code, text


def kill(procs, sig: int = 9) -> None:
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, sig)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


def train_rows(run_dir: Path) -> list[dict]:
    return [r for r in read_jsonl(Path(run_dir) / "metrics.jsonl") if "split" not in r]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in train_rows(run_dir)}


def traced_rows(run_dir: Path) -> dict[int, list[int]]:
    """Step -> sorted CRCs of every row any rank trained on at that step."""
    steps: dict[int, list[int]] = {}
    for path in (Path(run_dir) / "data_trace").glob("rank_*.jsonl"):
        for rec in read_jsonl(path):
            steps.setdefault(rec["step"], []).extend(rec["rows"])
    return {s: sorted(v) for s, v in sorted(steps.items())}


def expected_rows(overrides: list[str], steps: int, recipe: str = "cpu_tiny") -> dict[int, list[int]]:
    """Independent of the trainer: the rows of each global batch, read by one loader."""
    cfg = load_recipe(recipe, overrides)
    loader = iter(build_loader(cfg.data, cfg.patcher, cfg.train.global_batch, "train", 0, 1, cfg.train.seed))
    return {
        s: sorted(zlib.crc32(r.numpy().tobytes()) for r in next(loader)["tokens"])
        for s in range(1, steps + 1)
    }


def wait_for(predicate, timeout: float = 120, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.002)


_CACHE: dict[tuple, Path] = {}


def reference(tmp_factory, name: str, overrides: list[str], nproc: int, recipe: str = "cpu_tiny") -> Path:
    """A finished run shared by every test of the session that needs the same one."""
    key = (name, tuple(overrides), nproc, recipe)
    if key not in _CACHE:
        run_dir = tmp_factory.mktemp("ref") / name
        run(run_dir, overrides, nproc, recipe, resume="never")
        _CACHE[key] = run_dir
    return _CACHE[key]


def resume_without_newest(done: Path, dest: Path, overrides: list[str], nproc: int, recipe: str) -> Path:
    """A copy of the finished run `done` at `dest`, its newest checkpoint dropped, trained to the end
    again: it must say it resumed from the one before. Returns `dest` to compare with `done`."""
    shutil.copytree(done, dest)
    shutil.rmtree(latest_complete(dest))
    before = latest_complete(dest)
    _, out = run(dest, overrides, nproc, recipe)
    assert "resumed from" in out and before.name in out, out[-3000:]
    return dest


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())

"""Metrics: one JSON object per logged step in RUN_DIR/metrics.jsonl, a progress line with an ETA,
and the reference peak that MFU is measured against."""

from __future__ import annotations

import math
import resource
import sys
import time
from pathlib import Path

import torch

from blt_scale.files import append_jsonl, read_jsonl


def measure_matmul_peak(device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a square fp32 matmul on this device: the CPU 'peak' MFU is quoted against."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.mm(a, b)  # warm-up
    best = math.inf
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class MetricsLogger:
    def __init__(self, run_dir: Path, total_steps: int, enabled: bool = True, sinks: list = ()):
        self.sinks = list(sinks)  # objects with log(row), e.g. the wandb run
        self.path = Path(run_dir) / "metrics.jsonl"
        self.total_steps = total_steps
        self.enabled = enabled
        self.started = time.perf_counter()
        self.first_step: int | None = None

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        append_jsonl(self.path, row)
        for sink in self.sinks:
            sink.log(row)
        if "split" not in row:
            self._progress(row)
        else:
            print(
                f"[eval {row['split']}] step {row['step']} bpb {row['bpb']:.4f}", file=sys.stderr, flush=True
            )

    def _progress(self, row: dict) -> None:
        step = row["step"]
        if self.first_step is None:
            self.first_step, self.started = step, time.perf_counter()
        done = step - self.first_step
        elapsed = time.perf_counter() - self.started
        left = self.total_steps - step
        # The first row this process logs has no pace to extrapolate from: "eta ?" until the second.
        eta = f"{elapsed / done * left:.0f}s" if done else ("0s" if left <= 0 else "?")
        print(
            f"step {step}/{self.total_steps} loss {row['loss']:.4f} bpb {row['bpb']:.4f} "
            f"lr {row['lr']:.2e} {row['bytes_per_s']:.0f} B/s mfu {row['mfu']:.3f} eta {eta}",
            file=sys.stderr,
            flush=True,
        )


def read_metrics(run_dir: str | Path) -> list[dict]:
    return read_jsonl(Path(run_dir) / "metrics.jsonl")

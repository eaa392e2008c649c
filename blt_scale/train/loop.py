"""The training loop: gradient accumulation, clipping, AdamW with warmup + decay, non-finite step
skipping, periodic validation, and DESIGN.md's metrics.

The loop is written against a model, an optimizer and a loader; how the model is sharded and where
checkpoints go are decided outside, so the distributed strategies plug in without changing it.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field, model_validator

from blt_scale import config
from blt_scale.config import Config
from blt_scale.data.loader import build_loader
from blt_scale.model.build import build_model, lm_loss
from blt_scale.model.flops import model_flops
from blt_scale.train.metrics import MetricsLogger, measure_matmul_peak, memory_gb
from blt_scale.train.optim import build_optimizer, lr_factor

if TYPE_CHECKING:
    from blt_scale.recipe import RunConfig


class TrainConfig(Config):
    steps: int = Field(gt=0)
    seed: int = 0
    global_batch: int = Field(default=8, gt=0, description="sequences per optimizer step, over all ranks")
    micro_batch: int = Field(default=8, gt=0, description="sequences per forward pass on one rank")
    log_every: int = Field(default=10, gt=0)
    eval_every: int | None = Field(default=None, gt=0, description="validation every N steps (and at the end)")
    eval_batches: int = Field(default=4, gt=0)
    max_bad_steps: int = Field(default=5, gt=0, description="halt after this many non-finite steps in a row")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    peak_flops: float | None = Field(default=None, gt=0, description="device peak for MFU; None: measured matmul peak")

    @model_validator(mode="after")
    def _batch_divides(self) -> "TrainConfig":
        if self.global_batch % self.micro_batch:
            raise ValueError(f"global_batch ({self.global_batch}) must be a multiple of micro_batch ({self.micro_batch})")
        return self


class NonFiniteHalt(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Trainer:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        t = cfg.train
        self.run_dir = Path(cfg.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(config.dump(cfg))
        self.device = pick_device(t.device)
        torch.manual_seed(t.seed)
        self.model = build_model(cfg.model).to(self.device)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, t.steps, cfg.optim)
        )
        self.loader = build_loader(cfg.data, cfg.patcher, t.micro_batch, "train", seed=t.seed)
        self.batches = iter(self.loader)
        self.accum = t.global_batch // t.micro_batch
        self.step = 0
        self.bad_in_row = 0
        self.skipped_steps = 0
        self.peak = t.peak_flops or measure_matmul_peak(self.device)
        self.metrics = MetricsLogger(self.run_dir, t.steps)

    def train_step(self) -> dict:
        t, seq_len = self.cfg.train, self.cfg.data.seq_len
        started = time.perf_counter()
        loss_sum = torch.zeros((), device=self.device)
        targets = patches = 0
        data_wait = 0.0
        for _ in range(self.accum):
            wait_start = time.perf_counter()
            batch = next(self.batches)
            data_wait += time.perf_counter() - wait_start
            tokens = batch["tokens"].to(self.device)
            lengths = batch["patch_lengths"].to(self.device)
            summed, count = lm_loss(self.model(tokens[:, :-1], lengths), tokens[:, 1:])
            # A fixed normaliser (all target slots of the global batch) weights every byte alike
            # across micro-batches and ranks.
            (summed / (t.global_batch * seq_len)).backward()
            loss_sum += summed.detach()
            targets += int(count)
            patches += int((lengths > 0).sum())
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.clip_grad_norm or math.inf)
        lr = self.optimizer.param_groups[0]["lr"]
        finite = bool(torch.isfinite(loss_sum)) and bool(torch.isfinite(grad_norm))
        if finite:
            self.optimizer.step()
            self.bad_in_row = 0
        else:
            self.skipped_steps += 1
            self.bad_in_row += 1
            if self.bad_in_row >= t.max_bad_steps:
                raise NonFiniteHalt(
                    f"{self.bad_in_row} steps in a row had a non-finite loss or gradient norm "
                    f"(last: step {self.step + 1}, loss {float(loss_sum)}, grad_norm {float(grad_norm)}, lr {lr:.3e})"
                )
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        elapsed = time.perf_counter() - started
        input_bytes = t.global_batch * seq_len
        mean_patch = input_bytes / max(patches, 1)
        flops = model_flops(self.cfg.model, seq_len, mean_patch).train_per_byte * input_bytes
        loss = float(loss_sum) / max(targets, 1)
        return {
            "step": self.step, "loss": loss, "bpb": loss / math.log(2), "lr": lr,
            "grad_norm": float(grad_norm), "bytes_per_s": input_bytes / elapsed,
            "patches_per_s": patches / elapsed, "mean_patch_bytes": mean_patch,
            "flops_per_s": flops / elapsed, "mfu": flops / elapsed / self.peak,
            "mem_gb": memory_gb(self.device), "data_wait_s": data_wait, "skipped_steps": self.skipped_steps,
        }

    @torch.no_grad()
    def evaluate(self) -> dict:
        t = self.cfg.train
        loader = build_loader(self.cfg.data, self.cfg.patcher, t.micro_batch, "val", seed=t.seed)
        self.model.eval()
        loss_sum, count = 0.0, 0
        for _, batch in zip(range(t.eval_batches), loader):
            tokens = batch["tokens"].to(self.device)
            summed, n = lm_loss(self.model(tokens[:, :-1], batch["patch_lengths"].to(self.device)), tokens[:, 1:])
            loss_sum, count = loss_sum + float(summed), count + int(n)
        self.model.train()
        loss = loss_sum / count
        return {"step": self.step, "split": "val", "loss": loss, "bpb": loss / math.log(2)}

    def fit(self) -> list[dict]:
        t = self.cfg.train
        rows = []
        while self.step < t.steps:
            row = self.train_step()
            if self.step % t.log_every == 0 or self.step == t.steps:
                self.metrics.log(row)
            rows.append(row)
            if t.eval_every and (self.step % t.eval_every == 0 or self.step == t.steps):
                self.metrics.log(self.evaluate())
        return rows


def train(cfg: RunConfig) -> list[dict]:
    return Trainer(cfg).fit()

"""The training loop: gradient accumulation, clipping, AdamW with warmup + decay, non-finite step
skipping, stop signals, checkpoints, periodic validation and the metrics rows
(train/metrics.py).

The loop talks to a Strategy (parallel/strategy.py) for everything that depends on how the model
is spread over ranks, so FSDP, one plain process and DeepSpeed share it.
"""

from __future__ import annotations

import math
import sys
import time
import zlib
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
import torch.distributed as dist
from pydantic import Field, model_validator

from blt_scale import config
from blt_scale.checkpoint.checkpointer import Checkpointer
from blt_scale.checkpoint.layout import (
    complete_checkpoints,
    is_complete,
    latest_complete,
    latest_verified,
    remove_partial,
    verify,
)
from blt_scale.checkpoint.safe_dcp import CheckpointLoadError
from blt_scale.config import Config, ConfigError
from blt_scale.data.loader import build_loader, merge_states
from blt_scale.model.build import build_model
from blt_scale.model.flops import model_flops
from blt_scale.parallel.env import DistEnv, init_distributed, pick_device
from blt_scale.parallel.strategy import all_reduce, build_strategy
from blt_scale.train import records
from blt_scale.train.config_check import check_resume_config
from blt_scale.train.init_from import load_init
from blt_scale.train.metrics import MetricsLogger, measure_matmul_peak, memory_gb
from blt_scale.train.objectives import Figures, loss_fn
from blt_scale.train.optim import build_optimizer, lr_factor
from blt_scale.train.run_lock import RunDirLocked, RunLock
from blt_scale.train.signals import StopFlag

if TYPE_CHECKING:
    from blt_scale.train.recipe import RunConfig


class TrainConfig(Config):
    steps: int = Field(gt=0)
    seed: int = 0
    global_batch: int = Field(default=8, gt=0, description="sequences per optimizer step, over all ranks")
    micro_batch: int | None = Field(
        default=None,
        gt=0,
        description="sequences per forward pass on one rank; global_batch / (micro_batch x world size) "
        "micro-batches are accumulated per step. unset = global_batch / world size (no accumulation)",
    )
    log_every: int = Field(default=10, gt=0)
    eval_every: int | None = Field(
        default=None, gt=0, description="validation every N steps (and at the end)"
    )
    eval_batches: int = Field(
        default=4,
        gt=0,
        description="validation batches over all ranks, of micro_batch rows each (global_batch rows when "
        "it is unset)",
    )
    max_bad_steps: int = Field(default=5, gt=0, description="halt after this many non-finite steps in a row")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    peak_flops: float | None = Field(
        default=None, gt=0, description="device peak for MFU; None: measured matmul peak"
    )
    deterministic: bool = Field(
        default=False, description="deterministic kernels (bitwise-reproducible resume on CPU)"
    )
    trace_data: bool = Field(
        default=False, description="record a CRC of every row each rank trains on (data_trace/)"
    )
    prerequisites: list[str] = Field(
        default=[],
        description="recipes `blt train` trains (or finishes) first, in its own process, e.g. the image "
        "tokenizer an MVoT recipe reads (`blt submit` and torchrun do not: train them beforehand)",
    )
    inject_nan_at: list[int] = Field(
        default=[], description="fault drill: rank 0's loss is NaN at these steps"
    )

    @model_validator(mode="after")
    def _batch_divides(self) -> TrainConfig:
        if self.micro_batch is not None and self.global_batch % self.micro_batch:
            raise ValueError(
                f"global_batch ({self.global_batch}) must be a multiple of micro_batch ({self.micro_batch})"
            )
        return self

    def micro_batch_for(self, world_size: int) -> int:
        """Sequences per forward pass on one rank at `world_size` ranks: train.micro_batch, or when it
        is unset global_batch / world size (no accumulation). The only place the key is resolved."""
        if self.micro_batch is None:
            if self.global_batch % world_size:
                raise ConfigError(
                    f"train.global_batch ({self.global_batch}) must be a multiple of the world size "
                    f"({world_size}) when train.micro_batch is unset (no accumulation: global_batch / world "
                    "size per rank)"
                )
            return self.global_batch // world_size
        if self.global_batch % (self.micro_batch * world_size):
            hint = (
                ""
                if self.global_batch % world_size
                else (
                    "; or unset train.micro_batch (train.micro_batch=null) for global_batch / world size "
                    "per rank, without accumulation"
                )
            )
            raise ConfigError(
                f"train.global_batch ({self.global_batch}) must be a multiple of train.micro_batch "
                f"({self.micro_batch}) x world size ({world_size}){hint}"
            )
        return self.micro_batch

    def accumulation_for(self, world_size: int) -> int:
        """Micro-batches per optimizer step on each rank at `world_size` ranks."""
        return self.global_batch // (self.micro_batch_for(world_size) * world_size)


class NonFiniteHalt(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


class StopRequested(Exception):
    """A stop signal reached some rank; every rank saved the same step."""

    def __init__(self, step: int):
        super().__init__(f"stopped by signal after step {step}; checkpoint saved")
        self.step = step


class Trainer:
    def __init__(self, cfg: RunConfig, env: DistEnv | None = None, resume: str = "auto"):
        env = env or DistEnv()
        self.cfg, self.env = cfg, env
        t = cfg.train
        self.micro_batch = t.micro_batch_for(env.world_size)
        self.accum = t.accumulation_for(env.world_size)
        self.run_dir = Path(cfg.run_dir)
        self.device = pick_device(t.device, env)
        self.strategy = build_strategy(cfg.parallel, env, self.device)
        self.strategy.configure(cfg)
        init_distributed(env, self.device, self.strategy.needs_process_group)
        if t.deterministic:
            torch.use_deterministic_algorithms(True)
        # A changed model or data order is refused before anything in the run directory is written,
        # against the config the checkpoint was written with (`blt submit` rewrites RUN_DIR/config.yaml).
        recipe = cfg.model_dump(mode="json", by_alias=True)
        saved = (
            latest_complete(self.run_dir) if resume == "auto" else None if resume == "never" else Path(resume)
        )
        if saved is not None:
            own = saved / "config.yaml"
            check_resume_config(own if own.is_file() else self.run_dir / "config.yaml", recipe, self.run_dir)
        self.lock = self._lock_run_dir()  # before anything is written there
        try:
            self._set_up(cfg, env, resume)
        except BaseException:  # an in-process caller (a test, a notebook) may try again
            if self.lock is not None:
                self.lock.release()
            raise

    def _set_up(self, cfg: RunConfig, env: DistEnv, resume: str) -> None:
        """Everything after the lock: the model, its strategy, data, checkpoints, the resume."""
        t = cfg.train
        if env.is_main:
            (self.run_dir / "config.yaml").write_text(config.dump(cfg))
        torch.manual_seed(t.seed)  # the same initial weights on every rank, before sharding
        model = build_model(cfg.model)
        fresh = resume == "never" or (resume == "auto" and latest_complete(self.run_dir) is None)
        if getattr(cfg.model, "init_from", None) and fresh:  # brain phases start from earlier runs
            load_init(model, cfg.model.init_from)
        self.model, self.optimizer = self.strategy.setup(model, partial(build_optimizer, cfg=cfg.optim))
        # the model kind's objective: the loop knows no variant
        self.loss_fn = loss_fn(cfg.model, cfg.patcher)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, t.steps, cfg.optim)
        )
        self.loader = build_loader(
            cfg.data, cfg.patcher, self.micro_batch, "train", env.rank, env.world_size, t.seed
        )
        self.step = self.skipped_steps = self.bad_in_row = self.bytes_consumed = 0
        self.checkpointer = Checkpointer(
            cfg.checkpoint, self.run_dir, env.rank, self.strategy, config.dump(cfg)
        )
        self.resumed_from = self._resume(resume)
        self.batches = iter(self.loader)
        self.peak = t.peak_flops or measure_matmul_peak(self.device)
        self.metrics = MetricsLogger(self.run_dir, t.steps, enabled=env.is_main)
        self.stop = StopFlag().install()
        self.trace = records.DataTrace(self.run_dir, env.rank) if t.trace_data else None

    def _lock_run_dir(self) -> RunLock | None:
        """Rank 0 takes the run directory's lock; every rank fails together when it is held."""
        lock = error = None
        if self.env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            try:
                lock = RunLock(self.run_dir)
            except RunDirLocked as err:
                error = err
        if all_reduce([float(error is not None)])[0]:
            raise error or RunDirLocked(
                f"{self.run_dir}: another trainer is writing this run directory (rank 0 names it)"
            )
        return lock

    # -- resume -------------------------------------------------------------------------------
    def _pick_checkpoint(self) -> Path | None:
        """The newest complete checkpoint that matches its manifest (rank 0 checks, every rank
        gets its answer); newer damaged ones are skipped with a line saying why."""
        choice = [None]
        if self.env.is_main:
            say = partial(print, file=sys.stderr, flush=True)
            path = latest_verified(self.run_dir, say=lambda line: say(f"[rank 0] {line}"))
            if path is None and complete_checkpoints(self.run_dir):
                choice = ["damaged"]
            else:
                choice = [str(path) if path else None]
        if dist.is_initialized():
            dist.broadcast_object_list(choice, src=0)
        if choice[0] == "damaged":
            raise CheckpointLoadError(
                f"{self.run_dir}: every complete checkpoint is damaged (rank 0 said why); "
                "--resume never starts over"
            )
        return Path(choice[0]) if choice[0] else None

    def _resume(self, resume: str) -> Path | None:
        if resume == "never":
            path = None
        elif resume == "auto":
            path = self._pick_checkpoint()
        else:
            path = Path(resume)
            if not is_complete(path):
                raise FileNotFoundError(
                    f"--resume {resume}: not a complete checkpoint directory (step_N with a COMPLETE marker)"
                )
            reason = verify(path)
            if reason is not None:
                raise CheckpointLoadError(f"--resume {resume}: damaged checkpoint: {reason}")
        if path is not None:
            state = self.checkpointer.load(path, self.model, self.optimizer)
            self.step, self.skipped_steps = state["step"], state["skipped_steps"]
            self.bad_in_row, self.bytes_consumed = state["bad_in_row"], state["bytes_consumed"]
            self.scheduler.load_state_dict(state["scheduler"])
            self.loader.load_state_dict(state["loader"])
            self.checkpointer.last_saved = self.step
        if self.env.is_main:
            remove_partial(self.run_dir)
            # Rows logged after the checkpoint belong to steps that are trained again now.
            records.truncate_after(self.run_dir, self.step)
        if dist.is_initialized():
            dist.barrier()
        return path

    def train_state(self) -> dict:
        parts = [None] * self.env.world_size
        local = self.loader.state_dict()
        if dist.is_initialized():
            dist.all_gather_object(parts, local)
        else:
            parts = [local]
        return {
            "step": self.step,
            "skipped_steps": self.skipped_steps,
            "bad_in_row": self.bad_in_row,
            "bytes_consumed": self.bytes_consumed,
            "scheduler": self.scheduler.state_dict(),
            "loader": merge_states(parts),
            "world_size": self.env.world_size,
        }

    def save(self) -> Path:
        finite = all(bool(torch.isfinite(p.detach()).all()) for p in self.model.parameters())
        if all_reduce([0.0 if finite else 1.0])[0]:
            raise NonFiniteHalt(f"step {self.step}: the weights are not finite; refusing to checkpoint them")
        return self.checkpointer.save(self.step, self.model, self.optimizer, self.train_state())

    # -- one optimizer step -------------------------------------------------------------------
    def train_step(self) -> dict:
        t, seq_len = self.cfg.train, self.cfg.data.seq_len
        started = time.perf_counter()
        loss_sum = torch.zeros((), device=self.device)
        targets = patches = 0
        figures = Figures()
        data_wait = 0.0
        # Sum over every target slot of the global batch, whatever the split over ranks.
        scale = self.strategy.grad_sum_factor / (t.global_batch * seq_len)
        for i in range(self.accum):
            wait_start = time.perf_counter()
            batch = next(self.batches)
            data_wait += time.perf_counter() - wait_start
            inputs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            lengths = inputs["patch_lengths"]
            if self.trace:
                self.trace.add(self.step + 1, [zlib.crc32(row.numpy().tobytes()) for row in batch["tokens"]])
            self.strategy.set_gradient_sync(self.model, i == self.accum - 1)
            with self.strategy.autocast():
                summed, count, aux, *extra = self.loss_fn(self.model, inputs)
            figures.add(extra)
            if self.step + 1 in t.inject_nan_at and self.env.rank == 0:
                summed = summed * float("nan")
            self.strategy.backward((summed if aux is None else summed + aux) * scale)
            loss_sum += summed.detach()
            targets += int(count)
            patches += int((lengths > 0).sum())
        lr = self.optimizer.param_groups[0]["lr"]
        g_loss, g_targets, g_patches, *g_figures = all_reduce(
            [float(loss_sum), targets, patches, *figures.flat()]
        )
        # Clip, step unless non-finite, clear the gradients (an engine may do all three itself).
        grad_norm, finite = self.strategy.optimizer_step(
            self.model, self.optimizer, self.cfg.optim.clip_grad_norm, math.isfinite(g_loss)
        )
        if finite:
            self.bad_in_row = 0
        else:
            self.skipped_steps += 1
            self.bad_in_row += 1
        self.scheduler.step()
        self.step += 1
        if self.trace:
            self.trace.flush()
        # One MAX reduction carries the stop flag too: every rank sees it at this same step.
        data_stats = self.loader.stats() if hasattr(self.loader, "stats") else {}
        wait_max, mem_max, stop, *stats_max = all_reduce(
            [data_wait, memory_gb(self.device), float(self.stop.requested), *data_stats.values()],
            op=dist.ReduceOp.MAX if dist.is_initialized() else None,
        )
        self.stop_now = bool(stop)
        elapsed = time.perf_counter() - started
        input_bytes = t.global_batch * seq_len
        self.bytes_consumed += input_bytes
        mean_patch = input_bytes / max(g_patches, 1)
        flops = model_flops(self.cfg.model, seq_len, mean_patch).train_per_byte * input_bytes
        loss = g_loss / max(g_targets, 1)
        row = {
            "step": self.step,
            "loss": loss,
            "bpb": loss / math.log(2),
            **figures.means(g_figures),
            "lr": lr,
            "grad_norm": float(grad_norm),
            "bytes_per_s": input_bytes / elapsed,
            "patches_per_s": g_patches / elapsed,
            "mean_patch_bytes": mean_patch,
            "flops_per_s": flops / elapsed,
            "mfu": flops / elapsed / self.peak,
            "mem_gb": mem_max,
            "data_wait_s": wait_max,
            "skipped_steps": self.skipped_steps,
            "bytes_consumed": self.bytes_consumed,
            "world_size": self.env.world_size,
            # the largest over ranks: shards one rank opened, bytes of one node's shard cache
            **{key: int(value) for key, value in zip(data_stats, stats_max)},
        }
        if not finite and self.bad_in_row >= t.max_bad_steps:
            self.metrics.log(row)
            raise NonFiniteHalt(
                f"{self.bad_in_row} steps in a row had a non-finite loss or gradient norm "
                f"(last: step {self.step}, loss {loss}, grad_norm {float(grad_norm)}, lr {lr:.3e}); "
                f"the last checkpoint holds finite weights"
            )
        return row

    @torch.no_grad()
    def evaluate(self) -> dict:
        from blt_scale.train.evaluate import evaluate_bpb

        self.model.eval()
        row = evaluate_bpb(self.model, self.cfg, self.env, self.device, self.strategy.autocast)
        self.model.train()
        return {"step": self.step, "split": "val", **row}

    def fit(self) -> list[dict]:
        t, every = self.cfg.train, self.cfg.checkpoint.every
        rows = []
        self.stop_now = False
        while self.step < t.steps:
            row = self.train_step()
            rows.append(row)
            if self.step % t.log_every == 0 or self.step == t.steps or self.stop_now:
                row["shard_bytes"], row["optim_state_bytes"] = all_reduce(
                    [
                        self.strategy.local_state_bytes(self.model, self.optimizer),
                        self.strategy.optimizer_state_bytes(self.optimizer),
                    ],
                    op=dist.ReduceOp.MAX if dist.is_initialized() else None,
                )
                self.metrics.log(row)
            if t.eval_every and (self.step % t.eval_every == 0 or self.step == t.steps):
                self.metrics.log(self.evaluate())
            if self.stop_now:
                self.save()
                self.checkpointer.wait()
                raise StopRequested(self.step)
            if every and self.step % every == 0 and self.step < t.steps:
                self.save()
        if self.checkpointer.last_saved != self.step:
            self.save()
        self.checkpointer.wait()
        return rows

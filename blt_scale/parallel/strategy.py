"""The strategy interface the training loop talks to, and the strategies behind it.

The loop only calls these methods; DeepSpeed (parallel/deepspeed.py) implements the same ones
and is registered in STRATEGIES. Checkpoints of model + optimizer go through the strategy, so
an engine with its own checkpoint format fits too.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.tensor import DTensor

from blt_scale.checkpoint.deepspeed import is_deepspeed_checkpoint
from blt_scale.checkpoint.safe_dcp import safe_load
from blt_scale.config import ConfigError
from blt_scale.parallel.apply import parallelize
from blt_scale.parallel.config import ParallelConfig
from blt_scale.parallel.env import DistEnv

# The trainer's optimizer for a (wrapped) model: the strategy decides when it is built, not what it is.
OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]


class Strategy:
    """One unsharded process (`parallel.strategy: none`); the base of the sharded strategies."""

    needs_process_group = False

    def __init__(self, cfg: ParallelConfig, env: DistEnv, device: torch.device):
        self.cfg, self.env, self.device = cfg, env, device
        if env.world_size > 1 and not self.needs_process_group:
            raise ConfigError(
                f"parallel.strategy={cfg.strategy} runs one process, but the world size is {env.world_size}: "
                "use parallel.strategy=fsdp"
            )

    def configure(self, run_cfg) -> None:
        """Read the rest of the recipe (batch sizes, optimizer, checkpoint options) before setup."""

    def setup(
        self, model: nn.Module, make_optimizer: OptimizerFactory
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        model = parallelize(model.to(self.device), self.cfg, self.device, self.env.world_size)
        return model, make_optimizer(model)

    @property
    def grad_sum_factor(self) -> float:
        """Loss multiplier that turns the strategy's gradient average over ranks into a sum."""
        return 1.0

    def autocast(self):
        if self.cfg.mixed_precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def set_gradient_sync(self, model: nn.Module, sync: bool) -> None:
        """Accumulation micro-batches before the last need no gradient communication."""

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm(self, model: nn.Module, max_norm: float | None) -> torch.Tensor:
        """Global gradient norm (the same number on every rank), clipping to max_norm."""
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm or math.inf)
        return (norm.full_tensor() if isinstance(norm, DTensor) else norm).detach().float().cpu()

    def optimizer_step(
        self, model: nn.Module, optimizer, max_norm: float | None, loss_finite: bool
    ) -> tuple[torch.Tensor, bool]:
        """Clip, step unless the loss or the gradient norm is not finite, clear the gradients.
        Returns (global gradient norm, whether the update was applied)."""
        grad_norm = self.clip_grad_norm(model, max_norm)
        applied = loss_finite and bool(torch.isfinite(grad_norm))
        if applied:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return grad_norm, applied

    def optimizer_state_bytes(self, optimizer: torch.optim.Optimizer) -> int:
        """Bytes of optimizer state (moments, master copies) this rank holds."""
        return sum(tensor_bytes(v) for s in optimizer.state.values() for v in s.values())

    def local_state_bytes(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
        """Bytes of parameters + optimizer state this rank holds."""
        return sum(tensor_bytes(p) for p in model.parameters()) + self.optimizer_state_bytes(optimizer)

    def save(self, model, optimizer, path: Path, process_group=None, async_save: bool = False):
        """Write model + optimizer (sharded by DCP) into `path`; returns a future when async."""
        msd, osd = get_state_dict(model, optimizer)
        state = {"model": msd, "optim": osd}
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # one process: expected
        if async_save:
            return dcp.async_save(state, checkpoint_id=str(path), process_group=process_group)
        dcp.save(state, checkpoint_id=str(path), process_group=process_group)
        return None

    def load(self, model, optimizer, path: Path, saved_world_size: int | None = None) -> None:
        """Load a checkpoint written at any world size (`saved_world_size`): DCP reshards to this one."""
        if is_deepspeed_checkpoint(path):
            raise FileNotFoundError(
                f"{path}: a DeepSpeed checkpoint; resume it with parallel.strategy=deepspeed "
                "(or `blt export` its weights)"
            )
        msd, osd = get_state_dict(model, optimizer)
        state = {"model": msd, "optim": osd}
        safe_load(state, path)  # no pickled code runs, and any failure is one line
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


class FSDPStrategy(Strategy):
    needs_process_group = True

    def setup(self, model, make_optimizer):
        # With CPU offload FSDP moves the shards itself; otherwise build on the device.
        if not self.cfg.cpu_offload:
            model = model.to(self.device)
        model = parallelize(model, self.cfg, self.device, self.env.world_size)
        return model, make_optimizer(model)

    @property
    def grad_sum_factor(self) -> float:
        return float(self.env.world_size)

    def autocast(self):
        return contextlib.nullcontext()  # MixedPrecisionPolicy casts parameters itself

    def set_gradient_sync(self, model, sync):
        model.set_requires_gradient_sync(sync)


def _deepspeed(cfg: ParallelConfig, env: DistEnv, device: torch.device) -> Strategy:
    from blt_scale.parallel.deepspeed import DeepSpeedStrategy  # lazy: that module builds on this one

    return DeepSpeedStrategy(cfg, env, device)


STRATEGIES: dict[str, Callable[[ParallelConfig, DistEnv, torch.device], Strategy]] = {
    "none": Strategy,
    "fsdp": FSDPStrategy,
    "deepspeed": _deepspeed,
}


def build_strategy(cfg: ParallelConfig, env: DistEnv, device: torch.device) -> Strategy:
    return STRATEGIES[cfg.strategy](cfg, env, device)


def tensor_bytes(t) -> int:
    """Bytes this rank holds of a tensor (its local shard of a DTensor); 0 for non-tensors."""
    if not isinstance(t, torch.Tensor):
        return 0
    local = t.to_local() if isinstance(t, DTensor) else t
    return local.numel() * local.element_size()


def all_reduce(values: list[float], op=None) -> list[float]:
    """Sum (or `op`) of a few numbers over ranks; identity without a process group."""
    if not dist.is_initialized():
        return list(values)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t.tolist()

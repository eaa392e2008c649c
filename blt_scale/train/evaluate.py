"""Validation bits per byte on held-out data, on one process or spread over the ranks of a run."""

from __future__ import annotations

import contextlib
import math

import torch

from blt_scale.data.loader import build_loader
from blt_scale.parallel.env import DistEnv
from blt_scale.parallel.strategy import all_reduce
from blt_scale.train.objectives import Figures, loss_fn


@torch.no_grad()
def evaluate_bpb(
    model,
    cfg,
    env: DistEnv | None = None,
    device: torch.device | None = None,
    autocast=contextlib.nullcontext,
    batches: int | None = None,
) -> dict:
    """bpb over `train.eval_batches` (or `batches`) batches of train.micro_batch validation rows
    (train.global_batch rows when it is unset), dealt over the ranks in micro-batches of the run's
    size: the same rows at any world size that divides the count."""
    env = env or DistEnv()
    if device is None:
        device = torch.device("cpu")
    t = cfg.train
    rows = (batches or t.eval_batches) * t.micro_batch_for(1)
    micro = t.micro_batch_for(env.world_size)
    loader = build_loader(cfg.data, cfg.patcher, micro, "val", env.rank, env.world_size, t.seed)
    objective = loss_fn(cfg.model, cfg.patcher)  # the reported loss; auxiliary training terms are left out
    loss_sum, count = 0.0, 0
    figures = Figures()
    for _, batch in zip(range(max(1, rows // (micro * env.world_size))), loader):
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with autocast():
            summed, n, _, *extra = objective(model, inputs)
        loss_sum, count = loss_sum + float(summed), count + int(n)
        figures.add(extra)
    loss_sum, count, *totals = all_reduce([loss_sum, count, *figures.flat()])
    loss = loss_sum / max(count, 1)
    return {"loss": loss, "bpb": loss / math.log(2), **figures.means(totals), "bytes": int(count)}

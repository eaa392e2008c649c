"""Parallelism applied to a built model from outside, in torchtitan's order: activation
checkpointing, then torch.compile, then FSDP2 sharding (per transformer block, then the root).

The units are found by type (`Block`, `CrossAttentionBlock` inside ModuleLists): the encoder,
latent and decoder blocks of a BLT and the layers of a byte LM. Everything else (embeddings, hash
tables, projections, output head) belongs to the root unit.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

from blt_scale.model.layers import Block, CrossAttentionBlock
from blt_scale.parallel.config import ParallelConfig

UNIT_TYPES = (Block, CrossAttentionBlock)


def transformer_blocks(model: nn.Module) -> list[tuple[nn.ModuleList, int]]:
    """(parent list, index) of every transformer block, in forward order of their lists."""
    found = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            found += [(module, i) for i, child in enumerate(module) if isinstance(_inner(child), UNIT_TYPES)]
    return found


def _inner(module: nn.Module) -> nn.Module:
    return getattr(module, "_checkpoint_wrapped_module", module)


def apply_activation_checkpointing(model: nn.Module, mode: str, every: int) -> int:
    """Recompute the activations of whole blocks in backward: all of them (full) or every k-th
    (selective: trades part of the memory saving for less recomputation). Returns how many."""
    if mode == "none":
        return 0
    wrapped = 0
    for n, (parent, i) in enumerate(transformer_blocks(model)):
        if mode == "full" or n % every == 0:
            parent[i] = checkpoint_wrapper(parent[i], checkpoint_impl=CheckpointImpl.NO_REENTRANT)
            wrapped += 1
    return wrapped


def apply_compile(model: nn.Module) -> None:
    # In-place compile keeps module names, so checkpoints do not depend on it.
    for parent, i in transformer_blocks(model):
        parent[i].compile()


def build_mesh(device: torch.device, world_size: int, replicate: int) -> DeviceMesh:
    if world_size % replicate:
        raise ValueError(f"parallel.replicate={replicate} must divide the world size {world_size}")
    if replicate == 1:
        return init_device_mesh(device.type, (world_size,), mesh_dim_names=("shard",))
    return init_device_mesh(
        device.type, (replicate, world_size // replicate), mesh_dim_names=("replicate", "shard")
    )


def apply_fsdp(model: nn.Module, cfg: ParallelConfig, mesh: DeviceMesh, device: torch.device) -> nn.Module:
    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if cfg.mixed_precision == "bf16"
        else MixedPrecisionPolicy()
    )
    offload = CPUOffloadPolicy(pin_memory=device.type == "cuda") if cfg.cpu_offload else OffloadPolicy()
    common = dict(mesh=mesh, mp_policy=mp, offload_policy=offload)
    for parent, i in transformer_blocks(model):
        fully_shard(parent[i], reshard_after_forward=cfg.reshard_after_forward, **common)
    # The root is gathered last in forward and needed first in backward: keeping it unsharded
    # after forward saves one all-gather per step.
    fully_shard(model, reshard_after_forward=False, **common)
    return model


def parallelize(model: nn.Module, cfg: ParallelConfig, device: torch.device, world_size: int) -> nn.Module:
    """AC -> compile -> FSDP2 on a model built on `device` (or on CPU when offloading)."""
    apply_activation_checkpointing(model, cfg.activation_checkpointing, cfg.ac_every)
    if cfg.compile:
        apply_compile(model)
    if cfg.strategy == "fsdp":
        apply_fsdp(model, cfg, build_mesh(device, world_size, cfg.replicate), device)
    return model

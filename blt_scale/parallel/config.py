"""ParallelConfig: the `parallel.*` keys of a recipe."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from blt_scale.config import Config


class ParallelConfig(Config):
    strategy: Literal["none", "fsdp", "deepspeed"] = Field(
        default="none", description="none: one unsharded process; fsdp: FSDP2; deepspeed: ZeRO"
    )
    zero_stage: Literal[0, 1, 2, 3] = Field(
        default=3, description="deepspeed only: ZeRO stage (fsdp always shards fully)"
    )
    offload_optimizer: bool = Field(
        default=False, description="deepspeed: optimizer state and step on CPU (ZeRO-Offload)"
    )
    offload_param: bool = Field(
        default=False, description="deepspeed, zero_stage 3: parameters on CPU between uses"
    )
    deepspeed: dict[str, Any] = Field(
        default={},
        description="raw DeepSpeed config keys merged into the one generated from the recipe "
        "(parallel/ds_config.py); a key the recipe already sets (batch sizes, clipping, precision, stage, "
        "offload, optimizer) is an error",
    )
    mixed_precision: Literal["fp32", "bf16"] = Field(
        default="fp32",
        description="bf16: bf16 parameters and compute, fp32 master weights and gradient reduction",
    )
    reshard_after_forward: bool = Field(
        default=True, description="free gathered block weights after forward (ZeRO-3 style)"
    )
    replicate: int = Field(
        default=1,
        gt=0,
        description="HSDP: replicas (typically nodes); shard within each group of world/replicate ranks",
    )
    activation_checkpointing: Literal["none", "full", "selective"] = "none"
    ac_every: int = Field(default=2, gt=0, description="selective: checkpoint every k-th block")
    cpu_offload: bool = Field(
        default=False, description="parameters, gradients and optimizer state live on CPU"
    )
    compile: bool = Field(default=False, description="torch.compile each transformer block")

    @model_validator(mode="after")
    def _consistent(self) -> ParallelConfig:
        if self.cpu_offload and self.strategy != "fsdp":
            raise ValueError(
                "parallel.cpu_offload needs parallel.strategy=fsdp (deepspeed: parallel.offload_optimizer / "
                "parallel.offload_param)"
            )
        ds = self.strategy == "deepspeed"
        for key in ("offload_optimizer", "offload_param", "deepspeed"):
            if getattr(self, key) and not ds:
                raise ValueError(f"parallel.{key} needs parallel.strategy=deepspeed")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("parallel.offload_optimizer needs parallel.zero_stage >= 1")
        if self.offload_param and self.zero_stage != 3:
            raise ValueError(f"parallel.offload_param needs parallel.zero_stage=3, got {self.zero_stage}")
        if ds and not self.reshard_after_forward:
            raise ValueError(
                "parallel.reshard_after_forward is FSDP's; with deepspeed ZeRO-3 keeps small parameters "
                "gathered via parallel.deepspeed.zero_optimization.stage3_param_persistence_threshold"
            )
        if ds and self.compile:
            raise ValueError("parallel.compile is not supported with parallel.strategy=deepspeed (use fsdp)")
        if self.replicate > 1 and self.strategy != "fsdp":
            raise ValueError("parallel.replicate (HSDP) needs parallel.strategy=fsdp")
        return self

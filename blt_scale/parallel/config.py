"""ParallelConfig: the `parallel.*` keys of a recipe."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from blt_scale.config import Config


class ParallelConfig(Config):
    strategy: Literal["none", "fsdp", "deepspeed"] = Field(
        default="none", description="none: one unsharded process; fsdp: FSDP2; deepspeed: ZeRO (issue 5)"
    )
    zero_stage: Literal[0, 1, 2, 3] = Field(default=3, description="deepspeed only: ZeRO stage (fsdp always shards fully)")
    mixed_precision: Literal["fp32", "bf16"] = Field(
        default="fp32", description="bf16: bf16 parameters and compute, fp32 master weights and gradient reduction"
    )
    reshard_after_forward: bool = Field(default=True, description="free gathered block weights after forward (ZeRO-3 style)")
    replicate: int = Field(
        default=1, gt=0, description="HSDP: replicas (typically nodes); shard within each group of world/replicate ranks"
    )
    activation_checkpointing: Literal["none", "full", "selective"] = "none"
    ac_every: int = Field(default=2, gt=0, description="selective: checkpoint every k-th block")
    cpu_offload: bool = Field(default=False, description="parameters, gradients and optimizer state live on CPU")
    compile: bool = Field(default=False, description="torch.compile each transformer block")

    @model_validator(mode="after")
    def _consistent(self) -> "ParallelConfig":
        if self.cpu_offload and self.strategy == "none":
            raise ValueError("parallel.cpu_offload needs parallel.strategy=fsdp (or deepspeed)")
        if self.replicate > 1 and self.strategy != "fsdp":
            raise ValueError("parallel.replicate (HSDP) needs parallel.strategy=fsdp")
        return self

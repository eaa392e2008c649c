"""LoRA (Hu et al. 2021): y = W x + (alpha / r) * B A x with A [r, in] random and B [out, r] zero,
so an adapted model starts out computing exactly what the base model computes.

LoRALinear subclasses nn.Linear and keeps its `weight`, so state-dict keys of the base model are
unchanged: a checkpoint without adapters loads into a model with them (adapters stay at init).
Freezing (`freeze`) skips adapter parameters: "freeze the decoder" then trains its adapters only.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from blt_scale.config import Config


class LoRAConfig(Config):
    rank: int = Field(default=8, gt=0)
    alpha: float = Field(default=16.0, gt=0)
    targets: list[str] = Field(
        default=["wq", "wk", "wv", "wo", "w1", "w2", "w3"],
        description="names of the nn.Linear layers to adapt",
    )


class LoRALinear(nn.Linear):
    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__(
            base.in_features,
            base.out_features,
            bias=base.bias is not None,
            device=base.weight.device,
            dtype=base.weight.dtype,
        )
        self.weight = base.weight
        if base.bias is not None:
            self.bias = base.bias
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(
            torch.empty(rank, base.in_features, device=base.weight.device, dtype=base.weight.dtype)
        )
        self.lora_b = nn.Parameter(
            torch.zeros(base.out_features, rank, device=base.weight.device, dtype=base.weight.dtype)
        )
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.scale * ((x @ self.lora_a.T) @ self.lora_b.T)


def apply_lora(module: nn.Module, cfg: LoRAConfig) -> int:
    """Replace every nn.Linear named in cfg.targets inside `module` by a LoRALinear; returns how many."""
    targets = [
        (parent, name, child)
        for parent in module.modules()
        for name, child in parent.named_children()
        if name in cfg.targets and type(child) is nn.Linear
    ]
    for parent, name, child in targets:
        setattr(parent, name, LoRALinear(child, cfg.rank, cfg.alpha))
    return len(targets)


def freeze(model: nn.Module, prefixes: list[str]) -> int:
    """requires_grad=False for parameters under the named submodules or named parameters (dotted
    prefixes), except LoRA adapters. Returns the number of frozen tensors; an unknown prefix is an error."""
    names = set(dict(model.named_modules())) | set(dict(model.named_parameters()))
    for prefix in prefixes:
        if prefix not in names:
            raise ValueError(
                f"model.freeze: {prefix!r} is not a submodule or parameter; top-level ones: "
                f"{', '.join(n for n, _ in model.named_children())}"
            )
    frozen = 0
    for name, param in model.named_parameters():
        if any(name == p or name.startswith(p + ".") for p in prefixes) and ".lora_" not in name:
            param.requires_grad_(False)
            frozen += 1
    return frozen

"""The DeepSpeed config of a run, generated from the recipe, plus the raw keys of
`parallel.deepspeed`.

Every DeepSpeed key the recipe already decides is generated with the recipe key it comes from; a
raw key that would change one of them is a ConfigError naming both, e.g.
`parallel.deepspeed.gradient_clipping=2.0 conflicts with optim.clip_grad_norm=1.0`. Raw keys the
recipe does not decide (bucket sizes, overlap_comm, stage-3 prefetch, ...) are merged as given;
DeepSpeed validates them. Importing this module does not import DeepSpeed.
"""

from __future__ import annotations

import copy
from typing import Any

from blt_scale.config import ConfigError

RAW = "parallel.deepspeed"
# Built by the trainer itself (AdamW from optim.*, the lr schedule from optim.*): DeepSpeed gets
# the optimizer object, so its own optimizer/scheduler sections would be a second definition.
OWNED_SECTIONS = {"optimizer": "optim.*", "scheduler": "optim.schedule"}

# Defaults the recipe has no key for; raw keys may change them.
DEFAULTS: dict[str, Any] = {
    "steps_per_print": 2**31 - 1,  # our metrics log progress; DeepSpeed's own lines would only interleave
    "wall_clock_breakdown": False,
    # The optimizer is torch's AdamW (no JIT-built extension); DeepSpeed accepts it for ZeRO and,
    # with this flag, for optimizer offload (where it steps on CPU, slower than DeepSpeedCPUAdam).
    "zero_allow_untested_optimizer": True,
    "zero_force_ds_cpu_optimizer": False,
}


def generated_entries(cfg, world_size: int) -> list[tuple[str, Any, str, Any]]:
    """(DeepSpeed dotted key, value, recipe key, recipe value) for everything the recipe decides."""
    t, p, o = cfg.train, cfg.parallel, cfg.optim
    micro, accum = t.micro_batch_for(world_size), t.accumulation_for(world_size)
    return [
        ("train_batch_size", t.global_batch, "train.global_batch", t.global_batch),
        ("train_micro_batch_size_per_gpu", micro, "train.micro_batch", t.micro_batch),
        ("gradient_accumulation_steps", accum, "train.global_batch", t.global_batch),
        ("gradient_clipping", o.clip_grad_norm or 0.0, "optim.clip_grad_norm", o.clip_grad_norm),
        ("zero_optimization.stage", p.zero_stage, "parallel.zero_stage", p.zero_stage),
        ("bf16.enabled", p.mixed_precision == "bf16", "parallel.mixed_precision", p.mixed_precision),
        ("fp16.enabled", False, "parallel.mixed_precision", p.mixed_precision),
        # Non-finite steps are skipped (train.max_bad_steps counts them): DeepSpeed must detect them.
        ("bf16.check_grad_overflow", True, "train.max_bad_steps", t.max_bad_steps),
        (
            "zero_optimization.offload_optimizer.device",
            "cpu" if p.offload_optimizer else "none",
            "parallel.offload_optimizer",
            p.offload_optimizer,
        ),
        (
            "zero_optimization.offload_param.device",
            "cpu" if p.offload_param else "none",
            "parallel.offload_param",
            p.offload_param,
        ),
    ]


def _leaves(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out |= _leaves(value, path + ".")
        else:
            out[path] = value
    return out


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[last] = value


def _fmt(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def deepspeed_config(cfg, world_size: int, accelerator: bool = False) -> dict:
    """The full DeepSpeed config dict for `cfg` (a RunConfig) at `world_size` ranks; `accelerator`:
    the ranks compute on GPUs (offloaded tensors then live in pinned host memory)."""
    entries = generated_entries(cfg, world_size)
    raw = _leaves(cfg.parallel.deepspeed)
    for key in raw:
        section = key.split(".")[0]
        if section in OWNED_SECTIONS:
            raise ConfigError(
                f"{RAW}.{key} conflicts with {OWNED_SECTIONS[section]}: the trainer builds the optimizer and "
                "lr schedule from optim.* and hands them to DeepSpeed; set them there"
            )
        for ds_key, value, recipe_key, recipe_value in entries:
            # Same key, or one inside the other (a raw section replacing generated leaves).
            nested = key.startswith(ds_key + ".") or ds_key.startswith(key + ".")
            if nested or (key == ds_key and raw[key] != value):
                raise ConfigError(
                    f"{RAW}.{key}={_fmt(raw[key])} conflicts with {recipe_key}={_fmt(recipe_value)} "
                    f"(which sets DeepSpeed's {ds_key}={_fmt(value)}); set {recipe_key} instead"
                )
    config = copy.deepcopy(DEFAULTS)
    for section in ("offload_optimizer", "offload_param"):
        _set(config, f"zero_optimization.{section}.pin_memory", accelerator)
    for dotted, value in raw.items():
        _set(config, dotted, value)
    for ds_key, value, _, _ in entries:
        _set(config, ds_key, value)
    return config


# DeepSpeed's communication buffers default to sizes tuned for billion-parameter GPU models
# (5e8 elements: 2 GB per fp32 bucket, allocated and freed every step). Capped at the model's size
# unless a raw key sets them, small models do not pay for them.
BUCKETS = {
    "reduce_bucket_size": 500_000_000,
    "allgather_bucket_size": 500_000_000,
    "stage3_prefetch_bucket_size": 50_000_000,
}


def fit_buckets(config: dict, numel: int) -> dict:
    zero = config.setdefault("zero_optimization", {})
    for key, default in BUCKETS.items():
        zero.setdefault(key, int(min(default, max(numel, 1))))
    return config

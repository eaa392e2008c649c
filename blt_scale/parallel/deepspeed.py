"""`parallel.strategy: deepspeed`: DeepSpeed ZeRO stage 1, 2 or 3 behind the Strategy interface.

The model is wrapped in a DeepSpeed engine whose config is generated from the recipe
(parallel/ds_config.py). The optimizer is the trainer's AdamW (the factory given to setup) handed to
the engine, so the lr schedule, weight-decay groups and optimizer hyper-parameters are the same as
with FSDP; the engine reduces, partitions, clips (its `gradient_clipping`) and steps. Activation checkpointing
is parallel/apply.py's, applied before the engine wraps the model.

Checkpoints: the engine writes its sharded files into `step_N/ds/` inside our checkpoint
directory (train state, RNG states and the COMPLETE marker are the Checkpointer's). A checkpoint
written at another world size is converted to DeepSpeed's universal format (`step_N/universal/`,
checkpoint/deepspeed.py) and loaded from there.

On CPU the engine runs on DeepSpeed's CPU accelerator over our gloo process group. Two JIT-built
extensions are avoided: the shared-memory all-reduce (45 s to build; we use gloo, as FSDP does)
and DeepSpeedCPUAdam (torch's AdamW steps offloaded optimizer state instead).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from blt_scale.checkpoint.deepspeed import (
    DS_TAG,
    UNIVERSAL_TAG,
    convert_to_universal,
    is_deepspeed_checkpoint,
    safe_torch_load,
    safe_torch_loads,
)
from blt_scale.config import ConfigError
from blt_scale.parallel.apply import apply_activation_checkpointing
from blt_scale.parallel.ds_config import deepspeed_config, fit_buckets
from blt_scale.parallel.strategy import OptimizerFactory, Strategy, all_reduce, tensor_bytes


class DeepSpeedStrategy(Strategy):
    needs_process_group = True

    def __init__(self, cfg, env, device):
        super().__init__(cfg, env, device)
        if cfg.zero_stage == 0:
            raise ConfigError(
                "parallel.zero_stage=0 with parallel.strategy=deepspeed: use ZeRO stage 1, 2 or 3 "
                "(or parallel.strategy=fsdp)"
            )
        self.engine = None
        self.ds_config: dict | None = None

    def configure(self, run_cfg) -> None:
        if run_cfg.checkpoint.async_save:
            raise ConfigError(
                "checkpoint.async_save=true is not supported with parallel.strategy=deepspeed "
                "(the engine writes its checkpoint synchronously); set checkpoint.async_save=false"
            )
        self.ds_config = deepspeed_config(
            run_cfg, self.env.world_size, accelerator=self.device.type == "cuda"
        )

    def setup(
        self, model: nn.Module, make_optimizer: OptimizerFactory
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        import deepspeed

        if self.ds_config is None:
            raise RuntimeError("DeepSpeedStrategy.setup before configure(run_cfg)")
        # Looked up by DeepSpeed's TorchBackend when the engine adopts our process group: marking it
        # unavailable skips a 45 s JIT build of an all-reduce we do not use.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        apply_activation_checkpointing(model, self.cfg.activation_checkpointing, self.cfg.ac_every)
        if not self.cfg.offload_param:  # ZeRO-3 parameter offload moves the partitions itself
            model = model.to(self.device)
        optimizer = make_optimizer(model)
        fit_buckets(self.ds_config, sum(p.numel() for p in model.parameters()))
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=self.ds_config, dist_init_required=False
        )
        # The engine steps `optimizer` (now over its flat fp32 partitions): the trainer's lr
        # scheduler drives it directly.
        return self.engine, optimizer

    @property
    def grad_sum_factor(self) -> float:
        return float(self.env.world_size)  # the engine averages gradients over data-parallel ranks

    def autocast(self):
        return contextlib.nullcontext()  # bf16: the engine holds bf16 parameters itself

    def set_gradient_sync(self, model, sync: bool) -> None:
        # The loop, not the engine's micro-step counter, says which backward ends the step.
        model.set_gradient_accumulation_boundary(sync)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)  # the loop already scales to a global mean

    def optimizer_step(self, model, optimizer, max_norm, loss_finite: bool) -> tuple[torch.Tensor, bool]:
        # Clipping and the non-finite check happen inside the engine's step (a NaN/inf gradient
        # norm counts as an overflow: the update is skipped and the gradients dropped).
        model.step()
        norm = model.get_global_grad_norm()
        norm = torch.tensor(float("nan") if norm is None else float(norm))
        return norm, bool(model.was_step_applied())

    def clip_grad_norm(self, model, max_norm):
        raise NotImplementedError("the DeepSpeed engine clips inside optimizer_step")

    def optimizer_state_bytes(self, optimizer) -> int:
        # The state is keyed by the engine's flat fp32 master partitions, which are copies (not
        # the module's parameters): they count as optimizer state.
        return sum(
            tensor_bytes(p) + sum(tensor_bytes(v) for v in s.values()) for p, s in optimizer.state.items()
        )

    def local_state_bytes(self, model, optimizer) -> int:
        # ZeRO-3 keeps only this rank's partition (`ds_tensor`) of each parameter between uses.
        held = sum(tensor_bytes(getattr(p, "ds_tensor", p)) for p in model.module.parameters())
        return held + self.optimizer_state_bytes(optimizer)

    def save(self, model, optimizer, path: Path, process_group=None, async_save: bool = False):
        model.save_checkpoint(str(path), tag=DS_TAG, save_latest=False)
        return None

    def load(self, model, optimizer, path: Path, saved_world_size: int | None = None) -> None:
        """Same world size: the engine's own files. Another one: its universal conversion (made
        once, by rank 0, and kept in the checkpoint directory)."""
        if not is_deepspeed_checkpoint(path):
            raise FileNotFoundError(
                f"{path}: written by another strategy (no {DS_TAG}/ directory); resume it with the "
                "parallel.strategy that wrote it, or start a new run_dir"
            )
        tag = DS_TAG
        if saved_world_size != self.env.world_size:
            error = None
            if self.env.is_main:
                try:
                    convert_to_universal(path)
                except (RuntimeError, FileNotFoundError) as err:
                    error = err
            # Every rank learns whether rank 0 succeeded, instead of waiting on it forever.
            if all_reduce([float(error is not None)])[0]:
                raise error or RuntimeError(f"{path}: rank 0 could not convert it to the universal format")
            tag = UNIVERSAL_TAG
        # Read through this accessor only; later saves are ordinary ZeRO checkpoints again.
        model._config.load_universal_checkpoint = tag == UNIVERSAL_TAG
        # The engine reads its files with weights_only=False: through safe_torch_load instead.
        from deepspeed.checkpoint import universal_checkpoint

        model.checkpoint_engine.load = safe_torch_load
        try:
            with safe_torch_loads(universal_checkpoint):
                loaded, _ = model.load_checkpoint(str(path), tag=tag, load_lr_scheduler_states=False)
        finally:
            model._config.load_universal_checkpoint = False
        if loaded is None:
            raise FileNotFoundError(f"{path / tag}: DeepSpeed found no checkpoint to load")

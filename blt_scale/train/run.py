"""One training process from start to exit code: read the rank environment, train, save, and
leave through os._exit (gloo's worker threads can abort a normal interpreter shutdown)."""

from __future__ import annotations

import os
import sys
import traceback

import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException

from blt_scale.checkpoint.safe_dcp import CheckpointLoadError, describe
from blt_scale.config import ConfigError
from blt_scale.parallel.env import read_env
from blt_scale.train.exit_codes import EXIT_CONFIG, EXIT_FAILED, EXIT_NONFINITE, EXIT_OK, EXIT_STOPPED


def run_training(cfg, resume: str = "auto", debug: bool = False) -> int:
    from blt_scale.train.loop import NonFiniteHalt, StopRequested, Trainer
    from blt_scale.train.wandb_log import WandbSink

    env = read_env()
    tag = f"[rank {env.rank}/{env.world_size}]"
    trainer = wandb = None
    last = ""
    try:
        trainer = Trainer(cfg, env, resume)
        if env.is_main:
            where = f"resumed from {trainer.resumed_from}" if trainer.resumed_from else "fresh start"
            print(
                f"{tag} {cfg.run_dir}: {where} at step {trainer.step}/{cfg.train.steps}",
                file=sys.stderr,
                flush=True,
            )
            if cfg.wandb.enabled:
                wandb = WandbSink(cfg.wandb, trainer.run_dir, cfg.model_dump(mode="json", by_alias=True))
                trainer.metrics.sinks.append(wandb)
        trainer.fit()
        code = EXIT_OK
    except StopRequested as stop:
        last, code = f"{tag} {stop} (exit {EXIT_STOPPED})", EXIT_STOPPED
    except NonFiniteHalt as err:
        last, code = f"{tag} halted: {err}", EXIT_NONFINITE
    except (ConfigError, FileNotFoundError) as err:
        last, code = f"{tag} error: {err}", EXIT_CONFIG
    except CheckpointLoadError as err:
        last, code = f"{tag} failed: {err}", EXIT_FAILED
    except CheckpointException as err:  # DCP's save/load failures derive from BaseException
        if debug:
            traceback.print_exc()
        last, code = f"{tag} failed: {describe(err)}", EXIT_FAILED
    except Exception as err:  # noqa: BLE001 - every failure must end in an exit code
        if debug or not isinstance(err, (ValueError, RuntimeError)):
            traceback.print_exc()
        last, code = f"{tag} failed: {type(err).__name__}: {err}", EXIT_FAILED
    finally:
        if wandb is not None:
            wandb.finish()  # its own lines come before ours: the outcome is the last line
        if trainer is not None and trainer.lock is not None:
            trainer.lock.release()  # the process may live on (a SLURM task requeueing itself)
    if last:
        print(last, file=sys.stderr, flush=True)
    return code


def exit_process(code: int) -> None:
    """Tear down the process group and leave without interpreter shutdown."""
    try:
        if dist.is_initialized():
            dist.destroy_process_group()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

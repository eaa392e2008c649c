"""DeepSpeed files inside our checkpoint directories, and `blt convert-ds`.

    step_N/ds/          the engine's ZeRO checkpoint (one optimizer shard per rank)
    step_N/universal/   DeepSpeed's universal format of the same state, loadable at any world size;
                        made on demand (a resume at another world size, or `blt convert-ds`)

The conversion runs `python -m deepspeed.checkpoint.ds_to_universal` in a child process (it uses
process pools, which do not belong in a rank that holds a process group) into a temporary folder
renamed when done, so a folder named `universal` is always complete.

DeepSpeed reads its files with `torch.load(weights_only=False)`, which runs any code a crafted
file holds: `safe_torch_load` (weights_only=True, plus the few DeepSpeed classes its ZeRO files
hold) replaces it in the consolidation (`blt export`/`eval`) and in the engine's resume.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from blt_scale.checkpoint.safe_dcp import CheckpointLoadError, one_line

_torch_load = torch.load  # the real one, whatever is patched later (ds_convert replaces torch.load)

DS_TAG, UNIVERSAL_TAG = "ds", "universal"
WRAPPER_PREFIX = "_checkpoint_wrapped_module."  # activation checkpointing's wrapper, not part of the model


def is_deepspeed_checkpoint(path: str | Path) -> bool:
    return (Path(path) / DS_TAG).is_dir()


def convert_to_universal(step: str | Path) -> Path:
    """step_N/universal from step_N/ds (kept: a later resume at another size reuses it)."""
    step = Path(step)
    out, tmp = step / UNIVERSAL_TAG, step / f"{UNIVERSAL_TAG}.tmp"
    if out.is_dir():
        return out
    if not is_deepspeed_checkpoint(step):
        raise FileNotFoundError(f"{step}: not a DeepSpeed checkpoint (no {DS_TAG}/ directory)")
    shutil.rmtree(tmp, ignore_errors=True)
    # Stages 1/2 lack parts of the state the converter expects: --inject_missing_state adds them.
    cmd = [
        sys.executable,
        "-m",
        "blt_scale.checkpoint.ds_convert",  # DeepSpeed's ds_to_universal, reading with weights_only=True
        "--input_folder",
        str(step / DS_TAG),
        "--output_folder",
        str(tmp),
        "--inject_missing_state",
        "--num_extract_workers",
        "1",
        "--num_merge_workers",
        "1",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        lines = (res.stderr or res.stdout).strip().splitlines()
        raise RuntimeError(
            f"{step}: converting {DS_TAG}/ to DeepSpeed's universal format failed: "
            f"{lines[-1] if lines else res.returncode}"
        )
    (step / "latest_universal").unlink(missing_ok=True)  # names the temporary folder; we load by tag
    os.replace(tmp, out)
    return out


def _deepspeed_safe_globals() -> list:
    """Classes DeepSpeed's ZeRO files hold besides tensors and containers (plain data: an enum,
    a dataclass of two ints, the loss scaler's settings)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


def safe_torch_load(f, map_location=None, **kwargs):
    """torch.load with weights_only=True whatever the caller asked; a refused or damaged file is
    one CheckpointLoadError line."""
    kwargs["weights_only"] = True
    try:
        with torch.serialization.safe_globals(_deepspeed_safe_globals()):
            return _torch_load(f, map_location=map_location, **kwargs)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise CheckpointLoadError(f"{f}: refused to load: {one_line(err)}") from None


class _TorchWithSafeLoad:
    """The `torch` module as zero_to_fp32 sees it while we call it: its torch.load is safe_torch_load."""

    load = staticmethod(safe_torch_load)

    def __getattr__(self, name):
        return getattr(torch, name)


@contextlib.contextmanager
def safe_torch_loads(*modules):
    """While inside, `torch.load` as seen by each of `modules` (DeepSpeed's, which import torch
    as `torch`) is safe_torch_load."""
    for module in modules:
        module.torch = _TorchWithSafeLoad()
    try:
        yield
    finally:
        for module in modules:
            module.torch = torch


def consolidated_state_dict(step: str | Path) -> dict[str, torch.Tensor]:
    """The full fp32 model weights of step_N/ds on one process (no process group), named as in
    the bare model: what `blt export` writes for FSDP runs too."""
    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed's log lines must not mix with a command's JSON
        from deepspeed.utils import zero_to_fp32

        with safe_torch_loads(zero_to_fp32):  # its torch.load calls ask for weights_only=False
            state = zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(str(step), tag=DS_TAG)
    return {k.replace(WRAPPER_PREFIX, ""): v for k, v in state.items()}

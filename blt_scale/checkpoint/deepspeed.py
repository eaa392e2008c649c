"""DeepSpeed files inside our checkpoint directories, and `blt convert-ds`.

    step_N/ds/          the engine's ZeRO checkpoint (one optimizer shard per rank)
    step_N/universal/   DeepSpeed's universal format of the same state, loadable at any world size;
                        made on demand (a resume at another world size, or `blt convert-ds`)

The conversion runs `python -m deepspeed.checkpoint.ds_to_universal` in a child process (it uses
process pools, which do not belong in a rank that holds a process group) into a temporary folder
renamed when done, so a folder named `universal` is always complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

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
        "deepspeed.checkpoint.ds_to_universal",
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


def consolidated_state_dict(step: str | Path) -> dict[str, torch.Tensor]:
    """The full fp32 model weights of step_N/ds on one process (no process group), named as in
    the bare model: what `blt export` writes for FSDP runs too."""
    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed's log lines must not mix with a command's JSON
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(step), tag=DS_TAG)
    return {k.replace(WRAPPER_PREFIX, ""): v for k, v in state.items()}

"""`python -m blt_scale.checkpoint.ds_convert ARGS`: DeepSpeed's ds_to_universal (same arguments)
with every torch.load in this process reading weights_only=True (checkpoint/deepspeed.py's
safe_torch_load): the converter asks for weights_only=False, which would run code a crafted
ZeRO file holds. A refused file ends the conversion with one line on stderr and exit 1."""

from __future__ import annotations

import runpy
import sys

import torch

from blt_scale.checkpoint.deepspeed import safe_torch_load
from blt_scale.checkpoint.safe_dcp import CheckpointLoadError


def main() -> None:
    torch.load = safe_torch_load  # this process only runs the conversion
    try:
        runpy.run_module("deepspeed.checkpoint.ds_to_universal", run_name="__main__", alter_sys=True)
    except CheckpointLoadError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()

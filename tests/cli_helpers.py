"""The `blt` command in a subprocess, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys


def blt(*args: str, timeout: float = 300, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """`blt ARGS` (python -m blt_scale.cli), output captured; with check, a non-zero exit fails the
    test showing the command's last output. One thread per process: tiny models run faster so,
    and runs started here and under SLURM add up floats alike."""
    env = os.environ | {"OMP_NUM_THREADS": "1"} | kw.pop("env", {})
    r = subprocess.run(
        [sys.executable, "-m", "blt_scale.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **kw,
    )
    if check:
        assert r.returncode == 0, (
            f"blt {' '.join(args[:2])} exit {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
        )
    return r

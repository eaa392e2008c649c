"""How long `blt --help` and `blt COMMAND --help` take (a fresh interpreter each), and how long
importing torch takes for comparison: the help must not pay for the heavy packages."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

COMMANDS = [[], ["train"], ["prep", "text"], ["generate"], ["sweep"], ["status"]]


def seconds(args: list[str], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(args, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    torch_s = seconds([sys.executable, "-c", "import torch"])
    print(f"python -c 'import torch': {torch_s:.3f} s")
    for cmd in COMMANDS:
        t = seconds([sys.executable, "-m", "blt_scale.cli", *cmd, "--help"])
        print(f"blt {' '.join(cmd + ['--help'])}: {t:.3f} s ({t / torch_s:.2f} of importing torch)")


if __name__ == "__main__":
    main()

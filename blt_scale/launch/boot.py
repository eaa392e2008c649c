"""The first Python a training job's task runs: it records SLURM's stop signals from its first line.

SLURM signals every task of a job step (`--signal=USR2@N` before the time limit, SIGTERM when it
ends the allocation), and an interpreter still importing has no handler yet: the default action
kills it, and the job is lost instead of saved and requeued. A short time limit on a loaded node
is enough for the warning to arrive while submitit and the task are still importing. So the task's
interpreter starts here (`python -u -c 'from blt_scale.launch.boot import main; main()' -m MODULE
ARGS`, see `command`): this module imports nothing heavy, records the stop signals, then runs
MODULE as `python -m` would. TrainTask passes what arrived early (`early()`) on to its trainer like
any signal that arrives while the trainer starts.
"""

from __future__ import annotations

import runpy
import shlex
import signal
import sys

STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)
_received: list[int] = []


def command(python: str = sys.executable) -> str:
    """The interpreter command for submitit (`SlurmExecutor(python=...)`), which appends
    `-u -m submitit.core._submit FOLDER`."""
    return f"{shlex.quote(python)} -u -c 'from blt_scale.launch.boot import main; main()'"


def early() -> list[int]:
    """The stop signals received before anything else handled them, oldest first."""
    return list(_received)


def _record(signum, frame) -> None:
    _received.append(signum)


def main(argv: list[str] | None = None) -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, _record)
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["-u"]:  # submitit's; this interpreter already runs unbuffered
        args = args[1:]
    if len(args) < 2 or args[0] != "-m":
        raise SystemExit(
            f"blt_scale.launch.boot: expected [-u] -m MODULE [ARGS...], got {shlex.join(args)!r}"
        )
    sys.argv = [args[1], *args[2:]]
    runpy.run_module(args[1], run_name="__main__", alter_sys=True)

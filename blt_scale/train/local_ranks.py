"""`blt train --nproc N`: N local rank processes of `python -m blt_scale.train` with the torchrun
environment variables, stop signals forwarded to all of them, and their exit code returned
(torchrun would turn every non-zero code into 1, hiding the stop code a requeue relies on).
Ranks die with the launcher: each asks the kernel for SIGKILL when its parent dies (Linux
PR_SET_PDEATHSIG), so a `kill -9` of the launcher leaves no orphan finishing the run unseen."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

from blt_scale.parallel.env import free_port
from blt_scale.train.exit_codes import EXIT_FAILED

GRACE_S = 30.0  # how long the other ranks may take to follow one that exited with an error


PR_SET_PDEATHSIG = 1


def _die_with(parent: int):
    """preexec_fn for a rank: SIGKILL when `parent` (the launcher) dies, even if it already has.
    libc is looked up here, before the fork: the child only makes two system calls."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        if prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(EXIT_FAILED)
        if os.getppid() != parent:  # it died between fork and prctl
            os._exit(EXIT_FAILED)

    return preexec


def spawn_ranks(args: list[str], nproc: int, env: dict | None = None, **popen) -> list[subprocess.Popen]:
    base = dict(os.environ if env is None else env)
    base.setdefault("OMP_NUM_THREADS", "1")  # N ranks share the cores; more threads only contend
    port = str(free_port())
    procs = []
    for rank in range(nproc):
        rank_env = base | {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(nproc),
            "LOCAL_WORLD_SIZE": str(nproc),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        # Own session: a terminal's Ctrl-C reaches only the launcher, which turns it into a
        # graceful stop (SIGTERM) for every rank.
        popen.setdefault("start_new_session", True)
        if sys.platform == "linux":
            popen.setdefault("preexec_fn", _die_with(os.getpid()))
        procs.append(
            subprocess.Popen([sys.executable, "-m", "blt_scale.train", *args], env=rank_env, **popen)
        )
    return procs


def wait_ranks(procs: list[subprocess.Popen], grace_s: float = GRACE_S) -> int:
    """Exit code of the group: the first non-zero code, else 0. Ranks left hanging after another
    failed (their collectives can never complete) are killed after `grace_s`."""
    first_bad, failed_at = None, None
    while any(p.poll() is None for p in procs):
        for p in procs:
            if p.returncode not in (None, 0) and first_bad is None:
                first_bad, failed_at = p.returncode, time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > grace_s:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.05)
    codes = [p.returncode for p in procs]
    bad = first_bad if first_bad is not None else next((c for c in codes if c != 0), 0)
    return EXIT_FAILED if bad < 0 else bad  # killed by a signal


def launch(args: list[str], nproc: int) -> int:
    procs = spawn_ranks(args, nproc)

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM if signum == signal.SIGINT else signum)

    for sig in (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    return wait_ranks(procs)

"""One writer per run directory: rank 0 of a trainer holds an exclusive POSIX lock (fcntl) on
RUN_DIR/.lock for its whole life, with its host, pid and SLURM job id written inside. A second
trainer on the same directory fails with one line naming the holder. The kernel drops the lock
when the holder's process ends in any way (kill -9 included), so a dead holder never blocks the
next run; on a network file system the lock server does the same for a dead host.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from blt_scale.config import ConfigError
from blt_scale.parallel.env import slurm_job_id

LOCK = ".lock"


class RunDirLocked(ConfigError):
    """Another trainer holds the run directory."""


class RunLock:
    """Held from construction until the process exits (or `release`)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self.fd, 4096, 0).decode(errors="replace")
            os.close(self.fd)
            raise RunDirLocked(
                f"{Path(run_dir)}: another trainer is writing this run directory ({describe(holder)}); "
                "wait for it to finish, stop it, or choose another run_dir"
            ) from None
        info = {"host": socket.gethostname(), "pid": os.getpid(), "job": slurm_job_id(), "since": time.time()}
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, (json.dumps(info) + "\n").encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the lock
            self.fd = None


def describe(holder: str) -> str:
    try:
        info = json.loads(holder)
    except ValueError:
        return f"lock file {LOCK}: {holder.strip()[:200]!r}"
    job = f", SLURM job {info['job']}" if info.get("job") else ""
    return f"held by pid {info.get('pid')} on host {info.get('host')}{job}"


def live_holder(run_dir: str | Path) -> dict | None:
    """The host/pid/job of a trainer still running on this run directory, as far as this host can
    tell: the lock file names it and, on this host, its process exists (the file outlives its
    holder; the lock itself does not). A holder on another host is reported as is."""
    try:
        info = json.loads((Path(run_dir) / LOCK).read_text())
    except (OSError, ValueError):
        return None
    if info.get("host") != socket.gethostname():
        return info
    try:
        os.kill(int(info["pid"]), 0)
    except (ProcessLookupError, KeyError, ValueError, TypeError):
        return None
    except PermissionError:  # exists, owned by someone else
        pass
    return info

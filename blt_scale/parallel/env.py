"""The one place that reads the process environment: rank, world size and rendezvous from torchrun
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or, without them, from SLURM
(SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_JOB_NODELIST: the first host is the master),
plus the WANDB_* variables the metrics honour."""

from __future__ import annotations

import os
import random
import re
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

SLURM_DEFAULT_PORT = 29500
# Job ids spread over this many ports above the default: enough for the jobs that share a node,
# and all below Linux's ephemeral range (32768-60999), where an outgoing connection may hold one.
SLURM_PORT_SPREAD = 3000


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 0
    source: str = "single"  # single | torchrun | slurm

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list such as 'n[1-3,7],gpu05' (no scontrol needed)."""
    head = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist)
    if not head:
        raise ValueError(f"SLURM_JOB_NODELIST={nodelist!r}: cannot find a host name")
    prefix, _, ranges = head.groups()
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def read_env(environ: dict | None = None) -> DistEnv:
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", 0)),
            source="torchrun",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
        job = int(env.get("SLURM_JOB_ID", "0") or 0)
        return DistEnv(
            rank=int(env["SLURM_PROCID"]),
            world_size=int(env["SLURM_NTASKS"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            master_addr=env.get("MASTER_ADDR") or first_slurm_host(nodelist),
            # A port derived from the job id lets two jobs share a node without colliding.
            master_port=int(env.get("MASTER_PORT") or SLURM_DEFAULT_PORT + job % SLURM_PORT_SPREAD),
            source="slurm",
        )
    return DistEnv()


def slurm_job_id(environ: dict | None = None) -> str | None:
    """The SLURM job this process runs in (None outside SLURM)."""
    env = os.environ if environ is None else environ
    return env.get("SLURM_JOB_ID") or None


def wandb_settings(environ: dict | None = None) -> dict:
    """WANDB_MODE/WANDB_DIR/WANDB_PROJECT as the user set them (empty when unset)."""
    env = os.environ if environ is None else environ
    return {k: env[k] for k in ("WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "WANDB_ENTITY") if env.get(k)}


def ephemeral_ports(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> tuple[int, int]:
    """The range the kernel draws connect() source ports from (Linux's default where unreadable)."""
    try:
        with open(path) as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_port(attempts: int = 200) -> int:
    """A TCP port free now and outside the ephemeral range. The ranks that connect to the master
    retry until it listens, each retry on a fresh source port from that range; one that drew the
    master's own port (bind(0) would pick it from there) would connect to itself and take the port
    (TCP self-connect). Ports outside the range are never handed out as source ports."""
    low, high = ephemeral_ports()
    below, above = range(max(1024, low - 10000), low), range(high + 1, 65536)
    pool = below if len(below) >= len(above) else above
    rng = random.Random()  # seeded from the OS: concurrent launches draw different ports
    for _ in range(attempts if pool else 0):
        port = rng.choice(pool)
        with socket.socket() as s:
            try:
                s.bind(("", port))  # every address, as the master's store will listen
            except OSError:
                continue
            return port
    # The ephemeral range covers every port, or all tried are taken: the kernel's choice.
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def pick_device(name: str, env: DistEnv) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        torch.cuda.set_device(env.local_rank)
        return torch.device("cuda", env.local_rank)
    return torch.device(name)


def init_distributed(env: DistEnv, device: torch.device, needed: bool) -> bool:
    """Start the process group (nccl on GPU, gloo on CPU) when there are several ranks or the
    strategy needs one; returns whether a group exists."""
    if dist.is_initialized():
        return True
    if env.world_size == 1 and not needed:
        return False
    port = env.master_port or free_port()  # a lone process needs no agreed port
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend,
        init_method=f"tcp://{env.master_addr}:{port}",
        rank=env.rank,
        world_size=env.world_size,
        timeout=timedelta(minutes=30),
    )
    return True

"""LaunchConfig: how a run is placed on a SLURM cluster (the `blt submit` options). It is saved as
RUN_DIR/launch.yaml so `blt resume` resubmits with the same settings unless told otherwise."""

from __future__ import annotations

import re

from pydantic import Field, model_validator

from blt_scale.config import Config


class LaunchConfig(Config):
    nodes: int = Field(default=1, gt=0)
    tasks_per_node: int | None = Field(default=None, gt=0, description="rank processes per node (CPU runs)")
    gpus_per_node: int | None = Field(default=None, gt=0, description="GPUs per node; one rank per GPU")
    cpus_per_task: int | None = Field(default=None, gt=0)
    mem_gb: float | None = Field(default=None, gt=0, description="memory per node")
    time_min: int = Field(default=60, gt=0, description="time limit of one allocation, minutes")
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclude: str | None = None
    job_name: str | None = None
    signal_delay_s: int = Field(
        default=120, gt=0, description="SIGUSR2 this long before the time limit, so the trainer can save"
    )
    max_requeues: int = Field(
        default=10,
        ge=0,
        description="requeues after a time-limit stop, per job; more fails the job (resume by hand)",
    )
    setup: list[str] = Field(
        default_factory=list, description="shell lines run before srun (module load ...)"
    )
    sbatch: dict[str, str] = Field(
        default_factory=dict, description="further sbatch options, e.g. {mail-type: END}"
    )

    @model_validator(mode="after")
    def _one_task_count(self) -> LaunchConfig:
        if self.tasks_per_node and self.gpus_per_node and self.tasks_per_node != self.gpus_per_node:
            raise ValueError(
                f"tasks_per_node ({self.tasks_per_node}) and gpus_per_node ({self.gpus_per_node}) disagree: "
                "there is one rank per GPU, give only one of them"
            )
        if self.signal_delay_s >= self.time_min * 60:
            raise ValueError(
                f"signal_delay_s ({self.signal_delay_s}) must be shorter than the time limit "
                f"({self.time_min} min): the stop warning would come before the job starts"
            )
        return self

    @property
    def ranks_per_node(self) -> int:
        return self.gpus_per_node or self.tasks_per_node or 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.ranks_per_node


def parse_time(text: str) -> int:
    """A SLURM time limit (MM, HH:MM:SS, D-HH[:MM[:SS]] or MM:SS) in whole minutes, rounded up."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m:
        raise ValueError(f"--time {text!r}: expected minutes, HH:MM:SS or D-HH:MM:SS")
    days, a, b, c = m.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        h, mi, s = int(a), int(b or 0), int(c or 0)
        seconds = int(days) * 86400 + h * 3600 + mi * 60 + s
    elif c is not None:  # HH:MM:SS
        seconds = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # MM:SS
        seconds = int(a) * 60 + int(b)
    else:
        seconds = int(a) * 60
    if seconds <= 0:
        raise ValueError(f"--time {text!r}: must be positive")
    return -(-seconds // 60)

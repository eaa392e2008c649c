"""The run directory of a SLURM run, as the launcher writes it (the trainer adds checkpoints/,
metrics.jsonl and data_trace/ as in any run directory):

config.yaml       the resolved recipe (the trainer rewrites it with the same content)
job_config.yaml   the recipe the job runs, frozen at submission (the trainer never writes it)
launch.yaml       the LaunchConfig of the last submission (`blt resume` starts from it)
code/             the package and recipes as they were at submission; jobs import from here,
                  so edits to the checkout after submitting do not change a queued job
logs/             submitit's folder: sbatch script, pickles, one log per task (append mode)
jobs.jsonl        one row per event: submit, start (with restart count), exit
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import yaml

import blt_scale
from blt_scale import config
from blt_scale.files import append_jsonl, read_jsonl
from blt_scale.launch.config import LaunchConfig

JOB_CONFIG, LAUNCH, JOBS, CODE, LOGS = "job_config.yaml", "launch.yaml", "jobs.jsonl", "code", "logs"
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


def snapshot_code(dest: Path) -> Path:
    """Copy the importable package and the recipes next to it into dest (replacing nothing that
    exists: a resumed run keeps the code it started with)."""
    from blt_scale.train.recipe import RECIPES

    package = Path(blt_scale.__file__).resolve().parent
    if not (dest / package.name).is_dir():
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(package, tmp / package.name, ignore=_SKIP)
        if RECIPES.is_dir():
            shutil.copytree(RECIPES, tmp / RECIPES.name, ignore=_SKIP)
        tmp.rename(dest)
    return dest


def prepare(cfg, launch: LaunchConfig, code: Path | None = None) -> Path:
    """Create the run directory for a new submission; `code` is a snapshot to share (an array's)
    instead of a fresh copy. Returns the absolute run directory."""
    run_dir = Path(cfg.run_dir).resolve()
    cfg = cfg.model_copy(update={"run_dir": str(run_dir)})
    (run_dir / LOGS).mkdir(parents=True, exist_ok=True)
    text = config.dump(cfg)
    (run_dir / "config.yaml").write_text(text)
    (run_dir / JOB_CONFIG).write_text(text)
    save_launch(run_dir, launch)
    if code is None:
        snapshot_code(run_dir / CODE)
    elif not (run_dir / CODE).exists():
        (run_dir / CODE).symlink_to(code.resolve(), target_is_directory=True)
    return run_dir


def save_launch(run_dir: Path, launch: LaunchConfig) -> None:
    (run_dir / LAUNCH).write_text(yaml.safe_dump(launch.model_dump(mode="json"), sort_keys=False))


def load_launch(run_dir: Path) -> LaunchConfig:
    return config.load(LaunchConfig, run_dir / LAUNCH)


def total_steps(run_dir: Path) -> int:
    """train.steps of the recipe the job runs."""
    try:
        return int(yaml.safe_load((run_dir / JOB_CONFIG).read_text())["train"]["steps"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{run_dir / JOB_CONFIG}: no train.steps ({type(err).__name__}: {err})") from None


def check_run_dir(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir).resolve()
    for name in (JOB_CONFIG, LAUNCH):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(
                f"{run_dir / name} is missing: {run_dir} is not a run directory made by `blt submit`"
            )
    if not (run_dir / CODE).is_dir():
        raise FileNotFoundError(f"{run_dir / CODE} is missing: the code snapshot of this run is gone")
    return run_dir


def record(run_dir: str | Path, event: str, **fields) -> dict:
    """Append one event row to jobs.jsonl."""
    row = {"event": event, "time": round(time.time(), 3), **fields}
    append_jsonl(Path(run_dir) / JOBS, row)
    return row


def history(run_dir: str | Path) -> list[dict]:
    return read_jsonl(Path(run_dir) / JOBS)

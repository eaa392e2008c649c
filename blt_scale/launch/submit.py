"""Submitting runs with submitit: one job per run (`submit`, `resume`) or many configs in one
job array (`submit_runs`, and `submit_array` for any picklable callables, e.g. data-prep parts).

Every job runs its tasks with the run's code snapshot first on PYTHONPATH, one task per rank
(`--ntasks-per-node`, one per GPU with `--gpus-per-node`), and gets SIGUSR2 `signal_delay_s`
before its time limit so the trainer can save and the task can requeue it (blt_scale.launch.task).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from blt_scale.config import ConfigError
from blt_scale.launch import boot, rundir
from blt_scale.launch.config import LaunchConfig
from blt_scale.launch.task import TrainTask, last_step


class RunFinished(Exception):
    """`blt resume` of a run whose last step is trained and checkpointed: nothing to submit."""


def sbatch_parameters(launch: LaunchConfig, code: Path, array_parallelism: int | None = None) -> dict:
    """submitit's SlurmExecutor parameters for a launch config; the job imports from `code`."""
    params = {
        "nodes": launch.nodes,
        "ntasks_per_node": launch.ranks_per_node,
        "time": launch.time_min,
        "signal_delay_s": launch.signal_delay_s,
        "job_name": launch.job_name or "blt",
        "setup": [
            # The snapshot comes before the installed package, and `python -m` must not put the
            # working directory (often the checkout) first: a queued job runs the code as it was
            # at submission. (PYTHONSAFEPATH: Python >= 3.11.)
            f"export PYTHONPATH={shlex.quote(str(code))}${{PYTHONPATH:+:$PYTHONPATH}}",
            "export PYTHONSAFEPATH=1",
            # One math thread per rank unless the job asks for CPUs per task (torchrun's default).
            "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}",
            *launch.setup,
        ],
        # Requeued jobs (ours or SLURM's) must be allowed to come back.
        "additional_parameters": {"requeue": True, **launch.sbatch},
    }
    optional = {
        "gpus_per_node": launch.gpus_per_node,
        "cpus_per_task": launch.cpus_per_task,
        "partition": launch.partition,
        "account": launch.account,
        "qos": launch.qos,
        "constraint": launch.constraint,
        "exclude": launch.exclude,
        "mem": f"{int(launch.mem_gb * 1024)}MB" if launch.mem_gb else None,
    }
    params |= {k: v for k, v in optional.items() if v is not None}
    if array_parallelism is not None:
        params["array_parallelism"] = array_parallelism
    return params


def _executor(folder: Path, launch: LaunchConfig, code: Path, array_parallelism: int | None = None):
    import submitit

    # Every task's interpreter records stop signals from its first line (blt_scale.launch.boot).
    executor = submitit.SlurmExecutor(
        folder=folder, max_num_timeout=launch.max_requeues, python=boot.command()
    )
    executor.update_parameters(**sbatch_parameters(launch, code, array_parallelism))
    return executor


def sbatch_script(folder: Path, launch: LaunchConfig, code: Path) -> str:
    """The sbatch script submitit would write (works where SLURM is not installed)."""
    from submitit.slurm.slurm import _make_sbatch_string

    command = f"{boot.command()} -u -m submitit.core._submit {shlex.quote(str(folder))}"
    return _make_sbatch_string(command=command, folder=folder, **sbatch_parameters(launch, code))


def submit(cfg, launch: LaunchConfig, dry_run: bool = False, prepare_only: bool = False):
    """Prepare cfg.run_dir and submit its training job. Returns (job or the sbatch script, run_dir);
    `prepare_only` writes the run directory for slurm/train.sbatch and returns its sbatch command."""
    if prepare_only:
        run_dir = rundir.prepare(cfg, launch)
        return plain_sbatch_command(run_dir, launch), run_dir
    if dry_run:  # nothing is written
        run_dir = Path(cfg.run_dir).resolve()
        return sbatch_script(run_dir / rundir.LOGS, launch, run_dir / rundir.CODE), run_dir
    run_dir = rundir.prepare(cfg, launch)
    return _submit_prepared(run_dir, launch, False, "submit")


def plain_sbatch_command(run_dir: Path, launch: LaunchConfig) -> str:
    """The `sbatch slurm/train.sbatch` line that runs a prepared run directory as `blt submit` would."""
    template = Path(__file__).resolve().parents[2] / "slurm" / "train.sbatch"
    options = [
        f"--nodes={launch.nodes}",
        f"--ntasks-per-node={launch.ranks_per_node}",
        f"--time={launch.time_min}",
        f"--signal=USR2@{launch.signal_delay_s}",
        f"--output={run_dir / rundir.LOGS}/%j_sbatch.out",
    ]
    if launch.gpus_per_node:
        options.append(f"--gpus-per-node={launch.gpus_per_node}")
    for key in ("partition", "account", "qos", "constraint", "exclude", "cpus_per_task"):
        if getattr(launch, key) is not None:
            options.append(f"--{key.replace('_', '-')}={getattr(launch, key)}")
    if launch.mem_gb:
        options.append(f"--mem={int(launch.mem_gb * 1024)}M")
    return shlex.join(["sbatch", *options, str(template), str(run_dir)])


def resume(run_dir: str | Path, changes: dict | None = None, dry_run: bool = False):
    """Resubmit a stopped or failed run with its saved launch settings updated by `changes`
    (e.g. {"nodes": 1}); the trainer resumes from the latest complete checkpoint and reshards.
    A finished run raises RunFinished before anything is written or submitted."""
    run_dir = rundir.check_run_dir(run_dir)
    steps, done = rundir.total_steps(run_dir), last_step(run_dir)
    if done >= steps:
        raise RunFinished(f"{run_dir}: finished (step {done} of {steps} is checkpointed); nothing to resume")
    saved = rundir.load_launch(run_dir).model_dump()
    try:
        launch = LaunchConfig.model_validate(saved | (changes or {}))
    except ValueError as err:
        raise ConfigError(f"blt resume {run_dir}: {err}".replace("\n", " ")) from None
    if not dry_run:
        rundir.save_launch(run_dir, launch)
    return _submit_prepared(run_dir, launch, dry_run, "resume")


def _submit_prepared(run_dir: Path, launch: LaunchConfig, dry_run: bool, event: str):
    code = (run_dir / rundir.CODE).resolve()
    folder = run_dir / rundir.LOGS
    if dry_run:
        return sbatch_script(folder, launch, code), run_dir
    job = _executor(folder, launch, code).submit(TrainTask(run_dir))
    rundir.record(
        run_dir,
        event,
        job=str(job.job_id),
        nodes=launch.nodes,
        ranks_per_node=launch.ranks_per_node,
        argv=sys.argv[1:],
    )
    return job, run_dir


def submit_array(
    fns: Sequence[Callable[[], object]],
    launch: LaunchConfig,
    folder: str | Path,
    parallelism: int,
    code: Path | None = None,
) -> list:
    """One SLURM job array with a task per callable, at most `parallelism` running at once.
    `code` is a snapshot the jobs import from (default: a new one in folder/code)."""
    if not fns:
        raise ValueError("submit_array: no callables to submit")
    if parallelism < 1:
        raise ValueError(f"submit_array: parallelism must be at least 1, got {parallelism}")
    folder = Path(folder).resolve()
    code = rundir.snapshot_code(folder / rundir.CODE) if code is None else code.resolve()
    executor = _executor(folder / rundir.LOGS, launch, code, array_parallelism=parallelism)
    return executor.submit_array(list(fns))


def submit_runs(cfgs: Sequence, launch: LaunchConfig, folder: str | Path, parallelism: int) -> list:
    """Train many configs (each with its own run_dir) as one job array sharing one code snapshot
    (each run's code/ links to it); every run directory gets its job id in jobs.jsonl."""
    run_dirs = [str(Path(c.run_dir).resolve()) for c in cfgs]
    if len(set(run_dirs)) != len(run_dirs):
        raise ValueError("submit_runs: two configs share a run_dir; give each its own")
    folder = Path(folder).resolve()
    code = rundir.snapshot_code(folder / rundir.CODE)
    prepared = [rundir.prepare(c, launch, code=code) for c in cfgs]
    jobs = submit_array([TrainTask(d) for d in prepared], launch, folder, parallelism, code=code)
    for job, run_dir in zip(jobs, prepared):
        link = run_dir / rundir.LOGS / "array"  # the array's logs are shared, in folder/logs
        if not link.exists():
            link.symlink_to(folder / rundir.LOGS, target_is_directory=True)
        rundir.record(
            run_dir,
            "submit",
            job=str(job.job_id),
            nodes=launch.nodes,
            ranks_per_node=launch.ranks_per_node,
            array=str(folder),
            argv=sys.argv[1:],
        )
    return jobs

"""What runs in every SLURM task of a training job (the callable submitit pickles).

Each task starts one trainer process, `python -m blt_scale.train RUN_DIR/job_config.yaml`, which
reads its rank, world size and master (the allocation's first host) from SLURM's variables; there
is no torchrun. The trainer's exit code decides what happens next (blt_scale.train.exit_codes):

    0    done: the task returns and submitit records success.
    75   stopped after every rank saved the same step.  If the stop came from SIGUSR2 (SLURM's
         warning before the time limit, `--signal`), rank 0 requeues the job with `scontrol
         requeue` while the job's requeue budget (launch.yaml max_requeues) lasts.  If it came
         from SIGTERM, SLURM itself is ending the allocation (preemption, `scontrol requeue`,
         scancel): SLURM decides whether the job comes back, and the task only records the stop
         (status "cancelled" when accounting says scancel ended it, else "stopped").
    else a real error (exception, non-finite halt, bad recipe): the task raises, the job fails and
         is not requeued.

The task leaves through SystemExit when the job will come back, so submitit writes no result
file for an allocation that did not finish the job.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from blt_scale.launch import boot, rundir
from blt_scale.train.exit_codes import EXIT_CONFIG, EXIT_NONFINITE, EXIT_OK, EXIT_STOPPED

MEANING = {EXIT_CONFIG: "bad recipe", EXIT_NONFINITE: "halted on non-finite steps", EXIT_STOPPED: "stopped"}
FORWARDED = (signal.SIGUSR2, signal.SIGTERM)


class TrainTask:
    """Picklable: holds only the run directory and the interpreter, so the job imports this class
    (and everything else) from the run's code snapshot."""

    def __init__(self, run_dir: str | Path, python: str = sys.executable):
        self.run_dir = str(run_dir)
        self.python = python

    def __call__(self) -> dict | None:
        import submitit

        env = submitit.JobEnvironment()
        run_dir = Path(self.run_dir)
        main = env.global_rank == 0
        job_id = str(env.job_id)
        if main:
            restart = sum(
                1 for r in rundir.history(run_dir) if r["event"] == "start" and r.get("job") == job_id
            )
            rundir.record(
                run_dir,
                "start",
                job=job_id,
                restart=restart,
                nodes=list(env.hostnames),
                world=env.num_tasks,
                code=str(Path(rundir.__file__).resolve().parents[1]),
            )
        code, signals = self._run_trainer(run_dir, early=boot.early())
        if code == EXIT_OK:
            if main:
                rundir.record(
                    run_dir, "exit", job=job_id, status="completed", code=code, step=last_step(run_dir)
                )
            return {"run_dir": self.run_dir, "step": last_step(run_dir)} if main else None
        if code == EXIT_STOPPED:
            return self._stopped(run_dir, job_id, main, signals)
        what = MEANING.get(code, "failed")
        if main:
            rundir.record(
                run_dir, "exit", job=job_id, status="failed", code=code, reason=what, step=last_step(run_dir)
            )
        raise RuntimeError(
            f"trainer exited with code {code} ({what}); not requeued: see {run_dir / rundir.LOGS}"
        )

    def checkpoint(self):
        """submitit calls this only for a SIGUSR2 that arrives before the trainer starts: there
        is nothing to save yet, so the same task is requeued and resumes from the run directory."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)

    def _run_trainer(self, run_dir: Path, early: Sequence[int] = ()) -> tuple[int, list[int]]:
        """The trainer's exit code and the stop signals this task received (`early`: those
        recorded before submitit's handlers, see blt_scale.launch.boot)."""
        cmd = [
            self.python,
            "-u",
            "-m",
            "blt_scale.train",
            str(run_dir / rundir.JOB_CONFIG),
            f"run_dir={run_dir}",
        ]
        received = list(early)

        # SLURM signals every process of the step, but a trainer still importing has no handler
        # yet and would die of the signal: it starts with the stop signals ignored, and the
        # last one received is re-sent every second until it exits (setting its flag twice is
        # harmless).
        def forward(signum, frame):
            received.append(signum)

        previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
        try:
            child = subprocess.Popen(cmd, preexec_fn=_ignore_stop_signals)
            while True:
                try:
                    code = child.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    if received:
                        child.send_signal(received[-1])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return code, received

    def _stopped(self, run_dir: Path, job_id: str, main: bool, signals: list[int]) -> None:
        if not main:
            raise SystemExit(EXIT_STOPPED)
        step = last_step(run_dir)
        if signal.SIGTERM in signals or signal.SIGUSR2 not in signals:
            if cancelled(job_id):  # scancel: the job does not come back; `blt resume` continues it
                rundir.record(run_dir, "exit", job=job_id, status="cancelled", code=EXIT_STOPPED, step=step)
            else:
                rundir.record(
                    run_dir,
                    "exit",
                    job=job_id,
                    status="stopped",
                    code=EXIT_STOPPED,
                    step=step,
                    requeue="slurm",
                )
            raise SystemExit(EXIT_STOPPED)
        from blt_scale.launch.rundir import load_launch

        budget = load_launch(run_dir).max_requeues
        used = sum(
            1 for r in rundir.history(run_dir) if r.get("job") == job_id and r.get("requeue") == "self"
        )
        if used >= budget:
            rundir.record(
                run_dir, "exit", job=job_id, status="stopped", code=EXIT_STOPPED, step=step, requeue="none"
            )
            raise RuntimeError(
                f"stopped at step {step} after {used} requeues (max_requeues={budget} in "
                f"{run_dir / rundir.LAUNCH}); `blt resume {run_dir}` continues"
            )
        rundir.record(
            run_dir, "exit", job=job_id, status="stopped", code=EXIT_STOPPED, step=step, requeue="self"
        )
        subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60)
        raise SystemExit(EXIT_STOPPED)


def cancelled(job_id: str) -> bool:
    """Whether SLURM's accounting says the job was cancelled (scancel), not requeued or preempted:
    inside the job both look the same (SIGTERM, state COMPLETING). False where sacct cannot say."""
    try:
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return out.strip().startswith("CANCELLED")


def _ignore_stop_signals() -> None:
    for sig in FORWARDED:
        signal.signal(sig, signal.SIG_IGN)


def last_step(run_dir: Path) -> int:
    """Step of the latest complete checkpoint (0: none)."""
    from blt_scale.checkpoint.layout import STEP_DIR, latest_complete

    latest = latest_complete(run_dir)
    return int(STEP_DIR.match(latest.name).group(1)) if latest else 0


def main(argv: list[str] | None = None) -> None:
    """`srun python -m blt_scale.launch.task RUN_DIR`: the same task without submitit's pickle,
    for slurm/train.sbatch. Exit 0 done, 75 stopped (requeued or to resume), 1 failed."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m blt_scale.launch.task")
    p.add_argument("run_dir")
    args = p.parse_args(argv)
    try:
        TrainTask(rundir.check_run_dir(args.run_dir))()
    except (RuntimeError, FileNotFoundError) as err:
        print(f"blt task: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()

"""Issue 15, run control: one writer per run directory, ranks that die with their launcher,
`blt resume` of a finished run that submits nothing, and a SIGTERM to every process of a job (wandb's
service included) that still ends in a clean stop and an exact resume."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import blt
from dist_helpers import FSDP, TINY

from blt_scale.cli import main
from blt_scale.files import read_jsonl

RUN = TINY + ["train.steps=4", "checkpoint.every=2"]


# -- item 4 of the issue: one writer per run directory; ranks die with their launcher ---------
def wait_for_rows(run_dir: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(read_jsonl(run_dir / "metrics.jsonl")) < n:
        assert proc.poll() is None, f"training ended early ({proc.returncode})"
        assert time.monotonic() < deadline, "no metrics rows in time"
        time.sleep(0.1)


def start_blt(*args: str, log: Path) -> subprocess.Popen:
    out = open(log, "w")
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "blt_scale.cli", *args]
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


@pytest.mark.slow  # ~35 s on 2 busy cores: three trainer launches, one of 80 steps
def test_a_second_trainer_on_a_run_dir_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    # The first trainer has far more steps than the test needs, so it is still running (and holding
    # the lock) when the second starts, however fast the machine; SIGTERM ends it afterwards.
    first = start_blt(
        "train", "cpu_tiny", *TINY, "train.steps=100000", f"run_dir={run_dir}", log=tmp_path / "1.log"
    )
    try:
        wait_for_rows(run_dir, 1, first)
        config = (run_dir / "config.yaml").read_bytes()
        r = blt("train", "cpu_tiny", *TINY, "train.steps=100000", f"run_dir={run_dir}", check=False)
        assert r.returncode == 2, r.stderr[-2000:]
        last = r.stderr.strip().splitlines()[-1]
        assert "another trainer is writing this run directory" in last
        assert f"held by pid {first.pid} on host {socket.gethostname()}" in last
        assert (run_dir / "config.yaml").read_bytes() == config  # the second wrote nothing
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=240) == 75
    finally:
        if first.poll() is None:
            first.kill()
    last = (tmp_path / "1.log").read_text().strip().splitlines()[-1]
    stopped = int(last.split("after step ")[1].split(";")[0])
    assert [row["step"] for row in read_jsonl(run_dir / "metrics.jsonl")] == list(range(1, stopped + 1))
    # The lock died with its holder: the next trainer resumes where the first stopped.
    r = blt("train", "cpu_tiny", *TINY, f"train.steps={stopped + 2}", f"run_dir={run_dir}")
    assert f"at step {stopped}/{stopped + 2}" in r.stderr
    assert [row["step"] for row in read_jsonl(run_dir / "metrics.jsonl")] == list(range(1, stopped + 3))


@pytest.mark.multiproc
def test_kill_9_of_the_launcher_takes_its_ranks_along(tmp_path):
    run_dir = tmp_path / "run"
    launcher = start_blt(
        "train",
        "cpu_tiny",
        *TINY,
        *FSDP,
        "train.steps=5000",
        f"run_dir={run_dir}",
        "--nproc",
        "2",
        log=tmp_path / "l.log",
    )
    ranks = []
    try:
        wait_for_rows(run_dir, 2, launcher)
        ranks = children(launcher.pid)
        assert len(ranks) == 2 and all(alive(p) for p in ranks)
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        deadline = time.monotonic() + 5
        while any(alive(p) for p in ranks) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in ranks if alive(p)], "ranks outlived their launcher by 5 s"
    finally:
        for p in [*ranks, launcher.pid]:  # never leave orphans behind, even when the test fails
            if alive(p):
                os.kill(p, signal.SIGKILL)


# -- item 11 of the issue: `blt resume` of a finished run submits nothing ------------------------
def test_resume_of_a_finished_run_submits_nothing(tmp_path, capsys):
    from blt_scale.launch import rundir
    from blt_scale.launch.config import LaunchConfig
    from blt_scale.train.recipe import load_recipe

    cfg = load_recipe("cpu_tiny", [*RUN, f"run_dir={tmp_path / 'run'}"])
    run_dir = rundir.prepare(cfg, LaunchConfig(nodes=1, tasks_per_node=1, time_min=10, signal_delay_s=60))
    job_config = str(run_dir / rundir.JOB_CONFIG)
    blt("train", job_config, "train.steps=2")  # stopped half way, as a preempted job would be
    assert main(["resume", str(run_dir), "--dry-run"]) == 0
    assert "#SBATCH" in capsys.readouterr().out  # an unfinished run is resubmitted

    blt("train", job_config)  # the job's own recipe to its last step
    before = {
        name: (run_dir / name).read_bytes()
        for name in (rundir.LAUNCH, rundir.JOBS)
        if (run_dir / name).exists()
    }
    for extra in (["--dry-run"], ["--nodes", "2"]):  # would fail without SLURM if it tried to submit
        assert main(["resume", str(run_dir), *extra]) == 0
        out = capsys.readouterr().out
        assert "finished (step 4 of 4 is checkpointed)" in out and "no job submitted" in out
        assert "#SBATCH" not in out and "job " not in out.replace("no job submitted", "")
    assert {name: (run_dir / name).read_bytes() for name in before} == before


# -- item 10 of the issue: a job's SIGTERM that also reaches wandb's service -----------------------
def descendants(pid: int) -> list[int]:
    found = children(pid)
    return found + [d for c in found for d in descendants(c)]


def test_sigterm_to_every_process_with_wandb_on_stops_cleanly(tmp_path):
    """What `scancel` does (SIGTERM to every process of the job, wandb's service included), without
    SLURM: the trainer saves and exits 75 with its stop line last, and the resume adds each row once."""
    run_dir = tmp_path / "run"
    wandb_env = {
        "WANDB_MODE": "offline",
        **{var: str(tmp_path / var.lower()) for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR")},
        "WANDB_DATA_DIR": str(tmp_path / "wandb_data"),
    }
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        Path(wandb_env[var]).mkdir()
    with_wandb = [o for o in TINY if not o.startswith("wandb.")] + ["wandb.enabled=true"]
    env = os.environ | {"OMP_NUM_THREADS": "1"} | wandb_env
    # Far more steps than needed, so the run is still going when the signal comes however fast
    # the machine or however late this process is scheduled; the resume sets the real length.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "blt_scale.cli",
            "train",
            "cpu_tiny",
            *with_wandb,
            "train.steps=100000",
            f"run_dir={run_dir}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        wait_for_rows(run_dir, 3, proc)
        everyone = [proc.pid, *descendants(proc.pid)]
        assert len(everyone) >= 2, "wandb's service process did not start"
        for pid in everyone:
            os.kill(pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert "stopped by signal after step" in last and "checkpoint saved (exit 75)" in last
    assert "ConnectionResetError" not in last and "Traceback" not in err
    stopped = int(last.split("after step ")[1].split(";")[0])
    assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")] == list(range(1, stopped + 1))

    r = blt(
        "train", "cpu_tiny", *with_wandb, f"train.steps={stopped + 3}", f"run_dir={run_dir}", env=wandb_env
    )
    assert f"at step {stopped}/{stopped + 3}" in r.stderr
    assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")] == list(range(1, stopped + 4))


def test_the_outcome_is_the_last_line_with_wandb_on(tmp_path):
    wandb_env = {"WANDB_MODE": "offline"}
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        wandb_env[var] = str(tmp_path / var.lower())
        Path(wandb_env[var]).mkdir()
    with_wandb = [o for o in TINY if not o.startswith("wandb.")] + ["wandb.enabled=true"]
    halt = ["train.steps=5", "train.inject_nan_at=[2]", "train.max_bad_steps=1"]
    r = blt(
        "train", "cpu_tiny", *with_wandb, *halt, f"run_dir={tmp_path / 'run'}", env=wandb_env, check=False
    )
    assert r.returncode == 3, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("[rank 0/1] halted: 1 steps in a row")

"""A SLURM stop signal that reaches a task before its handlers exist (still importing, on a loaded
node, under a short time limit) is recorded by blt_scale.launch.boot instead of killing the task,
and TrainTask hands it to its trainer, which saves and stops as for any later signal."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from dist_helpers import TINY

from blt_scale.launch import boot, rundir
from blt_scale.launch.config import LaunchConfig
from blt_scale.launch.task import TrainTask, last_step
from blt_scale.train.exit_codes import EXIT_STOPPED
from blt_scale.train.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]

# A task module that receives SLURM's warning before it has imported anything of its own.
PROBE = """\
import os, signal, sys
os.kill(os.getpid(), signal.SIGUSR2)
from blt_scale.launch import boot
print(boot.early(), sys.argv[1:])
"""


def run_probe(tmp_path: Path, command: str) -> subprocess.CompletedProcess:
    (tmp_path / "probe.py").write_text(PROBE)
    env = os.environ | {"PYTHONPATH": f"{tmp_path}:{REPO}"}
    return subprocess.run(
        ["bash", "-c", f"{command} -u -m probe a 'b c'"], capture_output=True, text=True, env=env, timeout=60
    )


def test_an_early_signal_kills_a_plain_task_and_is_recorded_under_boot(tmp_path):
    plain = run_probe(tmp_path, f"{sys.executable}")
    assert plain.returncode == -signal.SIGUSR2  # what boot prevents: the job lost to its own warning
    booted = run_probe(tmp_path, boot.command())
    assert booted.returncode == 0, booted.stderr
    assert booted.stdout.strip() == f"[{int(signal.SIGUSR2)}] ['a', 'b c']"


def test_a_bad_boot_command_line_is_one_error(tmp_path):
    r = subprocess.run(
        ["bash", "-c", f"{boot.command()} probe.py"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert r.returncode == 1 and "expected [-u] -m MODULE [ARGS...], got 'probe.py'" in r.stderr


def test_the_trainer_gets_a_signal_its_task_received_early(tmp_path):
    cfg = load_recipe(
        "cpu_tiny", [*TINY, "train.steps=100000", "checkpoint.every=100000", f"run_dir={tmp_path}"]
    )
    run_dir = rundir.prepare(cfg, LaunchConfig(nodes=1, tasks_per_node=1, time_min=10, signal_delay_s=60))
    code, signals = TrainTask(run_dir)._run_trainer(run_dir, early=[signal.SIGUSR2])
    assert code == EXIT_STOPPED and signals == [signal.SIGUSR2]
    assert 0 < last_step(run_dir) < 100000  # it saved where it stopped, long before its last step

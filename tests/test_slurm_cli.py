"""`blt submit --dry-run` prints the sbatch script submitit would submit (no SLURM needed, nothing
written), and bad launch options fail with one line naming the option."""

from __future__ import annotations

from cli_helpers import blt
from slurm_helpers import TINY


def test_dry_run_prints_the_sbatch_script_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    r = blt(
        "submit",
        "cpu_tiny",
        *TINY,
        f"run_dir={run_dir}",
        "--nodes",
        "4",
        "--gpus-per-node",
        "8",
        "--time",
        "2:00:00",
        "--partition",
        "gpu",
        "--account",
        "lm",
        "--mem",
        "64",
        "--dry-run",
    )
    script = r.stdout
    for line in (
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --time=120",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=lm",
        "#SBATCH --mem=65536MB",
        "#SBATCH --signal=USR2@120",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        f"export PYTHONPATH={run_dir}/code",
        "export PYTHONSAFEPATH=1",
        "srun ",
    ):
        assert line in script, f"{line!r} missing from:\n{script}"
    assert not run_dir.exists()


def test_bad_launch_options_fail_with_one_line(tmp_path):
    r = blt(
        "submit",
        "cpu_tiny",
        f"run_dir={tmp_path / 'run'}",
        "--nodes",
        "1",
        "--tasks-per-node",
        "1",
        "--time",
        "1",
        "--signal-delay",
        "90",
        "--dry-run",
        check=False,
    )
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "signal_delay_s" in r.stderr, (
        r.stderr
    )
    r = blt("resume", str(tmp_path / "nowhere"), check=False)
    assert (
        r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "not a run directory" in r.stderr
    ), r.stderr
    r = blt(
        "submit",
        "cpu_tiny",
        "--nodes",
        "1",
        "--tasks-per-node",
        "1",
        "--time",
        "soon",
        "--dry-run",
        check=False,
    )
    assert r.returncode != 0 and "--time 'soon'" in r.stderr, r.stderr

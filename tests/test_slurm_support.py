"""The project's local SLURM cluster is up, with two idle nodes and accounting."""

import subprocess

import pytest


@pytest.mark.slurm
def test_local_cluster_has_two_idle_nodes_and_accounting(slurm_cluster):
    r = subprocess.run([str(slurm_cluster), "start"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "already running" in r.stderr, r.stderr  # start is a no-op when up
    nodes = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True, timeout=30
    ).stdout.split()
    assert sorted(nodes) == ["n1", "n2"]
    assert subprocess.run(["sacct", "-n", "-X"], capture_output=True, timeout=30).returncode == 0

"""Fixtures shared by several test files (defined here so that each is computed once per session)."""

import pytest


@pytest.fixture(scope="session")
def local_sweep(tmp_path_factory):
    """The tiny sweep of test_sweep_local trained with --local, once: (sweep file, its run_dir, the
    first invocation's result). The SLURM sweep test compares its array against these runs."""
    from test_sweep_local import blt_sweep, tiny_sweep

    tmp = tmp_path_factory.mktemp("local_sweep")
    path = tiny_sweep(tmp)
    return path, tmp / "sweep", blt_sweep(str(path), "--local")

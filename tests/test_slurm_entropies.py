"""`blt prep entropies --slurm-parts N`: the parts run as one job array on the local cluster and
the merged dataset equals a single local run."""

import json

import pytest
from test_data_entropies import assert_same_entropies

from blt_scale import cli

pytestmark = [pytest.mark.slurm]


def test_parts_as_an_array_then_merged_equal_a_single_run(entropy_dataset, slurm_cluster, tmp_path, capsys):
    tmp, _, _ = entropy_dataset
    argv = [
        "prep",
        "entropies",
        "--data",
        str(tmp / "text"),
        "--model",
        str(tmp / "model"),
        "--out",
        str(tmp_path / "arr"),
        "--batch-size",
        "5",
        "--slurm-parts",
        "2",
        "--nodes",
        "1",
        "--tasks-per-node",
        "1",
        "--time",
        "10",
        "--slurm-folder",
        str(tmp_path / "slurm"),
    ]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert out[0].startswith("job ") and "2 parts" in out[0]
    progress = [line for line in captured.err.splitlines() if line.startswith("entropy parts, job")]
    assert progress and progress[-1].split(" (")[0].endswith("0 pending, 0 running, 2 done of 2"), (
        captured.err
    )
    assert json.loads(out[-1])["out"] == str(tmp_path / "arr") and (tmp_path / "arr" / "_COMPLETE").exists()
    assert_same_entropies(tmp / "ent", tmp_path / "arr", tmp_path)
    assert len(list((tmp_path / "slurm" / "logs").glob("*_0_log.out"))) == 2  # one log per array task

"""The FLOP-matched sweep as one SLURM job array on the local cluster: it aggregates exactly like
the same sweep run here, and running it again submits nothing."""

import csv
import json

import pytest
import yaml
from cli_helpers import blt

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def results(path, variant):
    return {
        (r["variant"], r["size"], r["budget_flops"]): r
        for r in csv.DictReader(path.open())
        if r["variant"] == variant
    }


def test_sweep_as_an_array_aggregates_like_local_and_reruns_nothing(tmp_path, slurm_cluster, local_sweep):  # noqa: F811
    local_path, local_dir, local_out = local_sweep
    assert local_out.returncode == 0, local_out.stderr[-3000:]
    sweep = yaml.safe_load(local_path.read_text())
    # The local sweep's first variant as an array; every run is one single-process task.
    variant = sweep["variants"][0]["name"]
    sweep["variants"] = sweep["variants"][:1]
    sweep.update(
        {
            "run_dir": str(tmp_path / "array"),
            "max_parallel": 2,
            "launch": {"nodes": 1, "tasks_per_node": 1, "time_min": 30},
        }
    )
    path = tmp_path / "array_sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    out = blt("sweep", str(path), "--wait", timeout=900, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout)["trained"] == 6
    progress = [line for line in out.stderr.splitlines() if line.startswith("sweep array ")]
    assert progress and " 6 done of 6 " in progress[-1], out.stderr[-3000:]

    on_slurm, here = (
        results(tmp_path / "array" / "results.csv", variant),
        results(local_dir / "results.csv", variant),
    )
    assert on_slurm.keys() == here.keys() and len(on_slurm) == 6
    for key in here:  # the same deterministic CPU runs, launched two ways
        assert float(on_slurm[key]["val_bpb"]) == pytest.approx(float(here[key]["val_bpb"]), rel=1e-5)
        assert float(on_slurm[key]["train_flops"]) == pytest.approx(float(here[key]["train_flops"]), rel=1e-9)
    assert (tmp_path / "array" / "plots" / "isoflop.png").stat().st_size > 10_000

    again = blt("sweep", str(path), "--wait", timeout=900, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["trained"] == 0 and "submitted" not in json.loads(again.stdout)

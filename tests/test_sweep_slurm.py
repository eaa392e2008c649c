"""The FLOP-matched sweep as one SLURM job array on the local cluster: it aggregates exactly like
the same sweep run here, and running it again submits nothing."""

import csv
import json
import os
import subprocess
import sys

import pytest
import yaml

from test_slurm_support import slurm_cluster  # noqa: F401 - the fixture
from test_sweep_local import tiny_sweep

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def blt_sweep(*args, timeout=900):
    # One thread per run: tiny models run faster so, and local and SLURM runs add up floats alike.
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "blt_scale.cli", "sweep", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def results(path):
    return {(r["variant"], r["size"], r["budget_flops"]): r for r in csv.DictReader(path.open())}


def test_sweep_as_an_array_aggregates_like_local_and_reruns_nothing(tmp_path, slurm_cluster):  # noqa: F811
    path = tiny_sweep(tmp_path)
    sweep = yaml.safe_load(path.read_text())
    # One variant keeps the array small; every run is one single-process task.
    sweep["variants"] = sweep["variants"][:1]
    sweep.update({"max_parallel": 2, "launch": {"nodes": 1, "tasks_per_node": 1, "time_min": 30}})
    for name, local in (("array", False), ("local", True)):
        sweep["run_dir"] = str(tmp_path / name)
        path.write_text(yaml.safe_dump(sweep))
        out = blt_sweep(str(path), "--local" if local else "--wait")
        assert out.returncode == 0, out.stderr[-3000:]
        assert json.loads(out.stdout)["trained"] == 6

    on_slurm, here = results(tmp_path / "array" / "results.csv"), results(tmp_path / "local" / "results.csv")
    assert on_slurm.keys() == here.keys() and len(on_slurm) == 6
    for key in here:  # the same deterministic CPU runs, launched two ways
        assert float(on_slurm[key]["val_bpb"]) == pytest.approx(float(here[key]["val_bpb"]), rel=1e-5)
        assert float(on_slurm[key]["train_flops"]) == pytest.approx(float(here[key]["train_flops"]), rel=1e-9)
    assert (tmp_path / "array" / "plots" / "isoflop.png").stat().st_size > 10_000

    sweep["run_dir"] = str(tmp_path / "array")
    path.write_text(yaml.safe_dump(sweep))
    again = blt_sweep(str(path), "--wait")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["trained"] == 0 and "submitted" not in json.loads(again.stdout)

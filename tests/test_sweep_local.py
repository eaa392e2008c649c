"""A FLOP-matched sweep end to end on this machine: plan within 1% of each budget, train every run
with --local, aggregate, fit, plot; a second invocation trains nothing."""

import csv
import json

import pytest
from cli_helpers import blt
from sweep_helpers import tiny_sweep

from blt_scale import config
from blt_scale.sweep.plan import SweepConfig, plan_sweep


def test_every_planned_run_matches_its_budget_within_one_percent(tmp_path):
    path = tiny_sweep(tmp_path)
    runs = plan_sweep(config.load(SweepConfig, path), path)
    assert len(runs) == 12 and len({r.run_dir for r in runs}) == 12
    for run in runs:
        assert abs(run.train_flops / run.budget_flops - 1) < 0.01, run.name
    blt = [r for r in runs if r.variant == "blt_space"]
    assert all(4 < r.mean_patch_bytes < 10 for r in blt)  # measured space patches, not a default


@pytest.mark.slow
def test_local_sweep_trains_aggregates_and_then_does_nothing(local_sweep):
    path, sweep_dir, out = local_sweep
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    assert summary["trained"] == 12 and summary["runs"] == 12
    rows = list(csv.DictReader((sweep_dir / "results.csv").open()))
    assert len(rows) == 12
    for row in rows:  # FLOPs recomputed from each run's own measured patch sizes
        assert abs(float(row["train_flops"]) / float(row["budget_flops"]) - 1) < 0.01, row
        assert 0 < float(row["val_bpb"]) < 9
    assert "blt_space" in (sweep_dir / "results.md").read_text()
    # two budgets: a FLOP axis; a frontier only where fits.md has a power law, else it says why not
    fits = (sweep_dir / "fits.md").read_text()
    has_law = "N*(C) =" in fits
    assert has_law or "a law needs 2" in fits, fits
    expected = ["bpb_vs_flops.png", "isoflop.png"] + (["frontier.png"] if has_law else [])
    assert sorted(p.name for p in (sweep_dir / "plots").glob("*.png")) == sorted(expected)
    for png in expected:
        data = (sweep_dir / "plots" / png).read_bytes()
        assert data[:4] == b"\x89PNG" and len(data) > 10_000

    metrics_sizes = {p: p.stat().st_size for p in sweep_dir.rglob("metrics.jsonl")}
    again = blt("sweep", str(path), "--local", timeout=900, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["trained"] == 0
    assert {p: p.stat().st_size for p in sweep_dir.rglob("metrics.jsonl")} == metrics_sizes

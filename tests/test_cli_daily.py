"""The commands people read every day: `blt status` of any run or sweep, `blt plot`, sweep
pictures that match the data, help text on every option, and a fast `blt --help`."""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import blt
from dist_helpers import TINY, kill, losses, run, start, wait_for

from blt_scale.checkpoint.layout import latest_complete
from blt_scale.cli.app import build_parser
from blt_scale.model.flops import model_flops
from blt_scale.sweep.report import fit_results, fits_markdown, sweep_figures
from blt_scale.train.plot import compare_runs
from blt_scale.train.recipe import saved_recipe

SHORT = [*TINY, "train.steps=4", "checkpoint.every=2", "train.eval_every=4", "train.eval_batches=1"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("status") / "done"
    run(run_dir, SHORT, nproc=1)
    return run_dir


def status(path: Path) -> dict:
    return json.loads(blt("status", str(path), "--json").stdout)


def test_status_of_a_finished_local_run(finished_run):
    s = status(finished_run)
    cfg = saved_recipe(finished_run)
    assert s["state"] == "finished" and s["jobs"] == []
    assert s["config"]["model"] == "blt" and s["config"]["strategy"] == "none"
    assert s["config"]["params"] == model_flops(cfg.model, cfg.data.seq_len, 1.0).total_params
    assert s["world_size"] == 1 and s["step"] == 4 and s["eta_s"] is None
    assert s["last_complete_step"] == 4 and s["checkpoint"] == str(latest_complete(finished_run))
    assert s["last_metrics"]["step"] == 4 and s["last_metrics"]["bpb"] == pytest.approx(
        losses(finished_run)[4] / math.log(2)
    )
    assert s["last_val"]["step"] == 4
    text = blt("status", str(finished_run)).stdout
    assert "state finished" in text and "step 4/4" in text and "last_val step=4" in text


def test_status_of_a_killed_run_says_where_it_stopped(tmp_path):
    run_dir = tmp_path / "killed"
    procs, log = start(run_dir, [*TINY, "train.steps=400", "checkpoint.every=2"], nproc=1)
    try:
        wait_for(lambda: latest_complete(run_dir) is not None and len(losses(run_dir)) >= 3, what="3 steps")
        live = status(run_dir)
        assert live["state"] == "running" and live["trainer"]["pid"] == procs[0].pid
    finally:
        kill(procs)
        log.close()
    s = status(run_dir)
    assert s["state"] == "incomplete" and s["jobs"] == [] and s["trainer"] is None
    assert 3 <= s["step"] < 400 and s["last_metrics"]["step"] == s["step"]
    assert 2 <= s["last_complete_step"] <= s["step"] and s["last_complete_step"] % 2 == 0
    rate = s["last_metrics"]["bytes_per_s"]
    assert s["eta_s"] == pytest.approx((400 - s["step"]) * 8 * 64 / rate)


def test_status_of_a_directory_that_is_no_run_is_one_line(tmp_path):
    r = blt("status", str(tmp_path), check=False)
    assert r.returncode == 2 and "not a run directory" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_status_of_a_sweep_lists_every_run(local_sweep):
    _, sweep_dir, result = local_sweep
    assert result.returncode == 0, result.stderr[-3000:]
    s = status(sweep_dir)
    with open(sweep_dir / "results.csv") as f:
        results = {
            (r["variant"], r["size"], float(r["budget_flops"])): float(r["val_bpb"])
            for r in csv.DictReader(f)
        }
    assert len(s["runs"]) == 12 and s["counts"] == {"done": 12}
    for r in s["runs"]:
        assert r["val_bpb"] == pytest.approx(results[(r["variant"], r["size"], r["budget_flops"])], rel=1e-4)
    text = blt("status", str(sweep_dir)).stdout
    assert "12 done" in text and text.count("| done |") == 12


def test_status_of_a_sweep_before_training_says_planned(tmp_path):
    from sweep_helpers import tiny_sweep

    path = tiny_sweep(tmp_path)
    blt("sweep", str(path), "--dry-run", timeout=600)
    s = status(tmp_path / "sweep")
    assert s["counts"] == {"planned": 12} and all(r["val_bpb"] is None for r in s["runs"])


def test_plot_overlays_runs_on_the_axis_asked_for(finished_run, tmp_path):
    other = tmp_path / "other"
    run(other, [*SHORT, "optim.lr=1e-3"], nproc=1)
    out = tmp_path / "both.png"
    r = blt("plot", str(finished_run), str(other), "--out", str(out))
    assert json.loads(r.stdout)["plot"] == str(out) and out.stat().st_size > 5_000
    ax = compare_runs([finished_run, other], x="bytes").axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["done train", "done val", "other train", "other val"]
    assert ax.get_xlabel() == "training bytes" and ax.get_ylabel() == "bits per byte"
    train = ax.get_lines()[2]
    assert list(train.get_xdata()) == [s * 8 * 64 for s in (1, 2, 3, 4)]  # bytes seen after each step
    assert list(train.get_ydata()) == pytest.approx([v / math.log(2) for v in losses(other).values()])
    assert compare_runs([finished_run], x="step").axes[0].get_xlabel() == "step"
    ax = compare_runs([other], metric="loss").axes[0]
    assert ax.get_ylabel() == "loss"
    assert list(ax.get_lines()[0].get_ydata()) == pytest.approx(list(losses(other).values()))
    r = blt("plot", str(other), "--metric", "reward", "--out", str(tmp_path / "no.png"), check=False)
    assert r.returncode != 0 and "metrics.jsonl has no 'reward'" in r.stderr and "grad_norm" in r.stderr
    assert not (tmp_path / "no.png").exists()
    with pytest.raises(ValueError, match="has no 'split'"):  # a field, but not a figure
        compare_runs([other], metric="split")


def sweep_rows(budgets: list[float], sizes=("s", "m", "l")) -> list[dict]:
    rows = []
    for variant, base in (("blt", 1.5), ("baseline", 1.7)):
        for budget in budgets:
            for k, size in enumerate(sizes):
                params = 1e6 * 2**k
                rows.append(
                    {
                        "variant": variant,
                        "size": size,
                        "budget_flops": budget,
                        "params": params,
                        "bytes": budget / (6 * params),
                        "train_flops": budget * (1 + 0.001 * k),  # FLOP matching is never exact
                        "val_bpb": base + 0.1 * (k - 1) ** 2 - 0.05 * math.log10(budget / 1e13),
                    }
                )
    return rows


def test_one_budget_draws_bars_per_variant_not_a_flop_axis():
    rows = sweep_rows([1e13])
    fits = fit_results(rows)
    figures = sweep_figures(rows, fits)
    assert set(figures) == {"bpb_by_variant.png", "isoflop.png"}  # no FLOP axis, no frontier
    ax = figures["bpb_by_variant.png"].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["baseline", "blt"]
    heights = sorted(round(p.get_height(), 6) for p in ax.patches)
    assert heights == sorted(round(r["val_bpb"], 6) for r in rows)
    md = fits_markdown(fits, rows)
    assert "a law needs 2" in md and "blt: no N*(C)" in md


def test_several_budgets_draw_flops_and_a_frontier_and_say_what_is_missing():
    rows = sweep_rows([1e13, 1e14])
    figures = sweep_figures(rows, fit_results(rows))
    assert set(figures) == {"bpb_vs_flops.png", "isoflop.png", "frontier.png"}
    ax = figures["bpb_vs_flops.png"].axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "training FLOPs"
    two_sizes = sweep_rows([1e13, 1e14], sizes=("s", "m"))
    md = fits_markdown(fit_results(two_sizes), two_sizes)
    assert md.count("finished size(s); an IsoFLOP fit needs 3") == 4


def subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from subcommands(sub, (*path, name))


def test_every_option_has_help_and_shows_its_default():
    seen = 0
    for path, parser in subcommands(build_parser()):
        text = parser.format_help()
        for action in parser._actions:
            if isinstance(
                action, (argparse._HelpAction, argparse._SubParsersAction, argparse._VersionAction)
            ):
                continue
            seen += 1
            name = "/".join(action.option_strings) or action.dest
            assert action.help, f"blt {' '.join(path)} {name}: no help text"
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                assert "default" in action.help or f"(default: {action.default})" in " ".join(text.split()), (
                    f"blt {' '.join(path)} {name}: default {action.default!r} not shown"
                )
    assert seen > 100


def test_version():
    assert blt("--version").stdout.strip() == "blt 0.1.0"


HEAVY = ("torch", "deepspeed", "mne", "streaming", "wandb", "matplotlib", "submitit")


def test_help_of_every_command_imports_no_heavy_package():
    code = (
        "import sys, argparse\n"
        "from blt_scale.cli.app import build_parser\n"
        "def walk(p):\n"
        "    p.format_help()\n"
        "    for a in p._actions:\n"
        "        if isinstance(a, argparse._SubParsersAction):\n"
        "            for s in a.choices.values(): walk(s)\n"
        "walk(build_parser())\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_wait_prints_progress_at_least_every_interval(capsys, tmp_path):
    from blt_scale.launch.wait import wait_jobs

    class Job:  # a job that ends after a fixed time: the loop's contract, not SLURM's
        def __init__(self, seconds):
            self.end, self.state = time.monotonic() + seconds, "RUNNING"

        def done(self):
            return time.monotonic() >= self.end

    wait_jobs([Job(0.35), Job(1.2)], "two jobs", every_s=0.2, poll_s=0.05)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("two jobs: 0 pending, 2 running, 0 done of 2")
    assert lines[-1].startswith("two jobs: 0 pending, 0 running, 2 done of 2")
    assert len(lines) >= 5  # 1.2 s at one line per 0.2 s at least
    with pytest.raises(RuntimeError, match="two jobs: not finished after"):
        wait_jobs([Job(60)], "two jobs", timeout_s=0.1, poll_s=0.05)

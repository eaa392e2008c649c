"""Aggregating a finished sweep: results.csv, results.md, fits and plots in the sweep's run_dir."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

from blt_scale.sweep.fit import IsoFlopFit, PowerLaw, fit_isoflop, fit_power_law
from blt_scale.sweep.plan import PlannedRun
from blt_scale.train.metrics import read_metrics

COLUMNS = [
    "variant",
    "size",
    "params",
    "budget_flops",
    "train_flops",
    "val_bpb",
    "bytes",
    "mean_patch_bytes",
    "steps",
    "inference_flops_per_byte",
    "run_dir",
]


def run_finished(run: PlannedRun) -> bool:
    """A run is finished when its final validation row exists."""
    return any(r.get("split") == "val" and r["step"] == run.steps for r in read_metrics(run.run_dir))


def collect(runs: list[PlannedRun]) -> list[dict]:
    """One row per finished run. Training FLOPs use the patch size the run itself measured."""
    rows = []
    for run in runs:
        metrics = read_metrics(run.run_dir)
        val = [r for r in metrics if r.get("split") == "val" and r["step"] == run.steps]
        train = [r for r in metrics if "split" not in r]
        if not val:
            continue
        # Equal bytes per step: the run's bytes/patch is the harmonic mean of the per-step values.
        measured = (
            len(train) / sum(1 / r["mean_patch_bytes"] for r in train) if train else run.mean_patch_bytes
        )
        rows.append(
            {
                "variant": run.variant,
                "size": run.size,
                "params": run.params,
                "budget_flops": run.budget_flops,
                "train_flops": _flops_at(run, measured),
                "val_bpb": val[-1]["bpb"],
                "bytes": run.steps * run.bytes_per_step,
                "mean_patch_bytes": measured,
                "steps": run.steps,
                "inference_flops_per_byte": run.inference_flops_per_byte,
                "run_dir": run.run_dir,
            }
        )
    return rows


def _flops_at(run: PlannedRun, patch_bytes: float) -> float:
    from blt_scale.model.flops import model_flops
    from blt_scale.train.recipe import load_recipe

    cfg = load_recipe(run.recipe, run.overrides)
    return (
        model_flops(cfg.model, cfg.data.seq_len, patch_bytes).train_per_byte * run.steps * run.bytes_per_step
    )


def write_results(rows: list[dict], out_dir: Path) -> None:
    with (out_dir / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "| variant | size | params | budget | train FLOPs | val bpb | bytes/patch |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["variant"], r["budget_flops"], r["params"])):
        lines.append(
            f"| {r['variant']} | {r['size']} | {r['params']:,} | {r['budget_flops']:.3g} | "
            f"{r['train_flops']:.3g} | {r['val_bpb']:.4f} | {r['mean_patch_bytes']:.2f} |"
        )
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")


def fit_results(rows: list[dict]) -> dict[str, dict]:
    """Per variant: IsoFLOP fits per budget (where >= 3 sizes) and N*(C), D*(C) power laws."""
    fits: dict[str, dict] = {}
    by_variant: dict[str, dict[float, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_variant[r["variant"]][r["budget_flops"]].append(r)
    for variant, budgets in by_variant.items():
        iso = [
            fit_isoflop(
                b,
                [r["params"] for r in rs],
                [r["val_bpb"] for r in rs],
                [r["train_flops"] / r["bytes"] for r in rs],
            )
            for b, rs in sorted(budgets.items())
            if len(rs) >= 3
        ]
        entry: dict = {"isoflop": iso}
        finite = [f for f in iso if math.isfinite(f.optimal_params)]
        if len(finite) >= 2:
            entry["params_law"] = fit_power_law(
                [f.budget for f in finite], [f.optimal_params for f in finite]
            )
            entry["bytes_law"] = fit_power_law([f.budget for f in finite], [f.optimal_bytes for f in finite])
        fits[variant] = entry
    return fits


def fits_markdown(fits: dict[str, dict], rows: list[dict] = ()) -> str:
    """The fits, and for every variant the fits it lacks and why (an IsoFLOP fit needs 3 sizes
    at a budget; the N*(C), D*(C) laws need fits at 2 budgets or more)."""
    lines = ["| variant | budget | N* | D* | bpb at N* |", "|---|---:|---:|---:|---:|"]
    for variant, entry in fits.items():
        for f in entry["isoflop"]:
            lines.append(
                f"| {variant} | {f.budget:.3g} | {f.optimal_params:.4g} | {f.optimal_bytes:.4g} | "
                f"{f.optimal_bpb:.4f} |"
            )
    for variant, entry in fits.items():
        for key, label in (("params_law", "N*(C)"), ("bytes_law", "D*(C)")):
            law: PowerLaw | None = entry.get(key)
            if law:
                lines.append(f"\n{variant}: {label} = {law.coefficient:.4g} * C^{law.exponent:.3f}")
    missing = []
    for (variant, budget), rs in _group(list(rows), "variant", "budget_flops").items():
        if len(rs) < 3:
            missing.append(
                f"- {variant} at {budget:.3g} FLOPs: {len(rs)} finished size(s); an IsoFLOP fit needs 3"
            )
    for variant, entry in fits.items():
        finite = [f for f in entry["isoflop"] if math.isfinite(f.optimal_params)]
        if "params_law" not in entry:
            missing.append(
                f"- {variant}: no N*(C), D*(C) law: {len(finite)} budget(s) with a fitted minimum; "
                "a law needs 2"
            )
    if missing:
        lines += ["", "Not fitted:", *missing]
    return "\n".join(lines) + "\n"


def sweep_figures(rows: list[dict], fits: dict[str, dict]) -> dict[str, object]:
    """The pictures the data supports, by file name. With one budget there is no FLOP axis to
    draw (runs differ by FLOP-matching noise only): bpb per run as bars grouped by variant. The
    frontier needs a power law, so at least two budgets with an IsoFLOP fit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figures = {}
    budgets = sorted({r["budget_flops"] for r in rows})
    if len(budgets) > 1:
        fig, ax = plt.subplots(figsize=(7, 5))
        for (variant, size), rs in _group(rows, "variant", "size").items():
            rs = sorted(rs, key=lambda r: r["train_flops"])
            ax.plot(
                [r["train_flops"] for r in rs], [r["val_bpb"] for r in rs], "o-", label=f"{variant} {size}"
            )
        ax.set(
            xscale="log",
            xlabel="training FLOPs",
            ylabel="validation bits per byte",
            title="bpb vs FLOPs per model size",
        )
        ax.legend(fontsize=7)
        figures["bpb_vs_flops.png"] = fig
    else:
        fig, ax = plt.subplots(figsize=(7, 5))
        variants = sorted({r["variant"] for r in rows})
        sizes = sorted(
            {r["size"] for r in rows}, key=lambda sz: min(r["params"] for r in rows if r["size"] == sz)
        )
        width = 0.8 / max(len(sizes), 1)
        for k, size in enumerate(sizes):
            bpb = {r["variant"]: r["val_bpb"] for r in rows if r["size"] == size}
            xs = [v + k * width for v, name in enumerate(variants) if name in bpb]
            ax.bar(xs, [bpb[name] for name in variants if name in bpb], width, label=f"size {size}")
        ax.set_xticks([v + width * (len(sizes) - 1) / 2 for v in range(len(variants))], variants)
        ax.set(
            xlabel="variant",
            ylabel="validation bits per byte",
            title=f"bpb per run at {budgets[0]:.3g} training FLOPs" if budgets else "bpb per run",
        )
        ax.legend(fontsize=7)
        figures["bpb_by_variant.png"] = fig

    fig, ax = plt.subplots(figsize=(7, 5))
    for (variant, budget), rs in _group(rows, "variant", "budget_flops").items():
        rs = sorted(rs, key=lambda r: r["params"])
        line = ax.plot(
            [r["params"] for r in rs], [r["val_bpb"] for r in rs], "o", label=f"{variant} C={budget:.2g}"
        )[0]
        fit: IsoFlopFit | None = next(
            (f for f in fits.get(variant, {}).get("isoflop", []) if f.budget == budget), None
        )
        if fit is not None:
            x = np.linspace(math.log(rs[0]["params"]), math.log(rs[-1]["params"]), 50)
            ax.plot(np.exp(x), np.polyval(fit.coeffs, x), "-", color=line.get_color())
            if math.isfinite(fit.optimal_params):
                ax.plot([fit.optimal_params], [fit.optimal_bpb], "*", ms=12, color=line.get_color())
    ax.set(
        xscale="log",
        xlabel="parameters (without hash tables)",
        ylabel="validation bits per byte",
        title="IsoFLOP curves",
    )
    ax.legend(fontsize=7)
    figures["isoflop.png"] = fig

    laws = {v: e for v, e in fits.items() if e.get("params_law")}
    if laws:
        fig, ax = plt.subplots(figsize=(7, 5))
        for variant, entry in laws.items():
            finite = [f for f in entry["isoflop"] if math.isfinite(f.optimal_params)]
            line = ax.plot(
                [f.budget for f in finite], [f.optimal_params for f in finite], "o", label=variant
            )[0]
            law: PowerLaw = entry["params_law"]
            c = np.geomspace(finite[0].budget, finite[-1].budget, 20)
            ax.plot(c, law(c), "-", color=line.get_color(), label=f"{variant}: N* ~ C^{law.exponent:.2f}")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="training FLOPs",
            ylabel="compute-optimal parameters",
            title="compute-optimal frontier",
        )
        ax.legend(fontsize=7)
        figures["frontier.png"] = fig
    return figures


def plot_results(rows: list[dict], fits: dict[str, dict], out_dir: Path) -> list[Path]:
    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for stale in plots.glob("*.png"):  # a picture the data no longer supports must not linger
        if stale.name in ("bpb_vs_flops.png", "bpb_by_variant.png", "isoflop.png", "frontier.png"):
            stale.unlink()
    return [_save(fig, plots / name) for name, fig in sweep_figures(rows, fits).items()]


def _group(rows: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in keys)].append(r)
    return dict(sorted(groups.items(), key=lambda kv: str(kv[0])))


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path

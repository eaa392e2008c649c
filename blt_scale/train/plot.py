"""Loss curves of a run directory as PNG files in RUN_DIR/plots/ (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path

from blt_scale.files import read_jsonl


def plot_losses(run_dir: str | Path, marks: dict[str, int] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(Path(run_dir) / "metrics.jsonl")
    train = [r for r in rows if "split" not in r]
    val = [r for r in rows if r.get("split") == "val"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in train], [r["bpb"] for r in train], label="train bpb", lw=1)
    if val:
        ax.plot([r["step"] for r in val], [r["bpb"] for r in val], "o-", label="validation bpb")
    for label, step in (marks or {}).items():
        ax.axvline(step, color="grey", ls="--", lw=1)
        ax.text(step, ax.get_ylim()[1], f" {label}", va="top", fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel("bits per byte")
    ax.set_title(Path(run_dir).name)
    ax.legend()
    out = Path(run_dir) / "plots" / "loss.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def compare_runs(run_dirs: list[str | Path], x: str = "step", metric: str = "bpb"):
    """One figure of several runs: a metric of metrics.jsonl (bpb, or e.g. loss, discrepancy,
    reward), training rows thin and validation rows as dots, in one color per run, against `x`
    (step, or bytes seen). Returns the matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if x not in ("step", "bytes"):
        raise ValueError(f"x must be step or bytes, got {x!r}")
    fig, ax = plt.subplots(figsize=(8, 5))
    for run_dir in run_dirs:
        rows = read_jsonl(Path(run_dir) / "metrics.jsonl")
        if not rows:
            raise FileNotFoundError(f"{run_dir}: no metrics.jsonl rows to plot")
        if not any(isinstance(r.get(metric), (int, float)) for r in rows):
            known = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float))})
            raise ValueError(f"{run_dir}/metrics.jsonl has no {metric!r}; its figures: {', '.join(known)}")
        train = [r for r in rows if "split" not in r and isinstance(r.get(metric), (int, float))]
        # bytes seen at a validation step: those of the training row of the same step
        seen = {r["step"]: r.get("bytes_consumed", 0) for r in rows if "split" not in r}

        def pos(r: dict, seen: dict = seen) -> float:
            return r["step"] if x == "step" else seen.get(r["step"], 0)

        name = Path(run_dir).name
        line = ax.plot([pos(r) for r in train], [r[metric] for r in train], lw=1, label=f"{name} train")[0]
        val = [r for r in rows if r.get("split") == "val" and isinstance(r.get(metric), (int, float))]
        if val:
            ax.plot(
                [pos(r) for r in val],
                [r[metric] for r in val],
                "o--",
                color=line.get_color(),
                label=f"{name} val",
            )
    ax.set_xlabel("step" if x == "step" else "training bytes")
    ax.set_ylabel("bits per byte" if metric == "bpb" else metric)
    ax.set_title(f"{len(run_dirs)} run(s)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save_figure(fig, out: str | Path) -> Path:
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out

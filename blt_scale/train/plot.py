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

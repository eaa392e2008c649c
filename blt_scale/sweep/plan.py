"""Planning a FLOP-matched sweep: for every (variant, size, budget), the steps whose training FLOPs
equal the budget, by the one FLOP function and the mean bytes per patch *measured on the data*
with that variant's patcher.

Two modes:
- `isoflop`: each variant is scaled over a grid of sizes (width and latent-depth multipliers of
  its base recipe) and trained to each budget: IsoFLOP curves and compute-optimal frontiers.
- `fixed_inference`: each variant keeps its recipe's size; their inference FLOPs per byte must
  agree within `inference_tolerance` (larger BLT with larger patches vs a smaller baseline), and
  all are trained to the same budgets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from blt_scale.config import Config, ConfigError
from blt_scale.launch.config import LaunchConfig
from blt_scale.model.blt import BLTConfig
from blt_scale.model.build import KINDS
from blt_scale.model.byte_lm import ByteLMConfig
from blt_scale.model.flops import model_flops
from blt_scale.train.recipe import RunConfig, load_recipe


class VariantConfig(Config):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    recipe: str = Field(
        description="base recipe: a path (relative to the sweep file) or a name under recipes/"
    )
    overrides: list[str] = []
    patch_bytes: float | None = Field(
        default=None,
        gt=0,
        description="entropy patchers: calibrate the threshold to this mean patch size on the "
        "variant's first data source before planning (`blt calibrate`)",
    )


class SizeConfig(Config):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    width: float = Field(default=1.0, gt=0, description="multiplies the dim of every transformer")
    depth: float = Field(
        default=1.0,
        gt=0,
        description="multiplies the layers of the latent (BLT) or only (byte LM) transformer",
    )


class SweepConfig(Config):
    run_dir: str
    mode: Literal["isoflop", "fixed_inference"] = "isoflop"
    variants: list[VariantConfig] = Field(min_length=1)
    budgets: list[float] = Field(min_length=1, description="training FLOPs per run")
    sizes: list[SizeConfig] = [SizeConfig(name="base")]
    patch_sample_batches: int = Field(
        default=8, gt=0, description="steps of data for the first patch-size estimate"
    )
    budget_tolerance: float = Field(
        default=0.01, gt=0, description="max relative gap of planned FLOPs to budget"
    )
    inference_tolerance: float = Field(
        default=0.05, gt=0, description="fixed_inference: max relative FLOPs/byte gap"
    )
    max_parallel: int = Field(default=4, gt=0, description="SLURM array: runs at once")
    launch: LaunchConfig = Field(default_factory=LaunchConfig, description="SLURM placement of each run")
    wait_timeout_s: float = Field(default=7 * 24 * 3600, gt=0, description="--wait: give up after this long")
    overrides: list[str] = Field(default=[], description="applied to every run, e.g. train.log_every=50")

    @model_validator(mode="after")
    def _fixed_inference_has_one_size(self) -> SweepConfig:
        if self.mode == "fixed_inference" and len(self.sizes) != 1:
            raise ValueError("mode fixed_inference trains each variant at its recipe's size: give no `sizes`")
        return self


@dataclass
class PlannedRun:
    variant: str
    size: str
    budget_flops: float
    recipe: str
    overrides: list[str]
    run_dir: str
    steps: int
    params: int
    mean_patch_bytes: float
    train_flops_per_byte: float
    inference_flops_per_byte: float
    bytes_per_step: int
    extra: dict = field(default_factory=dict)
    target_patch_bytes: float | None = None  # the variant's calibration target, when it has one

    @property
    def train_flops(self) -> float:
        return self.steps * self.bytes_per_step * self.train_flops_per_byte

    @property
    def name(self) -> str:
        return f"{self.variant}-{self.size}-{self.budget_flops:.3g}"


def _round_dim(dim: float, heads: int) -> int:
    step = 2 * heads  # divisible by heads with an even head dimension (RoPE rotates pairs)
    return max(step, step * round(dim / step))


def size_overrides(cfg: RunConfig, size: SizeConfig) -> list[str]:
    """Dotted overrides that scale a base recipe's model by a size's width and depth."""
    m = cfg.model
    if isinstance(
        m, BLTConfig
    ):  # the BLT family, brain-aware BLT included: scale the latent and local widths
        local = _round_dim(m.encoder.dim * size.width, m.encoder.heads)
        return [
            f"model.encoder.dim={local}",
            f"model.decoder.dim={local}",
            f"model.global.dim={_round_dim(m.global_.dim * size.width, m.global_.heads)}",
            f"model.global.layers={max(1, round(m.global_.layers * size.depth))}",
        ]
    if not isinstance(m, ByteLMConfig):
        raise ConfigError(f"model.kind={m.kind}: sweep sizes scale BLT-family and byte_lm models only")
    return [
        f"model.dim={_round_dim(m.dim * size.width, m.heads)}",
        f"model.layers={max(1, round(m.layers * size.depth))}",
    ]


class PatchCounter:
    """Patches per training step of a recipe's data stream, measured on the stream itself.

    The loader is deterministic, so the first n steps of a run see exactly the rows measured
    here; counts are extended lazily and shared by every size and budget of a variant.
    """

    def __init__(self, cfg: RunConfig):
        from blt_scale.data.loader import build_loader

        self.patched = KINDS[cfg.model.kind].patched
        self.bytes_per_step = cfg.train.global_batch * cfg.data.seq_len
        self.batches = iter(
            build_loader(cfg.data, cfg.patcher, cfg.train.global_batch, "train", seed=cfg.train.seed)
        )
        self.patches: list[int] = []

    def mean_patch_bytes(self, steps: int) -> float:
        if not self.patched:
            return 1.0
        while len(self.patches) < steps:
            self.patches.append(int((next(self.batches)["patch_lengths"] > 0).sum()))
        return steps * self.bytes_per_step / sum(self.patches[:steps])


def steps_for_budget(
    cfg: RunConfig, budget: float, counter: PatchCounter, sample_steps: int
) -> tuple[int, float]:
    """Steps whose training FLOPs, at the patch size of exactly those steps, equal the budget."""
    bytes_per_step = cfg.train.global_batch * cfg.data.seq_len
    patch_bytes = counter.mean_patch_bytes(sample_steps)
    steps = 0
    for _ in range(8):  # steps -> patch size of those steps -> steps; settles in a few rounds
        per_step = model_flops(cfg.model, cfg.data.seq_len, patch_bytes).train_per_byte * bytes_per_step
        new_steps = max(1, round(budget / per_step))
        if new_steps == steps:
            break
        steps, patch_bytes = new_steps, counter.mean_patch_bytes(new_steps)
    return steps, patch_bytes


def calibrated(cfg: RunConfig, variant: VariantConfig) -> str:
    """The override that sets the variant's entropy threshold for its patch_bytes target."""
    from blt_scale.data.calibrate import calibrate

    if not getattr(cfg.data, "sources", None):
        raise ValueError(
            f"variant {variant.name}: patch_bytes needs data.sources with entropies to calibrate on"
        )
    row = calibrate(cfg.data.sources[0].uri, cfg.patcher, variant.patch_bytes, cache_dir=cfg.data.cache_dir)
    return f"{row['field']}={row['threshold']!r}"


def _recipe_path(sweep_file: Path, recipe: str) -> str:
    candidate = (sweep_file.parent / recipe).resolve()
    return str(candidate) if candidate.exists() else recipe


def plan_sweep(sweep: SweepConfig, sweep_file: Path) -> list[PlannedRun]:
    runs = []
    for variant in sweep.variants:
        recipe = _recipe_path(sweep_file, variant.recipe)
        base = load_recipe(recipe, variant.overrides + sweep.overrides)
        if variant.patch_bytes is not None:
            variant = variant.model_copy(
                update={"overrides": variant.overrides + [calibrated(base, variant)]}
            )
            base = load_recipe(recipe, variant.overrides + sweep.overrides)
        counter = PatchCounter(base)
        for size in sweep.sizes:
            overrides = variant.overrides + sweep.overrides + size_overrides(base, size)
            cfg = load_recipe(recipe, overrides)
            bytes_per_step = cfg.train.global_batch * cfg.data.seq_len
            for budget in sweep.budgets:
                steps, patch_bytes = steps_for_budget(cfg, budget, counter, sweep.patch_sample_batches)
                report = model_flops(cfg.model, cfg.data.seq_len, patch_bytes)
                params = report.total_params - report.params.get("hash_embeddings", 0)
                run = PlannedRun(
                    variant.name,
                    size.name,
                    budget,
                    recipe,
                    [],
                    "",
                    steps,
                    params,
                    patch_bytes,
                    report.train_per_byte,
                    report.forward_per_byte,
                    bytes_per_step,
                    target_patch_bytes=variant.patch_bytes,
                )
                run.run_dir = str(Path(sweep.run_dir) / "runs" / run.name)
                warmup = min(cfg.optim.warmup_steps, max(1, steps // 10))
                # Every step is logged: the run's FLOPs are then computed from its own patch counts.
                run.overrides = overrides + [
                    f"run_dir={run.run_dir}",
                    f"train.steps={steps}",
                    f"optim.warmup_steps={warmup}",
                    f"train.eval_every={steps}",
                    "train.log_every=1",
                ]
                gap = abs(run.train_flops / budget - 1)
                if gap > sweep.budget_tolerance:
                    raise ValueError(
                        f"run {run.name}: {steps} steps give {run.train_flops:.3g} FLOPs, {gap:.1%} off the "
                        f"budget (tolerance {sweep.budget_tolerance:.0%}); lower train.global_batch or raise "
                        "the budget"
                    )
                runs.append(run)
    if sweep.mode == "fixed_inference":
        _check_inference_matched(runs, sweep.inference_tolerance)
    return runs


def _check_inference_matched(runs: list[PlannedRun], tolerance: float) -> None:
    per_byte = {r.variant: r.inference_flops_per_byte for r in runs}
    low, high = min(per_byte.values()), max(per_byte.values())
    if high / low - 1 > tolerance:
        listing = ", ".join(f"{v}: {f:.4g}" for v, f in per_byte.items())
        raise ValueError(
            f"fixed_inference sweep: inference FLOPs/byte differ by {high / low - 1:.1%} "
            f"(> {tolerance:.0%}): {listing}"
        )


def plan_table(runs: list[PlannedRun]) -> str:
    """The planned grid as a Markdown table."""
    lines = [
        "| run | params | bytes/patch (target) | steps | train FLOPs | budget | gap | inference FLOPs/byte |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        target = f" ({r.target_patch_bytes:.2f})" if r.target_patch_bytes is not None else ""
        lines.append(
            f"| {r.name} | {r.params:,} | {r.mean_patch_bytes:.2f}{target} | {r.steps} | {r.train_flops:.3g} "
            f"| {r.budget_flops:.3g} | {r.train_flops / r.budget_flops - 1:+.2%} | "
            f"{r.inference_flops_per_byte:.3g} |"
        )
    return "\n".join(lines)

"""Every recipe resolves, builds on the meta device, and matches the FLOP module's parameter count."""

import pytest
import torch

from blt_scale.model.build import build_model
from blt_scale.model.flops import model_flops
from blt_scale.train.recipe import RECIPES, load_recipe

# sweeps/ holds sweep recipes and brain/ the `blt prep brain` presets: not training recipes.
ALL = sorted(
    p.relative_to(RECIPES).as_posix()
    for p in RECIPES.rglob("*.yaml")
    if not {"sweeps", "brain"} & set(p.parts)
)


def meta_model(cfg):
    with torch.device("meta"):
        return build_model(cfg.model)


@pytest.mark.parametrize("name", ALL)
def test_recipe_builds_and_counts_its_parameters(name):
    cfg = load_recipe(RECIPES / name)
    model = meta_model(cfg)
    params = sum(p.numel() for p in model.parameters())
    assert params == model_flops(cfg.model, cfg.data.seq_len, 4.0).total_params
    assert params > 0


def test_blt_1b_latent_transformer_has_the_papers_size():
    model = meta_model(load_recipe("blt_1b"))
    latent = sum(p.numel() for p in model.latent.parameters())
    d, ffn, layers = 2048, 5504, 25  # SwiGLU hidden: 8/3 * 2048 rounded up to a multiple of 64
    assert latent == layers * (4 * d * d + 3 * d * ffn + 2 * d)
    assert 1.2e9 < latent < 1.3e9
    hash_tables = sum(p.numel() for p in model.ngram.parameters())
    assert hash_tables == 6 * 500_000 * 1024  # ~3B lookup parameters, as in the paper


def test_byte_baselines_match_their_blt_forward_flops_per_byte():
    for blt, baseline in [("blt_1b", "byte_baseline_1b"), ("blt_400m", "byte_baseline_400m")]:
        a, b = load_recipe(blt), load_recipe(baseline)
        fa = model_flops(a.model, a.data.seq_len, 4.5).forward_per_byte
        fb = model_flops(b.model, b.data.seq_len).forward_per_byte
        assert abs(fa / fb - 1) < 0.05, (blt, fa, fb)


SWEEPS = sorted((RECIPES / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_recipe_variants_and_sizes_resolve(path):
    from blt_scale import config
    from blt_scale.sweep.plan import SweepConfig, _recipe_path, size_overrides

    sweep = config.load(SweepConfig, path)
    for variant in sweep.variants:
        recipe = _recipe_path(path, variant.recipe)
        base = load_recipe(recipe, variant.overrides + sweep.overrides)
        for size in sweep.sizes:
            cfg = load_recipe(recipe, variant.overrides + sweep.overrides + size_overrides(base, size))
            assert sum(p.numel() for p in meta_model(cfg).parameters()) > 0


def test_fixed_inference_sweep_is_matched_at_its_target_patch_sizes():
    from blt_scale import config
    from blt_scale.sweep.plan import SweepConfig, _recipe_path

    path = RECIPES / "sweeps" / "paper_fixed_inference.yaml"
    sweep = config.load(SweepConfig, path)
    targets = {"byte_baseline": 1.0, "blt_ps4.5": 4.5, "blt_ps6": 6.0, "blt_ps8": 8.0}
    per_byte = {}
    for v in sweep.variants:
        cfg = load_recipe(_recipe_path(path, v.recipe), v.overrides + sweep.overrides)
        per_byte[v.name] = model_flops(cfg.model, cfg.data.seq_len, targets[v.name]).forward_per_byte
    assert max(per_byte.values()) / min(per_byte.values()) - 1 < sweep.inference_tolerance, per_byte

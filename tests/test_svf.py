"""SVF (Transformer², arXiv:2501.06252): W' = U diag(σ ⊙ z) Vᵀ on frozen U, σ, V; only z trains;
z = 1 is the base model; experts round-trip; two-pass dispatch picks as measured independently."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from blt_scale.checkpoint.expert import ExpertInfo, load_expert, save_expert
from blt_scale.config import ConfigError
from blt_scale.model.build import build_model
from blt_scale.model.byte_lm import ByteLMConfig
from blt_scale.model.patcher import PatcherConfig, patch_lengths
from blt_scale.model.svf import (
    DEFAULT_TARGETS,
    SVFConfig,
    SVFLinear,
    SVFModel,
    apply_svf,
    get_z,
    mix_z,
    set_z,
    svf_layers,
)
from blt_scale.train.recipe import load_recipe

SMALL_BLT = [
    "model.encoder.dim=32",
    "model.encoder.heads=2",
    "model.global.dim=64",
    "model.global.heads=2",
    "model.decoder.dim=32",
    "model.decoder.heads=2",
    "model.decoder.layers=1",
    "model.ngram.buckets=256",
]


def small_models():
    torch.manual_seed(0)
    blt_cfg = load_recipe("cpu_tiny", SMALL_BLT)
    lm_cfg = ByteLMConfig(dim=48, layers=2, heads=4)
    return [
        (build_model(blt_cfg.model).eval(), blt_cfg.patcher),
        (build_model(lm_cfg).eval(), PatcherConfig()),
    ]


def logits(model, ids, patcher):
    return model(ids, patch_lengths(ids, patcher))


@pytest.mark.parametrize("which", [0, 1], ids=["blt", "byte_lm"])
def test_z_one_reproduces_the_base_logits(which):
    model, patcher = small_models()[which]
    ids = torch.randint(3, 259, (2, 96), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = logits(model, ids, patcher)
        names = apply_svf(model, DEFAULT_TARGETS)
        after = logits(model, ids, patcher)
    assert len(names) > 4 and all(isinstance(model.get_submodule(n), SVFLinear) for n in names)
    assert (after - before).abs().max() <= 1e-6
    # A z away from 1 changes them: the check above can fail.
    with torch.no_grad():
        for name in names:
            model.get_submodule(name).z.mul_(0.5)
        assert (logits(model, ids, patcher) - before).abs().max() > 1e-4


def test_svf_layer_is_u_diag_sigma_z_v_by_a_rank_one_sum():
    torch.manual_seed(0)
    base = nn.Linear(24, 16, bias=True)
    layer = SVFLinear(base)
    layer.decompose()
    with torch.no_grad():
        layer.z.copy_(torch.rand(16) * 2)
    u, s, vh = torch.linalg.svd(base.weight.detach().double(), full_matrices=False)
    # Independent: W' = Σ_i σ_i z_i u_i v_iᵀ, one rank-one term at a time.
    expected = torch.zeros(16, 24, dtype=torch.float64)
    for i in range(16):
        expected += s[i] * float(layer.z[i].detach()) * torch.outer(u[:, i], vh[i])
    x = torch.randn(5, 24)
    out = layer(x)
    ref = x.double() @ expected.T + base.bias.double()
    assert (out.double() - ref).abs().max() < 1e-5
    assert layer.z.numel() == min(16, 24)
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["z"]


def test_no_grad_forward_follows_z_rewritten_in_place_without_a_version_bump():
    """FSDP gathers z into the same storage every step without bumping its version; the no-grad
    forward (generation, REINFORCE sampling, evaluation) caches W' and must still see the new z."""
    torch.manual_seed(0)
    layer = SVFLinear(nn.Linear(24, 16))
    layer.decompose()
    x = torch.randn(5, 24)
    with torch.no_grad():
        before = layer(x)
        version = layer.z._version
        layer.z.data.mul_(1.5)  # .data: the same storage, z's version untouched
        assert layer.z._version == version
        after = layer(x)
    assert not torch.allclose(after, before)
    assert torch.allclose(after, layer(x))  # = the grad-mode forward, which never caches


def test_only_z_trains_and_count_matches_an_independent_count(tmp_path):
    from blt_scale.train.loop import Trainer

    cfg = load_recipe(
        "svf_expert_tiny",
        [
            f"run_dir={tmp_path}/run",
            "train.steps=3",
            "train.global_batch=2",
            "train.eval_every=null",
            "train.peak_flops=1e11",
            "data.seq_len=64",
            "data.corpus_bytes=200000",
            "checkpoint.every=null",
            "optim.lr=0.05",
            "optim.warmup_steps=0",
        ],
    )
    trainer = Trainer(cfg)
    model = trainer.model
    pattern = re.compile(cfg.model.targets)
    base = build_model(cfg.model.base)
    expected = sum(
        min(m.in_features, m.out_features)
        for name, m in base.named_modules()
        if isinstance(m, nn.Linear) and pattern.fullmatch(name)
    )
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert sum(p.numel() for _, p in trainable) == expected > 0
    assert all(n.endswith(".z") for n, _ in trainable)
    frozen = {n: t.clone() for n, t in model.state_dict().items() if not n.endswith(".z")}
    z0 = get_z(model.base)
    trainer.fit()
    after = model.state_dict()
    assert all(torch.equal(after[n], t) for n, t in frozen.items())
    assert any(not torch.equal(z0[k], v) for k, v in get_z(model.base).items())


def test_expert_round_trips_and_bad_files_name_themselves(tmp_path):
    torch.manual_seed(0)
    z = {"layers.0.attn.wq": torch.rand(8), "layers.0.ffn.w2": torch.rand(4)}
    info = ExpertInfo(
        name="a", base="/x", targets=DEFAULT_TARGETS, sizes={k: v.numel() for k, v in z.items()}
    )
    save_expert(tmp_path / "e", z, info, ["one", "two"])
    z2, info2, examples = load_expert(tmp_path / "e")
    assert set(z2) == set(z) and all(torch.equal(z[k], z2[k]) for k in z)
    assert info2 == info and examples == ["one", "two"]
    (tmp_path / "e" / "expert.safetensors").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="expert.safetensors"):
        load_expert(tmp_path / "e")
    with pytest.raises(FileNotFoundError, match="missing expert.safetensors"):
        load_expert(tmp_path)


def test_set_and_mix_z_apply_the_vectors():
    model = build_model(ByteLMConfig(dim=32, layers=1, heads=2))
    apply_svf(model, r"layers\.0\.attn\.w[qk]")
    layers = svf_layers(model)
    assert len(layers) == 2
    a = {k: torch.full_like(v.z, 2.0) for k, v in layers.items()}
    b = {k: torch.full_like(v.z, 4.0) for k, v in layers.items()}
    mixed = mix_z([a, b], [0.25, 0.5])
    assert all(torch.allclose(v, torch.full_like(v, 2.5)) for v in mixed.values())
    set_z(model, mixed)
    assert all(float(v.min()) == 2.5 for v in get_z(model).values())
    set_z(model, None)
    assert all(float(v.min()) == 1.0 for v in get_z(model).values())
    with pytest.raises(ValueError, match="do not fit"):
        set_z(model, {"nope": torch.ones(3)})
    with pytest.raises(ValueError, match="match no nn.Linear"):
        apply_svf(build_model(ByteLMConfig(dim=32, layers=1, heads=2)), "nothing")


def test_svf_model_config_rejects_a_non_text_base():
    with pytest.raises(ValueError, match="text model"):
        SVFConfig(base={"kind": "svf", "base": {"kind": "byte_lm", "dim": 8, "layers": 1, "heads": 1}})
    assert isinstance(SVFModel(SVFConfig(base=ByteLMConfig(dim=16, layers=1, heads=2))), nn.Module)

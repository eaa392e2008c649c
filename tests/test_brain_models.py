"""Brain models on tensors shaped like the brain loader's batches: shapes, causality, gate-0
fusion, residual VQ against brute force, LoRA, channel masks, init_from/freeze, distillation."""

import numpy as np
import pytest
import torch

from blt_scale.model.blt import BLT
from blt_scale.model.brain_blt import BrainBLT, BrainBLTConfig
from blt_scale.model.brain_common import kl_sum
from blt_scale.model.brain_encoder import BrainEncoder, BrainEncoderConfig
from blt_scale.model.flops import model_flops
from blt_scale.model.lora import LoRAConfig, LoRALinear, apply_lora, freeze
from blt_scale.model.meg_to_text import MegToText, MegToTextConfig
from blt_scale.model.patcher import PatcherConfig, patch_lengths
from blt_scale.model.rvq import ResidualVQ, RVQConfig
from blt_scale.model.vocab import OFFSET, VOCAB_SIZE
from blt_scale.train.objectives import loss_fn

C, T, L = 10, 64, 16
BRAIN = {
    "dim": 32,
    "layers": 1,
    "heads": 2,
    "channels": C,
    "samples": T,
    "subjects": 3,
    "spatial_channels": 8,
    "stride": 8,
}
BLT_PARTS = {
    "encoder": {"dim": 32, "layers": 1, "heads": 2, "window": 8},
    "global": {"dim": 48, "layers": 2, "heads": 2},
    "decoder": {"dim": 32, "layers": 1, "heads": 2, "window": 8},
    "ngram": {"sizes": [3, 4], "buckets": 97},
}


def brain_blt(**kw) -> BrainBLT:
    torch.manual_seed(0)
    return BrainBLT(
        BrainBLTConfig.model_validate(
            {**BLT_PARTS, "brain": BRAIN, "fusion": {"layers": [0, 1], "heads": 2}, **kw}
        )
    )


def meg(**kw) -> MegToText:
    torch.manual_seed(0)
    return MegToText(
        MegToTextConfig.model_validate(
            {
                "brain": BRAIN,
                "decoder": {"dim": 32, "layers": 2, "heads": 2},
                "rvq": {"dim": 16, "codebook_size": 32, "quantizers": 3},
                **kw,
            }
        )
    )


def batch(B=3, seed=0, real=(10, 7, 4)) -> dict:
    """A batch as the brain loader collates it: the last rows have padded channels (zeros)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(C)[None] < torch.tensor(real[:B])[:, None]
    out = {
        "signal": torch.randn(B, C, T, generator=g) * mask[..., None],
        "channel_mask": mask,
        "ch_pos": (torch.rand(B, C, 3, generator=g) - 0.5) * 0.2 * mask[..., None],
        "subject": torch.arange(B) % 3,
        "tokens": torch.randint(OFFSET, OFFSET + 256, (B, L + 1), generator=g),
    }
    out["patch_lengths"] = patch_lengths(out["tokens"][:, :-1], PatcherConfig(mode="static", static_size=3))
    return out


def brain_args(b):
    return b["signal"], b["channel_mask"], b["ch_pos"], b["subject"]


def test_shapes_and_parameter_count():
    b = batch()
    enc = BrainEncoder(BrainEncoderConfig.model_validate(BRAIN))
    assert enc(*brain_args(b)).shape == (3, T // 8, 32)
    for model in (brain_blt(), meg()):
        out = model(b["tokens"][:, :-1], b["patch_lengths"], *brain_args(b))
        logits = out if isinstance(out, torch.Tensor) else out["logits"]
        assert logits.shape == (3, L, VOCAB_SIZE)
        assert sum(p.numel() for p in model.parameters()) == model_flops(model.cfg, L, 3.0).total_params
    for phase in ("mae", "rvq"):
        total, count, _ = loss_fn(meg(phase=phase).cfg)(meg(phase=phase), b)
        assert total.dim() == 0 and int(count) > 0 and torch.isfinite(total)


def test_eeg_and_meg_montages():
    mne = pytest.importorskip("mne")
    eeg = mne.channels.make_standard_montage("colin27_1020").get_positions()["ch_pos"]
    pos = torch.tensor(
        np.array([eeg[n] for n in ["Fp1", "Fp2", "F3", "F4", "C3", "C4", "P3", "P4", "O1", "O2"]]),
        dtype=torch.float32,
    )
    enc = BrainEncoder(BrainEncoderConfig.model_validate(BRAIN)).eval()
    b = batch(B=1, real=(10,))
    out_eeg = enc(b["signal"], b["channel_mask"], pos[None], b["subject"])
    meg_pos = torch.nn.functional.normalize(torch.randn(1, C, 3), dim=-1) * 0.12  # a helmet of radius 12 cm
    out_meg = enc(b["signal"], b["channel_mask"], meg_pos, b["subject"])
    assert (
        torch.isfinite(out_eeg).all()
        and torch.isfinite(out_meg).all()
        and not torch.allclose(out_eeg, out_meg)
    )


def test_padded_channels_do_not_change_the_encoder_output():
    enc = BrainEncoder(BrainEncoderConfig.model_validate(BRAIN)).eval()
    b = batch()
    other = {k: v.clone() for k, v in b.items()}
    pad = ~b["channel_mask"]
    other["signal"][pad] = float("nan")  # garbage where padded: values and positions
    other["ch_pos"][pad] = torch.randn(int(pad.sum()), 3)
    with torch.no_grad():
        assert torch.equal(enc(*brain_args(b)), enc(*brain_args(other)))
    with pytest.raises(ValueError, match="model.brain.channels"):
        enc(b["signal"][:, :5], b["channel_mask"][:, :5], b["ch_pos"][:, :5], b["subject"])


def test_gate_zero_fusion_leaves_blt_logits_unchanged():
    model = brain_blt().eval()
    text = BLT(model.cfg).eval()
    text.load_state_dict({k: v for k, v in model.state_dict().items() if k in text.state_dict()})
    b = batch()
    ids = b["tokens"][:, :-1]
    with torch.no_grad():
        assert torch.equal(model(ids, b["patch_lengths"], *brain_args(b)), text(ids, b["patch_lengths"]))
        for f in model.fusion:
            f.gate.fill_(0.5)
        assert not torch.allclose(
            model(ids, b["patch_lengths"], *brain_args(b)), text(ids, b["patch_lengths"])
        )


def test_byte_decoder_is_causal():
    model = meg().eval()
    b = batch()
    ids = b["tokens"][:, :-1]
    with torch.no_grad():
        base = model(ids, b["patch_lengths"], *brain_args(b))["logits"]
        for t in (0, 5, 14):
            changed = ids.clone()
            changed[:, t + 1 :] = OFFSET + 7
            other = model(changed, b["patch_lengths"], *brain_args(b))["logits"]
            assert torch.equal(base[:, : t + 1], other[:, : t + 1])
            assert not torch.allclose(base[:, t + 1 :], other[:, t + 1 :])


def test_rvq_matches_brute_force_and_passes_gradients_straight_through():
    torch.manual_seed(0)
    rvq = ResidualVQ(RVQConfig(quantizers=3, codebook_size=16, dim=8, commitment=0.25)).eval()
    z = torch.randn(2, 5, 8, requires_grad=True)
    q, codes, commitment = rvq(z)
    residual, expected = z.detach().reshape(-1, 8), torch.zeros(10, 8)
    for i in range(3):
        nearest = torch.cdist(residual, rvq.codebooks[i]).argmin(dim=1)
        assert torch.equal(codes.reshape(-1, 3)[:, i], nearest)
        expected += rvq.codebooks[i][nearest]
        residual = residual - rvq.codebooks[i][nearest]
    assert torch.allclose(q.reshape(-1, 8), expected, atol=1e-6)
    assert torch.allclose(rvq.decode(codes).reshape(-1, 8), expected, atol=1e-6)
    assert torch.allclose(commitment, 0.25 * (z.detach().reshape(-1, 8) - expected).pow(2).sum(), rtol=1e-5)
    (q * torch.arange(8.0)).sum().backward()
    assert torch.equal(z.grad, torch.arange(8.0).expand(2, 5, 8))  # identity through the quantiser


def test_rvq_restarts_dead_codes_at_batch_vectors():
    torch.manual_seed(0)
    rvq = ResidualVQ(RVQConfig(quantizers=1, codebook_size=8, dim=4, decay=0.5, dead_threshold=0.6)).train()
    with torch.no_grad():
        rvq.codebooks[0, 3] = 1e3  # never the nearest code
    z = torch.randn(64, 4)
    rvq(z)  # usage of code 3 decays 1 -> 0.5 < threshold: restarted in this step
    restarted = rvq.codebooks[0, 3]
    assert restarted.abs().max() < 1e2
    assert (z - restarted).abs().sum(-1).min() < 1e-6, "a restarted code is a vector of the batch"
    used = torch.cdist(z, rvq.codebooks[0]).argmin(1).unique()
    assert len(used) >= 4


def test_lora_starts_at_the_base_output_and_only_adapters_train():
    torch.manual_seed(0)
    base = torch.nn.Module()
    base.wq, base.wo, base.other = torch.nn.Linear(8, 16), torch.nn.Linear(16, 4), torch.nn.Linear(4, 4)
    x = torch.randn(5, 8)
    ref = base.other(base.wo(base.wq(x))).detach()
    keys = set(base.state_dict())
    assert apply_lora(base, LoRAConfig(rank=2, targets=["wq", "wo"])) == 2
    assert isinstance(base.wq, LoRALinear) and type(base.other) is torch.nn.Linear
    assert torch.equal(base.other(base.wo(base.wq(x))), ref)
    assert keys < set(base.state_dict())  # base names unchanged: checkpoints without adapters load

    model = meg(lora={"rank": 4}, freeze=["decoder", "brain"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or not n.startswith(("decoder.", "brain.")) for n in trainable)
    assert any(".lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    total, _, aux = loss_fn(model.cfg)(model, batch())
    (total + aux).backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    assert any(".lora_b" in n for n in changed)
    with pytest.raises(ValueError, match="model.freeze: 'decodr'"):
        freeze(model, ["decodr"])


def test_distillation_kl_is_zero_against_itself_and_positive_otherwise():
    logits, targets = torch.randn(2, 6, VOCAB_SIZE), torch.randint(OFFSET, 100, (2, 6))
    targets[1, 4:] = 0  # PAD positions do not count
    assert kl_sum(logits, logits, targets, 2.0).abs() < 1e-4
    assert kl_sum(logits, torch.randn(2, 6, VOCAB_SIZE), targets, 2.0) > 0.1


def test_init_from_an_exported_text_model_and_distillation_from_it(tmp_path):
    from blt_scale.checkpoint.export import save_exported
    from blt_scale.config import ConfigError
    from blt_scale.model.build import build_model
    from blt_scale.train.init_from import load_init
    from blt_scale.train.recipe import load_recipe

    text_cfg = load_recipe(
        "cpu_tiny_baseline", ["model.dim=32", "model.layers=2", "model.heads=2", "model.window=null"]
    )
    torch.manual_seed(1)
    text = build_model(text_cfg.model).eval()
    save_exported(text.state_dict(), text_cfg, tmp_path / "text")
    source = [{"path": str(tmp_path / "text"), "prefix": "decoder."}]
    model = meg(
        lora={"rank": 4},
        quantize=False,
        init_from=source,
        distill={"teacher": str(tmp_path / "text"), "weight": 0.5},
    )
    untouched = load_init(model, model.cfg.init_from)
    assert torch.equal(model.decoder.embed.weight, text.embed.weight)
    assert torch.equal(model.decoder.layers[1].ffn.w2.weight, text.layers[1].ffn.w2.weight)
    assert untouched and all(not k.startswith("decoder.") or ".lora_" in k for k in untouched)
    with pytest.raises(ConfigError, match="not in this model"):
        load_init(model, [type(model.cfg.init_from[0])(path=str(tmp_path / "text"))])  # no prefix

    b = batch()
    ce, n, aux = loss_fn(model.cfg)(model.train(), b)  # quantize off: aux is the distillation term only
    with torch.no_grad():
        logits = model(b["tokens"][:, :-1], b["patch_lengths"], *brain_args(b))["logits"]
        kl = kl_sum(logits, text(b["tokens"][:, :-1]), b["tokens"][:, 1:], 2.0)
    assert torch.allclose(ce + aux, 0.5 * ce + 0.5 * kl, rtol=1e-4)
    assert loss_fn(model.cfg)(model.eval(), b)[2] == 0  # evaluation reports plain cross-entropy

"""Differential attention against a per-head brute force of the paper's equations, its λ_init
schedule, causality inside a BLT, cached decoding, and its FLOP and parameter accounting."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from blt_scale.model.attention import Causal, Full
from blt_scale.model.blt import BLT, BLTConfig
from blt_scale.model.build import build_model
from blt_scale.model.byte_lm import ByteLM, ByteLMConfig
from blt_scale.model.differential import DiffAttention, lambda_init
from blt_scale.model.flops import attention_per_key, model_flops
from blt_scale.model.generate import generate_batch
from blt_scale.model.incremental import make_stepper
from blt_scale.model.layers import Block, TransformerConfig, rope
from blt_scale.model.patcher import PatcherConfig, patch_lengths, patch_lengths_with_next
from blt_scale.model.vocab import EOS, OFFSET, encode
from blt_scale.train.objectives import lm_loss
from blt_scale.train.recipe import load_recipe

DIFF = {"attention_kind": "differential"}


def brute_force(attn: DiffAttention, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """The paper's equations head by head, query by query: allowed [B, T, T] (query, key)."""
    B, T, _ = x.shape
    H, d = attn.heads, attn.head_dim
    pos = torch.arange(T)

    def heads(w):  # [B, H, T, d]
        return (x @ w.weight.T).view(B, T, H, d).transpose(1, 2)

    q, k, v = rope(heads(attn.wq), pos, 1e4), rope(heads(attn.wk), pos, 1e4), heads(attn.wv)
    lq1, lk1, lq2, lk2 = attn.lambdas
    lam = torch.exp(torch.dot(lq1, lk1)) - torch.exp(torch.dot(lq2, lk2)) + attn.lambda_init
    out = torch.zeros(B, T, H * d)
    for b in range(B):
        for i in range(H // 2):
            q1, q2, k1, k2 = q[b, 2 * i], q[b, 2 * i + 1], k[b, 2 * i], k[b, 2 * i + 1]
            value = torch.cat([v[b, 2 * i], v[b, 2 * i + 1]], dim=-1)  # [T, 2d]
            for t in range(T):
                seen = allowed[b, t]
                a1 = torch.softmax((k1[seen] @ q1[t]) / math.sqrt(d), 0)
                a2 = torch.softmax((k2[seen] @ q2[t]) / math.sqrt(d), 0)
                head = (a1 - lam * a2) @ value[seen]
                head = head / torch.sqrt(head.pow(2).mean() + attn.eps)
                out[b, t, 2 * i * d : 2 * (i + 1) * d] = (1 - attn.lambda_init) * head
    return out @ attn.wo.weight.T


def causal_allowed(T: int, window, doc) -> torch.Tensor:
    t, s = torch.arange(T)[:, None], torch.arange(T)[None, :]
    ok = s <= t
    if window is not None:
        ok = ok & (t - s < window)
    return ok[None] & (doc[:, :, None] == doc[:, None, :])


@pytest.mark.parametrize("backend", ["dense", "chunked"])
@pytest.mark.parametrize("window", [None, 5, 70], ids=lambda w: f"window{w}")
def test_forward_and_gradients_equal_the_per_head_brute_force(backend, window):
    torch.manual_seed(0)
    cfg = TransformerConfig(dim=24, layers=3, heads=4, window=window, rope_theta=1e4, **DIFF)
    attn = Block(cfg, 2).attn
    assert isinstance(attn, DiffAttention) and attn.lambda_init == pytest.approx(0.8 - 0.6 * math.exp(-0.6))
    T = 150  # over two chunked blocks of 64
    x = torch.randn(2, T, 24, requires_grad=True)
    doc = torch.zeros(2, T, dtype=torch.long)
    doc[1, 40:] = 1
    doc[1, 100:] = 2
    got = attn(x, Causal(T, window, doc, backend))
    want = brute_force(attn, x, causal_allowed(T, window, doc))
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    probe = torch.randn_like(got)
    grads = torch.autograd.grad((got * probe).sum(), [x, *attn.parameters()])
    want_grads = torch.autograd.grad((want * probe).sum(), [x, *attn.parameters()])
    names = ["x"] + [n for n, _ in attn.named_parameters()]
    assert "lambdas" in names
    for name, g, w in zip(names, grads, want_grads):
        assert w.abs().max() > 0, name
        torch.testing.assert_close(g, w, atol=2e-5, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


def test_flex_and_full_patterns_equal_the_brute_force():
    torch.manual_seed(1)
    attn = Block(TransformerConfig(dim=16, layers=1, heads=2, rope_theta=1e4, **DIFF)).attn.eval()
    x = torch.randn(1, 40, 16)
    doc = torch.zeros(1, 40, dtype=torch.long)
    doc[0, 17:] = 1
    with torch.no_grad():
        want = brute_force(attn, x, causal_allowed(40, 6, doc))
        torch.testing.assert_close(attn(x, Causal(40, 6, doc, "flex")), want, atol=2e-5, rtol=1e-4)
        full = brute_force(attn, x, torch.ones(1, 40, 40, dtype=torch.bool))
        torch.testing.assert_close(attn(x, Full()), full, atol=2e-5, rtol=1e-4)


def test_lambda_init_schedule_per_stack_depth():
    assert [round(lambda_init(i), 4) for i in range(4)] == [0.2, 0.3555, 0.4707, 0.5561]
    assert lambda_init(100) == pytest.approx(0.8)
    cfg = load_recipe("cpu_tiny_diff")
    model = build_model(cfg.model)
    for stack in (model.encoder, model.latent, model.decoder):
        assert [b.attn.lambda_init for b in stack] == [lambda_init(i) for i in range(len(stack))]
    assert len(model.latent) >= 2


def test_odd_heads_are_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"heads \(3\) must be even"):
        TransformerConfig(dim=24, layers=1, heads=3, **DIFF)


def tiny_diff_blt(doc_mask=False) -> BLT:
    torch.manual_seed(0)
    local = {"dim": 32, "layers": 2, "heads": 4, "window": 8, **DIFF}
    return BLT(
        BLTConfig.model_validate(
            {
                "encoder": local,
                "global": {"dim": 48, "layers": 2, "heads": 4, **DIFF},
                "decoder": local,
                "ngram": {"sizes": [3, 4], "buckets": 97},
                "doc_mask": doc_mask,
                "attention": "chunked",
            }
        )
    ).eval()


def test_future_bytes_never_change_past_logits():
    model = tiny_diff_blt(doc_mask=True)
    patcher = PatcherConfig(mode="space", max_patch_len=6)
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(OFFSET, OFFSET + 256, (2, 90), generator=g)
    ids[:, ::5] = OFFSET + ord(" ")
    ids[:, 40] = EOS
    with torch.no_grad():
        base = model(ids, patch_lengths(ids, patcher))
        for t in (0, 17, 40, 71):
            changed = ids.clone()
            changed[:, t + 1 :] = torch.randint(OFFSET, OFFSET + 256, changed[:, t + 1 :].shape, generator=g)
            other = model(changed, patch_lengths(changed, patcher))
            torch.testing.assert_close(other[:, : t + 1], base[:, : t + 1], atol=1e-5, rtol=1e-5)
            assert not torch.allclose(other[:, t + 1 :], base[:, t + 1 :])


def tiny_diff_lm() -> ByteLM:
    torch.manual_seed(0)
    return ByteLM(ByteLMConfig(dim=32, layers=2, heads=4, window=8, **DIFF)).eval()


@pytest.mark.parametrize("make", [tiny_diff_blt, tiny_diff_lm], ids=["blt", "byte_lm"])
def test_cached_decoding_equals_the_full_forward(make):
    model, patcher = make(), PatcherConfig(mode="space", max_patch_len=6)
    if isinstance(model, ByteLM):
        patcher = PatcherConfig(mode="byte")
    ids = encode(b"The quick brown fox jumps", bos=True)
    cached = generate_batch(model, [ids], 60, patcher, stop_at_eos=False)[0]
    reference = generate_batch(model, [ids], 60, patcher, cache=False, stop_at_eos=False)[0]
    assert cached.ids == reference.ids and cached.patches == reference.patches
    seq = torch.cat([ids, torch.tensor(cached.ids)])[None]
    stepper = make_stepper(model, 1, patcher)
    n = ids.numel()
    got = [stepper.step(seq[:, :n], torch.ones(1, n, dtype=torch.bool))]
    got += [
        stepper.step(seq[:, t : t + 1], torch.ones(1, 1, dtype=torch.bool)) for t in range(n, seq.shape[1])
    ]
    with torch.no_grad():
        want = model(seq) if isinstance(model, ByteLM) else model(seq, patch_lengths_with_next(seq, patcher))
    torch.testing.assert_close(torch.cat(got, 1), want, atol=1e-4, rtol=1e-4)


def test_attention_flops_per_key_equal_what_sdpa_counts():
    """Every query sees every key under Full(): torch's count of the SDPA call is then exact."""
    cfg = TransformerConfig(dim=32, layers=1, heads=4, **DIFF)
    attn = Block(cfg).attn
    x = torch.randn(2, 50, 32)
    q, k, v = attn.project(x)
    with FlopCounterMode(display=False) as counter:
        attn.mix(q, k, v, lambda q, k, v: F.scaled_dot_product_attention(q, k, v))
    counted = sum(counter.get_flop_counts()["Global"].values())
    assert counted == attention_per_key(cfg) * 2 * 50 * 50
    assert attention_per_key(cfg) == 1.5 * attention_per_key(
        cfg.model_copy(update={"attention_kind": "softmax"})
    )


def weight_products(model, ids, lengths) -> float:
    """FLOPs of 2-D matmuls: the weight products. SDPA's math kernel, which runs values wider than
    queries, multiplies with bmm, so attention is left out."""
    with FlopCounterMode(display=False) as counter:
        model(ids, lengths)
    return float(
        sum(v for k, v in counter.get_flop_counts()["Global"].items() if str(k) in ("aten.mm", "aten.addmm"))
    )


def test_recipe_linear_flops_and_parameters_equal_the_model():
    from test_flops import real_batch

    cfg = load_recipe("cpu_tiny_diff")
    assert {cfg.model.encoder.attention_kind, cfg.model.global_.attention_kind} == {"differential"}
    model = build_model(cfg.model)
    ids = real_batch(cfg.data.seq_len, rows=1)
    lengths = patch_lengths(ids, cfg.patcher)
    report = model_flops(cfg.model, cfg.data.seq_len, ids.shape[1] / lengths.shape[1])
    assert sum(report.linear.values()) * ids.numel() == pytest.approx(
        weight_products(model, ids, lengths), rel=0.01
    )
    assert report.total_params == sum(p.numel() for p in model.parameters())
    softmax = load_recipe("cpu_tiny")
    extra = model_flops(softmax.model, cfg.data.seq_len, 4.0).total_params - report.total_params
    lambdas = sum(
        4 * s.head_dim * s.layers for s in (cfg.model.encoder, cfg.model.global_, cfg.model.decoder)
    )
    assert extra == -lambdas  # the same projections, plus the λ vectors


TEXT = b"Differential attention cancels the common-mode noise of two softmax maps over the same values."


def test_a_tiny_differential_blt_overfits_a_short_text():
    model = tiny_diff_blt().train()
    ids = encode(TEXT, bos=True, eos=True)[None]
    lengths = patch_lengths(ids[:, :-1], PatcherConfig(mode="space"))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(120):
        loss, count = lm_loss(model(ids[:, :-1], lengths), ids[:, 1:])
        first = first if first is not None else float(loss.detach() / count)
        (loss / count).backward()
        opt.step()
        opt.zero_grad()
    assert first > 5 and float(loss.detach() / count) < 0.2
    lams = [float(b.attn.lam().detach()) for b in model.latent]
    assert lams != [b.attn.lambda_init for b in model.latent]  # the λ vectors learn


def test_bf16_parameters_follow_fp32():
    model = tiny_diff_blt()
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(OFFSET, OFFSET + 256, (2, 100), generator=g)
    ids[:, ::5] = OFFSET + ord(" ")
    lengths = patch_lengths(ids, PatcherConfig(mode="space"))
    with torch.no_grad():
        want = model(ids, lengths)
    got = model.to(torch.bfloat16).train()(ids, lengths)
    assert got.dtype == torch.bfloat16
    assert (got.float() - want).abs().max() < 0.05
    got.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

"""Attention backends against the dense reference, and what the BLT decoder sees.

Every model of the family runs with documents, windows and uneven patches at batch 3 and a
length that spans several chunked blocks; `chunked` must equal `dense` in loss and in every
gradient, and `flex` in logits (torch has no flex backward on CPU: its gradients need CUDA).
"""

import pytest
import torch
import torch.nn.functional as F

from blt_scale.model.attention import Causal, ClosedPatches, OwnPatch, attend
from blt_scale.model.blt import BLT, BLTConfig
from blt_scale.model.brain_blt import BrainBLT, BrainBLTConfig
from blt_scale.model.byte_lm import ByteLM, ByteLMConfig
from blt_scale.model.meg_to_text import MegToText, MegToTextConfig
from blt_scale.model.patcher import PatcherConfig, patch_lengths, patch_lengths_with_next, patch_starts
from blt_scale.model.vocab import BOS, EOS, OFFSET

T = 300  # > 4 blocks of the windowed path, > 1 block of the unwindowed-with-documents path
LOCAL = {"dim": 32, "layers": 2, "heads": 2, "window": 8}
BLT_PARTS = {
    "encoder": LOCAL,
    "global": {"dim": 48, "layers": 2, "heads": 2},
    "decoder": LOCAL,
    "ngram": {"sizes": [3, 4], "buckets": 97},
    "doc_mask": True,
}
BRAIN = {"dim": 32, "layers": 1, "heads": 2, "channels": 6, "samples": 64, "spatial_channels": 4, "stride": 8}
C = 6


def build(name: str, backend: str):
    torch.manual_seed(0)
    if name == "blt":
        return BLT(BLTConfig.model_validate({**BLT_PARTS, "attention": backend}))
    if name == "blt-all-history-all-layers":
        return BLT(
            BLTConfig.model_validate(
                {
                    **BLT_PARTS,
                    "attention": backend,
                    "decoder_cross_window": None,
                    "global": {"dim": 48, "layers": 2, "heads": 2, "window": 5},
                    "encoder": {**LOCAL, "cross_attn_all_layers": True},
                    "decoder": {**LOCAL, "window": None, "cross_attn_all_layers": True},
                }
            )
        )
    if name == "byte_baseline":  # unwindowed, documents: the block-by-block path
        return ByteLM(ByteLMConfig(dim=32, layers=2, heads=2, doc_mask=True, attention=backend))
    if name == "entropy_model":
        return ByteLM(ByteLMConfig(dim=32, layers=2, heads=2, window=6, doc_mask=True, attention=backend))
    if name == "brain_blt":
        return BrainBLT(
            BrainBLTConfig.model_validate(
                {**BLT_PARTS, "attention": backend, "brain": BRAIN, "fusion": {"layers": [1], "heads": 2}}
            )
        )
    return MegToText(
        MegToTextConfig.model_validate(
            {
                "brain": BRAIN,
                "decoder": {"dim": 32, "layers": 2, "heads": 2, "window": 7, "attention": backend},
            }
        )
    )


MODELS = ["blt", "blt-all-history-all-layers", "byte_baseline", "entropy_model", "brain_blt", "meg_to_text"]


def inputs():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(OFFSET, OFFSET + 256, (3, T + 1), generator=g)
    ids[:, ::6] = OFFSET + ord(" ")
    ids[0, 100:102] = torch.tensor([EOS, BOS])
    ids[1, 30:32] = torch.tensor([EOS, BOS])
    ids[1, 200:202] = torch.tensor([EOS, BOS])
    lengths = patch_lengths(ids[:, :-1], PatcherConfig(mode="space", max_patch_len=7))
    brain = (
        torch.randn(3, C, 64, generator=g),
        torch.ones(3, C, dtype=torch.bool),
        torch.rand(3, C, 3, generator=g) * 0.1,
        torch.zeros(3, dtype=torch.long),
    )
    return ids, lengths, brain


def logits_of(model, ids, lengths, brain):
    if isinstance(model, ByteLM):
        return model(ids)
    if isinstance(model, MegToText):
        return model(ids, lengths, *brain)["logits"]
    if isinstance(model, BrainBLT):
        return model(ids, lengths, *brain)
    return model(ids, lengths)


def loss_and_grads(model, train: bool = True):
    ids, lengths, brain = inputs()
    logits = logits_of(model, ids[:, :-1], lengths, brain)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
    if not train:
        return logits.detach(), loss.detach(), {}
    loss.backward()
    return (
        logits.detach(),
        loss.detach(),
        {n: p.grad for n, p in model.named_parameters() if p.grad is not None},
    )


@pytest.mark.parametrize("name", MODELS)
def test_chunked_equals_dense_in_loss_and_every_gradient(name):
    _, want_loss, want = loss_and_grads(build(name, "dense"))
    _, got_loss, got = loss_and_grads(build(name, "chunked"))
    torch.testing.assert_close(got_loss, want_loss, atol=1e-5, rtol=0)
    assert got.keys() == want.keys() and len(want) > 10
    for key in want:
        torch.testing.assert_close(
            got[key], want[key], atol=1e-5, rtol=1e-4, msg=lambda m, key=key: f"{key}: {m}"
        )


@pytest.mark.parametrize("name", MODELS)
def test_flex_equals_dense_in_logits(name):
    with torch.no_grad():
        want, _, _ = loss_and_grads(build(name, "dense").eval(), train=False)
        got, _, _ = loss_and_grads(build(name, "flex").eval(), train=False)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_flex_training_on_cpu_is_one_clear_error():
    with pytest.raises(ValueError, match="model.attention=flex trains only on CUDA"):
        loss_and_grads(build("entropy_model", "flex"))


def test_chunked_never_builds_a_sequence_by_sequence_mask(monkeypatch):
    """The chunked path's largest boolean tensor grows with T times the window (or the patch
    count times k), not T^2: record every bool tensor SDPA receives at T = 4096."""
    sizes = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        if attn_mask is not None:
            sizes.append(attn_mask.numel())
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    n, B, H, D = 4096, 2, 2, 8
    q = torch.randn(B, H, n, D)
    doc = (torch.arange(n) // 1000).expand(B, n)
    attend(q, q, q, Causal(n, 128, doc, "chunked"))
    pid = (torch.arange(n) // 5).expand(B, n)
    attend(torch.randn(B, H, (n // 5 + 1) * 2, D), q, q, OwnPatch(pid, n // 5 + 1, 2, "chunked"))
    closed = (torch.arange(n) // 5).expand(B, n)
    attend(
        q,
        torch.randn(B, H, 2 * (n // 5 + 1), D),
        q[:, :, : 2 * (n // 5 + 1)],
        ClosedPatches(closed, n // 5 + 1, 2, 1, None, None, "chunked"),
    )
    assert max(sizes, default=0) <= B * n * 2 * 128  # [B * blocks, 1, C, 2C] at C = window


# -- what the decoder sees ---------------------------------------------------------------------------
ENTROPY_LM = ByteLMConfig(dim=32, layers=2, heads=2, window=6)
PATCHERS = [
    PatcherConfig(mode="space"),
    PatcherConfig(mode="static", static_size=3),
    PatcherConfig(mode="entropy", entropy_rule="global"),
    PatcherConfig(mode="entropy", entropy_rule="monotonic"),
]


def entropies(patcher, ids):
    if patcher.mode != "entropy":
        return None
    torch.manual_seed(3)
    return ByteLM(ENTROPY_LM).eval().entropies(ids)


def tuned(patcher, ids):
    """The patcher with a global threshold inside the random entropy model's range, so patches vary."""
    if patcher.mode == "entropy" and patcher.entropy_rule == "global":
        return patcher.model_copy(update={"threshold": float(entropies(patcher, ids).median())})
    return patcher


def patched(patcher, ids):
    """(lengths covering the next byte, starts)."""
    h = entropies(patcher, ids)
    return patch_lengths_with_next(ids, patcher, h), patch_starts(ids, patcher, h)


@pytest.mark.parametrize("patcher", PATCHERS, ids=lambda p: f"{p.mode}-{p.entropy_rule}")
@pytest.mark.parametrize("backend", ["chunked", "dense"])
def test_the_last_byte_of_a_patch_sees_that_patch_and_no_earlier_byte_does(patcher, backend):
    torch.manual_seed(0)
    model = BLT(BLTConfig.model_validate({**BLT_PARTS, "attention": backend})).eval()
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(OFFSET + 97, OFFSET + 123, (1, 60), generator=g)
    ids[:, 5::7] = OFFSET + ord(" ")
    lengths, starts = patched(tuned(patcher, ids), ids)
    ends = (lengths[0].cumsum(0) - 1).tolist()
    assert len(ends) > 4
    for p in (1, len(ends) - 3, len(ends) - 2):  # the last real patch ends at byte T - 1
        t = ends[p]
        assert t == 59 or bool(starts[0, t + 1])
        with torch.no_grad():
            base = model(ids, lengths)
            # Perturb patch p's latent output only.
            hook = model.latent_norm.register_forward_hook(
                lambda m, a, out, p=p: out + (torch.arange(out.shape[1]) == p)[None, :, None]
            )
            moved = model(ids, lengths)
            hook.remove()
        torch.testing.assert_close(moved[:, :t], base[:, :t], atol=1e-6, rtol=0)
        assert (moved[0, t] - base[0, t]).abs().max() > 1e-3, (
            f"byte {t}, the last of patch {p}, does not see it"
        )


@pytest.mark.parametrize("patcher", PATCHERS, ids=lambda p: f"{p.mode}-{p.entropy_rule}")
def test_future_bytes_never_change_past_logits_or_patches(patcher):
    torch.manual_seed(0)
    model = BLT(BLTConfig.model_validate({**BLT_PARTS, "attention": "chunked"})).eval()
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(OFFSET, OFFSET + 256, (2, 80), generator=g)
    ids[:, ::5] = OFFSET + ord(" ")
    ids[:, 30:32] = torch.tensor([EOS, BOS])
    patcher = tuned(patcher, ids)
    lengths, _ = patched(patcher, ids)
    with torch.no_grad():
        base = model(ids, lengths)
        for t in (0, 9, 30, 31, 55, 78):
            changed = ids.clone()
            changed[:, t + 1 :] = torch.randint(OFFSET, OFFSET + 256, changed[:, t + 1 :].shape, generator=g)
            other_lengths, _ = patched(patcher, changed)
            other = model(changed, other_lengths)
            torch.testing.assert_close(other[:, : t + 1], base[:, : t + 1], atol=1e-5, rtol=1e-5)
            assert not torch.allclose(other[:, t + 1 :], base[:, t + 1 :])


@pytest.mark.slow
def test_compiled_blocks_equal_eager_with_the_chunked_backend():
    from blt_scale.parallel.apply import apply_compile

    _, want_loss, want = loss_and_grads(build("blt", "chunked"))
    model = build("blt", "chunked")
    apply_compile(model)
    _, got_loss, got = loss_and_grads(model)
    torch.testing.assert_close(got_loss, want_loss, atol=1e-5, rtol=0)
    for key in want:
        torch.testing.assert_close(
            got[key], want[key], atol=1e-5, rtol=1e-4, msg=lambda m, key=key: f"{key}: {m}"
        )


def test_dropout_acts_only_in_training_and_output_projections_scale_with_depth():
    parts = {**BLT_PARTS, "attention": "chunked", "global": {"dim": 48, "layers": 8, "heads": 2}}
    torch.manual_seed(0)
    plain = BLT(BLTConfig.model_validate(parts))
    torch.manual_seed(0)
    dropped = BLT(
        BLTConfig.model_validate(
            {**parts, "encoder": {**LOCAL, "dropout": 0.1}, "decoder": {**LOCAL, "dropout": 0.1}}
        )
    )
    ids, lengths, _ = inputs()
    ids = ids[:, :-1]
    with torch.no_grad():
        assert not torch.allclose(dropped(ids, lengths), dropped(ids, lengths))  # training mode: random
        torch.testing.assert_close(dropped.eval()(ids, lengths), plain.eval()(ids, lengths))
    latent_out = torch.cat(
        [b.attn.wo.weight.flatten() for b in plain.latent] + [b.ffn.w2.weight.flatten() for b in plain.latent]
    )
    latent_in = torch.cat([b.attn.wq.weight.flatten() for b in plain.latent])
    assert float(latent_out.std()) == pytest.approx(0.02 / 4, rel=0.05)  # 0.02 / sqrt(2 * 8 layers)
    assert float(latent_in.std()) == pytest.approx(0.02, rel=0.05)


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("with_docs", [False, True], ids=["no-docs", "docs"])
def test_a_prefix_is_seen_by_every_query_on_every_backend(window, with_docs):
    """Causal with a prefix (Titans' persistent memory) against an explicit softmax: every query
    sees the prefix's keys, then its causal, windowed, same-document keys; outputs, and gradients
    where the backend trains on CPU (flex's backward is CUDA only: refused here)."""
    g = torch.Generator().manual_seed(0)
    B, H, T, D, prefix = 2, 2, 150, 8, 3  # several chunked blocks
    q = torch.randn(B, H, T, D, generator=g, requires_grad=True)
    k, v = (torch.randn(B, H, prefix + T, D, generator=g, requires_grad=True) for _ in range(2))
    doc = torch.zeros(B, T, dtype=torch.long)
    doc[1, 40:], doc[1, 100:] = 1, 2
    doc = doc if with_docs else None
    pos = torch.arange(T)
    seen = (pos[:, None] >= pos[None, :]) & (
        True if window is None else (pos[:, None] - pos[None, :] < window)
    )
    seen = seen[None, None] & (True if doc is None else (doc[:, None, :, None] == doc[:, None, None, :]))
    seen = torch.cat([torch.ones(B, 1, T, prefix, dtype=torch.bool), seen.expand(B, 1, T, T)], -1)
    scores = (q @ k.transpose(-1, -2) / D**0.5).masked_fill(~seen, float("-inf"))
    want = torch.softmax(scores, -1) @ v
    weights = torch.randn(want.shape, generator=g)  # a loss whose gradient differs per output
    want_grads = torch.autograd.grad((want * weights).sum(), (q, k, v))
    for backend in ("dense", "chunked", "flex"):
        inputs = [x.detach() if backend == "flex" else x for x in (q, k, v)]
        got = attend(*inputs, Causal(T, window, doc, backend, prefix=prefix))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=lambda m, b=backend: f"{b}: {m}")
        if backend == "flex":
            continue
        grads = torch.autograd.grad((got * weights).sum(), (q, k, v))
        for name, a, b in zip("qkv", grads, want_grads):
            torch.testing.assert_close(
                a, b, atol=1e-5, rtol=1e-5, msg=lambda m, n=name, x=backend: f"{x} d{n}: {m}"
            )

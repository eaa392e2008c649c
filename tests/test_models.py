"""BLT and byte baseline: causality, document masking, generation, and learning a short text."""

import pytest
import torch

from blt_scale.model.blt import BLT, BLTConfig
from blt_scale.model.byte_lm import ByteLM, ByteLMConfig
from blt_scale.model.generate import generate
from blt_scale.model.patcher import PatcherConfig, patch_lengths
from blt_scale.model.vocab import BOS, EOS, OFFSET, encode
from blt_scale.train.objectives import lm_loss


def tiny_blt(doc_mask=False, all_cross=False) -> BLT:
    torch.manual_seed(0)
    return BLT(
        BLTConfig.model_validate(
            {
                "encoder": {
                    "dim": 32,
                    "layers": 1,
                    "heads": 2,
                    "window": 8,
                    "cross_attn_all_layers": all_cross,
                },
                "global": {"dim": 48, "layers": 2, "heads": 2},
                "decoder": {
                    "dim": 32,
                    "layers": 2,
                    "heads": 2,
                    "window": 8,
                    "cross_attn_all_layers": all_cross,
                },
                "ngram": {"sizes": [3, 4], "buckets": 97},
                "doc_mask": doc_mask,
            }
        )
    )


def tiny_lm(doc_mask=False, window=None) -> ByteLM:
    torch.manual_seed(0)
    return ByteLM(ByteLMConfig(dim=32, layers=2, heads=2, window=window, doc_mask=doc_mask))


ENTROPY = PatcherConfig(mode="entropy", entropy_rule="global", threshold=5.545)
PATCHERS = [PatcherConfig(mode="space"), ENTROPY, PatcherConfig(mode="static", static_size=3)]


def forward(model, ids, patcher, entropy_model):
    if isinstance(model, ByteLM):
        return model(ids)
    entropies = entropy_model.entropies(ids) if patcher.mode == "entropy" else None
    return model(ids, patch_lengths(ids, patcher, entropies))


@pytest.mark.parametrize("patcher", PATCHERS, ids=lambda p: p.mode)
@pytest.mark.parametrize(
    "make",
    [
        tiny_blt,
        lambda: tiny_blt(doc_mask=True, all_cross=True),
        tiny_lm,
        lambda: tiny_lm(doc_mask=True, window=5),
    ],
    ids=["blt", "blt-docmask-allcross", "byte_lm", "byte_lm-docmask-window"],
)
def test_future_bytes_never_change_past_logits(make, patcher):
    model, entropy_model = make().eval(), tiny_lm(window=6).eval()
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(OFFSET, OFFSET + 256, (2, 48), generator=g)
    ids[:, ::5] = OFFSET + ord(" ")
    ids[:, 20] = EOS
    ids[:, 21] = BOS
    if patcher.mode == "entropy":  # a threshold inside the random model's entropy range, so patches vary
        h = entropy_model.entropies(ids)
        patcher = patcher.model_copy(update={"threshold": float(h.median())})
        assert 1.5 < ids.numel() / patch_lengths(ids, patcher, h).gt(0).sum() < 8
    with torch.no_grad():
        base = forward(model, ids, patcher, entropy_model)
        for t in (0, 9, 20, 33, 46):
            changed = ids.clone()
            changed[:, t + 1 :] = torch.randint(OFFSET, OFFSET + 256, changed[:, t + 1 :].shape, generator=g)
            other = forward(model, changed, patcher, entropy_model)
            torch.testing.assert_close(other[:, : t + 1], base[:, : t + 1], atol=1e-5, rtol=1e-5)
            assert not torch.allclose(other[:, t + 1 :], base[:, t + 1 :])  # the change was seen later


@pytest.mark.parametrize(
    "make", [lambda: tiny_blt(doc_mask=True), lambda: tiny_lm(doc_mask=True)], ids=["blt", "byte_lm"]
)
def test_document_mask_isolates_the_next_document(make):
    model = make().eval()
    first, second = (
        encode(b"alpha beta gamma", bos=True, eos=True),
        encode(b"delta epsilon", bos=True, eos=True),
    )
    other_first = encode(b"zzzzz qqqq xxxxx", bos=True, eos=True)  # same length, other content
    patcher = PatcherConfig(mode="space")
    with torch.no_grad():
        a = forward(model, torch.cat([first, second])[None], patcher, None)
        b = forward(model, torch.cat([other_first, second])[None], patcher, None)
    n = len(first)
    torch.testing.assert_close(a[:, n:], b[:, n:], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[:, :n], b[:, :n])


@pytest.mark.parametrize("patcher", PATCHERS, ids=lambda p: p.mode)
@pytest.mark.parametrize("make", [tiny_blt, tiny_lm], ids=["blt", "byte_lm"])
def test_greedy_generation_is_the_argmax_of_a_full_forward(make, patcher):
    model, entropy_model = make().eval(), tiny_lm(window=6).eval()
    prompt = encode(b"the quick brown", bos=True)[None]
    if patcher.mode == "entropy":
        # midway between two entropies of the prompt, not equal to one: an entropy at the threshold
        # could land on either side by one rounding unit between generation and the full forward
        h = entropy_model.entropies(prompt).flatten().unique()  # sorted, distinct
        patcher = patcher.model_copy(update={"threshold": float(h[len(h) // 2 - 1 : len(h) // 2 + 1].mean())})
    out = generate(model, prompt, 24, patcher, entropy_model=entropy_model, stop_at_eos=False)
    assert out.shape[1] == prompt.shape[1] + 24
    with torch.no_grad():
        logits = forward(model, out, patcher, entropy_model)
    expected = logits[0, prompt.shape[1] - 1 : -1].argmax(-1)
    assert torch.equal(out[0, prompt.shape[1] :], expected)


def test_sampling_respects_top_k():
    model = tiny_lm().eval()
    prompt = encode(b"abc", bos=True)[None]
    with torch.no_grad():
        allowed = set(model(prompt)[0, -1].topk(2).indices.tolist())
    for seed in range(20):
        out = generate(
            model,
            prompt,
            1,
            PatcherConfig(mode="byte"),
            temperature=1.5,
            top_k=2,
            generator=torch.Generator().manual_seed(seed),
        )
        assert int(out[0, -1]) in allowed


TEXT = b"Byte latent transformers group bytes into patches whose size follows the entropy of the next byte."


@pytest.mark.parametrize("make", [tiny_blt, tiny_lm], ids=["blt", "byte_lm"])
def test_tiny_models_overfit_a_short_text(make):
    """Memorising ~100 bytes: cross-entropy must fall from ~5.6 nats (uniform) below 0.2."""
    model = make()
    ids = encode(TEXT, bos=True, eos=True)[None]
    lengths = patch_lengths(ids[:, :-1], PatcherConfig(mode="space"))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(200):
        loss, count = lm_loss(model(ids[:, :-1], lengths), ids[:, 1:])
        (loss / count).backward()
        opt.step()
        opt.zero_grad()
    assert float(loss.detach() / count) < 0.2

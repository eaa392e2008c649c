"""The mvot kind (model/mvot_blt.py): a causal BLT over bytes and visual codes whose objective is
plain cross-entropy at discrepancy_weight 0 and adds weight * L_D otherwise."""

import pytest
import torch

from blt_scale.model.build import build_model
from blt_scale.model.flops import model_flops
from blt_scale.model.generate import generate_batch
from blt_scale.model.mvot import IMAGE_OFFSET, discrepancy_loss
from blt_scale.model.mvot_blt import MVoTBLTConfig
from blt_scale.model.ngram import ngram_hashes
from blt_scale.model.patcher import PatcherConfig, patch_lengths
from blt_scale.model.vocab import BOS
from blt_scale.train.objectives import lm_loss, loss_fn
from blt_scale.train.recipe import load_recipe

K = 64
PATCHER = PatcherConfig(mode="space", max_patch_len=8)


def tiny(weight: float = 0.0):
    torch.manual_seed(0)
    cfg = MVoTBLTConfig.model_validate(
        {
            "encoder": {"dim": 32, "layers": 1, "heads": 2, "window": 16},
            "global": {"dim": 48, "layers": 1, "heads": 2},
            "decoder": {"dim": 32, "layers": 1, "heads": 2, "window": 16},
            "ngram": {"sizes": [3, 4], "buckets": 97},
            "mvot": {"discrepancy_weight": weight},
        }
    )
    model = build_model(cfg)
    with torch.no_grad():  # a codebook whose codes differ (a fresh tokenizer's is random too)
        model.images.vq.codebooks.normal_()
    return model


def stream(batch: int = 2, length: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 259, (batch, length), generator=g)
    ids[:, 10:26] = IMAGE_OFFSET + torch.randint(0, K, (batch, 16), generator=g)  # one image
    ids[:, 0] = BOS
    return ids


def test_vocabulary_and_frozen_tokenizer():
    model = tiny()
    assert model.embed.num_embeddings == model.output.out_features == IMAGE_OFFSET + K
    assert not any(p.requires_grad for p in model.images.parameters())
    ids = stream()
    assert model(ids, patch_lengths(ids, PATCHER)).shape == (2, 40, IMAGE_OFFSET + K)
    h = ngram_hashes(ids, 4)
    assert int(h.min()) >= 0 and int(h.max()) < 2**31 - 1
    assert model_flops(model.cfg, 40, 4.0).params["embedding"] == (IMAGE_OFFSET + K) * 32


def test_causal():
    model = tiny().eval()
    ids = stream()
    out = model(ids, patch_lengths(ids, PATCHER))
    for t in (5, 15, 30):
        changed = ids.clone()
        changed[:, t + 1 :] = IMAGE_OFFSET + 3  # rewrite the future with image ids
        again = model(changed, patch_lengths(changed, PATCHER))
        assert torch.allclose(out[:, : t + 1], again[:, : t + 1], atol=1e-5)


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_objective(weight):
    model = tiny(weight)
    tokens = stream(length=41)
    batch = {"tokens": tokens, "patch_lengths": patch_lengths(tokens[:, :-1], PATCHER)}
    text_sum, text_count, aux, figures = loss_fn(model.cfg)(model, batch)
    logits = model(tokens[:, :-1], batch["patch_lengths"])
    ce, count = lm_loss(logits, tokens[:, 1:])
    ld = discrepancy_loss(logits, tokens[:, 1:], model.images.codebook)[0]
    assert int(text_count) == int(count) - int((tokens[:, 1:] >= IMAGE_OFFSET).sum())
    assert torch.allclose(text_sum + aux, ce + weight * ld, rtol=1e-5)
    images = int((tokens[:, 1:] >= IMAGE_OFFSET).sum())
    image_ce = lm_loss(logits, tokens[:, 1:].masked_fill(tokens[:, 1:] < IMAGE_OFFSET, 0))[0]
    assert figures["loss_image"][1] == figures["discrepancy"][1] == images  # logged whatever the weight
    assert torch.allclose(figures["loss_image"][0], image_ce, rtol=1e-5)
    assert torch.allclose(figures["discrepancy"][0], ld, rtol=1e-5)
    if weight == 0:
        assert torch.allclose(text_sum + aux, ce, rtol=1e-6)  # plain cross-entropy
    else:
        assert float(ld.detach()) > 0


def test_recipe_refuses_entropy_patching_and_a_second_tokenizer():
    with pytest.raises(Exception, match="patcher.mode=entropy"):
        load_recipe("mvot_tiny", ["patcher.mode=entropy"])
    with pytest.raises(Exception, match="must be the tokenizer"):
        load_recipe("mvot_tiny", ["data.gridworld.tokenizer=elsewhere"])


def test_cached_generation_matches_the_full_forward():
    model = tiny().eval()
    prompt = stream(batch=1, length=30)[0]
    g = [torch.Generator().manual_seed(3) for _ in range(2)]
    fast, slow = (
        generate_batch(model, [prompt], 24, PATCHER, temperature=1.0, generator=g[i], cache=c)[0]
        for i, c in enumerate((True, False))
    )
    assert fast.ids == slow.ids and any(i >= IMAGE_OFFSET for i in fast.ids)

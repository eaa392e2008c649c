"""Titans memory in generation's cache: cached greedy bytes and logits equal recomputing the
prefix, across chunk boundaries and documents, and each row of a left-padded batch keeps its own
memory."""

import pytest
import torch
from dist_helpers import one_torch_thread
from test_generate import assert_cached_equals_the_reference
from test_titans import tiny_titans_blt

from blt_scale.model.generate import generate_batch
from blt_scale.model.patcher import PatcherConfig
from blt_scale.model.vocab import encode


@pytest.fixture
def one_thread():
    with one_torch_thread():
        yield


# A first document (with EOS) whose patches end at a chunk boundary (chunks of 4: the second
# document starts at patch 4) or inside a chunk (at patch 5).
FIRST_DOC = {"boundary": b"a first doc. ", "inside": b"a first doc here. "}


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    "variant,doc_mask,persistent,first",
    [
        ("mag", False, 0, "inside"),
        ("mag", True, 3, "boundary"),
        ("mag", True, 0, "inside"),
        ("mac", False, 3, "inside"),
        ("mac", True, 0, "boundary"),
        ("mac", True, 3, "inside"),
    ],
)
def test_cached_generation_equals_recomputation(variant, doc_mask, persistent, first):
    """The stepper carries each latent block's memory (the last complete chunk's state and the open
    chunk's writes): greedy bytes equal recomputing the prefix per byte, and every position's
    logits one full forward within 1e-5, across chunk boundaries and (doc_mask) a document that
    starts on a chunk boundary or inside a chunk."""
    model = tiny_titans_blt(variant, doc_mask, persistent)
    ids = torch.cat(
        [encode(FIRST_DOC[first], bos=True, eos=True), encode(b"memory at test time. ", bos=True)]
    )
    patches = assert_cached_equals_the_reference(
        model, PatcherConfig(mode="space", max_patch_len=6), ids, 40, 1e-5
    )
    assert patches > 3 * model.cfg.global_.memory.chunk


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("variant", ["mag", "mac"])
def test_a_left_padded_batch_carries_each_rows_memory(variant):
    """Rows close patches at different bytes: each keeps its own memory and chunk position."""
    model, patcher = tiny_titans_blt(variant, doc_mask=True, persistent=2), PatcherConfig(mode="space")
    prompts = [encode(p, bos=True) for p in (b"x", b"def main(argv):\n    return 0\n", b"hello world")]
    batch = generate_batch(model, prompts, 30, patcher, stop_at_eos=False)
    for prompt, got in zip(prompts, batch):
        alone = generate_batch(model, [prompt], 30, patcher, cache=False, stop_at_eos=False)[0]
        assert got.ids == alone.ids and got.patches == alone.patches

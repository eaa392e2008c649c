"""An MVoT run (recipe mvot_tiny, discrepancy loss on) under FSDP2 over gloo: 2 ranks train as one
process does, and a resumed run continues bit for bit."""

import pytest
import torch
from dist_helpers import DETERMINISTIC, FSDP, losses, reference, resume_without_newest
from mvot_helpers import mvot_overrides

from blt_scale.checkpoint.restore import load_model
from blt_scale.data.gridworld import load_tokenizer

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]

RECIPE = "mvot_tiny"


def test_mvot_fsdp_two_ranks_match_one_process_and_resume_exactly(tmp_path, tmp_path_factory, tokenizer_dir):
    args = mvot_overrides(tokenizer_dir, steps=6) + ["checkpoint.every=3", "data.seq_len=176"] + DETERMINISTIC
    one_dir = reference(tmp_path_factory, "mvot_1proc", args, 1, RECIPE)
    two_dir = reference(tmp_path_factory, "mvot_2rank", args + FSDP, 2, RECIPE)
    one, two = losses(one_dir), losses(two_dir)
    assert sorted(one) == sorted(two) == list(range(1, 7))
    assert max(abs(one[s] - two[s]) for s in one) <= 1e-4
    # the tokenizer inside the model is the trained one, untouched by training
    model = load_model(two_dir)[0]
    assert torch.equal(model.images.codebook, load_tokenizer(str(tokenizer_dir)).codebook)

    resumed = resume_without_newest(two_dir, tmp_path / "resumed", args + FSDP, 2, RECIPE)  # from step 3
    assert losses(resumed) == two

"""The VQ image tokenizer (model/vq_image.py) trained by `blt train vq_image_tokenizer_tiny`."""

import numpy as np
import pytest
import torch

from blt_scale.data.gridworld import load_tokenizer, render
from blt_scale.data.loader import build_loader
from blt_scale.model.vq_image import VQImageConfig
from blt_scale.train.recipe import saved_recipe


def test_reconstruction_beats_predicting_the_mean(tokenizer_dir):
    cfg = saved_recipe(tokenizer_dir)
    tok = load_tokenizer(str(tokenizer_dir))
    loader = iter(build_loader(cfg.data, cfg.patcher, 64, "val", 0, 1, seed=1))
    images = torch.cat([next(loader)["images"] for _ in range(2)])
    error = float((tok.decode(tok.encode(images)) - images).pow(2).mean())
    baseline = float((images - images.mean(0, keepdim=True)).pow(2).mean())  # the mean image
    assert error < 0.8 * baseline, (error, baseline)


def test_codes_per_cell_kind(tokenizer_dir):
    tok = load_tokenizer(str(tokenizer_dir))
    kinds = np.arange(16).reshape(4, 4) % 6
    codes = tok.encode(render(kinds[None], 4))
    assert codes.shape == (1, 16) and int(codes.max()) < 64
    # a cell's code depends on its kind only (each patch is coded on its own)
    for k in range(6):
        assert len(set(codes[0][torch.from_numpy(kinds.reshape(-1) == k)].tolist())) == 1
    with pytest.raises(ValueError, match="shape"):
        tok.encode(torch.zeros(1, 3, 8, 8))


def test_config_errors():
    with pytest.raises(ValueError, match="multiple of patch"):
        VQImageConfig(image_size=10, patch=4)
    with pytest.raises(ValueError, match="quantizers must be 1"):
        VQImageConfig(rvq={"quantizers": 2})
    with pytest.raises(ValueError, match="at most 256"):
        VQImageConfig(rvq={"quantizers": 1, "codebook_size": 300})

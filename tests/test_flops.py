"""The FLOP function against what torch's FlopCounterMode counts in a real forward pass."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from blt_scale.data.builtin import stdlib_documents
from blt_scale.data.packing import pack
from blt_scale.model.attention import causal_mask
from blt_scale.model.build import build_model
from blt_scale.model.flops import mean_visible_keys, model_flops
from blt_scale.model.patcher import patch_lengths
from blt_scale.train.recipe import load_recipe

MATMULS = {"aten.mm", "aten.addmm", "aten.bmm"}


def real_batch(seq_len: int, rows: int = 2) -> torch.Tensor:
    packed = pack(stdlib_documents(2_000_000), seq_len)
    return torch.from_numpy(np.stack([next(packed) for _ in range(rows)]))


def counted_linear(model, ids, lengths) -> float:
    # SDPA is counted under its own op names, so the matmul ops are exactly the weight products.
    with FlopCounterMode(display=False) as counter:
        model(ids, lengths)
    counts = counter.get_flop_counts()["Global"]
    return float(sum(v for k, v in counts.items() if str(k) in MATMULS))


THREE_LAYER_ALL_CROSS = [
    "model.encoder.layers=3",
    "model.encoder.cross_attn_all_layers=true",
    "model.decoder.layers=3",
    "model.decoder.cross_attn_all_layers=true",
    "model.global.layers=3",
]


@pytest.mark.parametrize("overrides", [[], THREE_LAYER_ALL_CROSS], ids=["cpu_tiny", "3-layer-all-cross"])
def test_linear_flops_equal_counted_matmuls(overrides):
    cfg = load_recipe("cpu_tiny", overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    ids = real_batch(cfg.data.seq_len, rows=1)  # one row: no padding patches
    lengths = patch_lengths(ids, cfg.patcher)
    mean_patch = ids.shape[1] / lengths.shape[1]
    assert 2 < mean_patch < 16  # real space patches, not a degenerate case
    report = model_flops(cfg.model, cfg.data.seq_len, mean_patch)
    predicted = sum(report.linear.values()) * ids.numel()
    assert predicted == pytest.approx(counted_linear(model, ids, lengths), rel=0.01)


def test_byte_baseline_linear_flops_equal_counted_matmuls():
    cfg = load_recipe("cpu_tiny_baseline")
    model = build_model(cfg.model)
    ids = real_batch(cfg.data.seq_len)
    predicted = sum(model_flops(cfg.model, cfg.data.seq_len).linear.values()) * ids.numel()
    assert predicted == pytest.approx(counted_linear(model, ids, None), rel=0.01)


@pytest.mark.parametrize("length,window", [(1, None), (100, None), (100, 7), (64, 64), (50, 200)])
def test_visible_keys_equal_the_attention_mask(length, window):
    mask = causal_mask(length, window, None, torch.device("cpu"))
    assert mean_visible_keys(length, window) == pytest.approx(float(mask.sum()) / length)


def test_latent_cost_per_byte_falls_with_patch_size_and_lookups_are_free():
    cfg = load_recipe("blt_1b")
    small, large = model_flops(cfg.model, 8192, 4.0), model_flops(cfg.model, 8192, 8.0)
    assert small.linear["latent"] == pytest.approx(2 * large.linear["latent"])
    assert small.linear["local_decoder"] == large.linear["local_decoder"]
    assert "hash_embeddings" not in small.linear and small.params["hash_embeddings"] > 1e9
    assert small.train_per_byte == pytest.approx(3 * small.forward_per_byte)


def test_cli_json_reports_the_same_numbers():
    out = subprocess.run(
        [sys.executable, "-m", "blt_scale.cli", "flops", "blt_1b", "--patch-bytes", "4.5", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    got = json.loads(out.stdout)
    cfg = load_recipe("blt_1b")
    expected = model_flops(cfg.model, cfg.data.seq_len, 4.5)
    assert got["train_flops_per_byte"] == pytest.approx(expected.train_per_byte)
    assert got["total_params"] == expected.total_params

"""MVoT through the command line: `blt prep gridworld` shards that the MDS loader reads back into
image ids, training on them, and `blt generate` writing generated images as PNG files."""

import json
from types import SimpleNamespace

import pytest
import torch
from cli_helpers import blt
from matplotlib.image import imread
from mvot_helpers import mvot_overrides

from blt_scale.checkpoint.restore import load_model
from blt_scale.cli.generate import show_with_images
from blt_scale.data.gridworld import (
    GridWorldConfig,
    load_tokenizer,
    make_trace,
    prompt_and_answer,
    tokenizer_codes,
    trace_bytes,
)
from blt_scale.data.loader import build_loader
from blt_scale.data.store import open_complete
from blt_scale.model.generate import Generation
from blt_scale.model.mvot import IMAGE_MARK, IMAGE_OFFSET
from blt_scale.model.vocab import EOS, OFFSET
from blt_scale.train.recipe import load_recipe

pytestmark = pytest.mark.slow


def test_prep_train_generate_pngs(tmp_path, tokenizer_dir):
    data, prompts = tmp_path / "lake", tmp_path / "prompts"
    blt(
        "prep",
        "gridworld",
        "--tokenizer",
        str(tokenizer_dir),
        "--out",
        str(data),
        "--traces",
        "32",
        "--val-traces",
        "4",
        "--prompts-out",
        str(prompts),
        "--texture",
        "0.3",
    )
    manifest = open_complete(str(data))[1]
    assert manifest["kind"] == "gridworld" and manifest["splits"]["train"]["documents"] == 32
    assert sorted(p.name for p in prompts.iterdir())[:2] == ["000.answer", "000.bin"]
    world = GridWorldConfig(texture=0.3)
    codes_of = tokenizer_codes(load_tokenizer(str(tokenizer_dir)), world)
    expected = prompt_and_answer(trace_bytes(make_trace(world, 0, "val", 0), world, codes_of))[0]
    assert (prompts / "000.bin").read_bytes() == expected  # the textured lake's codes

    args = mvot_overrides(tokenizer_dir, steps=4) + [f"data.sources=[{{uri: {data}}}]", "data.gridworld=null"]
    cfg = load_recipe("mvot_tiny", args)
    tokens = next(iter(build_loader(cfg.data, cfg.patcher, 4, "train", 0, 1)))["tokens"]
    assert (tokens >= IMAGE_OFFSET).any() and int(tokens.max()) < IMAGE_OFFSET + 64
    assert not (tokens == IMAGE_MARK + OFFSET).any()  # every mark became an image id

    run = tmp_path / "run"
    blt("train", "mvot_tiny", *args, f"run_dir={run}")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss_image"] > 0 and r["discrepancy"] > 0 for r in rows if "grad_norm" in r)
    blt("export", str(run), "--out", str(tmp_path / "export"))
    # `blt eval --json` reports the image-token CE and L_D per image target beside bpb: the same
    # figures as an independent computation over the same validation batch.
    reported = json.loads(blt("eval", str(tmp_path / "export"), "--batches", "1", "--json").stdout)
    model = load_model(tmp_path / "export")[0]
    batch = next(iter(build_loader(cfg.data, cfg.patcher, 4, "val", 0, 1, cfg.train.seed)))
    with torch.no_grad():
        logits = model(batch["tokens"][:, :-1], batch["patch_lengths"]).double()
    targets = batch["tokens"][:, 1:]
    image = targets >= IMAGE_OFFSET
    picked, codes = logits[image], targets[image] - IMAGE_OFFSET
    image_ce = -picked.log_softmax(-1)[torch.arange(len(codes)), IMAGE_OFFSET + codes].mean()
    codebook = model.images.codebook.double()
    mse = ((codebook[codes][:, None, :] - codebook[None]) ** 2).mean(-1)  # S(t_i, e_k)
    p_image = picked[:, IMAGE_OFFSET:].softmax(-1)
    assert reported["loss_image"] == pytest.approx(float(image_ce), rel=1e-4)
    assert reported["discrepancy"] == pytest.approx(float((mse * p_image).sum(-1).mean()), rel=1e-4)
    out = blt(
        "generate",
        str(tmp_path / "export"),
        "--prompt-file",
        str(prompts / "000.bin"),
        "--images",
        str(tmp_path / "images"),
        "--max-bytes",
        "40",
        "--json",
        "--temperature",
        "1",
    )
    row = json.loads(out.stdout)  # 4 training steps: the generated part may hold no whole image
    assert len(row["prompt_images"]) == 1 and imread(row["prompt_images"][0]).shape[:2] == (128, 128)
    for path in row["images"]:
        assert f"[image: {path}]" in row["text"] and imread(path).shape[:2] == (128, 128)


def test_generated_images_become_pngs(tmp_path, tokenizer_dir, capsys):
    """show_with_images on a made-up generation: text, one whole image, then a cut-off one."""
    model = load_model(str(tokenizer_dir))[0]
    holder = SimpleNamespace(images=model)  # what show_with_images reads of an mvot model
    codes = list(range(IMAGE_OFFSET, IMAGE_OFFSET + 16))
    ids = [OFFSET + ord("R"), *codes, OFFSET + ord(" "), *codes[:5], EOS]
    gen = Generation(ids, b"R ", 0.0, 0.0, None)
    args = SimpleNamespace(images=str(tmp_path / "png"), json=True)
    assert show_with_images(args, holder, [b"go"], [gen]) == 0
    row = json.loads(capsys.readouterr().out)
    path = str(tmp_path / "png" / "000_0.png")
    assert row["images"] == [path] and row["prompt_images"] == []
    assert row["text"] == f"R[image: {path}] [incomplete image: 5 of 16 codes]"
    expected = model.decode(torch.arange(16)[None])[0].permute(1, 2, 0)
    assert torch.allclose(torch.from_numpy(imread(path)[::8, ::8, :3]).float(), expected, atol=1 / 255 + 1e-6)
    args.json = False
    assert show_with_images(args, holder, [b"go"], [gen]) == 0
    assert capsys.readouterr().out == f"goR[image: {path}] [incomplete image: 5 of 16 codes]\n"

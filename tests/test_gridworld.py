"""Grid-world traces (data/gridworld.py): deterministic, right about the goal, and dealt like the
embedded corpus (same rows at any world size, exact resume)."""

import numpy as np
import pytest
import torch

from blt_scale.data.gridworld import (
    AGENT,
    AGENT_AT_GOAL,
    AGENT_IN_HOLE,
    COLOURS,
    GOAL,
    GridWorldConfig,
    _walk,
    answer_of,
    make_trace,
    prompt_and_answer,
    render,
    trace_bytes,
)
from blt_scale.data.loader import DataConfig, build_loader
from blt_scale.model.mvot import IMAGE_OFFSET, stream_ids
from blt_scale.model.patcher import PatcherConfig
from blt_scale.model.vocab import BOS, PAD

WORLD = GridWorldConfig()


def fake_codes(states: np.ndarray, shades=None) -> np.ndarray:
    """One code per cell: its kind (what a perfect tokenizer of these images could give)."""
    return states.reshape(len(states), -1)


def test_traces_are_deterministic_and_follow_the_rules():
    a, b = make_trace(WORLD, 3, "train", 7), make_trace(WORLD, 3, "train", 7)
    assert a.moves == b.moves and all((x == y).all() for x, y in zip(a.states, b.states))
    assert (
        make_trace(WORLD, 3, "val", 7).moves != a.moves
        or not (make_trace(WORLD, 3, "val", 7).states[0] == a.states[0]).all()
    )
    holes = np.zeros((3, 3), dtype=bool)
    holes[1, 1] = True
    assert _walk(holes, (2, 2), (0, 0), "RRDD").reached
    fell = _walk(holes, (2, 2), (0, 0), "DRRD")  # into the hole at (1, 1): stays there
    assert not fell.reached and fell.states[-1][1, 1] == AGENT_IN_HOLE
    edge = _walk(holes, (2, 2), (0, 0), "UL")  # off the lake: stays at the start
    assert edge.states[-1][0, 0] == AGENT and edge.states[-1][2, 2] == GOAL
    assert _walk(holes, (0, 1), (0, 0), "RR").states[-1][0, 1] == AGENT_AT_GOAL  # stops at the goal
    reached = [make_trace(WORLD, 0, "train", i).reached for i in range(400)]
    assert 0.2 < np.mean(reached) < 0.6  # both answers are common


def test_trace_bytes_prompt_and_answer():
    trace = make_trace(WORLD, 0, "train", 1)
    data = trace_bytes(trace, WORLD, fake_codes)
    prompt, rest = prompt_and_answer(data)
    assert prompt.startswith(b"Lake 4x4:\xff") and prompt.endswith(
        f" Moves: {' '.join(trace.moves)}.".encode()
    )
    assert answer_of(rest) == ("yes" if trace.reached else "no")
    ids = stream_ids(data)
    assert int((ids >= IMAGE_OFFSET).sum()) == 16 * (1 + len(trace.moves))
    flat = trace_bytes(trace, WORLD.model_copy(update={"interleave": False}), fake_codes)
    assert int((stream_ids(flat) >= IMAGE_OFFSET).sum()) == 16 and answer_of(flat) == answer_of(data)
    assert answer_of(b" Goal? maybe") is None


def test_images_show_one_colour_per_cell():
    img = render(np.array([[0, 1], [2, 3]]), 3)
    assert img.shape == (3, 6, 6) and 0 <= float(img.min()) and float(img.max()) <= 1
    assert torch.equal(img[:, 3:, :3], img[:, 3:4, 0:1].expand(3, 3, 3))


def test_texture_changes_brightness_only_and_afresh_per_image():
    """texture t scales each cell's colour by a brightness in [1 - t, 1 + t], drawn per cell and
    image; the lake, the moves and the states are those of the flat world."""
    flat, textured = (
        make_trace(WORLD, 0, "train", 5),
        make_trace(WORLD.model_copy(update={"texture": 0.3}), 0, "train", 5),
    )
    assert flat.shades is None and textured.moves == flat.moves
    assert all((a == b).all() for a, b in zip(flat.states, textured.states))
    shades = textured.shades
    assert shades.shape == (len(flat.states), 4, 4) and 0.7 <= shades.min() and shades.max() <= 1.3
    assert not np.allclose(shades[0], shades[1])  # afresh for every image
    images = render(np.stack(flat.states), 2, shades)
    expected = np.clip(COLOURS[flat.states[1][2, 3]] * shades[1, 2, 3], 0, 1)
    assert np.allclose(images[1, :, 4:6, 6:8].numpy(), expected[:, None, None])
    world = WORLD.model_copy(update={"texture": 0.3})
    batch = next(
        iter(build_loader(DataConfig(seq_len=768, gridworld=world), PatcherConfig(), 3, "train", 0, 1))
    )
    assert batch["images"].shape == (3, 3, 16, 16)
    assert len(torch.unique(batch["images"][:, 0])) > 6 * 3  # more shades than cell kinds


@pytest.mark.parametrize("world_size", [1, 2])
def test_loader_deals_one_order_and_resumes(world_size, tokenizer_dir):
    cfg = DataConfig(seq_len=192, gridworld=GridWorldConfig(tokenizer=str(tokenizer_dir)))
    patcher = PatcherConfig(mode="space", max_patch_len=8)
    one = iter(build_loader(cfg, patcher, 4, "train", 0, 1, seed=5))
    first = [next(one)["tokens"] for _ in range(3)]
    loaders = [
        build_loader(cfg, patcher, 4 // world_size, "train", r, world_size, seed=5) for r in range(world_size)
    ]
    its = [iter(x) for x in loaders]
    got = [torch.cat([next(it)["tokens"] for it in its]) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(first, got))
    resumed = build_loader(cfg, patcher, 4, "train", 0, 1, seed=5)
    resumed.load_state_dict(loaders[0].state_dict())
    batch = next(iter(resumed))
    assert torch.equal(batch["tokens"], first[2]) and (batch["tokens"][:, -1] == PAD).all()
    assert (batch["patch_lengths"].sum(1) == 192).all()


def test_bad_settings_are_one_clear_error(tokenizer_dir):
    cfg = DataConfig(seq_len=32, gridworld=GridWorldConfig(tokenizer=str(tokenizer_dir)))
    with pytest.raises(ValueError, match="data.seq_len"):
        next(iter(build_loader(cfg, PatcherConfig(), 2, "train", 0, 1)))
    cfg = DataConfig(seq_len=192, gridworld=GridWorldConfig(tokenizer=str(tokenizer_dir), cell_pixels=3))
    with pytest.raises(ValueError, match="16-pixel images"):
        build_loader(cfg, PatcherConfig(), 2, "train", 0, 1)


@pytest.mark.parametrize("fmt", ["mds", "wds"])
def test_prepared_traces_read_back_with_image_ids_in_either_format(fmt, tmp_path, tokenizer_dir):
    """`blt prep gridworld --format F`: every whole document in a loaded row is one of the written
    traces, its 0xFF c pairs read as image ids (MDS in order, webdataset resampled)."""
    from blt_scale.data.gridworld import load_tokenizer, tokenizer_codes
    from blt_scale.data.loader import SourceConfig
    from blt_scale.data.prep_gridworld import GridWorldPrepConfig, prep_gridworld

    world = GridWorldConfig(tokenizer=str(tokenizer_dir))
    out = tmp_path / fmt
    manifest = prep_gridworld(
        GridWorldPrepConfig(world=world, out=str(out), format=fmt, traces=12, val_traces=2)
    )
    assert manifest["format"] == fmt and manifest["kind"] == "gridworld"
    codes_of = tokenizer_codes(load_tokenizer(str(tokenizer_dir)), world)
    written = {
        tuple(stream_ids(trace_bytes(make_trace(world, 0, "train", i), world, codes_of), bos=True, eos=True))
        for i in range(12)
    }
    cfg = DataConfig(seq_len=400, sources=[SourceConfig(uri=str(out))])
    batch = next(
        iter(build_loader(cfg, PatcherConfig(mode="space", max_patch_len=8), 4, "train", 0, 1, seed=3))
    )
    whole = 0
    for row in batch["tokens"].tolist():
        starts = [i for i, t in enumerate(row) if t == BOS]
        for a, b in zip(starts, starts[1:]):  # a document that ends before the next one starts
            assert tuple(row[a:b]) in written
            whole += 1
    assert whole >= 4 and (batch["tokens"] >= IMAGE_OFFSET).any()

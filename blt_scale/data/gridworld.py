"""Synthetic spatial-reasoning traces like MVoT's FrozenLake task, and their images.

A trace: a square lake of `size`×`size` cells (floor, holes, one goal, the agent's start), a list
of moves, and whether the agent reaches the goal. The agent stops where it falls into a hole or
reaches the goal; a move off the lake leaves it in place. Half of the traces walk a shortest path
to the goal (holes ignored: the answer then depends on whether the path crosses one), half move at
random. As bytes, with ⟨img⟩ the tokenizer's codes of a state image (model/mvot.py's byte form):

    Lake 4x4:⟨img⟩ Moves: R D D R. R⟨img⟩ D⟨img⟩ D⟨img⟩ R⟨img⟩ Goal? yes

`interleave: false` leaves out the state images after the moves (" R D D R" is not repeated
either): the model must answer from the first image and the moves alone. Everything depends only
on (seed, split, index), so a trace is the same on every machine and rank.

States are drawn as `cell_pixels`² squares of one colour per cell kind (COLOURS); the VQ image
tokenizer (model/vq_image.py) learns to code them, and trains on the states of these traces.
`texture` > 0 scales each cell's colour by a brightness drawn afresh for every image (like sensor
noise), so a cell kind is coded by several nearby codes and the true code is uncertain within its
kind: the case of a large codebook, where MVoT's discrepancy loss is meant to help.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field

from blt_scale.config import Config
from blt_scale.model.mvot import image_bytes, stream_ids
from blt_scale.model.patcher import patch_lengths
from blt_scale.model.vocab import PAD

FLOOR, HOLE, GOAL, AGENT, AGENT_IN_HOLE, AGENT_AT_GOAL = range(6)
COLOURS = (
    np.array(
        [[220, 220, 220], [40, 70, 170], [240, 200, 40], [200, 30, 30], [90, 20, 60], [40, 170, 60]],
        dtype=np.float32,
    )
    / 255.0
)
MOVES = {"R": (0, 1), "L": (0, -1), "U": (-1, 0), "D": (1, 0)}
SPLIT_SEEDS = {"train": 0, "val": 1}
ANSWER = " Goal? "


class GridWorldConfig(Config):
    size: int = Field(default=4, ge=2, le=9, description="cells per side of the lake")
    cell_pixels: int = Field(default=4, gt=0, description="pixels per side of a cell in state images")
    holes: float = Field(default=0.2, ge=0, lt=1, description="chance that a cell is a hole")
    max_moves: int = Field(default=6, gt=0, description="most moves of a trace")
    texture: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="each cell's colour is scaled by a brightness drawn uniformly in "
        "[1 - texture, 1 + texture] afresh for every image (channels clipped at 1); 0: flat colours",
    )
    interleave: bool = Field(default=True, description="a state image after every move (MVoT); false: none")
    tokenizer: str | None = Field(
        default=None,
        description="a trained VQ image tokenizer (run directory or export) that codes the state images: "
        "batches are traces of ids. None: batches are the state images themselves (tokenizer training)",
    )

    @property
    def image_size(self) -> int:
        return self.size * self.cell_pixels


@dataclass
class Trace:
    states: list[np.ndarray]  # cell kinds [size, size]: the start, then after each move
    moves: str
    reached: bool
    shades: np.ndarray | None = None  # brightness [len(states), size, size]; None: flat colours


def _walk(holes: np.ndarray, goal: tuple, start: tuple, moves: str) -> Trace:
    n = holes.shape[0]
    pos, states, done = start, [], False

    def draw() -> np.ndarray:
        grid = np.where(holes, HOLE, FLOOR)
        grid[goal] = GOAL
        grid[pos] = AGENT_IN_HOLE if holes[pos] else AGENT_AT_GOAL if pos == goal else AGENT
        return grid

    states.append(draw())
    for m in moves:
        if not done:
            r, c = pos[0] + MOVES[m][0], pos[1] + MOVES[m][1]
            pos = (r, c) if 0 <= r < n and 0 <= c < n else pos
            done = bool(holes[pos]) or pos == goal
        states.append(draw())
    return Trace(states, moves, pos == goal)


def make_trace(cfg: GridWorldConfig, seed: int, split: str, index: int) -> Trace:
    rng = np.random.default_rng([seed, SPLIT_SEEDS[split], index])
    n = cfg.size
    cells = rng.permutation(n * n)[:2]
    start, goal = divmod(int(cells[0]), n), divmod(int(cells[1]), n)
    holes = rng.random((n, n)) < cfg.holes
    holes[start] = holes[goal] = False
    if rng.random() < 0.5:  # a shortest path, holes ignored, in a random order of its steps
        dr, dc = goal[0] - start[0], goal[1] - start[1]
        steps = list("D" * dr + "U" * -dr + "R" * dc + "L" * -dc)
        moves = "".join(rng.permutation(steps)[: cfg.max_moves]) if steps else "R"
    else:
        count = int(rng.integers(1, cfg.max_moves + 1))
        moves = "".join(rng.choice(list(MOVES), size=count))
    trace = _walk(holes, goal, start, moves)
    if cfg.texture > 0:  # its own stream: the traces of texture 0 stay as they were
        shade_rng = np.random.default_rng([seed, SPLIT_SEEDS[split], index, 2])
        trace.shades = 1 + cfg.texture * shade_rng.uniform(-1, 1, (len(trace.states), n, n))
    return trace


def render(states: np.ndarray, cell_pixels: int, shades: np.ndarray | None = None) -> torch.Tensor:
    """Cell kinds [..., n, n] (and their brightness, same shape) -> RGB images [..., 3, n·p, n·p] in
    [0, 1]."""
    colours = COLOURS[states]
    if shades is not None:
        colours = np.clip(colours * shades[..., None], 0, 1).astype(np.float32)
    img = colours.repeat(cell_pixels, axis=-3).repeat(cell_pixels, axis=-2)
    return torch.from_numpy(np.moveaxis(img, -1, -3).copy())


def trace_bytes(trace: Trace, cfg: GridWorldConfig, codes_of) -> bytes:
    """The trace as bytes; codes_of(states [S, n, n], shades) -> visual codes [S, codes per image]."""
    codes = [image_bytes(c) for c in codes_of(np.stack(trace.states), trace.shades)]
    out = [f"Lake {cfg.size}x{cfg.size}:".encode(), codes[0], f" Moves: {' '.join(trace.moves)}.".encode()]
    if cfg.interleave:
        for m, img in zip(trace.moves, codes[1:]):
            out += [f" {m}".encode(), img]
    out.append(f"{ANSWER}{'yes' if trace.reached else 'no'}".encode())
    return b"".join(out)


def prompt_and_answer(data: bytes) -> tuple[bytes, bytes]:
    """A trace's prompt (lake and moves, up to the '.' after them) and the rest the model must write."""
    cut = data.index(b".", data.index(b" Moves: ")) + 1
    return data[:cut], data[cut:]


def answer_of(text: bytes) -> str | None:
    """'yes' or 'no' from what follows ' Goal? ' in a generated trace; None when it never says."""
    at = text.rfind(ANSWER.encode())
    word = text[at + len(ANSWER) :].split(b" ")[0][:3] if at >= 0 else b""
    return word.decode() if word in (b"yes", b"no") else None


def load_tokenizer(path: str):
    """The VQ image tokenizer of a `vq_image` run or export (or the one inside an `mvot` model)."""
    from blt_scale.checkpoint.restore import load_model

    model, saved, where = load_model(path)
    if saved.model.kind == "mvot":
        model = model.images
    elif saved.model.kind != "vq_image":
        raise ValueError(
            f"{where}: not an image tokenizer (kind vq_image or mvot), got kind {saved.model.kind}"
        )
    return model.eval()


def tokenizer_codes(tokenizer, cfg: GridWorldConfig):
    """codes_of for trace_bytes: states -> the tokenizer's codes of their images."""
    if tokenizer.cfg.image_size != cfg.image_size:
        raise ValueError(
            f"the tokenizer reads {tokenizer.cfg.image_size}-pixel images; data.gridworld draws "
            f"{cfg.size} cells x {cfg.cell_pixels} = {cfg.image_size} pixels"
        )
    return lambda states, shades=None: tokenizer.encode(render(states, cfg.cell_pixels, shades)).numpy()


class GridWorldLoader:
    """Batches generated on the fly, dealt by a global cursor like the embedded corpus's loader
    (data/loader.py): step s uses items [s·G, (s+1)·G), G = micro_batch × world size, rank r taking
    its slice, so the state is one integer and resume is exact at any world size.

    Without a tokenizer an item is one state image of trace i (`images` [B, 3, H, W]); with one,
    trace i as ids (BOS + stream ids + EOS), right-padded with PAD to seq_len + 1 (`tokens`)."""

    def __init__(self, cfg, patcher, micro_batch: int, split: str, rank: int, world_size: int, seed: int):
        self.world, self.seq_len = cfg.gridworld, cfg.seq_len
        self.patcher, self.micro_batch, self.split = patcher, micro_batch, split
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.codes_of = None
        if self.world.tokenizer is not None:
            self.codes_of = tokenizer_codes(load_tokenizer(self.world.tokenizer), self.world)
        self.consumed = 0

    def item(self, index: int) -> np.ndarray:
        trace = make_trace(self.world, self.seed, self.split, index)
        if self.codes_of is None:
            pick = np.random.default_rng([self.seed, SPLIT_SEEDS[self.split], index, 1]).integers(
                len(trace.states)
            )
            shades = None if trace.shades is None else trace.shades[pick]
            return render(trace.states[pick], self.world.cell_pixels, shades).numpy()
        ids = stream_ids(trace_bytes(trace, self.world, self.codes_of), bos=True, eos=True)
        if len(ids) > self.seq_len + 1:
            raise ValueError(
                f"a grid-world trace takes {len(ids)} ids; data.seq_len ({self.seq_len}) must be at least "
                f"{len(ids) - 1} (or lower data.gridworld.max_moves)"
            )
        return np.pad(ids, (0, self.seq_len + 1 - len(ids)), constant_values=PAD)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            start = self.consumed + self.rank * self.micro_batch
            items = np.stack([self.item(start + i) for i in range(self.micro_batch)])
            self.consumed += self.micro_batch * self.world_size
            if self.codes_of is None:
                images = torch.from_numpy(items)
                yield {"images": images, "patch_lengths": torch.zeros(len(items), 1, dtype=torch.long)}
            else:
                tokens = torch.from_numpy(items)
                yield {"tokens": tokens, "patch_lengths": patch_lengths(tokens[:, :-1], self.patcher)}

    def state_dict(self) -> dict:
        return {"consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.consumed = int(state["consumed"])

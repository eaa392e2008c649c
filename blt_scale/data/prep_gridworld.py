"""`blt prep gridworld`: grid-world traces (gridworld.py) with their state images coded by a trained
VQ image tokenizer, written as MDS (default) or webdataset shards by the same part/manifest machinery
as `blt prep text`.

A trace is one document: its text bytes, and each image code c as the two bytes 0xFF, c
(model/mvot.py). The manifest says `kind: gridworld`, which tells either loader to read those pairs
back as image ids. Train traces are indices 0..traces-1 of the train seed stream, validation traces
indices of the val stream (gridworld.make_trace), so the two never share a seed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field

from blt_scale.config import Config
from blt_scale.data.assemble import PartStager, finalize, part_name, upload_part
from blt_scale.data.gridworld import (
    GridWorldConfig,
    load_tokenizer,
    make_trace,
    prompt_and_answer,
    tokenizer_codes,
    trace_bytes,
)
from blt_scale.data.prep_text import check_plan
from blt_scale.data.store import MANIFEST, PLAN, Root

KIND = "gridworld"  # the manifest kind whose documents hold image codes


class GridWorldPrepConfig(Config):
    world: GridWorldConfig = Field(description="the lake and trace layout; world.tokenizer codes the images")
    out: str = Field(description="dataset directory (local path or fsspec URI)")
    format: Literal["mds", "wds"] = Field(
        default="mds", description="mds (exact resume) or wds (webdataset tars, read resampled)"
    )
    traces: int = Field(gt=0, description="training traces")
    val_traces: int = Field(default=64, ge=0, description="validation traces")
    seed: int = 0
    shard_size: int = Field(default=64 << 20, gt=0, description="uncompressed bytes per shard")
    prompts_out: str | None = Field(
        default=None,
        description="also write each validation trace's prompt (lake and moves) as NNN.bin in this local "
        "directory, for `blt generate --prompt-file`, and its answer ('yes'/'no') as NNN.answer",
    )
    overwrite: bool = False


def write_prompts(cfg: GridWorldPrepConfig, directory: Path) -> None:
    codes_of = tokenizer_codes(load_tokenizer(cfg.world.tokenizer), cfg.world)
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(cfg.val_traces):
        trace = make_trace(cfg.world, cfg.seed, "val", i)
        prompt, _ = prompt_and_answer(trace_bytes(trace, cfg.world, codes_of))
        (directory / f"{i:03d}.bin").write_bytes(prompt)
        (directory / f"{i:03d}.answer").write_text("yes" if trace.reached else "no")


def prep_gridworld(cfg: GridWorldPrepConfig) -> dict:
    """Write (or find written) the traces; returns the manifest plus `converted_parts` (0 or 1)."""
    if cfg.world.tokenizer is None:
        raise ValueError("blt prep gridworld needs --tokenizer (a vq_image run directory or export)")
    root = Root(cfg.out)
    if cfg.overwrite:
        root.remove_dataset()  # only a dataset `blt prep` wrote
    plan = {"kind": KIND, "options": cfg.model_dump(exclude={"out", "overwrite", "prompts_out"})}
    check_plan(root, plan)
    if cfg.prompts_out is not None:
        write_prompts(cfg, Path(cfg.prompts_out))
    if root.is_complete():
        return {**root.read_json(MANIFEST), "converted_parts": 0}
    root.write_json(PLAN, plan)
    tokenizer = load_tokenizer(cfg.world.tokenizer)
    codes_of = tokenizer_codes(tokenizer, cfg.world)
    name = part_name(0, 1)  # traces are cheap: one part, no workers
    with tempfile.TemporaryDirectory(prefix="blt-prep-") as staging:
        stager = PartStager(cfg.format, staging, name, cfg.shard_size, with_entropy=False)
        for split, count in (("train", cfg.traces), ("val", cfg.val_traces)):
            for i in range(count):
                stager.write(
                    split, trace_bytes(make_trace(cfg.world, cfg.seed, split, i), cfg.world, codes_of)
                )
        upload_part(root, cfg.format, stager.finish())
    extra = {"kind": KIND, "columns": ["text"], "image_codes": tokenizer.cfg.rvq.codebook_size}
    return {**finalize(root, cfg.format, [name], extra), "converted_parts": 1}

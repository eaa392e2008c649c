"""`blt prep text`: convert text corpora into MDS or webdataset shards.

Input files are grouped, in sorted order, into parts of about `part_size` bytes; parts are
converted in parallel (`workers`) into local staging shards, uploaded, and marked done one by
one. Part boundaries depend on the inputs and options only, never on the number of workers, so
`--workers 2` writes the same documents in the same order as `--workers 1`.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import tempfile
import time
from typing import Literal

from pydantic import Field
from tqdm import tqdm

from blt_scale.config import Config, ConfigError
from blt_scale.data.assemble import PartStager, finalize, part_name, upload_part
from blt_scale.data.inputs import InputFile, ReadStats, expand_inputs, read_documents
from blt_scale.data.splits import is_validation
from blt_scale.data.store import MANIFEST, PARTS, PLAN, Root


class TextPrepConfig(Config):
    inputs: list[str] = Field(min_length=1, description="files, directories or globs (any fsspec URI)")
    out: str = Field(description="dataset directory (local path or fsspec URI)")
    format: Literal["mds", "wds"] = "mds"
    text_field: str = Field(default="text", description="jsonl key / parquet column of the text")
    val_fraction: float = Field(
        default=0.01, ge=0, lt=1, description="documents held out for validation, by hash"
    )
    shard_size: int = Field(default=64 << 20, gt=0, description="uncompressed bytes per shard")
    part_size: int = Field(
        default=16 << 20, gt=0, description="input bytes per part (unit of parallelism and resume)"
    )
    workers: int = Field(default=1, gt=0)
    skip_bad: bool = Field(default=False, description="count and skip malformed lines / unreadable files")
    overwrite: bool = False


def plan_parts(files: list[InputFile], part_size: int) -> list[list[int]]:
    parts: list[list[int]] = [[]]
    size = 0
    for i, f in enumerate(files):
        if parts[-1] and size + f.size > part_size:
            parts.append([])
            size = 0
        parts[-1].append(i)
        size += f.size
    return parts


def check_plan(root: Root, plan: dict) -> None:
    """Refuse to mix two different conversions in one directory. An unfinished conversion with
    other settings (say, re-run with --skip-bad after an error) is discarded and started over.
    A directory `blt prep` did not write is never touched."""
    if root.exists(PLAN):
        if not root.is_own():
            raise ValueError(
                f"{root.name(PLAN)}: not written by `blt prep` (no dataset kind in it); "
                "choose another --out, nothing was changed"
            )
        old = root.read_json(PLAN)
        if old != plan:
            keys = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
            if root.is_complete():
                raise ValueError(
                    f"{root.name(PLAN)}: this directory holds a different finished conversion "
                    f"(differs in {keys}); pass --overwrite to replace it"
                )
            root.remove_dataset()
    elif root.exists() and root.fs.ls(root.path):
        raise ValueError(
            f"{root.uri}: exists and is not a blt-scale dataset; pass --overwrite or choose another --out"
        )


_progress: mp.Queue | None = None


def _init_worker(progress: mp.Queue) -> None:
    global _progress
    _progress = progress


def _convert_part(cfg: TextPrepConfig, name: str, files: list[InputFile], staging: str) -> dict:
    stager = PartStager(cfg.format, staging, name, cfg.shard_size, with_entropy=False)
    stats = ReadStats()
    pending, last = [0, 0, 0], time.monotonic()
    for f in files:
        for doc in read_documents(f, cfg.text_field, cfg.skip_bad, stats):
            stager.write("val" if is_validation(doc, cfg.val_fraction) else "train", doc)
            pending[1] += 1
        pending[0] += 1
        pending[2] += f.size
        if time.monotonic() - last > 0.2:  # a queue message per small file would cost more than the file
            _progress.put(tuple(pending))
            pending, last = [0, 0, 0], time.monotonic()
    _progress.put(tuple(pending))
    return stager.finish(
        bad_lines=stats.bad_lines, empty_documents=stats.empty_documents, skipped_inputs=stats.skipped_inputs
    )


def convert_text(cfg: TextPrepConfig, progress: bool = True) -> dict:
    """Convert (or finish converting) cfg.inputs into cfg.out; returns the manifest plus
    `converted_parts`, the number of parts this call did (0 when it was already complete)."""
    root = Root(cfg.out)
    if cfg.overwrite:
        root.remove_dataset()  # only a dataset this tool wrote
    files = expand_inputs(cfg.inputs)
    if cfg.workers > 1 and any(f.uri.startswith("memory://") for f in files):
        raise ConfigError("memory:// inputs live in this process only: convert them with --workers 1")
    parts = plan_parts(files, cfg.part_size)
    options = cfg.model_dump(exclude={"inputs", "out", "workers", "overwrite"})
    plan = {"kind": "text", "options": options, "inputs": [[f.uri, f.size] for f in files], "parts": parts}
    check_plan(root, plan)
    if root.is_complete():
        return {**root.read_json(MANIFEST), "converted_parts": 0}
    root.write_json(PLAN, plan)
    names = [part_name(i, len(parts)) for i in range(len(parts))]
    todo = [i for i, n in enumerate(names) if not root.exists(f"{PARTS}/{n}.json")]
    bar = tqdm(
        total=sum(files[j].size for i in todo for j in parts[i]),
        unit="B",
        unit_scale=True,
        desc=f"prep text ({len(todo)}/{len(parts)} parts)",
        disable=not progress,
    )
    totals = [0, 0]
    with tempfile.TemporaryDirectory(prefix="blt-prep-") as staging:
        # Spawned, not forked: a fork of a process with threads (torch's, tqdm's monitor) can
        # inherit a lock held by one of them and hang forever (seen in the test suite).
        ctx = mp.get_context("spawn")
        progress_q = ctx.Queue()
        _init_worker(progress_q)
        jobs = [(cfg, names[i], [files[j] for j in parts[i]], staging) for i in todo]
        with (
            ctx.Pool(min(cfg.workers, max(len(jobs), 1)), _init_worker, (progress_q,))
            if cfg.workers > 1
            else _Inline() as pool
        ):
            pending = [pool.apply_async(_convert_part, job) for job in jobs]
            while pending:
                _drain(progress_q, bar, totals, wait=0.1 if cfg.workers > 1 else 0)
                for result in [r for r in pending if r.ready()]:
                    upload_part(root, cfg.format, result.get())  # re-raises a worker's error here
                    pending.remove(result)
            _drain(progress_q, bar, totals, wait=0.05)
    bar.close()
    manifest = finalize(root, cfg.format, names, {"kind": "text", "inputs": len(files), "columns": ["text"]})
    return {**manifest, "converted_parts": len(todo)}


def _drain(q: mp.Queue, bar: tqdm, totals: list[int], wait: float) -> None:
    try:
        while True:
            files, docs, size = q.get(timeout=wait) if wait else q.get_nowait()
            totals[0] += files
            totals[1] += docs
            bar.update(size)
            bar.set_postfix(files=totals[0], docs=totals[1], refresh=False)
            wait = 0
    except queue.Empty:
        pass


class _Inline:
    """Pool stand-in for one worker: runs each part when asked, in this process."""

    class _Done:
        def __init__(self, fn, args):
            self.fn, self.args = fn, args

        def ready(self) -> bool:
            return True

        def get(self):
            return self.fn(*self.args)

    def apply_async(self, fn, args):
        return self._Done(fn, args)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

"""Shared fixtures for the issue-3 data tests: corpora, a tiny exported entropy model, shard
readers that do not go through blt_scale's own reader, and a subprocess entry point that runs
one loader rank (`python tests/data_helpers.py loader ARGS_JSON`)."""

from __future__ import annotations

import gzip
import json
import os
import sys
import tarfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from blt_scale.model.vocab import BOS, EOS, OFFSET  # noqa: E402


def make_documents(n: int, seed: int = 0, lo: int = 20, hi: int = 300, tag: bytes = b"") -> list[bytes]:
    """Unique documents of random bytes (plenty of invalid UTF-8) with a readable header."""
    rng = np.random.default_rng(seed)
    return [
        tag + b"doc %05d|" % i + rng.integers(0, 256, int(rng.integers(lo, hi)), dtype=np.uint8).tobytes()
        for i in range(n)
    ]


def write_text_files(directory: Path, docs: list[bytes]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, doc in enumerate(docs):
        path = directory / f"f{i:05d}.txt"
        path.write_bytes(doc)
        paths.append(path)
    return paths


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    data = "".join(json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(texts)).encode()
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    elif path.name.endswith(".zst"):
        import zstandard

        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


def read_mds_split(local_path: str, split: str, tmp: Path) -> list[dict]:
    """Every sample of a local MDS split, decoded by mosaicml-streaming's own shard readers (not
    ours), each shard's xxh64 checked. Shards are read directly rather than through
    StreamingDataset, whose shared-memory handles stay open for the life of the process (hundreds
    per dataset: a whole suite of them runs out of file descriptors)."""
    from streaming.base.compression import decompress
    from streaming.base.format import reader_from_json
    from streaming.base.hashing import get_hash

    root = Path(local_path) / split
    local = tmp / f"shards_{split}"
    samples = []
    for shard in json.loads((root / "index.json").read_text())["shards"]:
        raw = shard["raw_data"]
        zipped = shard.get("zip_data")
        data = (root / (zipped or raw)["basename"]).read_bytes()
        if zipped:
            data = decompress(shard["compression"], data)
        assert get_hash("xxh64", data) == raw["hashes"]["xxh64"], raw["basename"]
        (local / raw["basename"]).parent.mkdir(parents=True, exist_ok=True)
        (local / raw["basename"]).write_bytes(data)
        reader = reader_from_json(str(local), None, shard)
        samples += [reader.get_item(i) for i in range(shard["samples"])]
    return samples


def read_wds_split(root: Path, split: str) -> list[bytes]:
    """Documents of a local webdataset split, read with tarfile, in the manifest's shard order."""
    manifest = json.loads((root / "manifest.json").read_text())
    docs = []
    for f in manifest["splits"][split].get("files", []):
        with tarfile.open(root / split / f["basename"]) as tar:
            docs += [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".bin")]
    return docs


def export_entropy_model(
    out: Path, seed: int = 0, window: int = 8, layers: int = 2, seq_len: int = 64, sharpen: float = 30.0
) -> Path:
    """A tiny random byte LM in the exported format. Its output layer is scaled up so entropies
    spread over a wide range instead of sitting near ln(259)."""
    import torch

    from blt_scale.checkpoint.export import save_exported
    from blt_scale.model.build import build_model
    from blt_scale.train.recipe import load_recipe

    cfg = load_recipe(
        "cpu_entropy_model",
        [
            "model.dim=32",
            f"model.layers={layers}",
            "model.heads=2",
            f"model.window={window}",
            f"data.seq_len={seq_len}",
        ],
    )
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    with torch.no_grad():
        model.output.weight.mul_(sharpen)
    return save_exported(model.state_dict(), cfg, out)


def stream_sequences(
    batches: list[dict], streams: list[int], micro_batch: int
) -> dict[int, list[np.ndarray]]:
    """Rows of one rank's batches grouped by stream, using the documented serving order: the
    rank cycles through its streams, micro-batch i row b coming from streams[(i*m + b) % k]."""
    out: dict[int, list[np.ndarray]] = {s: [] for s in streams}
    for i, batch in enumerate(batches):
        for b, row in enumerate(batch["tokens"].numpy()):
            out[streams[(i * micro_batch + b) % len(streams)]].append(row)
    return out


def split_documents(ids: np.ndarray) -> list[bytes]:
    """Complete BOS ... EOS documents of an id sequence, as bytes."""
    docs, start = [], None
    for pos in np.flatnonzero((ids == BOS) | (ids == EOS)):
        if ids[pos] == BOS:
            start = pos
        elif start is not None:
            docs.append(bytes((ids[start + 1 : pos] - OFFSET).astype(np.uint8)))
            start = None
    return docs


def _run_loader(args: dict) -> None:
    """Subprocess: one rank's loader; optionally load a state, take steps, save rows and state."""
    from blt_scale.data.loader import DataConfig, build_loader
    from blt_scale.model.patcher import PatcherConfig

    loader = build_loader(
        DataConfig(**args["data"]),
        PatcherConfig(**args.get("patcher", {})),
        args["micro_batch"],
        rank=args["rank"],
        world_size=args["world_size"],
        seed=args.get("seed", 0),
    )
    if args.get("state"):
        loader.load_state_dict(json.loads(Path(args["state"]).read_text()))
    it = iter(loader)
    tokens = np.stack([next(it)["tokens"].numpy() for _ in range(args["steps"])])
    np.save(args["out"] + ".npy", tokens)
    Path(args["out"] + ".json").write_text(json.dumps(loader.state_dict()))


if __name__ == "__main__":
    if sys.argv[1] == "loader":
        _run_loader(json.loads(sys.argv[2]))
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown of DataLoader workers: the result files are written

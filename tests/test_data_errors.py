"""Bad input: one clear error naming the file and line or shard, exit code 2, and no output
that looks complete."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from data_helpers import REPO, make_documents, write_jsonl, write_text_files

from blt_scale import cli
from blt_scale.data.loader import DataConfig, build_loader
from blt_scale.model.patcher import PatcherConfig
from blt_scale.train.exit_codes import EXIT_FAILED


@pytest.fixture(autouse=True)
def own_tmpdir(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def prep(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(["prep", "text", *args, "--quiet"])
    captured = capsys.readouterr()
    return code, captured.err if code else captured.out


def assert_not_complete(out: Path) -> None:
    for name in ("_COMPLETE", "manifest.json", "train/index.json", "val/index.json"):
        assert not (out / name).exists(), name


def bad_jsonl(path: Path) -> Path:
    path.write_text('{"text": "one"}\n{"text": "two"}\n{"text": "thr\n{"text": "four"}\n')
    return path


def test_malformed_jsonl_line(tmp_path, capsys):
    src = bad_jsonl(tmp_path / "a.jsonl")
    code, err = prep(capsys, str(src), "--out", str(tmp_path / "out"))
    assert code == 2 and f"{src}:3: not valid JSON" in err and len(err.strip().splitlines()) == 1
    assert_not_complete(tmp_path / "out")


def test_skip_bad_counts_lines_in_the_manifest(tmp_path, capsys):
    src = bad_jsonl(tmp_path / "a.jsonl")
    code, out = prep(capsys, str(src), "--out", str(tmp_path / "out"), "--skip-bad", "--val-fraction", "0")
    assert code == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["bad_lines"] == 1 and manifest["splits"]["train"]["documents"] == 3


def test_missing_text_field(tmp_path, capsys):
    src = write_jsonl(tmp_path / "a.jsonl", ["x", "y"], field="body")
    code, err = prep(capsys, str(src), "--out", str(tmp_path / "out"))
    assert code == 2 and f"{src}:1: no text field 'text'" in err and "body" in err
    assert_not_complete(tmp_path / "out")
    code, _ = prep(capsys, str(src), "--out", str(tmp_path / "out"), "--text-field", "body")
    assert code == 0


def test_unreadable_file(tmp_path, capsys):
    src = tmp_path / "a.jsonl.gz"
    src.write_bytes(gzip.compress(b'{"text": "fine"}\n' * 100)[:40])  # truncated gzip stream
    write_text_files(tmp_path / "more", make_documents(3))
    code, err = prep(capsys, str(src), str(tmp_path / "more"), "--out", str(tmp_path / "out"))
    assert code == 2 and f"{src}: truncated" in err
    assert_not_complete(tmp_path / "out")
    code, _ = prep(capsys, str(src), str(tmp_path / "more"), "--out", str(tmp_path / "out"), "--skip-bad")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert code == 0 and [s[0] for s in manifest["skipped_inputs"]] == [str(src)]


@pytest.mark.parametrize("make", ["empty files", "no match", "missing"])
def test_empty_corpus(tmp_path, capsys, make):
    (tmp_path / "src").mkdir()
    if make == "empty files":
        (tmp_path / "src" / "a.txt").write_bytes(b"")
        arg, expect = str(tmp_path / "src"), "empty corpus"
    else:
        arg = str(tmp_path / "src" / "*.jsonl") if make == "no match" else str(tmp_path / "nope")
        expect = arg
    code, err = prep(capsys, arg, "--out", str(tmp_path / "out"))
    assert code == 2 and expect in err
    assert_not_complete(tmp_path / "out")


def test_other_conversion_in_the_same_directory(tmp_path, capsys):
    write_text_files(tmp_path / "a", make_documents(3, seed=1))
    write_text_files(tmp_path / "b", make_documents(3, seed=2))
    assert prep(capsys, str(tmp_path / "a"), "--out", str(tmp_path / "out"))[0] == 0
    code, err = prep(capsys, str(tmp_path / "b"), "--out", str(tmp_path / "out"))
    assert code == 2 and "prep.json" in err and "--overwrite" in err


@pytest.fixture
def dataset(tmp_path, capsys) -> Path:
    write_text_files(tmp_path / "src", make_documents(40, seed=4, lo=100, hi=400))
    assert (
        prep(
            capsys,
            str(tmp_path / "src"),
            "--out",
            str(tmp_path / "ds"),
            "--val-fraction",
            "0",
            "--shard-size",
            "2KB",
        )[0]
        == 0
    )
    return tmp_path / "ds"


def first_batches(ds: Path, tmp_path: Path, n: int = 40, **kw) -> None:
    cfg = DataConfig(seq_len=64, sources=[{"uri": str(ds)}], cache_dir=str(tmp_path / "cache"), **kw)
    it = iter(build_loader(cfg, PatcherConfig(), 4))
    for _ in range(n):
        next(it)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_shard_is_named_at_load_time(dataset, tmp_path, damage):
    shard = sorted((dataset / "train").rglob("*.mds.zstd"))[1]
    data = shard.read_bytes()
    if damage == "flip":
        shard.write_bytes(data[:20] + bytes([data[20] ^ 0xFF]) + data[21:])
    elif damage == "truncate":
        shard.write_bytes(data[: len(data) // 2])
    else:
        shard.unlink()
    expect = {"flip": "corrupted", "truncate": "truncated", "delete": "missing"}[damage]
    with pytest.raises((ValueError, FileNotFoundError), match=expect) as info:
        first_batches(dataset, tmp_path)
    assert shard.relative_to(dataset).as_posix() in str(info.value)


def test_damaged_shard_stops_training_with_one_line(dataset, tmp_path):
    for shard in sorted((dataset / "train").rglob("*.mds.zstd")):  # whichever the first batch reads
        shard.write_bytes(shard.read_bytes()[:-10])
    cmd = [
        str(REPO / ".venv/bin/blt"),
        "train",
        "cpu_tiny",
        f"run_dir={tmp_path / 'run'}",
        "train.steps=1",
        "train.micro_batch=2",
        "train.global_batch=2",
        f"data.sources=[{{uri: {dataset}}}]",
        "data.seq_len=64",
        f"data.cache_dir={tmp_path / 'cache'}",
        "train.peak_flops=1e12",
        "wandb.enabled=false",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if "truncated" in line]
    # a damaged input is a failure (1), not a recipe error (2) and not a stop to requeue (75)
    assert proc.returncode == EXIT_FAILED and len(lines) == 1
    assert "shard.0000" in lines[0] and str(dataset) in lines[0]
    assert "Traceback" not in proc.stderr


def test_shard_errors_from_loader_workers_are_one_line(dataset, tmp_path):
    shard = sorted((dataset / "train").rglob("*.mds.zstd"))[0]
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated") as info:
        first_batches(dataset, tmp_path, workers=2)
    assert "\n" not in str(info.value) and shard.name in str(info.value)


def test_unfinished_dataset_is_refused(dataset, tmp_path):
    (dataset / "_COMPLETE").unlink()
    with pytest.raises(ValueError, match="not finished"):
        first_batches(dataset, tmp_path)


def test_entropy_patching_needs_entropy_shards(dataset, tmp_path):
    cfg = DataConfig(seq_len=64, sources=[{"uri": str(dataset)}], cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="no entropies"):
        build_loader(cfg, PatcherConfig(mode="entropy"), 2)


def test_webdataset_refuses_exact_resume(tmp_path, capsys):
    write_text_files(tmp_path / "src", make_documents(30, seed=6))
    assert (
        prep(
            capsys,
            str(tmp_path / "src"),
            "--out",
            str(tmp_path / "wds"),
            "--format",
            "wds",
            "--shard-size",
            "2KB",
            "--val-fraction",
            "0",
        )[0]
        == 0
    )
    cfg = DataConfig(seq_len=64, sources=[{"uri": str(tmp_path / "wds")}])
    loader = build_loader(cfg, PatcherConfig(), 2, rank=1, world_size=2)
    batch = next(iter(loader))
    assert batch["tokens"].shape == (2, 65) and (batch["patch_lengths"].sum(1) == 64).all()
    state = loader.state_dict()
    with pytest.raises(ValueError, match="cannot resume exactly"):
        build_loader(cfg, PatcherConfig(), 2).load_state_dict(state)


class _Payload:
    """Unpickling this creates a file: proof that code from the data ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_column_in_an_mds_index_is_refused_before_anything_runs(tmp_path):
    from streaming import MDSWriter

    marker = tmp_path / "pwned"
    ds = tmp_path / "ds"
    with MDSWriter(columns={"text": "pkl"}, out=str(ds / "train")) as w:
        w.write({"text": _Payload(str(marker))})
    (ds / "manifest.json").write_text(json.dumps({"format": "mds", "splits": {}}))
    (ds / "_COMPLETE").write_text("")
    cfg = DataConfig(seq_len=16, sources=[{"uri": str(ds)}], streams=2, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"declares column encodings \['pkl'\]"):
        next(iter(build_loader(cfg, PatcherConfig(), 2, seed=0)))
    assert not marker.exists()


def test_truncated_compressed_inputs_are_errors_or_counted_skips(tmp_path, capsys):
    import zstandard

    lines = [json.dumps({"text": f"document {i} " + "x" * 200}).encode() + b"\n" for i in range(3000)]
    first, second = b"".join(lines[:1500]), b"".join(lines[1500:])
    frames = zstandard.ZstdCompressor().compress(first) + zstandard.ZstdCompressor().compress(second)
    cut_inside = frames[: len(frames) - 500]  # mid-way through the last frame's blocks
    header_only = frames[: len(zstandard.ZstdCompressor().compress(first)) + 6]  # the next frame just begun
    gz = gzip.compress(first)[:-20]
    write_text_files(tmp_path / "more", make_documents(3))  # the corpus is not only the cut file
    for name, data in (
        ("inside.jsonl.zst", cut_inside),
        ("header.jsonl.zst", header_only),
        ("cut.jsonl.gz", gz),
    ):
        src = tmp_path / name
        src.write_bytes(data)
        out = tmp_path / f"out-{name}"
        assert cli.main(["prep", "text", str(src), str(tmp_path / "more"), "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert name in err and "truncated" in err and "\n" not in err, err
        assert not (out / "_COMPLETE").exists()
        assert (
            cli.main(
                [
                    "prep",
                    "text",
                    str(src),
                    str(tmp_path / "more"),
                    "--out",
                    str(out),
                    "--quiet",
                    "--skip-bad",
                    "--overwrite",
                ]
            )
            == 0
        )
        manifest = json.loads((out / "manifest.json").read_text())
        assert [s[0] for s in manifest["skipped_inputs"]] == [str(src)] and "truncated" in manifest[
            "skipped_inputs"
        ][0][1]


def test_a_flipped_byte_in_a_webdataset_shard_is_caught(tmp_path):
    write_text_files(tmp_path / "src", make_documents(30, seed=2))
    assert (
        cli.main(
            [
                "prep",
                "text",
                str(tmp_path / "src"),
                "--out",
                str(tmp_path / "ds"),
                "--format",
                "wds",
                "--val-fraction",
                "0",
                "--quiet",
            ]
        )
        == 0
    )
    cfg = DataConfig(seq_len=32, sources=[{"uri": str(tmp_path / "ds")}])
    assert next(iter(build_loader(cfg, PatcherConfig(), 2, seed=0)))["tokens"].shape == (
        2,
        33,
    )  # intact: reads
    shard = sorted((tmp_path / "ds" / "train").rglob("*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # inside the first document's bytes
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupted"):
        next(iter(build_loader(cfg, PatcherConfig(), 2, seed=0)))

"""`blt prep text`: round trips (MDS through mosaicml-streaming's shard readers, webdataset
through tarfile), fsspec URIs, workers, and idempotent / resumable conversion."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_helpers import REPO, make_documents, read_mds_split, read_wds_split, write_jsonl, write_text_files

from blt_scale import cli
from blt_scale.data.mds_reader import MDSSplit


@pytest.fixture(autouse=True)
def own_tmpdir(tmp_path, monkeypatch):
    """mosaicml-streaming keeps lock files in the temp dir: each test gets its own."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))


def expected_split(docs: list[bytes], fraction: float) -> tuple[Counter, Counter]:
    """The documented split rule, computed here: crc32(document) % 10000 < fraction * 10000."""
    val = [d for d in docs if zlib.crc32(d) % 10_000 < fraction * 10_000]
    train = [d for d in docs if zlib.crc32(d) % 10_000 >= fraction * 10_000]
    return Counter(train), Counter(val)


@pytest.fixture
def mixed_corpus(tmp_path) -> tuple[list[str], list[bytes]]:
    """Plain text (non-UTF-8), jsonl, jsonl.gz, jsonl.zst and parquet inputs, and all their documents."""
    src = tmp_path / "src"
    raw = make_documents(30, seed=1)
    write_text_files(src / "text", raw)
    texts = [f"json doc {i} ünïcødé ✓" * (i + 1) for i in range(12)]
    write_jsonl(src / "a.jsonl", texts[:4])
    write_jsonl(src / "b.jsonl.gz", texts[4:8])
    write_jsonl(src / "c.jsonl.zst", texts[8:])
    table_texts = [f"parquet row {i}" for i in range(5)]
    pq.write_table(pa.table({"text": table_texts, "n": list(range(5))}), src / "d.parquet")
    docs = raw + [t.encode() for t in texts] + [t.encode() for t in table_texts]
    return [str(src / "text"), str(src / "*.jsonl*"), str(src / "d.parquet")], docs


def prep(*args: str) -> int:
    return cli.main(["prep", "text", *args, "--quiet"])


def test_mds_round_trip_every_input_kind(tmp_path, mixed_corpus, capsys):
    inputs, docs = mixed_corpus
    out = tmp_path / "out"
    assert prep(*inputs, "--out", str(out), "--val-fraction", "0.2", "--shard-size", "2KB") == 0
    train, val = expected_split(docs, 0.2)
    assert val and train  # the split actually splits
    got_train = [s["text"] for s in read_mds_split(str(out), "train", tmp_path)]
    got_val = [s["text"] for s in read_mds_split(str(out), "val", tmp_path)]
    assert Counter(got_train) == train and Counter(got_val) == val
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"]["documents"] == sum(train.values())
    assert manifest["splits"]["train"]["bytes"] == sum(len(d) * c for d, c in train.items())
    assert manifest["splits"]["train"]["shards"] > 1  # --shard-size was honoured
    assert (out / "_COMPLETE").exists()
    # blt's own reader sees the same documents in the same order as mosaicml-streaming's readers
    ours = MDSSplit(str(out), "train", str(tmp_path / "cache"))
    assert [ours[i]["text"] for i in range(len(ours))] == got_train


def test_wds_round_trip(tmp_path, mixed_corpus):
    inputs, docs = mixed_corpus
    out = tmp_path / "wds"
    assert (
        prep(*inputs, "--out", str(out), "--format", "wds", "--val-fraction", "0.2", "--shard-size", "3KB")
        == 0
    )
    train, val = expected_split(docs, 0.2)
    assert Counter(read_wds_split(out, "train")) == train
    assert Counter(read_wds_split(out, "val")) == val
    assert len(list((out / "train").rglob("*.tar"))) > 1


def test_fsspec_uris_memory_and_file(tmp_path, capsys):
    docs = make_documents(15, seed=2)
    write_text_files(tmp_path / "src", docs)
    mem = "memory://blt-test-prep/out"
    try:
        assert prep(f"file://{tmp_path}/src/*.txt", "--out", mem, "--val-fraction", "0") == 0
        fs = fsspec.filesystem("memory")
        assert fs.exists("/blt-test-prep/out/_COMPLETE")
        split = MDSSplit(mem, "train", str(tmp_path / "cache"))
        assert Counter(split[i]["text"] for i in range(len(split))) == Counter(docs)
        # Workers are spawned processes, which cannot see this process's memory:// files.
        fs.pipe("/blt-test-prep/in.txt", docs[0])
        assert prep("memory://blt-test-prep/in.txt", "--out", f"{tmp_path}/m", "--workers", "2") == 2
        assert "memory:// inputs live in this process only" in capsys.readouterr().err
        assert not (tmp_path / "m").exists()
    finally:
        fsspec.filesystem("memory").rm("/blt-test-prep", recursive=True)
    assert prep(str(tmp_path / "src"), "--out", f"file://{tmp_path}/fileout", "--val-fraction", "0") == 0
    got = [s["text"] for s in read_mds_split(str(tmp_path / "fileout"), "train", tmp_path)]
    assert Counter(got) == Counter(docs)


@pytest.mark.parametrize("fmt", ["mds", "wds"])
def test_two_workers_give_the_same_documents(tmp_path, fmt):
    docs = make_documents(60, seed=3, hi=2000)
    write_text_files(tmp_path / "src", docs)
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        assert (
            prep(
                str(tmp_path / "src"),
                "--out",
                str(out),
                "--format",
                fmt,
                "--workers",
                str(workers),
                "--part-size",
                "8KB",
                "--shard-size",
                "4KB",
                "--val-fraction",
                "0.1",
            )
            == 0
        )
        outs.append(out)
    assert len(list((outs[1] / "parts").glob("*.json"))) > 4  # several parts really ran in parallel
    for split in ("train", "val"):
        if fmt == "mds":
            one, two = (
                [s["text"] for s in read_mds_split(str(o), split, tmp_path / f"{o.name}{split}")]
                for o in outs
            )
        else:
            one, two = (read_wds_split(o, split) for o in outs)
        assert one == two
    assert Counter(
        one
        + (
            read_wds_split(outs[0], "train")
            if fmt == "wds"
            else [s["text"] for s in read_mds_split(str(outs[0]), "train", tmp_path / "again")]
        )
    ) == Counter(docs)


def _mtimes(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_rerun_of_finished_conversion_does_no_work(tmp_path, capsys):
    write_text_files(tmp_path / "src", make_documents(20, seed=4))
    args = [str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--part-size", "1KB"]
    assert prep(*args) == 0
    first = json.loads(capsys.readouterr().out)
    before = _mtimes(tmp_path / "out")
    assert prep(*args) == 0
    again = json.loads(capsys.readouterr().out)
    assert first["converted_parts"] > 1 and again["converted_parts"] == 0
    assert _mtimes(tmp_path / "out") == before
    assert prep(*args, "--overwrite") == 0
    assert json.loads(capsys.readouterr().out)["converted_parts"] == first["converted_parts"]


def test_killed_conversion_is_completed_by_a_rerun(tmp_path, capsys):
    docs = make_documents(80, seed=5, lo=60_000, hi=120_000)
    write_text_files(tmp_path / "src", docs)
    out = tmp_path / "out"
    cmd = [
        str(REPO / ".venv/bin/blt"),
        "prep",
        "text",
        str(tmp_path / "src"),
        "--out",
        str(out),
        "--part-size",
        "100KB",
        "--val-fraction",
        "0.1",
        "--quiet",
    ]
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((out / "parts").glob("*.json")) if (out / "parts").exists() else True:
        assert proc.poll() is None and time.time() < deadline, "conversion ended before it could be killed"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((out / "parts").glob("*.json")))
    assert 0 < done < 80
    # Nothing that looks complete: no marker, no split index, no manifest.
    assert not (out / "_COMPLETE").exists() and not (out / "train" / "index.json").exists()
    assert not (out / "manifest.json").exists()
    assert prep(*cmd[3:-1]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["converted_parts"] == 80 - done
    train, val = expected_split(docs, 0.1)
    assert Counter(s["text"] for s in read_mds_split(str(out), "train", tmp_path)) == train
    assert Counter(s["text"] for s in read_mds_split(str(out), "val", tmp_path)) == val

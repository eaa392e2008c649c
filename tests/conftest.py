"""Fixtures shared by several test files, each computed once per session: the local SLURM
cluster, the uninterrupted reference run the SLURM tests compare against, the tiny local sweep,
a dataset with stored entropies, and a trained VQ image tokenizer (MVoT)."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest
from cli_helpers import blt
from data_helpers import export_entropy_model, make_documents, write_text_files
from dist_helpers import losses
from mvot_helpers import train_tokenizer
from slurm_helpers import ACTIVE, CLUSTER, SHARED, STEPS, SUBMITTED, job_state
from sweep_helpers import tiny_sweep

from blt_scale import cli
from blt_scale.checkpoint.export import load_exported


@pytest.fixture(scope="session")
def _running_cluster() -> Path:
    """slurm/local_cluster.sh, started once; tests skip, saying why, only when it cannot start
    (.ci/run starts it first, so CI never skips)."""
    try:
        r = subprocess.run([str(CLUSTER), "start"], capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as err:
        pytest.skip(f"local SLURM cluster cannot start ({CLUSTER} start): {err}")
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"local SLURM cluster cannot start ({CLUSTER} start exit {r.returncode}): {last}")
    return CLUSTER


@pytest.fixture
def slurm_cluster(_running_cluster) -> Path:
    """The running cluster; jobs the test leaves behind are cancelled."""
    yield _running_cluster
    leftovers = [j for j in SUBMITTED if job_state(j)[0] in ACTIVE]
    if leftovers:
        subprocess.run(["scancel", *leftovers], capture_output=True, timeout=30)
    SUBMITTED.clear()


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> Path:
    """The uninterrupted run, started locally with `blt train --nproc 2`."""
    run_dir = tmp_path_factory.mktemp("slurm_reference") / "local"
    blt("train", "cpu_tiny", *SHARED, f"run_dir={run_dir}", "--nproc", "2")
    assert len(losses(run_dir)) == STEPS
    return run_dir


@pytest.fixture(scope="session")
def local_sweep(tmp_path_factory):
    """The tiny sweep trained with --local: (sweep file, its run_dir, the first invocation's
    result). The SLURM sweep test compares its array against these runs."""
    tmp = tmp_path_factory.mktemp("local_sweep")
    path = tiny_sweep(tmp)
    return path, tmp / "sweep", blt("sweep", str(path), "--local", timeout=900, check=False)


@pytest.fixture(scope="session")
def entropy_dataset(tmp_path_factory):
    """A small text dataset (tmp/text), an exported entropy model and its entropies (tmp/ent):
    (tmp, documents, model)."""
    tmp = tmp_path_factory.mktemp("entropies")
    old = tempfile.tempdir
    tempfile.tempdir = str(tmp)
    # lengths up to 400 ids with context 64: most documents span several overlapping windows
    docs = make_documents(40, seed=21, lo=5, hi=400)
    write_text_files(tmp / "src", docs)
    assert (
        cli.main(
            ["prep", "text", str(tmp / "src"), "--out", str(tmp / "text"), "--val-fraction", "0.2", "--quiet"]
        )
        == 0
    )
    model_dir = export_entropy_model(tmp / "model", window=8, layers=2, seq_len=64)
    assert (
        cli.main(
            [
                "prep",
                "entropies",
                "--data",
                str(tmp / "text"),
                "--model",
                str(model_dir),
                "--out",
                str(tmp / "ent"),
                "--batch-size",
                "5",
                "--quiet",
            ]
        )
        == 0
    )
    model, _ = load_exported(model_dir)
    yield tmp, docs, model
    tempfile.tempdir = old


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A VQ image tokenizer trained by recipe vq_image_tokenizer_tiny (shortened): its run directory."""
    return train_tokenizer(tmp_path_factory.mktemp("vq") / "tok")

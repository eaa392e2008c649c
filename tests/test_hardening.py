"""Issue 15: nothing lost, nothing run that was not asked for. Each test reproduces one hole on a
tiny real run (one process, 4 steps, checkpoints at 2 and 4) and checks the command now refuses,
recovers or says so in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_helpers import blt
from data_helpers import make_documents, write_text_files
from dist_helpers import TINY

from blt_scale.checkpoint.export import EXPORT_MARKER, load_exported
from blt_scale.cli import main

RUN = TINY + ["train.steps=4", "checkpoint.every=2"]


def tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` with its bytes: what a refused command must leave as it was."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("hardening") / "run"
    blt("train", "cpu_tiny", *RUN, f"run_dir={run_dir}")
    return run_dir


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A copy of the tiny run this test may change."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


def one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code != 0 and err and "\n" not in err, f"exit {code}, stderr:\n{err}"
    return err


# -- item 1: export never deletes what it did not write ---------------------------------------
def test_export_refuses_the_run_dir_and_unrelated_folders(run_copy, tmp_path, capsys):
    before = tree(run_copy)
    err = one_line_error(capsys, main(["export", str(run_copy), "--out", str(run_copy)]))
    assert str(run_copy) in err and "not empty" in err
    assert tree(run_copy) == before

    other = tmp_path / "mine"
    (other / "sub").mkdir(parents=True)
    (other / "notes.txt").write_text("keep me")
    (other / "sub" / "model.safetensors").write_bytes(b"not ours either")
    err = one_line_error(capsys, main(["export", str(run_copy), "--out", str(other)]))
    assert str(other) in err
    assert tree(other) == {"notes.txt": b"keep me", "sub/model.safetensors": b"not ours either"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "run"]  # no temporary left beside


def test_export_fills_an_empty_dir_and_replaces_only_its_own_export(run_copy, tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    assert main(["export", str(run_copy), "--out", str(out)]) == 0
    assert json.loads((out / EXPORT_MARKER).read_text())["kind"] == "blt-scale export"
    first = (out / "model.safetensors").read_bytes()
    step2 = run_copy / "checkpoints" / "step_000002"
    assert main(["export", str(step2), "--out", str(out)]) == 0  # over its own export: replaced
    assert (out / "model.safetensors").read_bytes() != first
    assert json.loads((out / EXPORT_MARKER).read_text())["from"] == str(step2)
    load_exported(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "run"]

    (out / "notes.txt").write_text("added by the user")  # no longer only an export: refused
    capsys.readouterr()
    one_line_error(capsys, main(["export", str(run_copy), "--out", str(out)]))
    assert (out / "notes.txt").read_text() == "added by the user"
    assert (out / "model.safetensors").is_file()


# -- item 2: prep deletes only a dataset it wrote ---------------------------------------------
def prep_text(capsys, src: Path, out: Path, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["prep", "text", str(src), "--out", str(out), "--val-fraction", "0.2", "--quiet", *extra])
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_prep_refuses_a_folder_with_a_foreign_prep_json(tmp_path, capsys, overwrite):
    write_text_files(tmp_path / "src", make_documents(5, seed=1))
    out = tmp_path / "out"
    out.mkdir()
    # Someone else's prep.json, even one with a "kind", in a folder of theirs.
    (out / "prep.json").write_text(json.dumps({"steps": ["tokenize"], "kind": "recipe notes"}))
    (out / "data.csv").write_text("a,b\n1,2\n")
    before = tree(out)
    code, err = prep_text(capsys, tmp_path / "src", out, *overwrite)
    assert code == 2 and "\n" not in err and str(out) in err and "blt prep" in err
    assert tree(out) == before


def test_prep_overwrite_replaces_only_its_own_dataset(tmp_path, capsys):
    write_text_files(tmp_path / "a", make_documents(5, seed=1))
    write_text_files(tmp_path / "b", make_documents(6, seed=2))
    out = tmp_path / "out"
    assert prep_text(capsys, tmp_path / "a", out)[0] == 0
    assert prep_text(capsys, tmp_path / "b", out, "--overwrite")[0] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert sum(s["documents"] for s in manifest["splits"].values()) == 6

    (out / "README.md").write_text("my notes")  # something the tool did not write
    before = tree(out)
    code, err = prep_text(capsys, tmp_path / "a", out, "--overwrite")
    assert code == 2 and "README.md" in err and "\n" not in err
    assert tree(out) == before

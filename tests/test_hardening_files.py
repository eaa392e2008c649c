"""Issue 15, files on disk: nothing lost, nothing loaded that was not asked for. Each test
reproduces one hole on a tiny real run (one process, 4 steps, checkpoints at 2 and 4) and checks the
command now refuses, recovers or says so in one line: export and prep delete only what they wrote,
loading never unpickles, damaged checkpoints are skipped, a changed config is refused, bad arguments
are one line."""

from __future__ import annotations

import io
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import blt
from data_helpers import make_documents, write_text_files
from dist_helpers import TINY

from blt_scale.checkpoint.export import EXPORT_MARKER, load_exported
from blt_scale.checkpoint.layout import file_manifest, marker_text
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


def remark(step: Path) -> None:
    """Rewrite the marker's manifest for the files as they are now: a crafted checkpoint whose
    author also forged the manifest, so only the loader stands between it and the user."""
    (step / "COMPLETE").write_text(marker_text(int(step.name.split("_")[1]), file_manifest(step)))


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


# -- item 8 of the issue: loading never unpickles untrusted bytes ------------------------------
class Payload:
    """Unpickling this creates `marker`: the code a crafted checkpoint would run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("command", ["eval", "export"])
def test_crafted_dcp_metadata_runs_no_code(run_copy, tmp_path, capsys, command):
    marker = tmp_path / "pwned"
    newest = run_copy / "checkpoints" / "step_000004"
    (newest / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    remark(newest)
    extra = ["--out", str(tmp_path / "export")] if command == "export" else []
    err = one_line_error(capsys, main([command, str(newest), *extra]))
    assert ".metadata: refused to load" in err and str(newest) in err
    assert not marker.exists()

    # The payload inside otherwise genuine metadata (a field DCP never reads) is refused too.
    from torch.distributed.checkpoint.filesystem import FileSystemReader

    metadata = FileSystemReader(str(run_copy / "checkpoints" / "step_000002")).read_metadata()
    metadata.planner_data = Payload(marker)
    (newest / ".metadata").write_bytes(pickle.dumps(metadata))
    remark(newest)
    one_line_error(capsys, main([command, str(newest), *extra]))
    assert not marker.exists() and not (tmp_path / "export").exists()


def test_crafted_optimizer_item_runs_no_code_on_resume(run_copy, tmp_path):
    """DCP stores non-tensor items (the optimizer's param_groups) as torch.save pickles and read
    them with weights_only=False: point one at a payload appended to the shard file."""
    from torch.distributed.checkpoint.filesystem import FileSystemReader, _StorageInfo

    from blt_scale.checkpoint.safe_dcp import CheckpointLoadError
    from blt_scale.model.build import build_model
    from blt_scale.parallel.env import DistEnv
    from blt_scale.parallel.strategy import build_strategy
    from blt_scale.train.optim import build_optimizer
    from blt_scale.train.recipe import saved_recipe

    marker = tmp_path / "pwned"
    ckpt = run_copy / "checkpoints" / "step_000004"
    metadata = FileSystemReader(str(ckpt)).read_metadata()
    index = next(i for i in metadata.storage_data if i.fqn.startswith("optim.param_groups"))
    info = metadata.storage_data[index]
    payload = io.BytesIO()
    torch.save(Payload(marker), payload)
    shard = ckpt / info.relative_path
    offset = shard.stat().st_size
    with open(shard, "ab") as f:
        f.write(payload.getvalue())
    metadata.storage_data[index] = _StorageInfo(info.relative_path, offset, len(payload.getvalue()))
    (ckpt / ".metadata").write_bytes(pickle.dumps(metadata))

    cfg = saved_recipe(ckpt)
    strategy = build_strategy(cfg.parallel, DistEnv(), torch.device("cpu"))
    model = build_model(cfg.model)
    with pytest.raises(CheckpointLoadError) as err:
        strategy.load(model, build_optimizer(model, cfg=cfg.optim), ckpt)
    assert "\n" not in str(err.value) and str(ckpt) in str(err.value)
    assert not marker.exists()


def test_crafted_deepspeed_files_run_no_code(tiny_run, tmp_path, capsys):
    """zero_to_fp32 reads the ZeRO files with weights_only=False; a step dir whose ds/ files are
    payloads must be refused by `blt export` without running them."""
    marker = tmp_path / "pwned"
    step = tmp_path / "run" / "checkpoints" / "step_000002"
    (step / "ds").mkdir(parents=True)
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        torch.save(
            {"optimizer_state_dict": Payload(marker), "buffer_names": Payload(marker)}, step / "ds" / name
        )
    (step / "ds" / "latest").write_text("ds")
    for name in ("config.yaml", "train_state.json"):
        shutil.copy(tiny_run / "checkpoints" / "step_000002" / name, step / name)
    remark(step)
    code = main(["export", str(step), "--out", str(tmp_path / "export")])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after DeepSpeed's own log lines
    assert code == 2 and err.startswith("blt export: error: ") and "states.pt: refused to load" in err
    assert "not an allowed global" in err
    assert not marker.exists() and not (tmp_path / "export").exists()

    # The conversion to the universal format (a resume at another world size, `blt convert-ds`)
    # runs DeepSpeed's ds_to_universal in a child process: it reads safely too.
    code = main(["convert-ds", str(step)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "refused to load" in err and "not an allowed global" in err
    assert not marker.exists() and not (step / "universal").exists()


# -- item 7 of the issue: damaged checkpoints are detected and skipped --------------------------
def test_resume_skips_a_truncated_checkpoint_and_eval_names_it(run_copy, capsys):
    newest = run_copy / "checkpoints" / "step_000004"
    marker = json.loads((newest / "COMPLETE").read_text())
    shard = newest / "__0_0.distcp"
    assert marker["files"]["__0_0.distcp"]["size"] == shard.stat().st_size  # the manifest, as written
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)

    err = one_line_error(capsys, main(["eval", str(newest)]))
    assert str(newest) in err and "__0_0.distcp" in err and "damaged" in err

    r = blt("train", "cpu_tiny", *TINY, "train.steps=6", "checkpoint.every=2", f"run_dir={run_copy}")
    assert f"skipping checkpoint {newest}: __0_0.distcp has" in r.stderr
    assert f"resumed from {run_copy / 'checkpoints' / 'step_000002'} at step 2/6" in r.stderr
    steps = [row["step"] for row in map(json.loads, (run_copy / "metrics.jsonl").read_text().splitlines())]
    assert steps == [1, 2, 3, 4, 5, 6]  # rows of the skipped steps were trained again, once
    assert (
        json.loads((newest / "COMPLETE").read_text())["files"]["__0_0.distcp"]["size"] == shard.stat().st_size
    )


def test_resume_with_every_checkpoint_damaged_is_one_line(run_copy):
    for step in ("step_000002", "step_000004"):
        (run_copy / "checkpoints" / step / "train_state.json").write_text("{}")
    r = blt("train", "cpu_tiny", *RUN, "train.steps=6", f"run_dir={run_copy}", check=False)
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "every complete checkpoint is damaged" in last and "Traceback" not in r.stderr
    assert "skipping checkpoint" in r.stderr and "train_state.json has 2 bytes" in r.stderr


# -- item 5 of the issue: resume checks the saved config before writing anything ----------------
def test_resume_with_a_changed_model_is_refused_before_writing(run_copy):
    before = tree(run_copy)
    r = blt(
        "train", "cpu_tiny", *RUN, "model.global.dim=128", "train.steps=6", f"run_dir={run_copy}", check=False
    )
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "model.global.dim: 64 -> 128" in last and "checkpoints/step_000004/config.yaml" in last
    assert "--resume never" in last and "model.init_from=" in last and "Traceback" not in r.stderr
    assert tree(run_copy) == before  # not even the lock file was touched

    r = blt("train", "cpu_tiny", *RUN, "train.seed=7", "data.seq_len=32", f"run_dir={run_copy}", check=False)
    assert r.returncode == 2 and "data.seq_len: 64 -> 32" in r.stderr and "train.seed: 0 -> 7" in r.stderr
    assert tree(run_copy) == before

    # What does not touch the weights or the data order resumes: more steps, another log interval.
    r = blt("train", "cpu_tiny", *RUN, "train.steps=5", "train.log_every=2", f"run_dir={run_copy}")
    assert "resumed from" in r.stderr and "at step 4/5" in r.stderr


# -- minor ones ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exported") / "export"
    assert main(["export", str(tiny_run), "--out", str(out)]) == 0
    return out


def test_bad_counts_are_refused_in_one_line(tiny_run, exported, capsys):
    capsys.readouterr()
    err = one_line_error(capsys, main(["eval", str(tiny_run), "--batches", "0"]))
    assert "--batches must be at least 1, got 0" in err
    err = one_line_error(
        capsys, main(["generate", str(exported), "--prompt", "import os", "--max-bytes", "-5"])
    )
    assert "--max-bytes must be at least 1, got -5" in err


def test_a_prompt_that_is_not_utf8_is_one_line(exported):
    r = subprocess.run(
        [sys.executable, "-m", "blt_scale.cli", "generate", str(exported), "--prompt", b"import \xff\xfe"],
        capture_output=True,
        timeout=120,
    )
    err = r.stderr.decode().strip()
    assert r.returncode == 2 and "\n" not in err, err
    assert "--prompt is not valid UTF-8" in err and "--prompt-file" in err and "codec" not in err


def test_a_truncated_safetensors_export_is_one_line(exported, tmp_path, capsys):
    broken = Path(shutil.copytree(exported, tmp_path / "broken"))
    weights = broken / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    capsys.readouterr()
    for cmd in (["eval", str(broken)], ["generate", str(broken), "--prompt", "import os\ndef "]):
        err = one_line_error(capsys, main(cmd))
        assert f"{weights}: not a readable safetensors file" in err


def test_debug_after_the_subcommand(tmp_path, capsys):
    missing = str(tmp_path / "nope")
    assert main(["eval", missing]) == 2  # one line without --debug
    assert "does not exist" in capsys.readouterr().err
    for argv in (["--debug", "eval", missing], ["eval", missing, "--debug"], ["eval", "--debug", missing]):
        with pytest.raises(FileNotFoundError):  # the traceback, wherever --debug stands
            main(argv)
    with pytest.raises(FileNotFoundError):  # a nested command (prep text) too
        main(["prep", "text", missing, "--out", str(tmp_path / "o"), "--quiet", "--debug"])


def test_a_mistyped_section_names_where_it_was_set(tmp_path, capsys):
    err = one_line_error(capsys, main(["flops", "cpu_tiny", "model.golbal.dim=8"]))
    assert "unknown key 'model.golbal' set on the command line; did you mean 'model.global'?" in err
    recipe = tmp_path / "mine.yaml"
    tiny = Path(__file__).parent.parent / "recipes" / "cpu_tiny.yaml"
    recipe.write_text(f"extends: {tiny}\nmodel:\n  golbal: {{dim: 8}}\n")
    err = one_line_error(capsys, main(["flops", str(recipe)]))
    assert f"unknown key 'model.golbal' set in {recipe}" in err


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.global.dim=10"], "dim (10) must be a multiple of heads (4)"),
        (["model.global.dim=12"], "dim/heads (12/4 = 3) must be even"),
        (["model.encoder.dim=102", "model.decoder.dim=102"], "dim (102) must be a multiple of heads (4)"),
    ],
)
def test_dims_that_do_not_split_into_heads_are_config_errors(overrides, expected, capsys):
    err = one_line_error(capsys, main(["flops", "cpu_tiny", *overrides]))
    assert expected in err and "section 'model." in err

"""`blt export`, `blt eval`, `blt generate` and `blt train` errors, on a finished 2-rank FSDP run."""

import json

import pytest
import torch
from dist_helpers import DETERMINISTIC, FSDP, TINY, reference

from blt_scale.checkpoint.export import load_exported
from blt_scale.checkpoint.layout import latest_complete
from blt_scale.checkpoint.restore import load_checkpoint_model
from blt_scale.cli import main
from blt_scale.train.recipe import saved_recipe

TWO = TINY + ["train.steps=20", "checkpoint.every=5"] + DETERMINISTIC + FSDP


@pytest.mark.multiproc
def test_export_eval_generate(tmp_path, tmp_path_factory, capsys):
    run_dir = reference(tmp_path_factory, "blt_2rank", TWO, 2)
    assert main(["export", str(run_dir), "--out", str(tmp_path / "exported")]) == 0
    exported, saved = load_exported(tmp_path / "exported")
    sharded, _ = load_checkpoint_model(latest_complete(run_dir))
    assert saved.model == sharded.cfg
    cfg = saved_recipe(tmp_path / "exported")  # the whole resolved recipe travels with the export
    for (name, a), b in zip(exported.state_dict().items(), sharded.state_dict().values()):
        assert torch.equal(a, b), name
    capsys.readouterr()

    assert main(["eval", str(run_dir), "--json"]) == 0
    from_run = json.loads(capsys.readouterr().out)
    assert main(["eval", str(tmp_path / "exported"), "--json"]) == 0
    from_export = json.loads(capsys.readouterr().out)
    assert from_run["bpb"] == from_export["bpb"] and 2.0 < from_run["bpb"] < 8.0
    assert from_run["bytes"] == cfg.train.eval_batches * cfg.train.micro_batch * cfg.data.seq_len

    # The prompt is longer than the largest hash n-gram (8): shorter ones trip model/ngram.py.
    prompt = "import os\ndef "
    assert main(["generate", str(tmp_path / "exported"), "--prompt", prompt, "--max-bytes", "8"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(prompt) and len(text.encode()) > len(prompt) + 1


def test_train_rejects_bad_key_in_one_line(capsys, tmp_path):
    code = main(["train", "cpu_tiny", "parallel.stratgy=fsdp", f"run_dir={tmp_path}", "--nproc", "2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "parallel.strategy" in err
    assert not (tmp_path / "metrics.jsonl").exists()


def test_eval_of_a_directory_without_checkpoint_fails_clearly(capsys, tmp_path):
    assert main(["eval", str(tmp_path)]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err

"""`blt eval-brain RUN --recording FILE`: a raw recording decoded end to end equals eval-brain on
the shards `blt prep brain` makes of the same recording with the run's dataset options."""

import json
import tempfile

import pytest
from brain_helpers import make_eeg_raw, prep_fixture_dataset, write_eeg_fif
from data_helpers import read_mds_split
from dist_helpers import one_torch_thread

from blt_scale.cli import main
from blt_scale.data.brain.config import BrainPrepConfig
from blt_scale.data.brain.prep import prep_brain
from blt_scale.data.brain.recording import dataset_options
from blt_scale.data.loader import SourceConfig
from blt_scale.train.eval_brain import evaluate_brain
from blt_scale.train.loop import Trainer
from blt_scale.train.recipe import load_recipe

COMMON = ["train.peak_flops=1e11", "wandb.enabled=false", "train.log_every=50", "train.eval_every=null"]


@pytest.fixture(autouse=True)
def _tmpdir(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    data = prep_fixture_dataset(tmp, n_words=60, kind="eeg", subjects=2, name="eeg")
    cfg = load_recipe(
        "brain_aware_blt_tiny",
        [f"data.sources=[{{uri: {data}}}]", f"run_dir={tmp / 'run'}", *COMMON, "train.steps=120"],
    )
    with one_torch_thread():
        trainer = Trainer(cfg, resume="never")
        trainer.fit()
    return trainer, data


def test_raw_recording_equals_eval_on_its_shards(trained, tmp_path, capsys):
    trainer, data = trained
    rec, events = write_eeg_fif(tmp_path / "sub-01_raw.fif", n_words=30, seed=7)
    # The shards of that recording, prepared with the run's dataset options; eval-brain reads a
    # held-out split window by window (each once), so half the blocks go to val and are compared.
    options = dataset_options(data).model_dump() | {"val_fraction": 0.5, "block_s": 5.0}
    prep_brain(BrainPrepConfig(**options, inputs=[str(rec)], out=str(tmp_path / "ds")), progress=False)
    val = read_mds_split(str(tmp_path / "ds"), "val", tmp_path)
    data_cfg = trainer.cfg.data.model_copy(update={"sources": [SourceConfig(uri=str(tmp_path / "ds"))]})
    cfg = trainer.cfg.model_copy(update={"data": data_cfg})
    shards = evaluate_brain(trainer.model, cfg, samples=None, split="val", keep_rows=True, resamples=10)
    assert sorted(r["reference"] for r in shards["rows"]) == sorted(s["text"].decode() for s in val)

    out = tmp_path / "decoded.jsonl"
    args = ["eval-brain", str(trainer.cfg.run_dir), "--recording", str(rec), "--out", str(out), "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["windows"] == len(rows) == len(events) == 30
    # one row per event, at its onset, with its word as the reference (independent of the library)
    assert [(r["onset_s"], r["reference"]) for r in rows] == [(o, w) for o, w in events]
    held = {round(s["onset_s"], 6) for s in val}
    mine = [r for r in rows if round(r["onset_s"], 6) in held]
    assert len(mine) == len(val) == shards["samples"] >= 8
    assert sorted((r["reference"], r["text"]) for r in mine) == sorted(
        (r["reference"], r["real"]) for r in shards["rows"]
    )
    assert sum(r["text"] == r["reference"] for r in mine) / len(mine) == shards["real"]["exact"]
    assert len({r["text"] for r in rows}) >= 3  # a model whose output depends on the signal


def test_a_recording_without_events_is_cut_into_consecutive_windows(trained, tmp_path, capsys):
    trainer, _ = trained
    raw, _ = make_eeg_raw(n_words=10, seed=3)
    raw.set_annotations(None)
    raw.save(tmp_path / "sub-02_raw.fif", verbose="error")
    out = tmp_path / "d.jsonl"
    args = ["eval-brain", str(trainer.cfg.run_dir), "--recording", str(tmp_path / "sub-02_raw.fif")]
    assert main([*args, "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    seconds = raw.n_times / raw.info["sfreq"]
    assert len(rows) == int(seconds // 0.7) and all(r["reference"] is None for r in rows)
    assert [r["onset_s"] for r in rows] == pytest.approx([0.7 * i for i in range(len(rows))])
    capsys.readouterr()
    assert main([*args, "--subject", "07"]) == 2
    err = capsys.readouterr().err.strip()
    assert "subject '07' is not one the run knows" in err and len(err.splitlines()) == 1
    assert main([*args[:3], str(tmp_path / "notes.txt")]) == 2
    assert "notes.txt" in capsys.readouterr().err

"""eval-brain's intervals, and held-out-subject results.

- The scores rebuilt from per-window statistics equal nltk's corpus BLEU, rouge-score's ROUGE-L
  and jiwer's WER on random texts, and every bootstrap resample equals re-scoring the resampled
  windows with those libraries (so the intervals are intervals of the real metrics).
- Held-out subject (blt prep brain --split by-subject, 3 subjects, one held out for val): on the
  decodable fixture brain-aware BLT and MEG->text (three phases) beat the noise control on the
  unseen subject, the margin's 95% interval above 0; on the non-decodable fixture the interval
  includes 0. Measured (200 windows of the held-out subject, 1000 resamples):
      brain-aware BLT  decodable     bleu1 margin 0.355 [0.27, 0.43]   non-decodable 0.01 [-0.04, 0.055]
      MEG->text        decodable     bleu1 margin 0.76  [0.70, 0.815]  non-decodable 0.0  [0.0, 0.0]
"""

import json
import random
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from brain_helpers import prep_fixture_dataset
from dist_helpers import one_torch_thread

from blt_scale.cli import main
from blt_scale.train.brain_scores import METRICS, bootstrap, corpus_metrics, point, window_stats
from blt_scale.train.eval_brain import evaluate_brain, scores
from blt_scale.train.loop import Trainer
from blt_scale.train.recipe import load_recipe

WORDS = "the cat sat on a warm mat dog ran café".split()
COMMON = [
    "train.peak_flops=1e11",
    "wandb.enabled=false",
    "train.log_every=50",
    "train.eval_every=null",
    "model.brain.subjects=3",
]


@pytest.fixture(autouse=True)
def _tmpdir(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def random_texts(rng: random.Random, n: int) -> tuple[list[str], list[str]]:
    refs = [" ".join(rng.choices(WORDS, k=rng.randint(0, 6))) for _ in range(n)]
    hyps = [" ".join(rng.choices(WORDS, k=rng.randint(0, 6))) for _ in range(n)]
    return refs, [r if rng.random() < 0.4 else h for r, h in zip(refs, hyps)]


def same(a: float, b: float) -> bool:
    return (np.isnan(a) and np.isnan(b)) or abs(a - b) < 1e-12


def test_scores_from_window_statistics_equal_the_libraries():
    rng = random.Random(0)
    for _ in range(40):
        refs, hyps = random_texts(rng, rng.randint(1, 12))
        lib, mine = scores(refs, hyps), point(window_stats(refs, hyps))
        assert all(same(lib[k], mine[k]) for k in METRICS), (refs, hyps, lib, mine)


def test_every_bootstrap_resample_equals_rescoring_it():
    rng = random.Random(1)
    refs, hyps = random_texts(rng, 30)
    st = window_stats(refs, hyps)
    draws = np.random.default_rng(5).integers(0, 30, size=(20, 30))
    counts = np.stack([np.bincount(d, minlength=30) for d in draws])
    fast = corpus_metrics(st, counts)
    for b, d in enumerate(draws):
        lib = scores([refs[i] for i in d], [hyps[i] for i in d])
        assert all(same(lib[k], float(fast[k][b])) for k in METRICS)


def test_intervals_bracket_the_estimate_and_a_copy_has_no_margin():
    rng = random.Random(2)
    refs, hyps = random_texts(rng, 50)
    _, other = random_texts(rng, 50)
    boot = bootstrap(window_stats(refs, hyps), window_stats(refs, other), resamples=500)
    est = point(window_stats(refs, hyps))
    for k in METRICS:
        lo, hi = boot["real"][k]
        assert lo <= est[k] <= hi and lo < hi
    same_boot = bootstrap(window_stats(refs, hyps), window_stats(refs, hyps), resamples=200)
    assert all(same_boot["margin"][k] == [0.0, 0.0] for k in METRICS)
    # the more windows, the narrower: 4x the windows roughly halves the interval
    big = bootstrap(window_stats(refs * 4, hyps * 4), window_stats(refs * 4, other * 4), resamples=500)
    width = lambda b: b["real"]["bleu1"][1] - b["real"]["bleu1"][0]  # noqa: E731
    assert 0.3 < width(big) / width(boot) < 0.7


def held_out_dataset(tmp_path_factory, kind: str, decodable: bool) -> str:
    """3 subjects x 200 words, subject 03 held out for validation (by-subject, crc32 order)."""
    uri = prep_fixture_dataset(
        tmp_path_factory.mktemp(f"{kind}{int(decodable)}"),
        n_words=200,
        kind=kind,
        subjects=3,
        decodable=decodable,
        name=kind,
        overrides=["split=by-subject", "val_fraction=0.3"],
    )
    manifest = json.loads(open(f"{uri}/manifest.json").read())
    assert manifest["split"] == {"unit": "by-subject", "val": ["03"], "test": [], "gap_samples": 70}
    return uri


def train(recipe: str, run_dir, data: str, steps: int, *overrides: str) -> Trainer:
    cfg = load_recipe(
        recipe,
        [
            f"data.sources=[{{uri: {data}}}]",
            f"run_dir={run_dir}",
            *COMMON,
            f"train.steps={steps}",
            *overrides,
        ],
    )
    trainer = Trainer(cfg, resume="never")
    trainer.fit()
    return trainer


def brain_aware_blt(tmp_path, data):
    return train("brain_aware_blt_tiny", tmp_path / "run", data, 250)


def meg_to_text(tmp_path, data):
    train("meg_to_text_phase1_mae", tmp_path / "p1", data, 60)
    train(
        "meg_to_text_phase2_rvq", tmp_path / "p2", data, 40, f"model.init_from=[{{path: {tmp_path / 'p1'}}}]"
    )
    return train(
        "meg_to_text_phase3_lm", tmp_path / "p3", data, 200, f"model.init_from=[{{path: {tmp_path / 'p2'}}}]"
    )


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["brain_aware_blt", "meg_to_text"])
def test_held_out_subject_beats_noise_only_when_decodable(variant, tmp_path, tmp_path_factory, capsys):
    with one_torch_thread():
        kind, fit = ("eeg", brain_aware_blt) if variant == "brain_aware_blt" else ("meg", meg_to_text)
        margins = {}
        for decodable in (True, False):
            data = held_out_dataset(tmp_path_factory, kind, decodable)
            trainer = fit(tmp_path / f"d{int(decodable)}", data)
            result = evaluate_brain(trainer.model, trainer.cfg, samples=None)
            assert result["samples"] == 200 and list(result["subjects"]) == ["03"]  # the unseen subject only
            margins[decodable] = (result["margin"]["bleu1"], result["ci"]["margin"]["bleu1"])
            print(f"\n{variant} decodable={decodable}: bleu1 margin {margins[decodable]}")
    (m, (lo, _)), (_, (lo0, hi0)) = margins[True], margins[False]
    assert lo > 0.15 and m > 0.25, margins[True]  # measured 0.355 [0.27, 0.43] / 0.76 [0.70, 0.815]
    assert lo0 <= 0 <= hi0, margins[False]

    if variant != "brain_aware_blt":
        return
    # The command on the last run: per-split, per-subject, intervals, a results file per split.
    run_dir = trainer.cfg.run_dir
    capsys.readouterr()
    assert main(["eval-brain", str(run_dir), "--samples", "0", "--resamples", "200", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["split"] == "val" and printed["samples"] == 200 and set(printed["subjects"]) == {"03"}
    assert set(printed["ci"]["margin"]) == set(METRICS) and len(printed["ci"]["real"]["wer"]) == 2
    assert main(["eval-brain", str(run_dir), "--split", "train", "--samples", "40", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(printed["subjects"]) <= {"01", "02"} and printed["samples"] == 40
    assert (Path(run_dir) / "eval_brain_train.json").exists() and (Path(run_dir) / "eval_brain.json").exists()
    assert main(["eval-brain", str(run_dir), "--split", "test"]) == 2  # prepared without a test split
    err = capsys.readouterr().err.strip()
    assert "no test windows" in err and "--test-fraction" in err and len(err.splitlines()) == 1


def test_a_subject_absent_from_training_keeps_its_identity_layer_under_weight_decay():
    """The per-subject layer is a lookup: AdamW's decoupled decay would shrink the rows of a
    held-out subject (gradient 0) towards 0; they are not decayed."""
    from blt_scale.model.build import build_model
    from blt_scale.train.optim import OptimConfig, build_optimizer

    cfg = load_recipe("brain_aware_blt_tiny", ["model.brain.subjects=3"])
    model = build_model(cfg.model)
    opt = build_optimizer(model, OptimConfig(lr=0.1, weight_decay=0.5, warmup_steps=0))
    before = model.brain.subject.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        loss = (model.brain.subject[:2] ** 2).sum()  # subjects 0 and 1 train, 2 is held out
        loss.backward()
        opt.step()
    assert torch.equal(model.brain.subject[2], before[2])
    assert not torch.equal(model.brain.subject[0], before[0])

"""Brain variants in the trainer, on the decodable synthetic task of brain_helpers (each word's
signal is a deterministic function of the word): both variants learn it and beat the
noise-input control; the three MEG->text phases chain from their recipes; both train with FSDP on
2 ranks, resume exactly after kill -9, and train under DeepSpeed ZeRO-2 as under FSDP (step by step,
within the DeepSpeed tests' fp32 tolerance; two accumulation micro-batches per step on each rank).

The text-only floor: words are uniform over brain_helpers.WORDS, so a model that ignores the
signal pays at best ln(10) nats per window spread over the window's bytes (word + EOS, 4.0 on
average): FLOOR = 0.576 nats/byte. Learning the task means going clearly below it.
"""

import json
import math
import signal
from pathlib import Path

import pytest
import torch
import yaml
from brain_helpers import WORDS, prep_fixture_dataset
from dist_helpers import kill, losses, one_torch_thread, reference, run, start, traced_rows, wait_for

from blt_scale.checkpoint.layout import latest_complete
from blt_scale.cli import main
from blt_scale.train.eval_brain import evaluate_brain
from blt_scale.train.loop import Trainer
from blt_scale.train.recipe import load_recipe

FLOOR = math.log(len(WORDS)) / (sum(len(w.encode()) + 1 for w in WORDS) / len(WORDS))
COMMON = ["train.peak_flops=1e11", "wandb.enabled=false", "train.log_every=10", "train.eval_every=null"]


@pytest.fixture(scope="module")
def eeg(tmp_path_factory):
    return prep_fixture_dataset(
        tmp_path_factory.mktemp("eeg"), n_words=200, kind="eeg", subjects=2, name="eeg"
    )


@pytest.fixture(scope="module")
def meg(tmp_path_factory):
    return prep_fixture_dataset(
        tmp_path_factory.mktemp("meg"), n_words=200, kind="meg", subjects=2, name="meg"
    )


@pytest.fixture
def one_thread():
    with one_torch_thread():
        yield


def train(recipe: str, run_dir, data: str, *overrides: str) -> Trainer:
    cfg = load_recipe(recipe, [f"data.sources=[{{uri: {data}}}]", f"run_dir={run_dir}", *COMMON, *overrides])
    trainer = Trainer(cfg, resume="never")
    trainer.fit()
    return trainer


def summary(result: dict) -> None:
    """Shown with pytest -s: the figures the assertions bound."""
    keys = ("loss", "exact", "bleu1", "rougeL", "wer")
    print(
        "\n"
        + "  ".join(f"{k} {result['real'][k]:.3f}/{result['noise'][k]:.3f}" for k in keys)
        + "  (signal/noise)"
    )


def test_floor_is_the_text_only_entropy():
    assert abs(FLOOR - 0.576) < 1e-3


def test_brain_aware_blt_learns_and_beats_the_noise_control(tmp_path, eeg, one_thread):
    # Seed 1: of seeds 0-2 (all 40 held-out windows, 250 steps), real/noise nats per byte were
    # 0.463/0.986, 0.144/1.719, 0.151/1.350 and exact match 0.225/0.175, 0.675/0.175, 0.875/0.175.
    # Seed 0 learns slowly and sits near the bounds, which hold for all three; seed 1 keeps them
    # far from its own figures, so a change of kernels or thread count does not flip the test.
    trainer = train("brain_aware_blt_tiny", tmp_path / "run", eeg, "train.steps=250", "train.seed=1")
    result = evaluate_brain(trainer.model, trainer.cfg, samples=None)
    real, noise = result["real"], result["noise"]
    summary(result)
    assert real["loss"] < 0.5 < FLOOR, result
    assert noise["loss"] > real["loss"] + 0.25, result
    assert real["exact"] > noise["exact"] and real["wer"] < noise["wer"], result


def test_meg_to_text_three_phases_from_recipes_learn_and_beat_the_noise_control(
    tmp_path, meg, one_thread, capsys
):
    p1 = train("meg_to_text_phase1_mae", tmp_path / "p1", meg, "train.steps=60")
    p2 = train(
        "meg_to_text_phase2_rvq",
        tmp_path / "p2",
        meg,
        "train.steps=40",
        f"model.init_from=[{{path: {tmp_path / 'p1'}}}]",
    )
    p3 = train(
        "meg_to_text_phase3_lm",
        tmp_path / "p3",
        meg,
        "train.steps=200",
        f"model.init_from=[{{path: {tmp_path / 'p2'}}}]",
    )
    # Chained by checkpoint: phase 2 froze the encoder phase 1 trained; phase 3 started from both.
    enc1, enc2 = p1.model.brain.state_dict(), p2.model.brain.state_dict()
    assert all(torch.equal(enc1[k], enc2[k]) for k in enc1)
    assert torch.equal(p2.model.rvq.codebooks, p3.model.rvq.codebooks)  # frozen in phase 3
    l2 = losses(tmp_path / "p2")
    # the quantiser learns to rebuild the encoder features (step 40 / step 10 measured 0.60-0.64)
    assert l2[40] < 0.7 * l2[10], l2

    result = evaluate_brain(p3.model, p3.cfg, samples=None)
    real, noise = result["real"], result["noise"]
    summary(result)
    # measured with train.seed 0/1/2 in all phases (all 40 held-out windows): real 0.159/0.196/0.176
    # nats per byte, noise 1.770/1.286/1.065; exact match 0.725/0.725/0.700 vs 0.15/0.10/0.15;
    # phase-2 loss ratio (step 40 / step 10) 0.61/0.64/0.60
    assert real["loss"] < 0.3 < FLOOR, result
    assert noise["loss"] > real["loss"] + 0.5, result
    assert (
        real["exact"] > noise["exact"] + 0.4 and real["bleu1"] > noise["bleu1"] and real["wer"] < noise["wer"]
    ), result

    # The command: same figures from the run directory's checkpoint, JSON, a results file.
    capsys.readouterr()
    assert main(["eval-brain", str(tmp_path / "p3"), "--samples", "40", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads((tmp_path / "p3" / "eval_brain.json").read_text())["real"] == printed["real"]
    assert (
        abs(printed["real"]["loss"] - real["loss"]) < 1e-4
        and abs(printed["noise"]["loss"] - noise["loss"]) < 1e-4
    )
    assert {"bleu1", "bleu2", "bleu3", "bleu4", "rougeL", "wer"} <= set(printed["noise"])
    assert (
        main(["generate", str(tmp_path / "p3"), "--prompt", "a"]) == 2
    )  # needs a signal: one line, not a TypeError
    assert "use `blt eval-brain`" in capsys.readouterr().err


STEPS = 8
FP32_TOL = 1e-5  # as test_train_deepspeed
FSDP = [
    "parallel.strategy=fsdp",
    "train.deterministic=true",
    "train.trace_data=true",
    f"train.steps={STEPS}",
    "checkpoint.every=4",
    "train.log_every=1",
    "train.micro_batch=4",
]
VARIANTS = {
    "brain_aware_blt": ("brain_aware_blt_tiny", "eeg", []),
    # EMA codebooks learning (statistics summed over ranks), LoRA with frozen base layers, commitment on.
    "meg_to_text": (
        "meg_to_text_phase3_lm",
        "meg",
        [
            "model.init_from=[]",
            "model.rvq.commitment=0.25",
            "model.freeze=[mask_token, mae_head, decoder.layers]",
        ],
    ),
}


def fsdp_reference(variant: str, tmp_path_factory, request) -> tuple[Path, list[str], str]:
    """(the uninterrupted 2-rank FSDP run of `variant`, its overrides, its recipe), trained once for
    the kill -9 and the ZeRO-2 tests."""
    recipe, data_fixture, extra = VARIANTS[variant]
    data = request.getfixturevalue(data_fixture)
    overrides = [f"data.sources=[{{uri: {data}}}]", *COMMON, *FSDP, *extra]
    return reference(tmp_path_factory, f"brain_fsdp_{variant}", overrides, 2, recipe), overrides, recipe


@pytest.mark.multiproc
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fsdp_two_ranks_resume_exactly_after_kill9(variant, tmp_path, tmp_path_factory, request):
    ref, overrides, recipe = fsdp_reference(variant, tmp_path_factory, request)

    killed = tmp_path / "killed"
    procs, log = start(killed, overrides, 2, recipe, resume="never")
    try:
        wait_for(
            lambda: (c := latest_complete(killed)) is not None and int(c.name.split("_")[1]) >= 4,
            what="step 4 saved",
        )
        kill(procs, signal.SIGKILL)
    finally:
        kill(procs)
        log.close()
    saved = int(latest_complete(killed).name.split("_")[1])
    assert saved < STEPS, "the run finished before the kill"
    _, out = run(killed, overrides, 2, recipe)
    assert "resumed from" in out
    assert losses(killed) == losses(ref), "resumed trajectory differs from the uninterrupted run"
    assert traced_rows(killed) == traced_rows(ref), "a window was repeated or skipped"
    assert losses(ref)[STEPS] < losses(ref)[1]


@pytest.mark.multiproc
@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_zero2_two_ranks_equal_fsdp(variant, tmp_path, tmp_path_factory, request):
    fsdp_dir, overrides, recipe = fsdp_reference(variant, tmp_path_factory, request)
    zero2_dir = tmp_path / "zero2"
    zero2 = [*overrides, "parallel.strategy=deepspeed", "parallel.zero_stage=2", "checkpoint.every=100"]
    run(zero2_dir, zero2, 2, recipe, resume="never")
    for run_dir, strategy in ((fsdp_dir, "fsdp"), (zero2_dir, "deepspeed")):
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["parallel"]["strategy"] == strategy
    fsdp, ds = losses(fsdp_dir), losses(zero2_dir)
    assert sorted(fsdp) == sorted(ds) == list(range(1, STEPS + 1))
    worst = max(abs(fsdp[s] - ds[s]) for s in fsdp)
    print(f"\n{variant}: worst |FSDP - ZeRO-2| loss over {STEPS} steps {worst:.2e}")
    assert worst <= FP32_TOL, (fsdp, ds)

"""Brain variants under DeepSpeed ZeRO-2 on 2 gloo ranks equal the same runs under FSDP, step by
step, within the DeepSpeed tests' fp32 tolerance (test_train_deepspeed.FP32_TOL): brain-aware
BLT on the EEG fixture, MEG->text phase 3 (EMA codebooks learning with statistics summed over
ranks, LoRA on frozen decoder layers, commitment on) on the MEG fixture. Two accumulation
micro-batches per step on each rank."""

import pytest
import yaml
from brain_helpers import prep_fixture_dataset
from dist_helpers import losses, run

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]

FP32_TOL = 1e-5  # as test_train_deepspeed
STEPS = 8
COMMON = [
    "train.peak_flops=1e11",
    "wandb.enabled=false",
    "train.log_every=1",
    "train.eval_every=null",
    "train.deterministic=true",
    f"train.steps={STEPS}",
    "checkpoint.every=100",
    "train.micro_batch=4",  # global batch 16 over 2 ranks: 2 micro-batches per step
]
VARIANTS = {
    "brain_aware_blt": ("brain_aware_blt_tiny", "eeg", []),
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


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_zero2_two_ranks_equal_fsdp(variant, tmp_path):
    recipe, kind, extra = VARIANTS[variant]
    data = prep_fixture_dataset(tmp_path, n_words=60, kind=kind, subjects=2, name=kind)
    base = [f"data.sources=[{{uri: {data}}}]", *COMMON, *extra]
    run(tmp_path / "fsdp", [*base, "parallel.strategy=fsdp"], 2, recipe, resume="never")
    run(
        tmp_path / "zero2",
        [*base, "parallel.strategy=deepspeed", "parallel.zero_stage=2"],
        2,
        recipe,
        resume="never",
    )
    for name, strategy in (("fsdp", "fsdp"), ("zero2", "deepspeed")):
        saved = yaml.safe_load((tmp_path / name / "config.yaml").read_text())["parallel"]
        assert saved["strategy"] == strategy
    fsdp, zero2 = losses(tmp_path / "fsdp"), losses(tmp_path / "zero2")
    assert sorted(fsdp) == sorted(zero2) == list(range(1, STEPS + 1))
    worst = max(abs(fsdp[s] - zero2[s]) for s in fsdp)
    print(f"\n{variant}: worst |FSDP - ZeRO-2| loss over {STEPS} steps {worst:.2e}")
    assert worst <= FP32_TOL, (fsdp, zero2)
    assert fsdp[STEPS] < fsdp[1]

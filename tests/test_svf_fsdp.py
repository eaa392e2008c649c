"""An SVF expert's run under FSDP2 over gloo: 2 ranks train the same z as one process, and a
resumed run continues bit for bit."""

import pytest
import torch
from dist_helpers import DETERMINISTIC, FSDP, losses, reference, resume_without_newest, run

from blt_scale.checkpoint.restore import load_model
from blt_scale.files import read_jsonl
from blt_scale.model.svf import get_z

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]

RECIPE = "svf_expert_tiny"
SVF = [
    "train.steps=10",
    "train.global_batch=4",
    "train.log_every=1",
    "train.eval_every=null",
    "train.peak_flops=1e11",
    "data.seq_len=64",
    "data.corpus_bytes=300000",
    "checkpoint.every=5",
    "optim.warmup_steps=2",
    "wandb.enabled=false",
] + DETERMINISTIC


def test_svf_fsdp_two_ranks_matches_one_process_and_resumes_exactly(tmp_path, tmp_path_factory):
    one_dir = reference(tmp_path_factory, "svf_1proc", SVF, 1, RECIPE)
    two_dir = reference(tmp_path_factory, "svf_2rank", SVF + FSDP, 2, RECIPE)
    one, two = losses(one_dir), losses(two_dir)
    assert sorted(one) == sorted(two) == list(range(1, 11))
    assert max(abs(one[s] - two[s]) for s in one) <= 1e-5
    z1, z2 = get_z(load_model(one_dir)[0].base), get_z(load_model(two_dir)[0].base)
    assert all(torch.allclose(z1[k], z2[k], atol=1e-5) for k in z1)
    assert any(float((v - 1).abs().max()) > 1e-3 for v in z2.values())  # z trained

    resumed = resume_without_newest(two_dir, tmp_path / "resumed", SVF + FSDP, 2, RECIPE)  # from step 5
    assert losses(resumed) == two
    z3 = get_z(load_model(resumed)[0].base)
    assert all(torch.equal(z2[k], z3[k]) for k in z2)


def test_svf_reinforce_under_fsdp_resumes_exactly(tmp_path):
    """model.objective.kind=reinforce on 2 FSDP ranks (every rank runs the same fixed number of
    sampling passes); completions are drawn from a generator seeded by the batch, so a resumed run
    samples, rewards and trains exactly as the uninterrupted one."""
    overrides = (
        SVF
        + FSDP
        + [
            "model.objective.kind=reinforce",
            "model.objective.prompt_bytes=16",
            "model.objective.completion_bytes=4",
        ]
    )
    full = tmp_path / "full"
    run(full, overrides, 2, RECIPE)
    rows = [r for r in read_jsonl(full / "metrics.jsonl") if "reward" in r]
    assert [r["step"] for r in rows] == list(range(1, 11))
    resumed = resume_without_newest(full, tmp_path / "resumed", overrides, 2, RECIPE)  # from step 5
    again = {r["step"]: r for r in read_jsonl(resumed / "metrics.jsonl") if "reward" in r}
    assert all((again[r["step"]]["reward"], again[r["step"]]["kl"]) == (r["reward"], r["kl"]) for r in rows)
    assert losses(resumed) == losses(full)
    z1, z2 = get_z(load_model(full)[0].base), get_z(load_model(resumed)[0].base)
    assert all(torch.equal(z1[k], z2[k]) for k in z1)
    assert any(float((v - 1).abs().max()) > 1e-3 for v in z1.values())  # z trained

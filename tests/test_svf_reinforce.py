"""The SVF REINFORCE objective with a KL penalty (train/objectives.py, model.objective.kind=reinforce),
checked against a brute-force computation: one forward pass per sampled id (a BLT base patches each
prefix on its own), the KL summed over the vocabulary by hand, the base model a separate copy with
z = 1."""

from __future__ import annotations

import copy
from typing import get_args

import pytest
import torch
from dist_helpers import one_torch_thread

from blt_scale.config import ConfigError
from blt_scale.model.flops import model_flops
from blt_scale.model.patcher import PatcherConfig, patch_lengths_with_next
from blt_scale.model.svf import SVFConfig, SVFModel, SVFObjective, set_z, svf_layers
from blt_scale.model.vocab import OFFSET, PAD
from blt_scale.train.objectives import REWARDS, loss_fn, reinforce_terms, sample_completions
from blt_scale.train.recipe import load_recipe

BASE = {"kind": "byte_lm", "dim": 32, "layers": 1, "heads": 2, "window": None}
LOCAL = {"dim": 32, "layers": 1, "heads": 2, "window": 16}
BLT_BASE = {"kind": "blt", "encoder": LOCAL, "decoder": LOCAL, "global": {"dim": 32, "layers": 1, "heads": 2}}
SPACE = PatcherConfig(mode="space", max_patch_len=4)
PATCHERS = {"byte_lm": None, "blt": SPACE}  # a byte LM needs no patcher


@pytest.fixture(autouse=True)
def one_thread():
    with one_torch_thread():
        yield


def svf_model(kl_weight: float = 0.1, base: dict = BASE, **objective) -> SVFModel:
    torch.manual_seed(0)
    cfg = SVFConfig(base=base, objective={"kind": "reinforce", "kl_weight": kl_weight, **objective})
    return SVFModel(cfg)


def perturb(model: SVFModel, scale: float = 0.3) -> None:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in svf_layers(model).values():
            layer.z.add_(scale * torch.randn(layer.z.shape, generator=g))


def brute_force(model, prompts, completions, truth, kl_weight, patcher=None):
    """Per completion, per position: a forward pass over the prefix alone, in float64."""
    base = copy.deepcopy(model)
    set_z(base, None)
    P, L = prompts.shape[1], completions.shape[1]
    rewards = [(completions[i] == truth[i]).double().mean() for i in range(len(prompts))]
    mean_reward = sum(rewards) / len(rewards)
    losses = []
    for i in range(len(prompts)):
        seq = torch.cat([prompts[i], completions[i]])
        log_prob = kl = 0.0
        for t in range(L):
            prefix = seq[None, : P + t]
            lengths = () if patcher is None else (patch_lengths_with_next(prefix, patcher),)
            lp, lb = (m(prefix, *lengths)[0, -1].double() for m in (model, base))
            keep = torch.arange(lp.numel()) != PAD
            lp, lb = lp[keep].log_softmax(-1), lb[keep].log_softmax(-1)
            log_prob = log_prob + lp[int(completions[i, t]) - 1]  # PAD (id 0) removed: ids shift by one
            kl = kl + (lp.exp() * (lp - lb.detach())).sum()
        losses.append((-(rewards[i] - mean_reward) * log_prob + kl_weight * kl) / L)
    return torch.stack(losses), torch.stack(rewards)


def fixed_sample(model, n=6, P=10, L=5, patcher=None):
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(3, 259, (n, P), generator=g)
    prompts[:, 2::3] = OFFSET + ord(" ")  # a BLT base sees several space patches
    completions = sample_completions(model, prompts, L, g, patcher)
    truth = completions.clone()
    truth[::2, 1:] = torch.randint(3, 259, (n // 2 + n % 2, L - 1), generator=g)  # rewards differ
    return prompts, completions, truth


@pytest.mark.parametrize("base", [BASE, BLT_BASE], ids=["byte_lm", "blt"])
def test_loss_and_gradient_equal_a_brute_force_computation(base):
    model, patcher = svf_model(base=base), PATCHERS[base["kind"]]
    perturb(model, 2.0)
    prompts, completions, truth = fixed_sample(model, patcher=patcher)
    assert not (completions == PAD).any()
    reward = REWARDS["match"](completions, truth)
    loss, kl = reinforce_terms(model, prompts, completions, reward, 0.7, patcher)
    z = [layer.z for layer in svf_layers(model).values()]
    grads = torch.autograd.grad(loss.mean(), z)

    expected, expected_reward = brute_force(model, prompts, completions, truth, 0.7, patcher)
    expected_grads = torch.autograd.grad(expected.mean(), z)
    assert len(set(reward.tolist())) > 1  # the advantage is not zero everywhere
    assert torch.allclose(reward.double(), expected_reward)
    assert torch.allclose(loss.double(), expected.detach(), atol=1e-5)
    assert float(kl.min()) > 1e-3
    for got, want in zip(grads, expected_grads):
        assert torch.allclose(got, want.float(), atol=1e-5, rtol=1e-3)


def test_kl_is_zero_at_z_one():
    model = svf_model()
    prompts, completions, truth = fixed_sample(model)
    reward = REWARDS["match"](completions, truth)
    loss, kl = reinforce_terms(model, prompts, completions, reward, 5.0)
    assert float(kl.abs().max()) < 1e-6
    perturb(model, 0.05)
    assert float(reinforce_terms(model, prompts, completions, reward, 5.0)[1].min()) > 0


def test_rewards_score_completions_against_the_truth():
    truth = torch.tensor([[5, 6, 7, 8]] * 4)
    completions = torch.tensor([[5, 6, 7, 8], [5, 6, 9, 8], [9, 6, 7, 8], [9, 9, 9, 9]])
    assert REWARDS["match"](completions, truth).tolist() == [1.0, 0.75, 0.75, 0.0]
    assert REWARDS["prefix"](completions, truth).tolist() == [1.0, 0.5, 0.0, 0.0]
    assert REWARDS["exact"](completions, truth).tolist() == [1.0, 0.0, 0.0, 0.0]
    # every reward can be named in a config, and every name has a reward
    assert set(REWARDS) == set(get_args(SVFObjective.model_fields["reward"].annotation))


def test_the_objective_uses_the_reward_it_names(monkeypatch):
    monkeypatch.setitem(REWARDS, "exact", lambda completions, truth: torch.full((len(completions),), 0.25))
    model = svf_model(prompt_bytes=16, completion_bytes=4, samples=4, reward="exact").train()
    figures = loss_fn(model.cfg)(model, {"tokens": rows(0), "patch_lengths": None})[3]
    assert [float(x) for x in figures["reward"]] == [0.25 * 16, 16]
    with pytest.raises(ConfigError, match="reward only apply to kind reinforce"):
        load_recipe("svf_expert_tiny", ["model.objective.reward=exact"])


def rows(seed: int, n: int = 4, length: int = 33) -> torch.Tensor:
    """Rows of a repeating byte pattern."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, 7, (n, 1), generator=g)
    return 3 + (start + torch.arange(length)) % 7 * 13


def adapted(kl_weight: float, steps: int = 12) -> SVFModel:
    """A few Adam steps (the trainer's optimizer family) on the objective, through `loss_fn`. The
    base's matrices are scaled up first: a fresh model's near-uniform outputs hardly move with z."""
    model = svf_model(kl_weight, prompt_bytes=16, completion_bytes=4, samples=4).train()
    with torch.no_grad():
        for p in model.base.parameters():
            if p.dim() == 2:
                p.mul_(6.0)
    model.decompose()
    objective = loss_fn(model.cfg)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for step in range(steps):
        summed, count, aux, figures = objective(model, {"tokens": rows(step), "patch_lengths": None})
        assert set(figures) == {"reward", "kl"} and figures["reward"][1] == 16
        optimizer.zero_grad()
        (summed + aux).backward()
        optimizer.step()
    return model


def distance_to_base(model: SVFModel) -> tuple[float, float]:
    """(KL(π_z ‖ π_base) per sampled id on held-out rows, mean |z − 1|)."""
    tokens = rows(99, n=8)
    completions = sample_completions(model, tokens[:, :16], 4, torch.Generator().manual_seed(0))
    kl = reinforce_terms(model, tokens[:, :16], completions, torch.zeros(len(tokens)), 0.0)[1]
    z = torch.cat([layer.z.detach() for layer in svf_layers(model).values()])
    return float(kl.mean()) / 4, float((z - 1).abs().mean())


def test_a_large_kl_weight_keeps_z_near_one():
    (free_kl, free_z), (held_kl, held_z) = distance_to_base(adapted(0.0)), distance_to_base(adapted(100.0))
    assert free_kl > 1e-3  # without the penalty the policy moves
    assert held_kl < 0.1 * free_kl and held_z < 0.5 * free_z


def test_evaluation_reports_next_byte_loss_and_bad_settings_name_their_key():
    model = svf_model().eval()
    tokens = rows(0)
    summed, count, aux = loss_fn(model.cfg)(model, {"tokens": tokens, "patch_lengths": None})
    assert aux is None and int(count) == tokens[:, 1:].numel()
    with pytest.raises(ValueError, match="prompt_bytes \\+ completion_bytes = 40"):
        loss_fn(model.cfg)(model.train(), {"tokens": rows(0, length=20), "patch_lengths": None})
    with pytest.raises(ConfigError, match="model.objective.kl_weight"):
        load_recipe("svf_expert_tiny", ["model.objective.kind=reinforce", "model.objective.kl_weight=-1"])
    with pytest.raises(ConfigError, match="samples only apply to kind reinforce.*model.objective"):
        load_recipe("svf_expert_tiny", ["model.objective.samples=5"])  # next_byte has no samples
    blt = svf_model(base=BLT_BASE).train()
    for patcher, named in ((None, "no patcher"), (PatcherConfig(mode="entropy"), "entropy")):
        with pytest.raises(ValueError, match=f"patcher.mode space, static or byte \\(this run: {named};"):
            loss_fn(blt.cfg, patcher)(blt, {"tokens": rows(0), "patch_lengths": None})
    assert load_recipe("svf_expert_tiny", ["model.objective.kind=reinforce"]).model.objective == (
        SVFObjective(kind="reinforce")
    )


def test_reinforce_flops_count_every_forward_a_step_runs():
    """flops.py's REINFORCE step against the forward passes a step really runs, recorded with their
    rows, lengths and whether they are differentiated (forward and backward: 3 forward-equivalents)."""
    model = svf_model(prompt_bytes=16, completion_bytes=4, samples=3).train()
    calls = []
    model.base.register_forward_hook(
        lambda m, args, out: calls.append((*args[0].shape, torch.is_grad_enabled()))
    )
    tokens = rows(0, n=2, length=33)
    summed, _, aux, _ = loss_fn(model.cfg)(model, {"tokens": tokens, "patch_lengths": None})
    (summed + aux).backward()

    def row(n: int) -> float:
        return model_flops(model.cfg.base, n).forward_per_byte * n

    assert len(calls) == 1 + 4 + 2  # next-byte loss, one per sampled id, policy and base scoring
    ran = sum(rows * row(n) * (3 if grad else 1) for rows, n, grad in calls)
    counted = model_flops(model.cfg, 32).train_per_byte * tokens[:, :-1].numel()
    assert counted == pytest.approx(ran, rel=1e-9)
    assert (
        counted
        > 2 * model_flops(model.cfg.model_copy(update={"objective": SVFObjective()}), 32).train_per_byte * 64
    )

"""SVF experts end to end on two synthetic tasks the test writes: real shards (`blt prep text`'s
converter), a base byte model trained on both, one expert per task through `blt adapt`, and
two-pass inference (`blt generate --experts`). Bits per byte are measured here, by a direct sum
of log-probabilities over held-out documents, not by the trainer."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from cli_helpers import blt
from dist_helpers import one_torch_thread
from svf_helpers import task_docs, write_task

from blt_scale.checkpoint.expert import load_expert
from blt_scale.checkpoint.export import load_exported, save_exported
from blt_scale.data.prep_text import TextPrepConfig, convert_text
from blt_scale.model.svf import apply_svf, set_z
from blt_scale.model.two_pass import Expert, choose
from blt_scale.model.vocab import BOS, encode
from blt_scale.train.loop import Trainer
from blt_scale.train.objectives import sample_completions
from blt_scale.train.recipe import load_recipe

pytestmark = pytest.mark.slow  # ~1.5 min: a base model and two experts

TASKS = "ab"
ADAPT = [
    "train.steps=30",
    "train.global_batch=8",
    "train.eval_every=null",
    "train.peak_flops=1e11",
    "wandb.enabled=false",
    "checkpoint.every=15",
]


def base_overrides(w) -> list[str]:
    return [
        f"run_dir={w}/base_run",
        "model.dim=64",
        "model.layers=2",
        "model.heads=4",
        "model.window=null",
        f"data.sources=[{{uri: {w}/sa}}, {{uri: {w}/sb}}]",
        "data.seq_len=128",
        "train.steps=200",
        "train.global_batch=8",
        "train.eval_every=null",
        "train.peak_flops=1e11",
        "optim.warmup_steps=20",
        "optim.lr=3e-3",
        "wandb.enabled=false",
    ]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one thread is faster, and never fights the rank processes for the cores."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_thread):
    w = tmp_path_factory.mktemp("svf")
    for t in TASKS:
        src = write_task(w / t / f"{t}.jsonl", t, 1500, seed=0)
        convert_text(
            TextPrepConfig(inputs=[str(src)], out=str(w / f"s{t}"), val_fraction=0.05), progress=False
        )
    cfg = load_recipe("cpu_entropy_model", base_overrides(w))
    trainer = Trainer(cfg)
    trainer.fit()
    save_exported(trainer.model.state_dict(), cfg, w / "base")
    # The two experts train at once (one thread each, the two cores).
    procs = {
        t: blt_async(
            "adapt",
            str(w / "base"),
            "--data",
            str(w / f"s{t}"),
            "--out",
            str(w / f"e{t}"),
            "--name",
            t,
            *ADAPT,
        )
        for t in TASKS
    }
    for t, p in procs.items():
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, (t, err[-3000:])
    return w


def blt_async(*args: str) -> subprocess.Popen:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "blt_scale.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def direct_bpb(model, docs: list[str]) -> float:
    """Σ −log p(byte | BOS, earlier bytes) / bytes / ln 2, one document at a time."""
    nats, count = 0.0, 0
    with torch.no_grad():
        for doc in docs:
            ids = torch.cat([torch.tensor([BOS]), encode(doc.encode())])
            logp = torch.log_softmax(model(ids[None, :-1])[0].double(), dim=-1)
            nats -= float(logp[torch.arange(len(ids) - 1), ids[1:]].sum())
            count += len(ids) - 1
    return nats / count / math.log(2)


def loaded(world):
    model, cfg = load_exported(world / "base")
    experts = []
    for t in TASKS:
        z, info, examples = load_expert(world / f"e{t}")
        experts.append(Expert(info.name, z, examples))
    apply_svf(model, info.targets)
    return model, cfg, experts


def test_each_expert_lowers_its_own_task_and_not_the_other(world):
    model, _, experts = loaded(world)
    test = {t: task_docs(t, 16, seed=99) for t in TASKS}
    set_z(model, None)
    base = {t: direct_bpb(model, test[t]) for t in TASKS}
    for e, other in zip(experts, reversed(experts)):
        set_z(model, e.z)
        own = base[e.name] - direct_bpb(model, test[e.name])
        theirs = base[other.name] - direct_bpb(model, test[other.name])
        assert own > 0.003, (e.name, base, own)  # its own task: lower bpb
        assert theirs < 0, (e.name, base, theirs)  # the other task: not lower
        assert own - theirs > 0.01, (e.name, own, theirs)


def test_prompt_dispatch_picks_the_right_expert_on_held_out_prompts(world):
    """120 held-out prompts of 60 bytes. Measured with the recipe's lr 3e-2: 0.967 (seeds 7, 8, 9:
    1.0, 0.925, 0.975); experts trained at lr 1e-2 got 0.917 (0.975, 0.875, 0.9)."""
    model, cfg, experts = loaded(world)
    right = total = 0
    for t in TASKS:
        for doc in [d for seed in (7, 8, 9) for d in task_docs(t, 20, seed=seed)]:
            choice = choose("prompt", model, experts, doc[:60].encode(), cfg.patcher)
            right += max(choice.weights, key=choice.weights.get) == t
            total += 1
    assert right / total >= 0.9, right / total


def test_mix_is_never_worse_than_the_base_model(world):
    model, cfg, experts = loaded(world)
    for t in TASKS:
        few_shot = [d.encode() for d in task_docs(t, 16, seed=55)]
        choice = choose("mix", model, experts, b"", cfg.patcher, few_shot=few_shot)
        test = task_docs(t, 16, seed=99)
        set_z(model, None)
        base = direct_bpb(model, test)
        set_z(model, choice.z)
        assert direct_bpb(model, test) <= base + 1e-9, (t, choice.weights)


def continuation_reward(model, task: str, prompt: int = 32, length: int = 8, samples: int = 8) -> float:
    """The REINFORCE task's reward on held-out documents: the fraction of sampled ids (after the
    first `prompt` ids of a document) equal to the document's own continuation."""
    docs = task_docs(task, 32, seed=99)
    ids = torch.stack([torch.cat([torch.tensor([BOS]), encode(d.encode())])[: prompt + length] for d in docs])
    prompts = ids[:, :prompt].repeat_interleave(samples, 0)
    completions = sample_completions(model, prompts, length, torch.Generator().manual_seed(0))
    return float((completions == ids[:, prompt:].repeat_interleave(samples, 0)).float().mean())


def test_a_reinforce_expert_raises_its_task_reward(world, tmp_path):
    """`blt adapt ... model.objective.kind=reinforce` (the paper's objective with a KL penalty):
    measured 0.704 -> 0.777 (base -> expert, the recipe's lr 3e-2) on task a's held-out documents;
    +0.050 and +0.052 with another training or sampling seed."""
    out = tmp_path / "ra"
    blt(
        "adapt",
        str(world / "base"),
        "--data",
        str(world / "sa"),
        "--out",
        str(out),
        *ADAPT,
        "model.objective.kind=reinforce",
        "model.objective.kl_weight=0.1",
    )
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["reward"] <= 1 and r["kl"] > -1e-6 for r in rows)  # KL ≥ 0 up to rounding
    model, _ = load_exported(world / "base")
    z, info, _ = load_expert(out)
    assert info.objective == "reinforce" and load_expert(world / "ea")[1].objective == "next_byte"
    apply_svf(model, info.targets)
    set_z(model, None)
    base = continuation_reward(model, "a")
    set_z(model, z)
    assert continuation_reward(model, "a") > base + 0.025, base


def test_generate_with_experts_reports_the_chosen_weights(world):
    prompts = world / "prompts.jsonl"
    docs = {t: task_docs(t, 1, seed=3)[0][:60] for t in TASKS}
    prompts.write_text("".join(json.dumps({"prompt": docs[t]}) + "\n" for t in TASKS))
    experts = [str(world / f"e{t}") for t in TASKS]
    r = blt(
        "generate",
        str(world / "base"),
        "--prompts",
        str(prompts),
        "--experts",
        *experts,
        "--dispatch",
        "prompt",
        "--max-bytes",
        "20",
        "--json",
    )
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [max(row["weights"], key=row["weights"].get) for row in rows] == list(TASKS)
    assert all(row["dispatch"] == "prompt" and len(row["text"].encode()) <= 20 for row in rows)
    r = blt(
        "generate",
        str(world / "base"),
        "--prompt",
        docs["a"],
        "--experts",
        *experts,
        "--dispatch",
        "mix",
        "--max-bytes",
        "8",
        "--json",
    )
    row = json.loads(r.stdout)
    assert (
        set(row["weights"]) == {"base", "a", "b"}
        and row["scores"]["few_shot_bpb"] <= row["scores"]["few_shot_bpb_base"]
    )
    bad = blt("generate", str(world / "base"), "--prompt", "x", "--experts", str(world), check=False)
    assert bad.returncode != 0 and "not an SVF expert" in bad.stderr and len(bad.stderr.splitlines()) == 1

"""Project NEAT parts, measured: SVF experts on the two synthetic tasks of tests/svf_helpers.py.

For each seed: shards of both tasks (the `blt prep text` converter), a base byte model trained on
both, one expert per task through `blt adapt` (the CLI, as a user runs it), then on held-out
documents the bits per byte of the base and of each expert on each task, prompt/classifier dispatch
accuracy on 60- and 100-byte held-out prompts, and the few-shot mix against the base model.

    PYTHONPATH=. python benchmarks/bench_neat.py [--seeds 0 1 2] [--base-steps 200] [--expert-steps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402
from svf_helpers import task_docs, write_task  # noqa: E402

from blt_scale.checkpoint.expert import load_expert  # noqa: E402
from blt_scale.checkpoint.export import load_exported, save_exported  # noqa: E402
from blt_scale.data.prep_text import TextPrepConfig, convert_text  # noqa: E402
from blt_scale.model import two_pass  # noqa: E402
from blt_scale.model.svf import apply_svf, set_z  # noqa: E402
from blt_scale.train.loop import Trainer  # noqa: E402
from blt_scale.train.recipe import load_recipe  # noqa: E402

TASKS = "ab"


def one_seed(seed: int, base_steps: int, expert_steps: int, work: Path) -> dict:
    w = work / f"seed{seed}"
    started = time.perf_counter()
    for t in TASKS:
        src = write_task(w / t / f"{t}.jsonl", t, 1500, seed=seed)
        convert_text(
            TextPrepConfig(inputs=[str(src)], out=str(w / f"s{t}"), val_fraction=0.05), progress=False
        )
    cfg = load_recipe(
        "cpu_entropy_model",
        [
            f"run_dir={w}/base",
            "model.dim=64",
            "model.layers=2",
            "model.heads=4",
            "model.window=null",
            f"data.sources=[{{uri: {w}/sa}}, {{uri: {w}/sb}}]",
            "data.seq_len=128",
            f"train.steps={base_steps}",
            "train.global_batch=8",
            "train.eval_every=null",
            "train.peak_flops=1e11",
            "optim.warmup_steps=20",
            "optim.lr=3e-3",
            "wandb.enabled=false",
            f"train.seed={seed}",
        ],
    )
    trainer = Trainer(cfg)
    trainer.fit()
    save_exported(trainer.model.state_dict(), cfg, w / "base")
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "blt_scale.cli",
                "adapt",
                str(w / "base"),
                "--data",
                str(w / f"s{t}"),
                "--out",
                str(w / f"e{t}"),
                "--name",
                t,
                f"train.steps={expert_steps}",
                "train.global_batch=8",
                "train.eval_every=null",
                "train.peak_flops=1e11",
                "wandb.enabled=false",
                f"train.seed={seed}",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for t in TASKS
    ]
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(err[-2000:])
    trained_s = time.perf_counter() - started

    model, saved = load_exported(w / "base")
    experts = []
    for t in TASKS:
        z, info, examples = load_expert(w / f"e{t}")
        experts.append(two_pass.Expert(t, z, examples))
    apply_svf(model, info.targets)
    test = {t: [d.encode() for d in task_docs(t, 32, seed=1000 + seed)] for t in TASKS}
    bpb = {}
    for name, z in [("base", None)] + [(e.name, e.z) for e in experts]:
        set_z(model, z)
        bpb[name] = {t: two_pass.bpb(model, test[t], saved.patcher) for t in TASKS}
    dispatch = {}
    for mode in ("prompt", "classifier"):
        for length in (60, 100):
            right = total = 0
            for t in TASKS:
                for doc in task_docs(t, 25, seed=2000 + seed):
                    c = two_pass.choose(mode, model, experts, doc[:length].encode(), saved.patcher)
                    right += max(c.weights, key=c.weights.get) == t
                    total += 1
            dispatch[f"{mode}@{length}"] = right / total
    mix = {}
    for t in TASKS:
        few = [d.encode() for d in task_docs(t, 16, seed=3000 + seed)]
        c = two_pass.choose("mix", model, experts, b"", saved.patcher, few_shot=few)
        set_z(model, c.z)
        mix[t] = {"bpb": two_pass.bpb(model, test[t], saved.patcher), "weights": c.weights}
    return {"seed": seed, "bpb": bpb, "dispatch": dispatch, "mix": mix, "train_s": trained_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    p.add_argument("--base-steps", type=int, default=200, help="base model steps (default: 200)")
    p.add_argument("--expert-steps", type=int, default=30, help="steps per expert (default: 30)")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            r = one_seed(seed, args.base_steps, args.expert_steps, Path(tmp))
            rows.append(r)
            print(json.dumps(r), flush=True)
    print("\nseed  task  base_bpb  own_expert  other_expert  own_gain  other_gain  mix_bpb")
    gains = []
    for r in rows:
        for t, other in zip(TASKS, reversed(TASKS)):
            base, own, oth = r["bpb"]["base"][t], r["bpb"][t][t], r["bpb"][other][t]
            gains.append((base - own, base - oth, base - r["mix"][t]["bpb"]))
            print(
                f"{r['seed']:4d}  {t:4s}  {base:8.4f}  {own:10.4f}  {oth:12.4f}  {base - own:8.4f}  "
                f"{base - oth:10.4f}  {r['mix'][t]['bpb']:7.4f}"
            )
    print(
        f"\nmean bpb gain on own task {statistics.mean(g[0] for g in gains):.4f}, on the other task "
        f"{statistics.mean(g[1] for g in gains):.4f}, of the mix {statistics.mean(g[2] for g in gains):.4f}; "
        f"mix never worse than base: {all(g[2] >= 0 for g in gains)}"
    )
    for key in rows[0]["dispatch"]:
        print(
            f"{key}-byte prompts, dispatch accuracy per seed: "
            + ", ".join(f"{r['dispatch'][key]:.2f}" for r in rows)
        )


if __name__ == "__main__":
    main()

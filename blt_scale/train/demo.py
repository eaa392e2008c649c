"""`make demo`: the main job end to end on a corpus every machine has, on 2 CPU processes.

Converts ~4 MB of the Python standard library's sources to MDS shards with `blt prep text`,
trains a cpu_tiny BLT on them with FSDP over gloo, sends SIGUSR2 midway (as SLURM does before a time
limit), checks that both ranks saved the same step and exited with the stop code, resumes with
`--resume auto`, evaluates validation bpb on the held-out documents and writes
RUN_DIR/plots/loss.png. `python -m blt_scale.train.demo [RUN_DIR] [k=v ...]`.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from blt_scale.checkpoint.layout import latest_complete, read_train_state
from blt_scale.files import read_jsonl
from blt_scale.train.exit_codes import EXIT_OK, EXIT_STOPPED
from blt_scale.train.local_ranks import spawn_ranks, wait_ranks

DEMO = [
    "parallel.strategy=fsdp",
    "train.steps=100",
    "train.log_every=5",
    "train.eval_every=25",
    "checkpoint.every=25",
]


def main(argv: list[str]) -> int:
    run_dir = Path(argv[0] if argv and "=" not in argv[0] else "runs/demo")
    args = ["cpu_tiny", *DEMO, *[a for a in argv if "=" in a], f"run_dir={run_dir}"]
    steps = 100
    shutil.rmtree(run_dir, ignore_errors=True)
    started = time.time()

    print(f"== 0. converting the standard library's sources to {run_dir / 'data'}", flush=True)
    from blt_scale.data.builtin import stdlib_files

    files, total = [], 0
    for path in stdlib_files():
        files.append(str(path))
        total += path.stat().st_size
        if total > 4_000_000:
            break
    prep = subprocess.run(
        [
            sys.executable,
            "-m",
            "blt_scale.cli",
            "prep",
            "text",
            *files,
            "--out",
            str(run_dir / "data"),
            "--quiet",
        ]
    )
    if prep.returncode:
        print(f"demo: blt prep text exited {prep.returncode}", file=sys.stderr)
        return 1
    args.append(f"data.sources=[{{uri: {run_dir.resolve() / 'data'}}}]")

    print(f"== 1. training {run_dir} on 2 processes (FSDP over gloo)", flush=True)
    procs = spawn_ranks([*args, "--resume", "never"], 2)
    while not any(r.get("step", 0) >= steps // 2 for r in read_jsonl(run_dir / "metrics.jsonl")):
        if all(p.poll() is not None for p in procs):
            print("demo: training ended before the stop signal", file=sys.stderr)
            return 1
        time.sleep(0.2)
    print("== 2. SIGUSR2 to rank 1 only: every rank must save the same step", flush=True)
    procs[1].send_signal(signal.SIGUSR2)
    code = wait_ranks(procs)
    stopped = latest_complete(run_dir)
    if code != EXIT_STOPPED or stopped is None:
        print(f"demo: expected exit {EXIT_STOPPED} and a checkpoint, got exit {code}", file=sys.stderr)
        return 1
    saved = read_train_state(stopped)["step"]
    print(f"   exit {code}; checkpoint {stopped.name} (step {saved})", flush=True)

    print("== 3. resuming (--resume auto picks the latest complete checkpoint)", flush=True)
    code = wait_ranks(spawn_ranks([*args, "--resume", "auto"], 2))
    if code != EXIT_OK:
        print(f"demo: resumed run exited {code}", file=sys.stderr)
        return 1

    print("== 4. evaluating and plotting", flush=True)
    from blt_scale.checkpoint.restore import load_model
    from blt_scale.train.evaluate import evaluate_bpb
    from blt_scale.train.plot import plot_losses
    from blt_scale.train.recipe import saved_recipe

    model, _, ckpt = load_model(run_dir)
    result = evaluate_bpb(model, saved_recipe(ckpt))
    png = plot_losses(run_dir, {"stopped + resumed": saved})
    summary = {
        "run_dir": str(run_dir),
        "stopped_at": saved,
        "final_checkpoint": ckpt.name,
        "val_bpb": round(result["bpb"], 4),
        "plot": str(png),
        "seconds": round(time.time() - started),
    }
    (run_dir / "demo.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

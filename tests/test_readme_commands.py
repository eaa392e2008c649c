"""The commands in README.md's code blocks run as written, so an example there cannot break silently.

Every command line of a fenced code block is either in RUN (run here, in README order, in one
fresh directory: exactly the README's words with optional `[...]` groups left out, then the few
arguments RUN appends to keep it short) or in SKIP with the reason it cannot run here and where it
is tested instead. A README command in neither fails test_every_readme_command_is_run_or_skipped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from blt_scale.files import read_jsonl

README = Path(__file__).resolve().parents[1] / "README.md"
BLT = Path(sys.executable).parent / "blt"  # the README's `blt` is .venv/bin/blt
COMMAND_TIMEOUT_S = 240

# Appended to the README's training lines: a 2-step run that still validates and checkpoints.
TINY_STEPS = ["train.steps=2", "train.log_every=1", "train.eval_every=2", "train.eval_batches=1"]

GENERATE_MVOT = (
    "blt generate runs/mvot_tiny/export --prompt-file data/lake_prompts/000.bin --images images "
    "--max-bytes 200"
)

# README line (comments and continuation backslashes removed, spaces collapsed) -> arguments appended.
RUN = {
    # Its own run_dir: the next line trains the default runs/cpu_tiny with a different model width.
    "blt train cpu_tiny train.steps=100 model.global.dim=512": TINY_STEPS + ["run_dir=runs/one_process"],
    # The 2-rank FSDP run that eval/export/generate below read (it once failed on an unset micro_batch).
    "blt train cpu_tiny parallel.strategy=fsdp --nproc 2": TINY_STEPS,
    # [--data URI] is a placeholder (--data: tests/test_data_entropies.py); --json: tests/test_train_cli.py.
    "blt eval runs/cpu_tiny [--data URI] [--json]": ["--batches", "1"],
    "blt export runs/cpu_tiny --out runs/cpu_tiny/export": [],
    # 200 bytes take minutes on 2 cores; the later --max-bytes wins.
    'blt generate runs/cpu_tiny/export --prompt "def main(" --max-bytes 200': ["--max-bytes", "8"],
    # --json: tests/test_flops.py::test_cli_json_reports_the_same_numbers.
    "blt flops blt_1b --patch-bytes 4.5 [--json]": [],
    "blt status runs/cpu_tiny [--json]": [],
    "blt plot runs/one_process runs/cpu_tiny --out compare.png": [],
    # SVF's REINFORCE objective on the recipe's own random byte model and the embedded corpus.
    "blt train svf_expert_tiny model.objective.kind=reinforce model.objective.kl_weight=0.1": TINY_STEPS,
    # Trains its prerequisite vq_image_tokenizer_tiny whole (150 steps, seconds), then 2 MVoT steps.
    "blt train mvot_tiny": TINY_STEPS,
    "blt export runs/mvot_tiny --out runs/mvot_tiny/export": [],
    "blt prep gridworld --tokenizer runs/vq_image_tokenizer_tiny --out data/lake --traces 2000 "
    "--prompts-out data/lake_prompts": ["--traces", "16", "--val-traces", "2"],
    GENERATE_MVOT: ["--max-bytes", "8"],
}

# README line -> why it is not run here (and what tests it instead).
SKIP = {
    "blt prep text data/legal/*.jsonl --out data/legal_shards": "example input paths; the SVF flow with "
    "shards the test writes: tests/test_svf_experts.py",
    "blt adapt runs/cpu_tiny/export --data data/legal_shards --out experts/legal [--targets PATTERN] "
    "train.steps=200": "needs task shards and minutes of training: tests/test_svf_experts.py (blt adapt), "
    "tests/test_svf_fsdp.py (FSDP, resume)",
    "blt adapt runs/cpu_tiny/export --data data/legal_shards --out experts/legal_rl "
    "model.objective.kind=reinforce": "needs task shards: "
    "tests/test_svf_experts.py::test_a_reinforce_expert_raises_its_task_reward (a byte_lm base), "
    "tests/test_svf_reinforce.py (a BLT base against brute force), tests/test_svf_fsdp.py (FSDP, resume)",
    "blt generate runs/cpu_tiny/export --experts experts/legal experts/code --dispatch prompt "
    '--prompt "Whereas" --json': "needs trained experts: tests/test_svf_experts.py "
    "(blt generate --experts --dispatch prompt|mix --json)",
    'blt train mvot_tiny "data.sources=[{uri: data/lake}]" data.gridworld=null run_dir=runs/mvot_lake': (
        "the same training as `blt train mvot_tiny` above on the shards of `blt prep gridworld`: "
        "tests/test_mvot_cli.py::test_prep_train_generate_pngs"
    ),
    "make demo": "minutes on 2 cores (this file's budget is ~3 min); its steps are tested one by one: "
    "blt prep text (tests/test_data_prep.py), FSDP stop by SIGUSR2 and resume (tests/test_train_resume.py), "
    "eval (tests/test_train_cli.py and the eval line here)",
    "make test": "the whole test suite, which includes this file",
    "blt prep text /data/raw/*.jsonl.zst --text-field text --out s3://bucket/corpus --workers 8 "
    "--val-fraction 0.01": "remote storage (s3://) and example input paths; blt prep text: "
    "tests/test_data_prep.py, tests/test_data_errors.py",
    "blt prep entropies --data s3://bucket/corpus --model runs/entropy_model/export "
    "--out s3://bucket/corpus_h "
    "--slurm-parts 16 --nodes 1 --gpus-per-node 1 --device cuda --partition gpu": "SLURM, GPU and s3://: "
    "tests/test_slurm_entropies.py (--slurm-parts on the local cluster), tests/test_data_entropies.py",
    'blt submit blt_1b "data.sources=[{uri: s3://bucket/corpus_h}]" --nodes 8 --gpus-per-node 8 '
    "--time 48:00:00 --partition gpu": "SLURM with 64 GPUs and s3://: tests/test_slurm_submit.py, "
    "tests/test_slurm_cli.py (--dry-run)",
    "blt status runs/blt_1b": "reads the SLURM run submitted above: tests/test_slurm_resume.py, "
    "tests/test_slurm_sbatch.py",
    "blt resume runs/blt_1b --nodes 4": "SLURM (resubmits the run above): tests/test_slurm_resume.py",
    "blt sweep recipes/sweeps/paper_isoflop.yaml --wait": "SLURM array of GPU-sized runs: "
    "tests/test_sweep_slurm.py, tests/test_sweep_local.py (tiny sweeps)",
    "torchrun --nproc-per-node 8 -m blt_scale.train blt_1b parallel.strategy=fsdp": "GPU (blt_1b on 8 "
    "ranks); torchrun's environment: tests/test_train_units.py::test_env_from_torchrun_then_slurm",
}


def _strip_comment(line: str) -> str:
    """`line` up to a `#` that starts a shell comment (outside quotes, at a word start)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def readme_commands(text: str | None = None) -> list[str]:
    """The command lines of README.md's fenced code blocks, in order: continuation lines joined,
    comments and blank lines dropped, runs of spaces collapsed."""
    text = README.read_text() if text is None else text
    commands = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S):
        pending = ""
        for raw in block.splitlines():
            line = _strip_comment(raw).strip()
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            line = " ".join((pending + line).split())
            pending = ""
            if line:
                commands.append(line)
    return commands


def as_run(command: str) -> list[str]:
    """The argv of a README line with its optional `[...]` groups left out."""
    argv = shlex.split(re.sub(r"\[[^\]]*\]", " ", command))
    return [str(BLT) if argv[0] == "blt" else argv[0], *argv[1:]] + RUN[command]


def test_readme_parsing():
    text = (
        "x\n```bash\nblt a b=1   # note\nblt c \\\n    --d 'e # f'\n\n# only a comment\n```\n`blt inline`\n"
    )
    assert readme_commands(text) == ["blt a b=1", "blt c --d 'e # f'"]
    assert as_run("blt eval runs/cpu_tiny [--data URI] [--json]")[1:] == [
        "eval",
        "runs/cpu_tiny",
        "--batches",
        "1",
    ]


def test_every_readme_command_is_run_or_skipped():
    commands = readme_commands()
    missing = [c for c in commands if c not in RUN and c not in SKIP]
    assert not missing, (
        "README.md commands that tests/test_readme_commands.py neither runs (RUN) nor skips with a "
        f"reason (SKIP): {missing}"
    )
    stale = [c for c in [*RUN, *SKIP] if c not in commands]
    assert not stale, (
        f"RUN/SKIP entries of tests/test_readme_commands.py that README.md no longer has: {stale}"
    )
    assert not set(RUN) & set(SKIP)
    assert all(reason.strip() for reason in SKIP.values())


def _env(tmp: Path) -> dict:
    """This environment without rank, SLURM or wandb settings that would change what a command does;
    temporary files and wandb's own directories under `tmp`."""
    drop = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith(("SLURM_", "WANDB_"))}
    for key, sub in [
        ("TMPDIR", "tmp"),
        ("WANDB_CACHE_DIR", "wandb_cache"),
        ("WANDB_CONFIG_DIR", "wandb_config"),
        ("WANDB_DATA_DIR", "wandb_data"),
    ]:
        (tmp / sub).mkdir(parents=True, exist_ok=True)
        env[key] = str(tmp / sub)
    return env


@pytest.mark.multiproc
@pytest.mark.slow
def test_readme_commands_run_as_written(tmp_path):
    cwd = tmp_path / "work"
    cwd.mkdir()
    env = _env(tmp_path)
    outputs = {}
    for command in readme_commands():
        if command not in RUN:
            continue
        # errors="replace": `blt generate` writes the model's raw bytes, which need not be UTF-8
        out = subprocess.run(
            as_run(command),
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=COMMAND_TIMEOUT_S,
        )
        assert out.returncode == 0, (
            f"README command {command!r} exited {out.returncode}:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
        )
        outputs[command] = out.stdout

    for run_dir in ("runs/one_process", "runs/cpu_tiny"):
        rows = [json.loads(line) for line in (cwd / run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if "split" not in r] == [1, 2], run_dir
        assert [r["step"] for r in rows if r.get("split") == "val"] == [2], run_dir
        assert (cwd / run_dir / "checkpoints" / "step_000002").is_dir(), run_dir
    assert "val bpb" in outputs["blt eval runs/cpu_tiny [--data URI] [--json]"]
    svf_rows = read_jsonl(cwd / "runs/svf_expert_tiny/metrics.jsonl")
    assert all(0 <= r["reward"] <= 1 for r in svf_rows if "split" not in r), svf_rows
    assert (cwd / "runs/cpu_tiny/export/config.yaml").is_file()
    assert outputs['blt generate runs/cpu_tiny/export --prompt "def main(" --max-bytes 200'].startswith(
        "def main("
    )
    assert "training FLOPs/byte" in outputs["blt flops blt_1b --patch-bytes 4.5 [--json]"]
    assert "state finished" in outputs["blt status runs/cpu_tiny [--json]"]
    assert (cwd / "compare.png").stat().st_size > 5_000
    assert [r["step"] for r in read_jsonl(cwd / "runs/vq_image_tokenizer_tiny/metrics.jsonl")][-1] == 150
    shown = outputs[GENERATE_MVOT]
    assert shown.startswith("Lake 4x4:[image: images/000_prompt_0.png]")
    assert (cwd / "images/000_prompt_0.png").is_file()

"""Two synthetic text tasks for SVF experts, written by the tests (nothing downloaded).

Both use the same ten words; they differ in which word follows which: in task a, word i is
followed by word PERM_A[i] (with probability 0.85, else any word), in task b by PERM_B[i]. A base
model trained on both hedges between the two successors unless it infers the task from the context;
an expert can commit to its task's successor (and so gets worse on the other task)."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = "apple brick cloud dune ember frost grove harbor island jungle".split()
PERM = {"a": [3, 7, 0, 9, 5, 1, 8, 2, 4, 6], "b": [6, 4, 8, 1, 2, 9, 0, 5, 3, 7]}
FOLLOW = 0.85


def task_text(task: str, rng: random.Random, words: int = 16) -> str:
    i = rng.randrange(len(WORDS))
    out = [WORDS[i]]
    for _ in range(words - 1):
        i = PERM[task][i] if rng.random() < FOLLOW else rng.randrange(len(WORDS))
        out.append(WORDS[i])
    return " ".join(out) + "."


def task_docs(task: str, n: int, seed: int, words: int = 16) -> list[str]:
    rng = random.Random(f"{task}-{seed}")
    return [task_text(task, rng, words) for _ in range(n)]


def write_task(path: Path, task: str, n: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in task_docs(task, n, seed)))
    return path

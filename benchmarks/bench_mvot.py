"""MVoT, measured on grid-world traces: does the token discrepancy loss make generated images closer
to the true ones, and does answer accuracy gain from interleaved state images?

One VQ image tokenizer (recipe vq_image_tokenizer_tiny) is trained once; then, for each seed, three
mvot_tiny models at equal steps: interleaved images with discrepancy_weight W (`ld`) and 0 (`ce`),
and without the state images after the moves (`noimg`, data.gridworld.interleave=false, weight 0;
left out with --no-answers). On held-out traces (the val seed stream):
- image error (`ld`, `ce`): for every state image after a move, the true trace up to that image is
  the prefix and the model generates the image's 16 codes, restricted to image ids, greedily and
  (`*_sampled`) at temperature 1; the figure is the mean over generated codes of the MSE between the
  generated and the true code's codebook vectors (the quantity L_D weighs), and `code_acc` the share
  of codes that are right. References from the code frequencies (seed 0's held-out traces; seeds
  0-3 give oracle 0.017-0.018 and blind 0.085-0.096 greedy at texture 0.3): `oracle_*`, a model
  that knows every cell's kind but not its brightness; `blind_*`, one that knows nothing of the lake;
- answer accuracy (`ce` with images, `noimg` without): from the prompt (lake image and moves) the
  model writes the rest greedily (with images it must draw the states first), and its ' Goal? yes/no'
  is compared with the truth; `majority` is the accuracy of always giving the commoner answer;
- discrepancy.png (in the work directory): L_D per image target in the training rows of every `ld`
  and `ce` run, and `learned_at`, the step at which it falls halfway from the blind to the oracle
  reference.

    PYTHONPATH=. python benchmarks/bench_mvot.py [--seeds 0 1 2] [--steps 200] [--weight 1.0]
        [--texture 0.0] [--traces 48] [--no-answers]

L_D charges a wrong code by how far its codebook vector lies from the right one, so it can only
matter where several codes look alike. With flat colours (texture 0) each cell kind has one code;
`--texture 0.3` draws each cell's brightness afresh per image, so a kind is coded by 2-20 codes (as
a large codebook codes one look by many) and the exact code of a cell is unknowable.

Measured on 2 shared CPU cores (2026-11-30), weight 1.0, 48 held-out traces each, greedy unless said:
- Flat colours, 300 steps, seeds 0-2 (8 min): image MSE ld 0.0494 vs ce 0.0487 (ld lower in 1 of 3);
  answer accuracy with images 0.688, without 0.729, commoner answer 0.708: neither reads the lake yet.
- Flat colours, 1000 steps, 6 seeds (`--seeds 0 1 2 --steps 1000`, 37 min; then 3 4 5): image MSE ld
  0.0127 vs ce 0.0131 (blind 0.075), ld lower in 3 of 6, paired difference -0.0004 ± 0.0042 (sd): no
  measurable effect. `--weight 3.0` (seeds 3-5): 0.0150 vs 0.0113, worse. Answer accuracy with
  interleaved images 0.889 (seeds 0-2) and 0.81 (3-5), without 0.674 and 0.65, commoner answer 0.708
  and 0.57: images add 0.12-0.31 in every one of the 6 seeds.
- `--texture 0.3 --no-answers`, one process per seed, 3 at a time. References: oracle 0.017 greedy,
  0.033 sampled; blind 0.090 greedy, 0.179 sampled.
  - 1000 steps (9 min per 3 seeds), 6 seeds: ld lower in 6 of 6, greedy 0.125 vs 0.168 (paired
    -0.043 ± 0.039), sampled 0.124 vs 0.168 (-0.044 ± 0.030). Both are partway through learning
    the lake: greedy errors above the blind greedy reference, sampled ones below the blind sampled.
  - 3000 steps (26 min per 3 seeds), 6 seeds: both models learn the lake (below the blind
    references), and then L_D no longer lowers the error: greedy ld 0.067, 0.075, 0.063, 0.077, 0.078,
    0.071 vs ce 0.074, 0.067, 0.118, 0.074, 0.079, 0.057 (lower in 3 of 6; means 0.072 vs 0.078, the
    gap from seed 2, whose ce model had not learned); sampled lower in 2 of 6 (0.065 vs 0.074).
  - What L_D changes is when the model learns which codes are alike. `learned_at` (the first step
    whose 5 training rows' mean L_D is below halfway from blind to oracle, 0.106) is 1030, 1130,
    1200, 1250, 1250, 1070 with L_D and 1610, 1430, never, 1250, 1450, 1400 without: earlier in 5
    of 6 seeds, the same step in one. discrepancy.png shows the drop.
  - The weight, 1000 steps, seeds 0-2 (`--weight W`; the `ce` models give identical figures in both,
    greedy 0.180, 0.193, 0.166): `--weight 0.3` ld 0.099, 0.193, 0.171, lower in 1 of 3 (sampled
    0.102, 0.179, 0.169 vs 0.180, 0.181, 0.171: 3 of 3, two by < 0.003); `--weight 3.0` ld 0.097,
    0.118, 0.099, lower in 3 of 3 (sampled 0.089, 0.111, 0.092: 3 of 3), and seed 0's L_D reaches
    halfway by step 830. On textured lakes a larger weight helps; on flat colours weight 3 did not.
- `--texture 0.1`, 1000 steps, seeds 0-2: greedy ld 0.101, 0.059, 0.093 vs ce 0.055, 0.060, 0.096
  (blind 0.077): ld lower in 2 of 3 but higher on average; neither model has learned the lake.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from blt_scale.checkpoint.restore import load_model
from blt_scale.data.gridworld import (
    COLOURS,
    answer_of,
    load_tokenizer,
    make_trace,
    prompt_and_answer,
    tokenizer_codes,
    trace_bytes,
)
from blt_scale.files import read_jsonl
from blt_scale.model.generate import generate_batch
from blt_scale.model.mvot import IMAGE_OFFSET, code_distances, stream_ids
from blt_scale.model.patcher import patch_lengths_with_next
from blt_scale.train.plot import compare_runs, save_figure
from blt_scale.train.recipe import load_recipe, saved_recipe
from blt_scale.train.run import run_training

QUIET = ["wandb.enabled=false", "train.peak_flops=1e11", "train.eval_every=null", "checkpoint.every=null"]


def train(run_dir: Path, tokenizer: Path, seed: int, steps: int, extra: list[str]) -> Path:
    cfg = load_recipe(
        "mvot_tiny",
        [
            f"run_dir={run_dir}",
            f"model.init_from=[{{path: {tokenizer}, prefix: images.}}]",
            f"data.gridworld.tokenizer={tokenizer}",
            "train.prerequisites=[]",
            f"train.seed={seed}",
            f"train.steps={steps}",
            *QUIET,
            *extra,
        ],
    )
    assert run_training(cfg) == 0, run_dir
    return run_dir


@torch.no_grad()
def image_error(model, cfg, traces: list[bytes], sample: bool = False) -> dict:
    """Mean codebook MSE and code accuracy of the state images generated after each move, greedily
    or (sample) drawn at temperature 1 from the image ids, seeded."""
    per_image = cfg.model.tokenizer.codes_per_image
    K = cfg.model.tokenizer.rvq.codebook_size
    dist = code_distances(model.images.codebook)
    draws = torch.Generator().manual_seed(0)
    errors, right = [], []
    for data in traces:
        ids = torch.from_numpy(stream_ids(data, bos=True))
        starts = [i for i in range(1, len(ids)) if ids[i] >= IMAGE_OFFSET and ids[i - 1] < IMAGE_OFFSET]
        for start in starts[1:]:  # the first image is the prompt's map
            seq = ids[:start]
            for k in range(per_image):
                logits = model(seq[None], patch_lengths_with_next(seq[None], cfg.patcher))[0, -1]
                image_logits = logits[IMAGE_OFFSET : IMAGE_OFFSET + K].float()
                if sample:
                    code = int(torch.multinomial(image_logits.softmax(-1), 1, generator=draws))
                else:
                    code = int(image_logits.argmax())
                truth = int(ids[start + k]) - IMAGE_OFFSET
                errors.append(float(dist[truth, code]))
                right.append(code == truth)
                seq = torch.cat([seq, torch.tensor([IMAGE_OFFSET + code])])
    return {"image_mse": statistics.mean(errors), "code_acc": statistics.mean(right), "codes": len(errors)}


@torch.no_grad()
def references(tokenizer, world, seed: int, traces: int) -> dict:
    """Image errors that frame image_error's, from the code frequencies of the held-out state images
    after the moves: a model that knows every cell's kind but not its brightness (`oracle_*`: greedy,
    it gives the kind's code nearest to that kind's codes on average; sampling, it draws from the
    kind's codes at their frequencies), and one that knows nothing of the lake (`blind_*`: the one
    code nearest to all codes on average; draws at the codes' overall frequencies)."""
    codes_of = tokenizer_codes(tokenizer, world)
    dist = code_distances(tokenizer.codebook).double()
    counts = torch.zeros(len(COLOURS), len(dist), dtype=torch.float64)
    for i in range(traces):
        trace = make_trace(world, seed, "val", i)
        kinds = torch.from_numpy(np.stack(trace.states[1:])).reshape(-1)
        codes = torch.from_numpy(codes_of(np.stack(trace.states), trace.shades)[1:]).reshape(-1)
        counts.index_put_((kinds, codes), torch.ones(len(kinds), dtype=torch.float64), accumulate=True)
    weight, p = counts.sum(1) / counts.sum(), counts / counts.sum(1, keepdim=True).clamp_min(1)
    expected = p @ dist  # [kind, code]: mean error of giving this code for this kind
    overall = counts.sum(0) / counts.sum()
    return {
        "oracle_greedy": float((weight * expected.min(1).values).sum()),
        "oracle_sampled": float((weight * (expected * p).sum(1)).sum()),
        "blind_greedy": float((dist @ overall).min()),
        "blind_sampled": float(overall @ dist @ overall),
    }


def learned_at(run_dir: Path, below: float, rows: int = 5) -> int | None:
    """The first step at which the mean L_D of `rows` consecutive training rows is below `below`
    (None: never): when the model learned which codes are alike."""
    history = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "split" not in r and "discrepancy" in r]
    for i in range(len(history) - rows + 1):
        if statistics.mean(r["discrepancy"] for r in history[i : i + rows]) < below:
            return history[i + rows - 1]["step"]
    return None


@torch.no_grad()
def answer_accuracy(model, cfg, traces: list[bytes]) -> dict:
    prompts = [prompt_and_answer(d) for d in traces]
    batch = [torch.from_numpy(stream_ids(p, bos=True)) for p, _ in prompts]
    longest = max(len(stream_ids(rest)) for _, rest in prompts)
    outs = generate_batch(model, batch, longest + 4, cfg.patcher)
    said = [answer_of(out.text) for out in outs]
    truth = [answer_of(rest) for _, rest in prompts]
    return {
        "accuracy": statistics.mean(s == t for s, t in zip(said, truth)),
        "answered": statistics.mean(s is not None for s in said),
        "majority": max(truth.count("yes"), truth.count("no")) / len(truth),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=200, help="training steps of every mvot model")
    p.add_argument("--weight", type=float, default=1.0, help="discrepancy_weight of the `ld` models")
    p.add_argument("--traces", type=int, default=48, help="held-out traces per evaluation")
    p.add_argument("--texture", type=float, default=0.0, help="data.gridworld.texture of every run")
    p.add_argument("--no-answers", action="store_true", help="image error only: no `noimg` model")
    p.add_argument("--work", default=None, help="directory for the runs (default: a temporary one)")
    args = p.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_mvot_"))
    started = time.perf_counter()
    texture = [f"data.gridworld.texture={args.texture}"]
    tok_cfg = load_recipe("vq_image_tokenizer_tiny", [f"run_dir={work}/tokenizer", *QUIET, *texture])
    assert run_training(tok_cfg) == 0
    tokenizer = work / "tokenizer"
    reference = references(load_tokenizer(str(tokenizer)), tok_cfg.data.gridworld, 0, args.traces)
    print(json.dumps(reference), flush=True)
    results, image_runs = [], []
    for seed in args.seeds:
        row: dict = {"seed": seed}
        models = [
            ("ld", [f"model.mvot.discrepancy_weight={args.weight}"]),
            ("ce", ["model.mvot.discrepancy_weight=0"]),
            ("noimg", ["model.mvot.discrepancy_weight=0", "data.gridworld.interleave=false"]),
        ]
        for name, extra in models[:2] if args.no_answers else models:
            run_dir = train(work / f"seed{seed}_{name}", tokenizer, seed, args.steps, [*texture, *extra])
            model, _, _ = load_model(run_dir)
            cfg = saved_recipe(run_dir)
            world = cfg.data.gridworld
            codes_of = tokenizer_codes(load_tokenizer(str(tokenizer)), world)
            # held out: the val seed stream, which training (the train stream) never reads
            traces = [
                trace_bytes(make_trace(world, seed, "val", i), world, codes_of) for i in range(args.traces)
            ]
            model.eval()
            if name != "noimg":
                image_runs.append(run_dir)
                row[name] = image_error(model, cfg, traces)
                # halfway from knowing nothing of the lake to knowing every cell's kind
                halfway = (reference["blind_sampled"] + reference["oracle_sampled"]) / 2
                row[f"{name}_learned_at"] = learned_at(run_dir, halfway)
                row[f"{name}_sampled"] = image_error(model, cfg, traces, sample=True)
            if name != "ld" and not args.no_answers:
                row[f"{name}_answer"] = answer_accuracy(model, cfg, traces)
        print(json.dumps(row), flush=True)
        results.append(row)

    def mean(key: str, field: str) -> float:
        return statistics.mean(r[key][field] for r in results)

    summary = {"steps": args.steps, "weight": args.weight, "texture": args.texture, **reference}
    for how in ["", "_sampled"]:
        summary |= {
            f"image_mse_ld{how}": mean(f"ld{how}", "image_mse"),
            f"image_mse_ce{how}": mean(f"ce{how}", "image_mse"),
            f"ld_lower_in_seeds{how}": sum(
                r[f"ld{how}"]["image_mse"] < r[f"ce{how}"]["image_mse"] for r in results
            ),
            f"code_acc_ld{how}": mean(f"ld{how}", "code_acc"),
            f"code_acc_ce{how}": mean(f"ce{how}", "code_acc"),
        }
    summary["learned_at_ld"] = [r["ld_learned_at"] for r in results]
    summary["learned_at_ce"] = [r["ce_learned_at"] for r in results]
    if not args.no_answers:
        summary |= {
            "answer_acc_images": mean("ce_answer", "accuracy"),
            "answer_acc_no_images": mean("noimg_answer", "accuracy"),
            "answered_images": mean("ce_answer", "answered"),
            "answered_no_images": mean("noimg_answer", "answered"),
            "majority": mean("ce_answer", "majority"),
        }
    summary["seconds"] = time.perf_counter() - started
    # L_D per image target while training, with and without it (the expected codebook error of a code
    # drawn from the model, teacher-forced)
    summary["plot"] = str(
        save_figure(compare_runs(image_runs, metric="discrepancy"), work / "discrepancy.png")
    )
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

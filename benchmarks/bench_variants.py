"""Attention variants at equal training FLOPs on a long-range recall task (issue 18).

Each row is `key: WXYZ. ` + random lowercase words + ` key: WXYZ.`: the second WXYZ (4 random
letters) can only be predicted by recalling the first, which lies beyond every window of the
models below (local windows 16 bytes, latent window 8 patches; ~110 bytes away). Variants of one
tiny BLT (space patches):

- softmax: the windowed latent attention alone (cannot reach the key: ~ln 26 nats per letter);
- differential: the same with differential attention in every stack;
- titans_mag / titans_mac: the windowed latent plus a Titans memory (MAC: segments of 8 patches);
- softmax_full: an unwindowed latent, the reference that sees everything.

Every variant trains for the steps its training FLOPs per byte (flops.py, mean bytes/patch
measured on the data) allow within one budget, over 3 seeds, on the recalled letters only
(`--objective recall`) or on every byte (`--objective lm`). Printed per variant: recall loss
(nats per secret letter) and accuracy on held-out rows, bits per byte of the rest, steps,
seconds per step, training FLOP/s (flops.py's training FLOPs of a step / its seconds), and each
figure's ratio to softmax (the plain BLT), all variants measured in the same run.

Measured (2 shared CPU cores, 2026-11): at `--budget 2e11` (370-460 steps) no variant learns the
recall, full attention included: with `--objective lm` and 3 seeds every recall loss is within
0.02 of ln 26 (3.267-3.274) and every accuracy within 0.01 of 1/26; with `--objective recall`
(1 seed, softmax_full and titans_mag) the same, and at `--budget 1e12` (2000-2300 steps, 1 seed,
softmax, softmax_full, titans_mag) still 3.260 nats for all three. Seconds per step there measure
a loaded machine. Training FLOP/s ÷ softmax's, one run (`--budget 3e10 --seeds 1 --threads 1`,
56-69 steps, 2026-11-30, shared cores): softmax 9.8e9 FLOP/s; differential x0.81, titans_mag
x0.64, titans_mac x0.63, softmax_full x1.12 (short runs, first step included; not repeated).

The task above is `--task letters` (the default). `--task digit` is the learnable one: each row is
`key: D. ` + random lowercase words + ` key: D.` in 56 bytes, D one digit of 0-7 (chance ln 8 =
2.079 nats), with local windows of 8 bytes and a latent window of 2 patches (2 layers: the query's
patch reaches 2 patches back; MAC: segments of 4 patches, and the Titans memory's chunk is 4). The
decoder predicts D from the latent of the patch `key:`; the secret lies 49 bytes before D, with 6-10
filler patches between their patches on the held-out rows (10-14 patches a row). Held-out rows come
from their own generator (seed 12345), training rows from 1000 x seed. Before training each
variant, `reach` checks on all 256 held-out rows that the gradient of the recalled logits with
respect to the secret's byte and n-gram embeddings is exactly 0 for the windowed variants without
memory (softmax, differential) and not 0 for the others, and stops the run otherwise. (The windows
reach further than latent window x layers: a byte's decoder window holds earlier bytes whose
cross-attention saw earlier latents, each with its own latent and encoder reach. At 48 bytes the
check failed on 76 of the 256 held-out rows; at 56 it holds on all of them, and on 1024 training
rows of seed 0 too. MAC's segments are not checked: its memory is a path to the secret.)
`--memory` overrides MemoryConfig fields of the Titans variants (JSON).

Measured on `--task digit` (2 shared CPU cores, 2026-11-30, `--budget 3e11 --threads 1`, objective
recall; titans_mag with `--memory '{"max_step": 0.25}'`, chunk 4). Recall nats: mean ± population sd
over seeds; "learned": seeds clearly below chance.

    variant        seeds  recall nats    recall acc  steps  learned  per seed (nats)
    softmax        0-2    2.083 ± 0.001  0.130       1541   0/3      2.082 2.084 2.083
    titans_mag     0-2    1.929 ± 0.214  0.159       1363   1/3      2.080 2.080 1.626 (acc 0.227)
    softmax_full   0-2    1.389 ± 0.981  0.414       1536   1/3      2.082 0.001 (acc 1.000) 2.083
    softmax        3-5    2.086 ± 0.007  0.130       1544   0/3      2.087 2.094 2.077
    titans_mag     3-5    2.087 ± 0.007  0.128       1366   0/3      2.086 2.096 2.078
    (6 seeds: softmax 2.085 ± 0.005, titans_mag 2.008 ± 0.171; 1 of 6 titans seeds learned)

So titans_mag does not reliably beat the windowed softmax at this budget: one seed in six learned
the recall part-way (1.626 nats), the others stay at chance like softmax (which cannot do better:
its recall provably does not depend on the secret). Full attention learns it perfectly in one seed
of three and not at all in the others: at this budget the task sits at the edge of what even the
unwindowed model learns, and learning is all-or-nothing per seed. Commands:

    benchmarks/bench_variants.py --task digit --budget 3e11 --seeds 3 --threads 1 \
        --variants titans_mag --memory '{"max_step": 0.25}'            # and --first-seed 3
    benchmarks/bench_variants.py --task digit --budget 3e11 --seeds 3 --threads 1 \
        --variants softmax softmax_full                                # softmax also --first-seed 3

Pilots, 1 seed each (seed 0, same budget): titans_mag at the default max_step 0.02 and at
{"max_step": 0.5, "heads": 1} stayed at chance (2.082, 2.086; at 48 bytes); at 48 bytes titans_mag
{"max_step": 0.25} reached 1.662 and softmax_full 0.001, but 48 bytes leaks (above), so those rows
were partly within reach of the windows. With 96 bytes and a latent window of 4, softmax_full stayed
at chance after 1798 steps (6e11).

The curriculum `--near F` makes the memory's recall learnable in some seeds, not all. A fraction F
of the training rows state the secret just before the query instead: filler, then `key: D. `, 3-6
letters and ` key: D.` at the row's end, where the windowed softmax reaches it (`reach` checks all
256 rows of a near-only set and stops the run otherwise); so every variant learns early that the
answer is the digit stated before. Held-out rows are unchanged, all beyond reach, and only they
are scored. Same budget and settings, `--near 0.8` (the steps count the near rows' patches):

    variant        seeds  recall nats    recall acc  steps  learned  per seed (nats / acc)
    softmax        0-2    2.118 ± 0.032  0.137       1543   0/3      2.112/.133 2.159/.152 2.082/.125
    titans_mag     0-2    1.633 ± 0.329  0.264       1365   2/3      1.342/.383 1.465/.281 2.093/.129
    softmax        3-5    2.100 ± 0.019  0.111       1542   0/3      2.120/.070 2.106/.121 2.075/.141
    titans_mag     3-5    1.961 ± 0.214  0.169       1364   1/3      2.129/.137 2.094/.117 1.659/.254
    (6 seeds: softmax 2.109 ± 0.027, acc 0.124; titans_mag 1.797 ± 0.322, acc 0.217; 3 of 6 learned)

On the mean over seeds, titans_mag beats the windowed softmax on held-out (beyond-reach) recall by
0.48 nats over seeds 0-2 (1.633 ± 0.329 vs 2.118 ± 0.032), 0.14 over seeds 3-5 (1.961 ± 0.214 vs
2.100 ± 0.019) and 0.31 over all 6 (1.797 ± 0.322 vs 2.109 ± 0.027; accuracy 0.22 vs 0.12, chance
0.125). Per seed it is all or nothing: the 3 seeds that learn (0, 1, 5) end 0.42-0.77 nats below
softmax's run of the same seed, the other 3 within 0.012 of it, at chance. So the margin on the
mean is not a reliable win: for seeds 3-5 it is within one titans sd. Softmax's held-out loss sits
above chance because the near rows make it confident about a digit it cannot see. Commands:

    benchmarks/bench_variants.py --task digit --budget 3e11 --seeds 6 --threads 1 --near 0.8 \
        --variants titans_mag --memory '{"max_step": 0.25}'      # each seed's run is independent
    benchmarks/bench_variants.py --task digit --budget 3e11 --seeds 6 --threads 1 --near 0.8 \
        --variants softmax

Curriculum pilots (same budget, titans_mag with max_step 0.25 unless stated): `--near 0.5`, seeds
0-2: 1.453 (acc .266), 2.178, 2.086, 1 of 3 learned; softmax_full at `--near 0.5`, seed 0: 2.121
(full attention did not carry the near rows' recall to the far ones). Seed 2 at `--near 0.8`
stayed at chance with every change tried: budget 1e12 (4555 steps, 2.090), memory heads 1 (2.097),
4 persistent tokens (2.100). Near rows whose gap is drawn uniformly from 3 bytes to the whole row (most beyond
reach; not kept) did worse: seeds 0 and 2 both at chance (2.082, 2.081). `--near 0.9`: seeds 1 and
2 at chance or above (2.170, 2.199).

    .venv/bin/python benchmarks/bench_variants.py [--budget 3e12] [--seeds 3] [--threads 1] [--json]
        [--task letters|digit] [--near 0.8] [--memory '{"max_step": 0.25}']
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

from blt_scale.model.blt import BLT, BLTConfig
from blt_scale.model.flops import model_flops
from blt_scale.model.patcher import PatcherConfig, patch_lengths
from blt_scale.model.vocab import PAD, encode
from blt_scale.train.objectives import lm_loss

BATCH = 8
# Tasks (`--task`): bytes per row, secret symbols, the alphabet they are drawn from, the local
# windows (bytes), the latent window of the windowed variants (patches) and MAC's segment (patches).
TASKS = {
    "letters": {
        "seq": 128,
        "secret": 4,
        "alphabet": "abcdefghijklmnopqrstuvwxyz",
        "local": 16,
        "window": 8,
        "segment": 8,
    },
    "digit": {"seq": 56, "secret": 1, "alphabet": "01234567", "local": 8, "window": 2, "segment": 4},
}
PATCHER = PatcherConfig(mode="space", max_patch_len=8)
LOCAL = {"dim": 32, "layers": 1, "heads": 2, "window": 16}
LATENT = {"dim": 64, "layers": 2, "heads": 2, "window": 8}
DIFF = {"attention_kind": "differential"}
VARIANTS = {
    "softmax": {},
    "differential": {
        "encoder": {**LOCAL, **DIFF},
        "global": {**LATENT, **DIFF},
        "decoder": {**LOCAL, **DIFF},
    },
    "titans_mag": {"global": {**LATENT, "memory": {"variant": "mag", "chunk": 8}}},
    "titans_mac": {"global": {**LATENT, "window": None, "memory": {"variant": "mac", "chunk": 8}}},
    "softmax_full": {"global": {**LATENT, "window": None}},
}


def config(name: str, task: str = "letters", memory: dict | None = None) -> BLTConfig:
    """The variant's BLT; the task sets the latent window (where one is set) and MAC's segment,
    `memory` overrides the Titans memory's hyper-parameters (MemoryConfig fields)."""
    parts = {
        "encoder": LOCAL,
        "global": LATENT,
        "decoder": LOCAL,
        "ngram": {"sizes": [3, 4], "buckets": 512},
    }
    parts = {**parts, **VARIANTS[name], "attention": "chunked"}
    for side in ("encoder", "decoder"):
        parts[side] = {**parts[side], "window": TASKS[task]["local"]}
    latent = dict(parts["global"])
    if latent.get("window") is not None:
        latent["window"] = TASKS[task]["window"]
    if "memory" in latent:
        latent["memory"] = {**latent["memory"], "chunk": TASKS[task]["segment"], **(memory or {})}
    return BLTConfig.model_validate({**parts, "global": latent})


def rows(
    n: int, gen: torch.Generator, task: str = "letters", near: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [n, SEQ + 1] (no padding) and a mask over the targets: the recalled symbols. With
    probability `near` a row states its secret just before the query (one filler word between), within
    the windows' reach, instead of at the row's start: a curriculum for training rows only."""
    SEQ, SECRET, alphabet = TASKS[task]["seq"], TASKS[task]["secret"], TASKS[task]["alphabet"].encode()
    out, mask = torch.empty(n, SEQ + 1, dtype=torch.long), torch.zeros(n, SEQ, dtype=torch.bool)

    def word(length: int) -> bytes:
        return bytes(97 + int(c) for c in torch.randint(0, 26, (length,), generator=gen))

    def filler(length: int) -> bytes:  # words and their spaces, no space at either end
        text = b""
        while len(text) < length - 10:
            text += word(2 + int(torch.randint(0, 6, (1,), generator=gen))) + b" "
        return text + word(length - len(text))

    for r in range(n):
        secret = bytes(alphabet[int(c)] for c in torch.randint(0, len(alphabet), (SECRET,), generator=gen))
        head, tail = b"key: " + secret + b".", b" key: " + secret + b"."
        # `near` draws nothing when 0, so rows without the curriculum are those measured before it
        if near and float(torch.rand(1, generator=gen)) < near:
            # 3-6 letters between: beyond the decoder's 8-byte window, within the latent's 2 patches
            end = b" " + head + b" " + word(3 + int(torch.randint(0, 4, (1,), generator=gen))) + tail
            text = filler(SEQ - len(end)) + end
        else:
            text = head + b" " + filler(SEQ - len(head) - 1 - len(tail)) + tail
        out[r] = encode(text, bos=True)
        mask[r, SEQ - 1 - SECRET : SEQ - 1] = True  # targets j predict ids[j + 1]: the last letters but "."
    return out, mask


def reach(model: BLT, ids: torch.Tensor, task: str) -> torch.Tensor:
    """Per row, the largest |d recalled-symbol logits / d input states| over the bytes around the
    first secret (BOS or the space and `key: ` before it, its bytes and the n-grams that end within 3
    bytes of them): exactly 0 where no window of the model reaches back to the secret."""
    SEQ, SECRET = TASKS[task]["seq"], TASKS[task]["secret"]
    grabbed = []

    def keep(module, inputs, output):
        output.retain_grad()
        grabbed.append(output)

    hooks = [model.embed.register_forward_hook(keep), model.ngram.register_forward_hook(keep)]
    try:
        logits = model(ids[:, :-1], patch_lengths(ids[:, :-1], PATCHER))
        logits[:, SEQ - 1 - SECRET : SEQ - 1].abs().sum().backward()
    finally:
        for h in hooks:
            h.remove()
    model.zero_grad()
    # The first "key: " of a row starts its first secret's statement: at 1 (after BOS) far, later near.
    key = encode(b"key: ")
    first = (ids[:, :SEQ].unfold(1, len(key), 1) == key).all(-1).long().argmax(1) + len(key)
    pos = torch.arange(SEQ)
    near = (pos >= first[:, None] - 6) & (pos < first[:, None] + SECRET + 3)
    grads = torch.stack([g.grad.abs().amax(-1) for g in grabbed]).amax(0)  # [rows, SEQ]
    return grads.masked_fill(~near, 0).amax(1)


def train(
    name: str,
    seed: int,
    budget: float,
    objective: str,
    task: str = "letters",
    memory: dict | None = None,
    near: float = 0.0,
) -> dict:
    SEQ = TASKS[task]["seq"]
    cfg = config(name, task, memory)
    torch.manual_seed(seed)
    model = BLT(cfg)
    gen = torch.Generator().manual_seed(1000 * seed)
    if task != "letters":  # on every held-out row, the windowed variants without memory cannot see the secret
        leak = float(reach(model, rows(256, torch.Generator().manual_seed(12345), task)[0], task).max())
        windowed = cfg.global_.window is not None and cfg.global_.memory is None
        if windowed and leak != 0.0:
            raise AssertionError(f"{name}: recall depends on the secret ({leak:.3g}): it is in a window")
        if not windowed and leak == 0.0:
            raise AssertionError(f"{name}: the recalled symbols cannot depend on the secret")
        if windowed and near:  # the curriculum's rows must be within reach, else they teach nothing more
            close = reach(model, rows(256, torch.Generator().manual_seed(54321), task, 1.0)[0], task)
            if not bool((close > 0).all()):
                raise AssertionError(f"{name}: {int((close == 0).sum())} of 256 near rows are out of reach")
    sample, _ = rows(64, gen, task, near)
    lengths = patch_lengths(sample[:, :-1], PATCHER)
    patch_bytes = sample[:, :-1].numel() / float((lengths > 0).sum())
    per_byte = model_flops(cfg, SEQ, patch_bytes).train_per_byte
    steps = max(1, round(budget / (per_byte * BATCH * SEQ)))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    start = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:  # linear warmup over 10%, cosine to 10%
            frac = step / steps
            group["lr"] = 3e-3 * (frac / 0.1 if frac < 0.1 else 0.1 + 0.45 * (1 + math.cos(math.pi * frac)))
        ids, mask = rows(BATCH, gen, task, near)
        targets = ids[:, 1:] if objective == "lm" else ids[:, 1:].masked_fill(~mask, PAD)
        loss, count = lm_loss(model(ids[:, :-1], patch_lengths(ids[:, :-1], PATCHER)), targets)
        (loss / count).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    seconds = (time.perf_counter() - start) / steps
    model.eval()
    ids, mask = rows(256, torch.Generator().manual_seed(12345), task)
    with torch.no_grad():
        logits = model(ids[:, :-1], patch_lengths(ids[:, :-1], PATCHER)).float()
    targets = ids[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    rest = ~mask
    return {
        "variant": name,
        "seed": seed,
        "steps": steps,
        "s_per_step": seconds,
        "train_flops": per_byte * BATCH * SEQ * steps,
        "train_flops_per_s": per_byte * BATCH * SEQ / seconds,
        "recall_nats": float(nll[mask].mean()),
        "recall_acc": float((logits.argmax(-1) == targets)[mask].float().mean()),
        "rest_bpb": float(nll[rest].mean() / math.log(2)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=3e12, help="training FLOPs per run")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", nargs="*", default=list(VARIANTS))
    p.add_argument(
        "--objective",
        choices=["recall", "lm"],
        default="recall",
        help="train on the recalled letters only (default), or on every next byte",
    )
    p.add_argument(
        "--task",
        choices=list(TASKS),
        default="letters",
        help="letters: 4 secret letters of 26 (128 bytes, local windows 16 bytes, latent window 8); digit: "
        "1 secret digit of 8 (56 bytes, local windows 8 bytes, latent window 2, MAC segments of 4)",
    )
    p.add_argument(
        "--memory",
        type=json.loads,
        default=None,
        help="JSON overrides of the Titans memory (MemoryConfig fields), e.g. '{\"max_step\": 0.1}'",
    )
    p.add_argument(
        "--near",
        type=float,
        default=0.0,
        help="fraction of training rows whose secret sits just before its query, within the windows' "
        "reach (a curriculum; held-out rows never do)",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    runs = []
    for v in args.variants:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            runs.append(train(v, seed, args.budget, args.objective, args.task, args.memory, args.near))
            if not args.json:
                r = runs[-1]
                print(
                    f"  {v} seed {seed}: recall {r['recall_nats']:.3f} nats, acc {r['recall_acc']:.3f}, "
                    f"{r['steps']} steps, {r['s_per_step']:.3f} s/step",
                    flush=True,
                )
    summary = {}
    for v in args.variants:
        mine = [r for r in runs if r["variant"] == v]
        summary[v] = {
            key: statistics.mean(r[key] for r in mine)
            for key in (
                "recall_nats",
                "recall_acc",
                "rest_bpb",
                "steps",
                "s_per_step",
                "train_flops",
                "train_flops_per_s",
            )
        }
        summary[v]["recall_nats_sd"] = statistics.pstdev(r["recall_nats"] for r in mine)
    if args.json:
        print(json.dumps({"runs": runs, "summary": summary}, indent=1))
        return
    base = summary.get("softmax")
    symbols = len(TASKS[args.task]["alphabet"])
    chance = math.log(symbols)
    print(
        f"task {args.task}, budget {args.budget:.3g} training FLOPs per run, {args.seeds} seeds, "
        f"objective {args.objective}, near {args.near}, memory {args.memory or {}}; "
        f"chance = ln {symbols} = {chance:.3f}"
    )
    head = f"{'recall nats':>16} {'recall acc':>10} {'rest bpb':>9} {'steps':>6} {'s/step':>7} {'FLOP/s':>8}"
    print(f"{'variant':14} {head}  vs softmax")
    for v, s in summary.items():
        ratio = ""
        if base is not None:
            ratio = (
                f"recall nats x{s['recall_nats'] / base['recall_nats']:.2f}, "
                f"acc {s['recall_acc'] - base['recall_acc']:+.2f}, "
                f"s/step x{s['s_per_step'] / base['s_per_step']:.2f}, "
                f"FLOP/s x{s['train_flops_per_s'] / base['train_flops_per_s']:.2f}"
            )
        print(
            f"{v:14} {s['recall_nats']:8.3f} ± {s['recall_nats_sd']:5.3f} {s['recall_acc']:10.3f} "
            f"{s['rest_bpb']:9.3f} {s['steps']:6.0f} {s['s_per_step']:7.3f} "
            f"{s['train_flops_per_s']:8.2e}  {ratio}"
        )


if __name__ == "__main__":
    main()

"""`blt eval-brain RUN_DIR|CKPT --data URI`: brain -> text without teacher forcing, with its control.

For every held-out window the model generates text greedily from BOS (each byte from the model's
own previous bytes, never the reference), and the text is scored against the reference with
BLEU-1..4 (nltk, corpus level, word tokens, smoothing method 1), ROUGE-L F1 (rouge-score, word
tokens, no stemming, so non-ASCII words count as written) and WER (jiwer). Exact-match rate and
the teacher-forced loss (nats per byte) come along.

The noise-input control runs the same model on the same windows with the signal replaced by
Gaussian noise of the same per-channel mean and standard deviation (padded channels stay 0). A
score means little unless it beats its control: without brain information a model can still
produce plausible text from its language prior.

Every score comes with a bootstrap 95% interval, the margin over the noise control with its
paired interval (brain_scores.py), and the same per subject; any split of the dataset can be
scored (train, val, test; `blt prep brain --split` decides what they hold out).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from blt_scale.model.patcher import patch_lengths
from blt_scale.model.vocab import BOS, EOS, PAD, decode
from blt_scale.train.brain_scores import METRICS, _Words, bootstrap, window_stats
from blt_scale.train.objectives import brain_inputs, loss_fn

RESULTS = "eval_brain.json"


def noise_like(signal: torch.Tensor, channel_mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise with each (sample, channel)'s mean and std over time; 0 on padded channels."""
    mean, std = signal.mean(-1, keepdim=True), signal.std(-1, keepdim=True)
    noise = torch.randn(signal.shape, generator=generator, dtype=signal.dtype) * std + mean
    return noise * channel_mask[..., None]


@torch.no_grad()
def greedy(model, batch: dict, patcher, max_bytes: int) -> list[str]:
    """Generated text of every row: argmax bytes from BOS until EOS or max_bytes.

    Every forward runs over a fixed-length buffer (BOS, bytes so far, PAD after them) and reads the
    logits at the last real position: the models and patchers are causal, so what follows cannot
    change them, and sequences shorter than the longest hash n-gram never reach the model."""
    B = batch["signal"].shape[0]
    ids = torch.full((B, max_bytes + 1), PAD, dtype=torch.long)
    ids[:, 0] = BOS
    done = torch.zeros(B, dtype=torch.bool)
    for t in range(max_bytes):
        out = model(ids, patch_lengths(ids, patcher), *brain_inputs(batch))
        nxt = (out if isinstance(out, torch.Tensor) else out["logits"])[:, t].float().argmax(-1)
        ids[:, t + 1] = torch.where(done, torch.full_like(nxt, PAD), nxt)
        done |= nxt == EOS
        if bool(done.all()):
            break
    return [_text(row) for row in ids]


def _text(ids: torch.Tensor) -> str:
    row = ids.tolist()
    row = row[: row.index(EOS)] if EOS in row else row
    return decode(row).decode("utf-8", errors="replace").strip()


def scores(references: list[str], hypotheses: list[str]) -> dict:
    import jiwer
    from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu
    from rouge_score import rouge_scorer

    refs = [[r.split()] for r in references]
    hyps = [h.split() for h in hypotheses]
    smooth = SmoothingFunction().method1
    out = {
        f"bleu{n}": corpus_bleu(refs, hyps, weights=tuple([1 / n] * n), smoothing_function=smooth)
        for n in range(1, 5)
    }
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Words())
    out["rougeL"] = sum(scorer.score(r, h)["rougeL"].fmeasure for r, h in zip(references, hypotheses)) / len(
        references
    )
    kept = [(r, h) for r, h in zip(references, hypotheses) if r.strip()]  # jiwer needs non-empty references
    out["wer"] = jiwer.wer([r for r, _ in kept], [h for _, h in kept]) if kept else math.nan
    out["exact"] = sum(r == h for r, h in zip(references, hypotheses)) / len(references)
    return out


def split_windows(cfg, split: str) -> int:
    """Windows in `split` of cfg.data's sources; a dataset without that split is an error."""
    from blt_scale.data.brain.loader import brain_manifests

    total = 0
    for uri, m in brain_manifests([s.uri for s in cfg.data.sources]).items():
        if split not in m["splits"]:
            raise ValueError(
                f"{uri}: no {split} windows (its manifest has splits {sorted(m['splits'])}); prepare it "
                f"again with blt prep brain --test-fraction F for a test split"
            )
        total += m["splits"][split]["documents"]
    return total


@torch.no_grad()
def evaluate_brain(
    model,
    cfg,
    samples: int | None = 64,
    batch_size: int = 16,
    seed: int = 0,
    split: str = "val",
    resamples: int = 1000,
    keep_rows: bool = False,
) -> dict:
    """Scores with the real signal and with the noise control, side by side, on `samples` windows
    (None: all; fewer if the split has fewer) of `split` of cfg.data, with bootstrap intervals,
    overall and per subject. keep_rows: also every window's reference and both texts."""
    from blt_scale.data.brain.loader import brain_layout
    from blt_scale.data.loader import build_loader

    if cfg.patcher.mode == "entropy":
        raise ValueError("patcher.mode=entropy: eval-brain does not load an entropy model")
    if getattr(cfg.model, "phase", "lm") != "lm":
        raise ValueError(
            f"model.phase={cfg.model.phase}: eval-brain needs a text-generating model (phase lm)"
        )
    available = split_windows(cfg, split)
    samples = available if samples is None else min(samples, available)
    if samples == 0:
        hint = "; prepare with blt prep brain --test-fraction F for a test split" if split == "test" else ""
        raise ValueError(f"data {[s.uri for s in cfg.data.sources]}: no {split} windows{hint}")
    layout = brain_layout(cfg.data)
    max_bytes = layout.text_bytes + 1
    model.eval()
    objective = loss_fn(cfg.model)
    gen = torch.Generator().manual_seed(seed)
    loader = build_loader(cfg.data, cfg.patcher, min(batch_size, samples), split, 0, 1, seed)
    refs, subjects = [], []
    runs = {"real": {"hyps": [], "loss": 0.0}, "noise": {"hyps": [], "loss": 0.0}}
    count = 0
    for batch in loader:
        batch = {k: v[: samples - len(refs)] for k, v in batch.items()}
        refs += [_text(row) for row in batch["tokens"]]
        subjects += [layout.subjects[i] for i in batch["subject"].tolist()]
        noisy = batch | {"signal": noise_like(batch["signal"], batch["channel_mask"], gen)}
        for name, b in (("real", batch), ("noise", noisy)):
            summed, n, _ = objective(model, b)
            runs[name]["loss"] += float(summed)
            runs[name]["hyps"] += greedy(model, b, cfg.patcher, max_bytes)
        count += int((batch["tokens"][:, 1:] != PAD).sum())
        if len(refs) >= samples:
            break
    result = {"samples": len(refs), "split": split, "seed": seed}
    for name, run in runs.items():
        result[name] = scores(refs, run["hyps"]) | {"loss": run["loss"] / max(count, 1)}
    result |= intervals(refs, runs["real"]["hyps"], runs["noise"]["hyps"], resamples, seed)
    result["subjects"] = {}
    for sub in sorted(set(subjects)):
        idx = [i for i, s in enumerate(subjects) if s == sub]
        pick = lambda xs, idx=idx: [xs[i] for i in idx]  # noqa: E731
        refs_s, real_s, noise_s = pick(refs), pick(runs["real"]["hyps"]), pick(runs["noise"]["hyps"])
        result["subjects"][sub] = {
            "samples": len(idx),
            "real": scores(refs_s, real_s),
            "noise": scores(refs_s, noise_s),
            **intervals(refs_s, real_s, noise_s, resamples, seed),
        }
    result["examples"] = [
        {"reference": r, "real": a, "noise": b}
        for r, a, b in list(zip(refs, runs["real"]["hyps"], runs["noise"]["hyps"]))[:8]
    ]
    if keep_rows:
        result["rows"] = [
            {"subject": s, "reference": r, "real": a, "noise": b}
            for s, r, a, b in zip(subjects, refs, runs["real"]["hyps"], runs["noise"]["hyps"])
        ]
    return result


def intervals(refs: list[str], real: list[str], noise: list[str], resamples: int, seed: int) -> dict:
    """{"margin": {metric: signal advantage}, "ci": {"real"|"noise"|"margin": {metric: [lo, hi]}}}."""
    boot = bootstrap(window_stats(refs, real), window_stats(refs, noise), resamples, seed)
    margin = boot.pop("margin_value")
    return {"margin": margin, "ci": boot}


@torch.no_grad()
def decode_recording(
    model, cfg, path: str, options=None, subject: str | None = None, batch_size: int = 16
) -> list[dict]:
    """Rows {onset_s, text, reference (None without text events), subject} for every window of the
    raw recording at `path`, prepared as the run's data was (options: BrainPrepOptions; None: the
    first data source's own) and decoded greedily like evaluate_brain."""
    from blt_scale.data.brain.collate import collate
    from blt_scale.data.brain.loader import brain_layout, brain_manifests
    from blt_scale.data.brain.recording import dataset_options, recording_samples

    if getattr(cfg.model, "phase", "lm") != "lm":
        raise ValueError(f"model.phase={cfg.model.phase}: decoding needs a text-generating model (phase lm)")
    uris = [s.uri for s in cfg.data.sources]
    options = options or dataset_options(uris[0])
    layout = brain_layout(cfg.data)
    sfreq = next(iter(brain_manifests(uris).values()))["sfreq"]
    samples, has_events = recording_samples(path, options, sfreq)
    for s in samples:
        s["subject"] = subject or s["subject"]
        if s["subject"] not in layout.subjects:
            raise ValueError(
                f"{path}: subject {s['subject']!r} is not one the run knows ({layout.subjects[:8]}); "
                f"pass --subject with one of them"
            )
    model.eval()
    rows = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i : i + batch_size]
        texts = greedy(model, collate(chunk, layout, cfg.patcher), cfg.patcher, layout.text_bytes + 1)
        rows += [
            {
                "onset_s": s["onset_s"],
                "text": t,
                "reference": s["text"].decode("utf-8") if has_events else None,
                "subject": s["subject"],
            }
            for s, t in zip(chunk, texts)
        ]
    return rows


def results_dir(source: Path) -> Path:
    """The run directory of a checkpoint (RUN_DIR/checkpoints/step_N), else the directory itself."""
    return source.parent.parent if source.parent.name == "checkpoints" else source


def _ci(lo_hi: list[float]) -> str:
    return f"[{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]" if lo_hi else "[n/a]"


def format_table(result: dict) -> str:
    lines = [
        f"{result['samples']} {result['split']} windows, greedy decoding; 95% bootstrap intervals "
        f"({result['ci']['resamples']} resamples); margin = signal advantage over noise",
        f"{'metric':<8}{'signal':>8} {'95% CI':<17}{'noise':>8} {'95% CI':<17}{'margin':>8} {'95% CI':<17}",
    ]
    ci = result["ci"]
    for k in METRICS:
        lines.append(
            f"{k:<8}{result['real'][k]:>8.4f} {_ci(ci['real'][k]):<17}{result['noise'][k]:>8.4f} "
            f"{_ci(ci['noise'][k]):<17}{result['margin'][k]:>8.4f} {_ci(ci['margin'][k]):<17}"
        )
    lines.append(f"{'loss':<8}{result['real']['loss']:>8.4f} {'':<17}{result['noise']['loss']:>8.4f}")
    for sub, r in result.get("subjects", {}).items():
        lines.append(
            f"subject {sub} ({r['samples']} windows): bleu1 {r['real']['bleu1']:.3f} vs noise "
            f"{r['noise']['bleu1']:.3f}, margin {r['margin']['bleu1']:.3f} "
            f"{_ci(r['ci']['margin']['bleu1'])}; "
            f"wer {r['real']['wer']:.3f} vs {r['noise']['wer']:.3f}, margin {r['margin']['wer']:.3f} "
            f"{_ci(r['ci']['margin']['wer'])}"
        )
    lines += [
        f"  {e['reference']!r:<16} signal: {e['real']!r:<16} noise: {e['noise']!r}"
        for e in result["examples"][:4]
    ]
    return "\n".join(lines)
